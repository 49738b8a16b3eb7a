"""The convolution shapes of ResNet-18 and MobileNetV2 that cifar6 and mnist2
do not have, fastconv's compiled kernels against PyTorch, one group per
layer shape and pass:

* MobileNetV2's depthwise 3x3 layers (groups = channels, stride 1 and 2,
  padding 1) at batch 32, 32 to 192 channels on 112x112 to 7x7 planes:
  forward, and forward plus backward (dx, dweight, dbias);
* ResNet-18's downsampling paths at batch 1 and 32: the 7x7 stride-2 first
  layer on 224x224 images, and the 3x3 and 1x1 stride-2 layers from 64 to
  128 channels on 56x56 planes; and its bottleneck-style 1x1 stride-1
  layers (ResNet-50's) on 56x56: forward, and forward plus backward.

Before timing, each benchmark checks its engine's result against the NumPy
backend (fastconv.reference): y for the forward pass, all three gradients
for the backward. Run with ``pytest benchmarks/bench_resnet_mobilenet.py``.
"""
import numpy as np
import pytest

from fastconv import _kernels, reference

# name: (batch, channels, filters, plane, kernel, stride, padding, groups)
DEPTHWISE = {
    f"dw{c}-{h}px-s{s}": (32, c, c, h, 3, s, 1, c)
    for c, h, s in [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
                    (192, 14, 1), (192, 7, 1)]
}
RESNET = {
    f"{name}-batch{n}": (n, c, f, h, k, s, p, 1)
    for n in (1, 32)
    for name, (c, f, h, k, s, p) in {
        "conv1-7x7s2": (3, 64, 224, 7, 2, 3),
        "down-3x3s2": (64, 128, 56, 3, 2, 1),
        "down-1x1s2": (64, 128, 56, 1, 2, 0),
        "expand-1x1": (64, 256, 56, 1, 1, 0),
        "reduce-1x1": (256, 64, 56, 1, 1, 0),
    }.items()
}
LAYERS = {**DEPTHWISE, **RESNET}
ENGINES = ("fastconv", "torch")


def arrays(layer):
    n, c, f, h, k, s, p, groups = LAYERS[layer]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, h), dtype=np.float32)
    weight = rng.standard_normal((f, c // groups, k, k), dtype=np.float32) / np.float32(np.sqrt(c // groups * k * k))
    bias = rng.standard_normal(f, dtype=np.float32)
    y = reference.conv2d_forward(x, weight, bias, s, p, groups)[0]
    dy = np.cos(y)
    return x, weight, bias, dy, (s, p, groups)


def close(got, want):
    """Within 1e-3 of the largest value: loose enough for PyTorch's float32
    gradient sums over a whole batch of large planes, far tighter than any
    wrong index or missing term."""
    got = np.asarray(got)
    return got.shape == want.shape and np.abs(got - want).max() <= 1e-3 * max(np.abs(want).max(), 1.0)


def calls(engine, x, weight, bias, dy, geometry):
    """(forward, forward and backward, what they return first) for an engine."""
    stride, padding, groups = geometry
    if engine == "fastconv":
        def forward():
            return _kernels.conv2d_forward(x, weight, bias, stride, padding, groups)[0]

        def step():
            _, cache = _kernels.conv2d_forward(x, weight, bias, stride, padding, groups)
            return _kernels.conv2d_backward(dy, cache)
        return forward, step
    torch = pytest.importorskip("torch", reason="PyTorch is the baseline of these benchmarks")
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, weight, bias, dy))
    leaves = [a.clone().requires_grad_(True) for a in (tx, tw, tb)]

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw, tb, stride, padding, 1, groups)

    def torch_step():
        out = torch.nn.functional.conv2d(*leaves, stride, padding, 1, groups)
        return torch.autograd.grad(out, leaves, tdy)
    return torch_forward, torch_step


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layer", LAYERS)
def bench_conv_forward(benchmark, layer, engine, engine_available):
    engine_available(engine)
    x, weight, bias, dy, geometry = arrays(layer)
    benchmark.group = f"conv fwd {layer}: {x.shape} -> {weight.shape}, stride, padding, groups {geometry}"
    forward, _ = calls(engine, x, weight, bias, dy, geometry)
    assert close(forward(), reference.conv2d_forward(x, weight, bias, *geometry)[0]), f"{engine} {layer}"
    benchmark(forward)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layer", LAYERS)
def bench_conv_forward_backward(benchmark, layer, engine, engine_available):
    engine_available(engine)
    x, weight, bias, dy, geometry = arrays(layer)
    benchmark.group = f"conv fwd+bwd {layer}: {x.shape} -> {weight.shape}, stride, padding, groups {geometry}"
    _, step = calls(engine, x, weight, bias, dy, geometry)
    _, cache = reference.conv2d_forward(x, weight, bias, *geometry)
    for got, want in zip(step(), reference.conv2d_backward(dy, cache)):
        assert close(got, want), f"{engine} {layer}"
    benchmark(step)
