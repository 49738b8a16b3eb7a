"""How fast fastconv is on this machine, next to its NumPy backend and PyTorch.

``run()`` measures, in one run and at one thread count, float32 throughout:

* every kernel (im2col, col2im, convolution, max-pooling and batch norm,
  forward and backward) at every layer shape of the built-in nets ``cifar6``
  (32x32 input) and ``mnist2`` (28x28 input);
* a full training step (forward, cross-entropy, backward, Adam update) and
  inference (eval-mode forward) of both nets;
* the peak memory of one ``cifar6`` training step, each engine in a fresh
  subprocess so that one cannot inflate the other's high-water mark;
* the speed-up of the training step from 1 thread to the requested count;

and prints them as a table. Each measurement runs three engines on the same
data: ``fastconv`` (the compiled kernels), ``numpy`` (fastconv's own NumPy
backend, ``fastconv.reference``) and ``torch`` (PyTorch on the CPU, when it is
installed). Before an engine is timed its first result is compared with the
NumPy backend's, so a fast but wrong kernel shows up as a mismatch instead of
a good number.

Rates are effective rates: a convolution is charged the FLOPs of the direct
algorithm, 2*N*F*C*KH*KW*OH*OW forward and twice that backward (dx and
dweight), whatever it actually executes; a training step is charged the
forward and backward FLOPs of its convolutions and linear layers (less the
first layer's input gradient, which no engine computes), inference their
forward FLOPs. They are shown as a fraction of the float32 GEMM rate
(NumPy matmul of two 2048x2048 matrices, best of several) measured in the
same run: the practical ceiling of a GEMM-based engine on this machine.

The pytest-benchmark suites in ``benchmarks/`` time the same callables; the
helpers they share (``layer_shapes``, ``kernel_call``, ``model_call``,
``outputs_agree``) are public here for that reason.
"""
import collections
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import json
import math
import operator
import os
import platform
import subprocess
import sys
import time

import numpy as np
import tqdm

from fastconv import _checks, _runtime, backend, models, optim, reference
from fastconv.nn import fusion, layers, losses

__all__ = [
    "ENGINES", "NETS", "GRAPH_NETS", "KERNEL_OPS", "LayerShape", "KernelCall", "ModelCall",
    "layer_shapes", "kernel_call", "model_call", "model_flops", "outputs_agree",
    "model_outputs_agree", "torch_twin",
    "gemm_rate", "best_time", "machine_info", "memory_probe", "run", "format_table", "GEMM_SIZE", "SEED",
]

ENGINES = ("fastconv", "numpy", "torch")
_BACKEND_OF_ENGINE = {"fastconv": "compiled", "numpy": "numpy"}

# name -> (constructor, input shape of one image)
NETS = {
    "cifar6": (models.cifar6, (3, 32, 32)),
    "mnist2": (models.mnist2, (1, 28, 28)),
}
# Graph models: timed as whole networks (model_call, benchmarks/bench_resnet.py);
# the kernel sweeps of run() cover NETS only.
GRAPH_NETS = {
    "resnet20": (models.resnet20, (3, 32, 32)),
    "resnet18": (models.resnet18, (3, 224, 224)),
}
_ALL_NETS = {**NETS, **GRAPH_NETS}

KERNEL_OPS = {
    "conv": ("im2col", "col2im", "conv fwd", "conv bwd"),
    "maxpool": ("maxpool fwd", "maxpool bwd"),
    "batchnorm": ("batchnorm fwd", "batchnorm bwd"),
}

GEMM_SIZE = 2048
BN_EPS = 1e-5
SEED = 0


def _torch():
    """The torch module, or None when PyTorch is not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    return importlib.import_module("torch")


def _required_torch():
    """The torch module for the 'torch' engine; RuntimeError when it is missing."""
    torch = _torch()
    if torch is None:
        raise RuntimeError("engine 'torch' needs PyTorch, which is not installed")
    return torch


def _compiled_kernels():
    return importlib.import_module("fastconv._kernels")


def _kernel_module(engine):
    return _compiled_kernels() if engine == "fastconv" else reference


# --------------------------------------------------------------------------
# Layer shapes of the built-in nets


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One distinct kernel geometry of a net; ``layers`` are the layers sharing it."""

    net: str
    kind: str  # 'conv', 'maxpool' or 'batchnorm'
    layers: tuple
    x_shape: tuple  # (N, C, H, W) input of the layer
    out_channels: int = 0  # conv only
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)

    @property
    def out_hw(self):
        *_, oh, ow = _checks.window_geometry(self.x_shape, self.kernel, self.stride, self.padding)
        return oh, ow

    @property
    def count(self):
        return len(self.layers)

    @property
    def label(self):
        """Short description: input shape and window geometry."""
        n, c, h, w = self.x_shape
        text = f"{n}x{c}x{h}x{w}"
        if self.kind == "batchnorm":
            return text
        kh, kw = self.kernel
        geometry = f"{kh}x{kw} s{self.stride[0]}"
        if self.padding != (0, 0):
            geometry += f" p{self.padding[0]}"
        if self.kind == "conv":
            return f"{text} -> {self.out_channels}, {geometry}"
        return f"{text}, {geometry}"

    @property
    def layer_names(self):
        return ",".join(self.layers)

    def flops(self, op):
        """Direct-algorithm FLOPs of one call of ``op`` on this shape, None if it does no arithmetic."""
        if op not in ("conv fwd", "conv bwd"):
            return None
        n, c, _, _ = self.x_shape
        oh, ow = self.out_hw
        kh, kw = self.kernel
        forward = 2 * n * self.out_channels * c * kh * kw * oh * ow
        return forward if op == "conv fwd" else 2 * forward


def _check_net(net):
    if net not in _ALL_NETS:
        raise ValueError(f"net must be one of {tuple(_ALL_NETS)}, got {net!r}")


def _build(net, seed=SEED):
    _check_net(net)
    constructor, _ = _ALL_NETS[net]
    return constructor(seed=seed)


def _layer_inputs(model, input_shape):
    """(name, layer, input shape) for every layer of the model, in order (a
    merge's first input's shape)."""
    shapes = {"input": tuple(input_shape), **model.output_shapes(input_shape)}
    inputs_of = getattr(model, "inputs", None)
    result = []
    previous = "input"
    for name, layer in model.named_layers():
        source = inputs_of(name)[0] if inputs_of is not None else previous
        result.append((name, layer, shapes[source]))
        previous = name
    return result


def layer_shapes(net, batch_size=128):
    """The distinct conv, max-pool and batch-norm geometries of ``net`` for a batch of ``batch_size``."""
    model = _build(net)
    _, image_shape = NETS[net]
    found = {}
    for name, layer, shape in _layer_inputs(model, (batch_size,) + image_shape):
        if isinstance(layer, layers.Conv2d):
            key = ("conv", shape, layer.out_channels, tuple(layer.kernel_size), tuple(layer.stride),
                   tuple(layer.padding))
        elif isinstance(layer, layers.MaxPool2d):
            key = ("maxpool", shape, 0, tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding))
        elif isinstance(layer, layers.BatchNorm2d):
            key = ("batchnorm", shape, 0, (1, 1), (1, 1), (0, 0))
        else:
            continue
        found.setdefault(key, []).append(name)
    return [
        LayerShape(net, kind, tuple(names), x_shape, out_channels, kernel, stride, padding)
        for (kind, x_shape, out_channels, kernel, stride, padding), names in found.items()
    ]


def model_flops(net, batch_size, training):
    """Direct-algorithm FLOPs of the convolutions and linear layers of ``net``.

    Inference: their forward passes. Training step: forward, weight gradient
    and input gradient (each as much as the forward), except the first
    layer's input gradient, which no engine computes.
    """
    model = _build(net)
    _, image_shape = _ALL_NETS[net]
    total = 0
    first = True
    for _, layer, shape in _layer_inputs(model, (batch_size,) + image_shape):
        if isinstance(layer, layers.Conv2d):
            n, f, oh, ow = layer.output_shape(shape)
            kh, kw = layer.kernel_size
            forward = 2 * n * f * (shape[1] // layer.groups) * kh * kw * oh * ow
        elif isinstance(layer, layers.Linear):
            forward = 2 * shape[0] * layer.in_features * layer.out_features
        else:
            continue
        total += forward * (1 if not training else 2 if first else 3)
        first = False
    return total


# --------------------------------------------------------------------------
# Agreement between engines


def _as_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def outputs_agree(actual, expected, rtol=1e-3, norm="max"):
    """True when two results (arrays, or equal-length sequences / dicts of arrays) match.

    Float arrays may differ by ``rtol`` relative to the expected array: the
    largest difference against the largest magnitude (``norm='max'``), or the
    Euclidean norm of the difference against that of the array
    (``norm='l2'``, for results where a few elements may legitimately move,
    such as gradients behind a ReLU whose input sits at zero). Integer arrays
    (max-pool argmax) must be equal.
    """
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            outputs_agree(actual[k], expected[k], rtol, norm) for k in expected
        )
    if isinstance(expected, (tuple, list)):
        return len(actual) == len(expected) and all(
            outputs_agree(a, e, rtol, norm) for a, e in zip(actual, expected)
        )
    a, e = _as_numpy(actual), _as_numpy(expected)
    if a.shape != e.shape:
        return False
    if not np.issubdtype(e.dtype, np.floating):
        return bool(np.array_equal(a, e))
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    if not (np.isfinite(a64).all() and np.isfinite(e64).all()):
        return False
    if norm == "l2":
        return float(np.linalg.norm(a64 - e64)) <= rtol * max(float(np.linalg.norm(e64)), 1e-30)
    scale = max(float(np.abs(e64).max(initial=0.0)), 1e-30)
    return float(np.abs(a64 - e64).max(initial=0.0)) <= rtol * scale


# --------------------------------------------------------------------------
# Kernel calls


@dataclasses.dataclass
class KernelCall:
    """``fn()`` runs one kernel call; ``result()`` runs one and returns its outputs
    in fastconv's layout, as NumPy arrays, for comparison between engines."""

    fn: object
    canonical: object

    def result(self):
        return self.canonical(self.fn())


_OPERANDS = ("x", "weight", "bias", "cols", "dy")


def _kernel_inputs(shape, op, seed=SEED):
    """Random float32 operands of kernel ``op`` on ``shape``, the same for every engine.

    Each operand has its own seeded stream, so it does not depend on which
    others a kernel needs.
    """
    n, c, h, w = shape.x_shape
    kh, kw = shape.kernel
    oh, ow = shape.out_hw
    f = shape.out_channels
    if shape.kind == "conv":
        dims = {"x": (n, c, h, w), "weight": (f, c, kh, kw), "bias": (f,),
                "cols": (c * kh * kw, n * oh * ow), "dy": (n, f, oh, ow)}
        scales = {"weight": 1 / math.sqrt(c * kh * kw), "bias": 0.1}
        needed = {"im2col": ("x",), "col2im": ("cols",), "conv fwd": ("x", "weight", "bias"),
                  "conv bwd": ("x", "weight", "bias", "dy")}[op]
    elif shape.kind == "maxpool":
        dims = {"x": (n, c, h, w), "dy": (n, c, oh, ow)}
        scales = {}
        needed = ("x", "dy") if op == "maxpool bwd" else ("x",)
    else:
        dims = {"x": (n, c, h, w), "weight": (c,), "bias": (c,), "dy": (n, c, h, w)}
        scales = {"weight": 0.1, "bias": 0.1}
        needed = ("x", "weight", "bias", "dy") if op == "batchnorm bwd" else ("x", "weight", "bias")
    data = {}
    for name in needed:
        rng = np.random.default_rng([seed, _OPERANDS.index(name)])
        data[name] = rng.standard_normal(dims[name], dtype=np.float32) * np.float32(scales.get(name, 1.0))
    if shape.kind == "batchnorm":
        data["weight"] += np.float32(1.0)
    return data


def _fastconv_kernel_call(op, shape, kernels, data):
    x = data.get("x")
    x_shape = shape.x_shape
    k, s, p = shape.kernel, shape.stride, shape.padding
    first = operator.itemgetter(0)
    if op == "im2col":
        return KernelCall(lambda: kernels.im2col(x, k, s, p), lambda r: r)
    if op == "col2im":
        cols = data["cols"]
        return KernelCall(lambda: kernels.col2im(cols, x_shape, k, s, p), lambda r: r)
    if op == "conv fwd":
        w, b = data["weight"], data["bias"]
        return KernelCall(lambda: kernels.conv2d_forward(x, w, b, s, p), first)
    if op == "conv bwd":
        _, cache = kernels.conv2d_forward(x, data["weight"], data["bias"], s, p)
        dy = data["dy"]
        return KernelCall(lambda: kernels.conv2d_backward(dy, cache, need_dx=True), tuple)
    if op == "maxpool fwd":
        return KernelCall(lambda: kernels.maxpool2d_forward(x, k, s, p), tuple)
    if op == "maxpool bwd":
        _, argmax = kernels.maxpool2d_forward(x, k, s, p)
        dy = data["dy"]
        return KernelCall(lambda: kernels.maxpool2d_backward(dy, argmax, x_shape), lambda r: r)
    if op == "batchnorm fwd":
        w, b = data["weight"], data["bias"]
        return KernelCall(lambda: kernels.batchnorm2d_forward_train(x, w, b, BN_EPS), lambda r: (r[0], r[1]))
    if op == "batchnorm bwd":
        *_, cache = kernels.batchnorm2d_forward_train(x, data["weight"], data["bias"], BN_EPS)
        dy = data["dy"]
        return KernelCall(lambda: kernels.batchnorm2d_backward(dy, cache), tuple)
    raise ValueError(f"unknown kernel {op!r}; expected one of {sum(KERNEL_OPS.values(), ())}")


def _torch_kernel_call(op, shape, torch, data):
    """The same call in PyTorch, through the ATen operators autograd itself uses,
    so that no graph bookkeeping is timed."""
    fn = torch.nn.functional
    aten = torch.ops.aten
    x = torch.from_numpy(data["x"]) if "x" in data else None
    n, c, h, w = shape.x_shape
    k, s, p = list(shape.kernel), list(shape.stride), list(shape.padding)
    if op == "im2col":
        def to_fastconv(r):  # (N, C*KH*KW, L) -> (C*KH*KW, N*L)
            return r.permute(1, 0, 2).reshape(r.shape[1], -1).numpy()
        return KernelCall(lambda: fn.unfold(x, k, padding=p, stride=s), to_fastconv)
    if op == "col2im":
        rows = data["cols"].shape[0]
        cols = torch.from_numpy(
            np.ascontiguousarray(data["cols"].reshape(rows, n, -1).transpose(1, 0, 2))
        )
        return KernelCall(lambda: fn.fold(cols, (h, w), k, padding=p, stride=s), _as_numpy)
    weight = torch.from_numpy(data["weight"]) if "weight" in data else None
    bias = torch.from_numpy(data["bias"]) if "bias" in data else None
    dy = torch.from_numpy(data["dy"]) if "dy" in data else None
    if op == "conv fwd":
        return KernelCall(lambda: fn.conv2d(x, weight, bias, s, p), _as_numpy)
    if op == "conv bwd":
        def conv_backward():
            return aten.convolution_backward(
                dy, x, weight, [shape.out_channels], s, p, [1, 1], False, [0, 0], 1, [True, True, True]
            )
        return KernelCall(conv_backward, lambda r: tuple(_as_numpy(t) for t in r))
    if op == "maxpool fwd":
        return KernelCall(
            lambda: fn.max_pool2d(x, k, s, p, return_indices=True), lambda r: tuple(_as_numpy(t) for t in r)
        )
    if op == "maxpool bwd":
        _, indices = fn.max_pool2d(x, k, s, p, return_indices=True)
        return KernelCall(
            lambda: aten.max_pool2d_with_indices_backward(dy, x, k, s, p, [1, 1], False, indices), _as_numpy
        )
    if op == "batchnorm fwd":
        return KernelCall(
            lambda: aten.native_batch_norm(x, weight, bias, None, None, True, 0.1, BN_EPS),
            lambda r: (_as_numpy(r[0]), _as_numpy(r[1])),
        )
    if op == "batchnorm bwd":
        _, mean, inv_std = aten.native_batch_norm(x, weight, bias, None, None, True, 0.1, BN_EPS)

        def batchnorm_backward():
            return aten.native_batch_norm_backward(
                dy, x, weight, None, None, mean, inv_std, True, BN_EPS, [True, True, True]
            )
        return KernelCall(batchnorm_backward, lambda r: tuple(_as_numpy(t) for t in r))
    raise ValueError(f"unknown kernel {op!r}; expected one of {sum(KERNEL_OPS.values(), ())}")


def kernel_call(op, shape, engine, data=None):
    """A ``KernelCall`` running kernel ``op`` (e.g. 'conv bwd') of ``engine`` on ``shape``.

    ``data`` (the operands of another engine's call, to share them) is
    generated from a fixed seed when omitted. Backward calls get their cache
    from one forward call made here, outside what is timed.
    """
    if op not in KERNEL_OPS[shape.kind]:
        raise ValueError(
            f"kernel {op!r} does not apply to a {shape.kind} layer; use one of {KERNEL_OPS[shape.kind]}"
        )
    data = _kernel_inputs(shape, op) if data is None else data
    if engine == "torch":
        return _torch_kernel_call(op, shape, _required_torch(), data)
    if engine not in _BACKEND_OF_ENGINE:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return _fastconv_kernel_call(op, shape, _kernel_module(engine), data)


# --------------------------------------------------------------------------
# Whole-model calls


@dataclasses.dataclass
class ModelCall:
    """``fn()`` runs one training step or one inference pass.

    ``first`` holds the outputs of the first call, made when the call was
    built (it doubles as the warm-up): logits and, for a training step, the
    loss and every parameter gradient, keyed like ``model.named_parameters()``.
    """

    fn: object
    first: dict


def _batch(net, batch_size, seed=SEED):
    _, image_shape = _ALL_NETS[net]
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch_size,) + image_shape, dtype=np.float32)
    labels = rng.integers(0, 10, size=batch_size, dtype=np.int64)
    return x, labels


def _torch_module(name, layer, torch):
    """The PyTorch module (or function, for a layer without state) that does what ``layer`` does."""
    from fastconv.nn import graph

    nn, F = torch.nn, torch.nn.functional
    if isinstance(layer, layers.Conv2d):
        return nn.Conv2d(layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                         tuple(layer.stride), tuple(layer.padding), bias="bias" in layer.params,
                         groups=layer.groups)
    if isinstance(layer, layers.Linear):
        return nn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params)
    if isinstance(layer, layers.BatchNorm2d):
        return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, layers.MaxPool2d):
        return nn.MaxPool2d(tuple(layer.kernel_size), tuple(layer.stride), tuple(layer.padding))
    if isinstance(layer, layers.ReLU):
        return nn.ReLU()
    if isinstance(layer, layers.Flatten):
        return nn.Flatten()
    if isinstance(layer, layers.GlobalAvgPool2d):
        return lambda x: x.mean(dim=(2, 3))
    if isinstance(layer, graph.Add):
        return lambda *xs: sum(xs[1:], xs[0])
    if isinstance(layer, graph.Concat):
        return lambda *xs: torch.cat(xs, 1)
    if isinstance(layer, graph.Identity):
        return lambda x: x
    if isinstance(layer, graph.PadShortcut):
        return lambda x: F.pad(x[:, :, ::layer.stride, ::layer.stride],
                               (0, 0, 0, 0, 0, layer.out_channels - x.shape[1]))
    raise ValueError(f"torch_twin does not know how to translate layer {name!r} ({layer!r})")


def _torch_graph(model, torch):
    """A ``torch.nn.Module`` running ``model``'s nodes in order, its stateful
    modules registered under the node names (``layer1.0.conv1``), so that the
    two state dicts have the same keys."""
    nn = torch.nn

    class TorchGraph(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []  # (name, callable, inputs): a plain list, so not registered twice

        def forward(self, x):
            values = {"input": x}
            for name, step, sources in self.steps:
                values[name] = step(*[values[source] for source in sources])
            return values[model.output]

    root = TorchGraph()
    for name, layer, sources in model.nodes():
        step = _torch_module(name, layer, torch)
        if isinstance(step, nn.Module) and (layer.params or layer.buffers):
            parent = root
            *path, leaf = name.split(".")
            for part in path:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(leaf, step)
        root.steps.append((name, step, sources))
    return root


def torch_twin(model):
    """A PyTorch module with the same layers, names and weights as ``model``:
    a ``torch.nn.Sequential`` for a Sequential, a module that runs the nodes in
    order for a Graph."""
    torch = _torch()
    if torch is None:
        raise RuntimeError("torch_twin needs PyTorch, which is not installed")
    if hasattr(model, "nodes"):
        net = _torch_graph(model, torch)
    else:
        net = torch.nn.Sequential(collections.OrderedDict(
            (name, _torch_module(name, layer, torch)) for name, layer in model.named_layers()))
    state = {key: torch.from_numpy(np.array(value, copy=True)) for key, value in model.state_dict().items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    left_out = [key for key in missing if not key.endswith("num_batches_tracked")]
    if left_out or unexpected:
        raise RuntimeError(
            f"torch_twin: state keys do not match: missing {left_out}, unexpected {unexpected}"
        )
    return net


def _fastconv_model_call(net, batch_size, engine, training):
    backend_name = _BACKEND_OF_ENGINE[engine]
    model = _build(net)
    x, labels = _batch(net, batch_size)
    if not training:
        def infer():
            backend.set_backend(backend_name)
            return model.predict(x, batch_size=batch_size)

        return ModelCall(infer, {"logits": infer().copy()})

    loss_fn = losses.CrossEntropyLoss()
    optimizer = optim.Adam(model, lr=1e-3)

    def train_step():
        backend.set_backend(backend_name)
        optimizer.zero_grad()
        logits = model.forward(x)
        loss = loss_fn(logits, labels)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
        return logits, loss

    logits, loss = train_step()
    gradients = {key: np.array(g, copy=True) for key, g in model.gradients().items()}
    return ModelCall(train_step, {"logits": logits.copy(), "loss": np.float64(loss), "gradients": gradients})


def _torch_model_call(net, batch_size, training, torch):
    model = torch_twin(_build(net))
    x_np, labels_np = _batch(net, batch_size)
    x, labels = torch.from_numpy(x_np), torch.from_numpy(labels_np)
    if not training:
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)

        return ModelCall(infer, {"logits": _as_numpy(infer()).copy()})

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        return logits, loss

    logits, loss = train_step()
    gradients = {key: _as_numpy(p.grad).copy() for key, p in model.named_parameters()}
    return ModelCall(train_step, {"logits": _as_numpy(logits).copy(), "loss": np.float64(loss.item()),
                                  "gradients": gradients})


def model_call(net, batch_size, engine, training):
    """A ``ModelCall`` for a training step (``training=True``) or inference of ``net`` on ``engine``.

    Every engine starts from the same weights (``net``'s constructor with a
    fixed seed, copied into PyTorch) and sees the same random batch.
    """
    _check_net(net)
    if engine == "torch":
        return _torch_model_call(net, batch_size, training, _required_torch())
    if engine not in _BACKEND_OF_ENGINE:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return _fastconv_model_call(net, batch_size, engine, training)


# --------------------------------------------------------------------------
# Timing


def best_time(fn, min_repeats=5, min_seconds=0.0, max_repeats=1000, max_seconds=None):
    """Best wall time of ``fn()`` in seconds (garbage collection paused).

    Calls ``fn`` at least ``min_repeats`` times, and more while less than
    ``min_seconds`` has been spent, up to ``max_repeats``; ``max_seconds``
    stops it earlier, after at least one call, once that much time is spent.
    """
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        begin = time.perf_counter()
        while True:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
            spent = time.perf_counter() - begin
            if max_seconds is not None and spent >= max_seconds:
                break
            if len(times) >= max_repeats or (len(times) >= min_repeats and spent >= min_seconds):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return min(times)


def gemm_rate(repeats=10, size=GEMM_SIZE, engine="numpy", min_seconds=1.0):
    """GFLOP/s of a float32 matmul of two size x size matrices, best of at least
    ``repeats`` calls and ``min_seconds``: NumPy's (the ceiling the table refers
    to) or, with engine='torch', PyTorch's."""
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    if engine == "torch":
        torch = _torch()
        a, b = torch.from_numpy(a), torch.from_numpy(b)
        multiply = torch.mm
    else:
        multiply = np.matmul
    multiply(a, b)
    return 2.0 * size ** 3 / best_time(lambda: multiply(a, b), repeats, min_seconds) / 1e9


def _set_threads(n):
    n = _runtime.set_num_threads(n)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)
    return n


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads):
    """What the numbers depend on: CPU, cores, BLAS, OpenMP, versions, thread count."""
    build = _runtime.build_info()
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})" for b in build["blas"]
    ) or "unknown"
    torch = _torch()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {
        "section": "machine",
        "load_average": load,
        "date": datetime.date.today().isoformat(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "blas": blas,
        "openmp": build["openmp"],
        "gemm": build.get("gemm"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
    }


# --------------------------------------------------------------------------
# Memory (run in a fresh interpreter per engine)


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def memory_probe(engine, threads, batch_size, net="cifar6"):
    """Peak memory of the first training step of ``net`` in this process (call it in a fresh one).

    Returns MiB: the resident set before the step, its high-water mark after
    it and the difference; for the NumPy-based engines also the peak of the
    allocations traced by ``tracemalloc`` (NumPy reports its buffers there)
    during the step. The high-water mark is reset before the step where Linux
    allows it (``/proc/self/clear_refs``); ``hwm_reset`` says whether it was.
    """
    import tracemalloc

    _set_threads(threads)
    x, labels = _batch(net, batch_size)
    if engine == "torch":
        torch = _torch()
        model = torch_twin(_build(net))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        inputs, targets = torch.from_numpy(x), torch.from_numpy(labels)

        def step():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    else:
        backend.set_backend(_BACKEND_OF_ENGINE[engine])
        model = _build(net)
        optimizer = optim.Adam(model, lr=1e-3)
        loss_fn = losses.CrossEntropyLoss()

        def step():
            optimizer.zero_grad()
            loss_fn(model.forward(x), labels)
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()
    gc.collect()
    rss_before = _proc_status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    traced = engine != "torch"
    if traced:
        tracemalloc.start()
    step()
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
    if traced:
        tracemalloc.stop()
    peak = _proc_status_kib("VmHWM")
    return {
        "engine": engine,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak / 1024,
        "step_rss_increase_mib": (peak - rss_before) / 1024,
        "traced_peak_mib": traced_peak / 2 ** 20 if traced else None,
        "hwm_reset": hwm_reset,
    }


_PROBE_SCRIPT = (
    "import json, sys\n"
    "from fastconv.bench import memory_probe\n"
    "print(json.dumps(memory_probe(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))\n"
)


def _memory_in_subprocess(engine, threads, batch_size, net="cifar6"):
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE_SCRIPT, engine, str(threads), str(batch_size), net],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe for {engine!r} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_row(engine, threads, batch_size, net="cifar6"):
    row = {"section": "memory", "net": net, "batch": batch_size, "engine": engine}
    try:
        row.update(_memory_in_subprocess(engine, threads, batch_size, net))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
        # One engine failing to run must not cost the rest of the table.
        row["error"] = str(error).strip().splitlines()[-1]
    return row


# --------------------------------------------------------------------------
# The run


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Repeats of one run: at least ``*_repeats`` timed calls and ``*_seconds`` of
    timing per engine, cut short after ``*_max_seconds`` (None: never)."""

    kernel_repeats: int
    kernel_seconds: float
    kernel_max_seconds: object
    model_repeats: int
    model_seconds: float
    model_max_seconds: object
    gemm_repeats: int
    gemm_seconds: float

    def time_kernel(self, fn):
        return best_time(fn, self.kernel_repeats, self.kernel_seconds, max_seconds=self.kernel_max_seconds)

    def time_model(self, fn):
        return best_time(fn, self.model_repeats, self.model_seconds, max_seconds=self.model_max_seconds)


_FULL = _Settings(kernel_repeats=5, kernel_seconds=0.3, kernel_max_seconds=None,
                  model_repeats=5, model_seconds=1.0, model_max_seconds=None,
                  gemm_repeats=10, gemm_seconds=1.0)
_QUICK = _Settings(kernel_repeats=3, kernel_seconds=0.0, kernel_max_seconds=0.3,
                   model_repeats=2, model_seconds=0.0, model_max_seconds=1.0,
                   gemm_repeats=5, gemm_seconds=0.5)


def _rates(row, flops, gemm, images):
    for engine in ENGINES:
        seconds = row.get(f"{engine}_s")
        row[f"{engine}_images_per_s"] = images / seconds if seconds else None
        row[f"{engine}_gflops"] = flops / seconds / 1e9 if seconds and flops else None
        row[f"{engine}_of_gemm"] = row[f"{engine}_gflops"] / gemm if row[f"{engine}_gflops"] else None
    fastconv = row.get("fastconv_s")
    for other in ("numpy", "torch"):
        seconds = row.get(f"{other}_s")
        row[f"speedup_vs_{other}"] = seconds / fastconv if seconds and fastconv else None
    return row


def _measure_engines(engines, make_call, time_call, agree):
    """Time every engine; the first results are checked against the 'numpy' engine's."""
    seconds, firsts = {}, {}
    for engine in engines:
        call, first = make_call(engine)
        firsts[engine] = first
        seconds[engine] = time_call(call)
    mismatched = [e for e in engines if e != "numpy" and not agree(firsts[e], firsts["numpy"])]
    return seconds, mismatched


def _kernel_row(op, shape, engines, settings, gemm):
    data = _kernel_inputs(shape, op)

    def make_call(engine):
        call = kernel_call(op, shape, engine, data)
        return call, call.result()

    seconds, mismatched = _measure_engines(
        engines, make_call,
        lambda call: settings.time_kernel(call.fn),
        outputs_agree,
    )
    row = {"section": "kernel", "op": op, "net": shape.net, "layers": shape.layer_names,
           "count": shape.count, "shape": shape.label, "batch": shape.x_shape[0],
           "flops": shape.flops(op), "mismatch": mismatched}
    row.update({f"{engine}_s": seconds.get(engine) for engine in ENGINES})
    return _rates(row, shape.flops(op), gemm, shape.x_shape[0])


def model_outputs_agree(actual, expected):
    """True when two ``ModelCall.first`` results match: logits, loss and every gradient.

    Gradients are compared in the L2 norm: where a ReLU's input sits at zero
    the engines may route a gradient differently, and batch norm amplifies
    the difference in the layers below.
    """
    return (outputs_agree(actual["logits"], expected["logits"], 1e-3)
            and outputs_agree(actual.get("loss", 0.0), expected.get("loss", 0.0), 1e-4)
            and outputs_agree(actual.get("gradients", {}), expected.get("gradients", {}), 2e-2, norm="l2"))


def _model_row(net, batch_size, training, engines, settings, gemm):
    def make_call(engine):
        call = model_call(net, batch_size, engine, training)
        return call, call.first

    seconds, mismatched = _measure_engines(
        engines, make_call,
        lambda call: settings.time_model(call.fn),
        model_outputs_agree,
    )
    flops = model_flops(net, batch_size, training)
    row = {"section": "model", "op": "train step" if training else "inference", "net": net,
           "layers": "", "count": 1, "shape": f"batch {batch_size}", "batch": batch_size,
           "flops": flops, "mismatch": mismatched}
    row.update({f"{engine}_s": seconds.get(engine) for engine in ENGINES})
    return _rates(row, flops, gemm, batch_size)


def _conv_total_row(net, kernel_rows, gemm):
    """fwd+bwd of every measured conv of ``net``, each shape weighted by its number of layers."""
    fwd = {r["layers"]: r for r in kernel_rows if r["net"] == net and r["op"] == "conv fwd"}
    bwd = {r["layers"]: r for r in kernel_rows if r["net"] == net and r["op"] == "conv bwd"}
    common = [key for key in fwd if key in bwd]
    if not common:
        return None
    n_layers = sum(fwd[key]["count"] for key in common)
    row = {"section": "kernel", "op": "conv fwd+bwd", "net": net,
           "layers": f"{n_layers} convs" if n_layers > 1 else common[0], "count": n_layers,
           "shape": "sum over layers", "batch": fwd[common[0]]["batch"],
           "flops": sum((fwd[k]["flops"] + bwd[k]["flops"]) * fwd[k]["count"] for k in common),
           "mismatch": sorted({e for k in common for e in fwd[k]["mismatch"] + bwd[k]["mismatch"]})}
    for engine in ENGINES:
        parts = [(fwd[k].get(f"{engine}_s"), bwd[k].get(f"{engine}_s"), fwd[k]["count"]) for k in common]
        row[f"{engine}_s"] = (sum((f + b) * c for f, b, c in parts)
                              if all(f and b for f, b, _ in parts) else None)
    return _rates(row, row["flops"], gemm, row["batch"])


def _profiled_steps(model):
    """[(row name, forward, backward(grad, need_dx), index of its first layer)]:
    a training step cut into the passes Sequential runs (fusion.plan), each
    fused pass, a ReLU and the batch norm after it, timed as one row."""
    return [("+".join(step.names), step.forward,
             lambda g, need_dx, step=step: step.backward(g, need_dx=need_dx), step.start)
            for step in fusion.plan(model)]


def _layer_profile(net, batch_size, repeats):
    """Best forward and backward time of each layer of a training step on the compiled backend."""
    backend.set_backend("compiled")
    model = _build(net)
    x, labels = _batch(net, batch_size)
    loss_fn = losses.CrossEntropyLoss()
    optimizer = optim.Adam(model, lr=1e-3)
    steps = _profiled_steps(model)
    samples = {name: ([], []) for name, *_ in steps}
    extra = {"loss": [], "optimizer": []}
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        optimizer.zero_grad()
        zeroing = time.perf_counter() - start
        out = x
        for name, forward, _, _ in steps:
            start = time.perf_counter()
            out = forward(out)
            samples[name][0].append(time.perf_counter() - start)
        start = time.perf_counter()
        loss_fn(out, labels)
        grad = loss_fn.backward()
        extra["loss"].append(time.perf_counter() - start)
        for name, _, backward, first in reversed(steps):
            start = time.perf_counter()
            grad = backward(grad, first > 0)
            samples[name][1].append(time.perf_counter() - start)
        start = time.perf_counter()
        optimizer.step()
        extra["optimizer"].append(time.perf_counter() - start + zeroing)
    rows = [{"section": "layers", "net": net, "batch": batch_size, "repeats": repeats, "layer": name,
             "forward_s": min(fwd[1:]), "backward_s": min(bwd[1:])}
            for name, (fwd, bwd) in samples.items()]
    rows += [{"section": "layers", "net": net, "batch": batch_size, "repeats": repeats, "layer": name,
              "forward_s": min(values[1:]), "backward_s": 0.0}
             for name, values in extra.items()]
    total = sum(r["forward_s"] + r["backward_s"] for r in rows)
    for r in rows:
        r["share"] = (r["forward_s"] + r["backward_s"]) / total
    return rows


def _plan(batch_size, quick, engines, threads):
    """The measurements of one run as (description, function returning a list of rows)."""
    tasks = []
    kernel_shapes = []
    for net in NETS:
        shapes = layer_shapes(net, batch_size)
        if quick:
            shapes = _most_informative(shapes)
        kernel_shapes += shapes
    for shape in kernel_shapes:
        ops = KERNEL_OPS[shape.kind]
        if quick and shape.kind == "conv":
            ops = ("conv fwd", "conv bwd")
        for op in ops:
            tasks.append((f"{op} {shape.net} {shape.layer_names}",
                          lambda ctx, op=op, shape=shape: [_kernel_row(op, shape, engines, ctx["settings"],
                                                                       ctx["gemm"])]))
    batches = [batch_size] if quick else sorted({min(32, batch_size), batch_size})
    for net in NETS:
        for batch in batches:
            for training in (True, False):
                tasks.append((f"{'train' if training else 'infer'} {net} batch {batch}",
                              lambda ctx, net=net, batch=batch, training=training:
                              [_model_row(net, batch, training, engines, ctx["settings"], ctx["gemm"])]))
    if threads > 1:
        scaling_engines = [e for e in engines if e != "numpy"] if quick else list(engines)
        scaling_nets = ["cifar6"] if quick else list(NETS)
        for net in scaling_nets:
            tasks.append((f"thread scaling {net}",
                          lambda ctx, net=net: _scaling_rows(net, batch_size, scaling_engines, threads, ctx)))
    from fastconv.bench import peers  # peers builds on this module

    if peers.available_peers():
        peer_batches = sorted({1, min(32, batch_size), batch_size})
        for net in NETS:
            tasks.append((f"inference peers {net}",
                          lambda ctx, net=net: peers.peer_inference_rows(
                              [net], peer_batches, threads, ctx["settings"].time_model)))
    memory_engines = [e for e in engines if e != "numpy"] if quick else list(engines)
    for engine in memory_engines:
        tasks.append((f"memory {engine}",
                      lambda ctx, engine=engine: [_memory_row(engine, threads, batch_size)]))
    if not quick:
        tasks.append(("layer profile cifar6",
                      lambda ctx: _layer_profile("cifar6", batch_size, repeats=5)))
    return tasks


def _most_informative(shapes):
    """Quick mode: the most expensive conv, and the largest max-pool and batch-norm input."""
    picked = []
    for kind in ("conv", "maxpool", "batchnorm"):
        of_kind = [s for s in shapes if s.kind == kind]
        if not of_kind:
            continue
        if kind == "conv":
            picked.append(max(of_kind, key=lambda s: s.flops("conv fwd")))
        else:
            picked.append(max(of_kind, key=lambda s: math.prod(s.x_shape)))
    return picked


def _scaling_rows(net, batch_size, engines, threads, ctx):
    """Training-step time at 1 thread and at ``threads``, alternating the two so
    that a change in the machine's load affects both alike."""
    repeats = max(ctx["settings"].model_repeats, 2)
    rows = []
    try:
        for engine in engines:
            call = model_call(net, batch_size, engine, training=True)
            best = {1: math.inf, threads: math.inf}
            for _ in range(repeats):
                for n in (1, threads):
                    _set_threads(n)
                    best[n] = min(best[n], best_time(call.fn, 1))
            rows.append({"section": "threads", "net": net, "batch": batch_size, "engine": engine,
                         "threads": threads, "one_thread_s": best[1], "n_threads_s": best[threads],
                         "speedup": best[1] / best[threads]})
    finally:
        _set_threads(threads)
    return rows


def run(threads=None, batch_size=128, quick=False, out=sys.stdout):
    """Measure everything (see the module docstring), print the table to ``out``
    (None: print nothing) and return its rows as a list of dicts.

    ``threads``: threads for fastconv's kernels, BLAS and PyTorch (None or -1:
    all cores). ``batch_size``: the batch of the kernel rows, of the memory
    and thread-scaling rows, and the largest batch of the model rows (which
    also run at batch 32, or ``batch_size`` if smaller). ``quick``: fewer repeats and only the most informative
    rows, to finish in under a minute.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (batch norm needs 2 samples), got {batch_size!r}")
    batch_size = int(batch_size)
    previous_backend = backend.get_backend()
    previous_threads = _runtime.get_num_threads()
    torch = _torch()
    previous_torch_threads = torch.get_num_threads() if torch is not None else None
    engines = [e for e in ENGINES if e != "torch" or torch is not None]
    threads = _set_threads(threads)
    settings = _QUICK if quick else _FULL
    try:
        info = machine_info(threads)
        info["gemm_gflops"] = gemm_rate(settings.gemm_repeats, min_seconds=settings.gemm_seconds)
        info["torch_gemm_gflops"] = None if torch is None else gemm_rate(
            settings.gemm_repeats, engine="torch", min_seconds=settings.gemm_seconds
        )
        info["mode"] = "quick" if quick else "full"
        info["batch_size"] = batch_size
        context = {"settings": settings, "gemm": info["gemm_gflops"]}
        rows = [info]
        tasks = _plan(batch_size, quick, engines, threads)
        with tqdm.tqdm(total=len(tasks), disable=None, file=sys.stderr, leave=False, unit="row") as bar:
            for description, task in tasks:
                bar.set_description(description)
                rows += task(context)
                bar.update()
        for net in NETS:
            total = _conv_total_row(net, [r for r in rows if r["section"] == "kernel"], info["gemm_gflops"])
            if total is not None:
                rows.append(total)
    finally:
        backend.set_backend(previous_backend)
        _runtime.set_num_threads(previous_threads)
        if torch is not None:
            torch.set_num_threads(previous_torch_threads)
    if out is not None:
        out.write(format_table(rows))
        out.flush()
    return rows


# --------------------------------------------------------------------------
# Formatting


def _ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def _ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def _percent(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def _columns(header, lines, right_from=0):
    widths = [max(len(str(line[i])) for line in [header] + lines) for i in range(len(header))]

    def fmt(line):
        cells = [str(cell).rjust(w) if i >= right_from else str(cell).ljust(w)
                 for i, (cell, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def _speed_lines(rows):
    header = ["op", "net", "layers", "input", "fastconv ms", "numpy ms", "torch ms",
              "img/s", "GFLOP/s", "of GEMM", "vs numpy", "vs torch"]
    lines = []
    for r in rows:
        op = r["op"] + (" *" if r["mismatch"] else "")
        lines.append([op, r["net"], r["layers"], r["shape"], _ms(r["fastconv_s"]), _ms(r["numpy_s"]),
                      _ms(r["torch_s"]), _num(r["fastconv_images_per_s"], ".0f"),
                      _num(r["fastconv_gflops"], ".1f"), _percent(r["fastconv_of_gemm"]),
                      _ratio(r["speedup_vs_numpy"]), _ratio(r["speedup_vs_torch"])])
    return _columns(header, lines, right_from=4)


def format_table(rows):
    """The rows returned by ``run`` as a plain-text report."""
    by_section = {}
    for r in rows:
        by_section.setdefault(r["section"], []).append(r)
    parts = []
    info = by_section.get("machine", [{}])[0]
    if info:
        parts.append(
            f"fastconv bench ({info.get('mode')}), {info.get('date')}: {info.get('cpu')}, "
            f"{info.get('cores')} cores, "
            f"{info.get('threads')} thread{'' if info.get('threads') == 1 else 's'}\n"
            f"BLAS {info.get('blas')}; OpenMP {'on' if info.get('openmp') else 'off'}; "
            f"python {info.get('python')}, numpy {info.get('numpy')}, torch {info.get('torch') or 'absent'}\n"
            f"float32 GEMM ({GEMM_SIZE}x{GEMM_SIZE}): numpy matmul {info.get('gemm_gflops', 0):.1f} GFLOP/s "
            f"(the 'of GEMM' reference)"
            + (f", torch.mm {info['torch_gemm_gflops']:.1f} GFLOP/s" if info.get("torch_gemm_gflops") else "")
        )
        load, cores = info.get("load_average"), info.get("cores") or 1
        if load is not None:
            parts[-1] += f"\nLoad average before the run: {load:.2f}"
            if load > 0.5 * cores:
                parts[-1] += " (other processes compete for the cores: expect slow, noisy times)"
    note = ("Times: best of several runs. img/s, GFLOP/s (direct-convolution FLOPs) and 'of GEMM' "
            "are fastconv's;\n'vs numpy' / 'vs torch' = their time / fastconv's time "
            "(above 1: fastconv is faster).")
    if "model" in by_section:
        parts.append("Training step (forward, cross-entropy, backward, Adam) and inference (eval forward)\n"
                     + _speed_lines(by_section["model"]))
    if "peers" in by_section:
        rs = by_section["peers"]
        names = [key[:-2] for key in rs[0] if key.endswith("_s") and key != "fastconv_s"]
        header = ["net", "batch", "fastconv ms"] + [f"{name} ms" for name in names] + [
            f"vs {name}" for name in names]
        lines = [[r["net"], r["batch"], _ms(r["fastconv_s"])] + [_ms(r[f"{name}_s"]) for name in names]
                 + [_ratio(r[f"vs_{name}"]) for name in names] for r in rs]
        parts.append("Inference (float32) against the inference engines, the PyTorch twin exported to ONNX\n"
                     "('vs X' = X's time / fastconv's time; OpenVINO with INFERENCE_PRECISION_HINT=f32)\n"
                     + _columns(header, lines, right_from=2))
    if "kernel" in by_section:
        batch = by_section["kernel"][0]["batch"]
        parts.append(f"Kernels, batch {batch} (conv fwd+bwd: every conv layer of the net, summed)\n"
                     + _speed_lines(by_section["kernel"]))
    if info.get("threads") == 1:
        parts.append("Thread scaling of the training step: not measured (the run used 1 thread)")
    if "threads" in by_section:
        rs = by_section["threads"]
        header = ["net", "batch", "engine", "1 thread ms", f"{rs[0]['threads']} threads ms", "speed-up"]
        lines = [[r["net"], r["batch"], r["engine"], _ms(r["one_thread_s"]), _ms(r["n_threads_s"]),
                  _ratio(r["speedup"])] for r in rs]
        parts.append("Thread scaling of the training step\n" + _columns(header, lines, right_from=3))
    if "memory" in by_section:
        rs = by_section["memory"]
        header = ["engine", "net", "batch", "RSS before MiB", "peak RSS MiB", "step adds MiB",
                  "numpy peak MiB"]
        lines = [[r["engine"], r["net"], r["batch"], _num(r["rss_before_mib"], ".0f"),
                  _num(r["peak_rss_mib"], ".0f"), _num(r["step_rss_increase_mib"], ".0f")
                  + ("" if r["hwm_reset"] else " (upper bound)"), _num(r["traced_peak_mib"], ".0f")]
                 if "error" not in r else [r["engine"], r["net"], r["batch"]] + ["failed"] * 4
                 for r in rs]
        failures = "".join(f"\n{r['engine']} failed: {r['error']}" for r in rs if "error" in r)
        parts.append("Peak memory of the first training step, each engine in a fresh process\n"
                     "(step adds = RSS high-water mark during the step - RSS before it; "
                     "numpy peak = tracemalloc peak of NumPy buffers)\n"
                     + _columns(header, lines, right_from=3) + failures)
    if "layers" in by_section:
        rs = by_section["layers"]
        header = ["layer", "forward ms", "backward ms", "share"]
        lines = [[r["layer"], _ms(r["forward_s"]), _ms(r["backward_s"]), _percent(r["share"])] for r in rs]
        total = sum(r["forward_s"] + r["backward_s"] for r in rs)
        parts.append(f"Where a training step goes: {rs[0]['net']}, batch {rs[0]['batch']}, compiled backend, "
                     f"best of {rs[0]['repeats']} per layer (sum {_ms(total)} ms)\n"
                     + _columns(header, lines, right_from=1))
    mismatches = sorted({e for r in rows for e in r.get("mismatch", ())})
    footer = [note]
    if mismatches:
        footer.append(f"* outputs of {', '.join(mismatches)} differ from the NumPy backend's (a peer's: from "
                      "fastconv's) beyond float32 tolerance: check the kernels before trusting these times.")
    return "\n\n".join(parts + ["\n".join(footer)]) + "\n"
