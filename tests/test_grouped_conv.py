"""Grouped and depthwise Conv2d, and ReLU6, as layers: forward and every
gradient against PyTorch (float32 and float64) and against central
differences (float64), the two backends against each other, the layer API
(need_dx, param_grads, eval, infer, config, state_dict), save and load, and
the fused passes of a Sequential.

The kernels themselves are compared with their NumPy twin in
tests/test_kernels.py and fuzzed in tests/test_fuzz.py.
"""
import copy

import numpy as np
import pytest
from test_layers import check_gradients

import fastconv
from fastconv.nn import fusion, layers, losses
from fastconv.nn.model import Sequential

# (in_channels, out_channels, kernel_size, stride, padding, groups, input shape N, H, W)
CASES = {
    "one group": (6, 6, 3, 1, 1, 1, (2, 7, 9)),
    "two groups, stride 2, no padding, one image": (6, 4, 3, 2, 0, 2, (1, 9, 8)),
    "two groups, 2x3, strides (2, 1), padding 2": (4, 8, (2, 3), (2, 1), 2, 2, (3, 5, 6)),
    "four groups, 1x1 stride 2": (8, 8, 1, 2, 0, 4, (2, 9, 9)),
    "depthwise 3x3, two filters a channel": (6, 12, 3, 1, 1, 6, (2, 11, 7)),
    "depthwise 3x3 stride 2, one image, odd plane": (5, 5, 3, 2, 1, 5, (1, 13, 13)),
    "depthwise 5x5, padding 2": (3, 3, 5, 1, 2, 3, (1, 6, 5)),
    "depthwise, MobileNetV2's 14x14 layer, narrower": (32, 32, 3, 1, 1, 32, (2, 14, 14)),
}

# float32: sums of a few hundred terms rounded to float32, relative to the
# largest value; float64: the same at 1e-12 (PyTorch sums in another order).
PRECISIONS = {"float32": (np.float32, 2e-5), "float64": (np.float64, 1e-12)}


def relative_to_max(ours, theirs):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


def make_conv(case, dtype, bias=True, seed=0):
    c, f, kernel, stride, padding, groups, _ = CASES[case]
    return layers.Conv2d(c, f, kernel, stride, padding, bias=bias, dtype=dtype, seed=seed, groups=groups)


def input_of(case, dtype, seed=1):
    c, *_, (n, h, w) = CASES[case]
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)


@pytest.mark.torch
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("case", CASES)
def test_conv2d_forward_and_gradients_match_torch(backend, torch, case, bias, precision):
    dtype, tol = PRECISIONS[precision]
    layer = make_conv(case, dtype, bias)
    x = input_of(case, dtype)
    y = layer(x)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    c, f, kernel, stride, padding, groups, _ = CASES[case]
    twin = torch.nn.Conv2d(c, f, kernel, stride, padding, groups=groups, bias=bias,
                           dtype=torch.float32 if dtype == np.float32 else torch.float64)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.params["weight"]))
        if bias:
            twin.bias.copy_(torch.from_numpy(layer.params["bias"]))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(dy))
    errors = {"y": relative_to_max(y, ty), "dx": relative_to_max(dx, tx.grad),
              "dweight": relative_to_max(layer.grads["weight"], twin.weight.grad)}
    if bias:
        errors["dbias"] = relative_to_max(layer.grads["bias"], twin.bias.grad)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, (worst, errors[worst])


# Tiny shapes, every gradient element by central differences.
GRADIENT_CASES = [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, groups=2),
    dict(in_channels=3, out_channels=6, kernel_size=3, stride=2, padding=1, groups=3),
    dict(in_channels=3, out_channels=3, kernel_size=(3, 2), stride=(1, 2), padding=(2, 0), groups=3),
    dict(in_channels=4, out_channels=4, kernel_size=1, stride=2, padding=0, groups=4, bias=False),
    dict(in_channels=6, out_channels=3, kernel_size=2, stride=1, padding=0, groups=3),
]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=str)
def test_conv2d_gradients_match_central_differences(backend, case):
    layer = layers.Conv2d(**case, dtype=np.float64, seed=3)
    x = np.random.default_rng(4).standard_normal((2, case["in_channels"], 5, 6))
    check_gradients(layer, x)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_backends_agree(case, dtype):
    # The compiled kernels (the depthwise kernel, or the matrix kernel once per
    # group) against the NumPy twin, through the layer.
    results = {}
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for name in ("numpy", "compiled"):
        fastconv.set_backend(name)
        try:
            layer = make_conv(case, dtype)
            y = layer(input_of(case, dtype))
            dx = layer.backward(np.cos(y))
            results[name] = (y, dx, layer.grads["weight"], layer.grads["bias"])
        finally:
            fastconv.set_backend("compiled")
    for ours, twin in zip(results["compiled"], results["numpy"]):
        scale = max(np.abs(twin).max(), 1.0)
        np.testing.assert_allclose(ours, twin, rtol=tol, atol=tol * scale)


def test_need_dx_and_param_grads(backend):
    layer = make_conv("depthwise 3x3, two filters a channel", np.float64)
    x = input_of("depthwise 3x3, two filters a channel", np.float64)
    dy = np.cos(layer(x))
    dx = layer.backward(dy)
    full = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    assert layer.backward(dy, need_dx=False) is None
    for key in full:
        np.testing.assert_array_equal(layer.grads[key], full[key])
    layer.zero_grad()
    np.testing.assert_array_equal(layer.backward(dy, param_grads=False), dx)
    assert not any(g.any() for g in layer.grads.values())


def test_eval_and_infer_give_the_training_output(backend):
    case = "two groups, 2x3, strides (2, 1), padding 2"
    layer = make_conv(case, np.float32)
    x = input_of(case, np.float32)
    y = layer(x)
    np.testing.assert_array_equal(layer.eval()(x), y)
    np.testing.assert_array_equal(layer.infer(x), y)


def test_configuration_weight_shape_and_initialization():
    conv = layers.Conv2d(32, 64, 3, padding=1, groups=32, seed=0)
    assert conv.params["weight"].shape == (64, 1, 3, 3)
    assert conv.config()["groups"] == 32
    assert "groups=32" in repr(conv)
    rebuilt = layers.Conv2d(**conv.config())
    assert rebuilt.params["weight"].shape == (64, 1, 3, 3) and rebuilt.groups == 32
    # PyTorch's bound, fan_in = C/groups*KH*KW: 9 here.
    assert 0.95 / 3 < np.abs(conv.params["weight"]).max() <= 1 / 3
    assert layers.Conv2d(3, 4, 3).config()["groups"] == 1
    assert layers.Conv2d(4, 6, 3, groups=2).output_shape((1, 4, 8, 8)) == (1, 6, 6, 6)
    with pytest.raises(ValueError, match="4 channels, got 6"):
        layers.Conv2d(4, 6, 3, groups=2)(np.zeros((1, 6, 8, 8), np.float32))


def test_relu6_layer(backend):
    x = np.array([[-2.0, -0.0, 0.0, 0.5, 5.999, 6.0, 6.5, np.inf, np.nan]])
    layer = layers.ReLU6()
    y = layer(x)
    np.testing.assert_array_equal(y, [[0.0, 0.0, 0.0, 0.5, 5.999, 6.0, 6.0, 6.0, np.nan]])
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx, [[0, 0, 0, 1, 1, 0, 0, 0, 0]])
    assert layers.LAYER_TYPES["ReLU6"] is layers.ReLU6 and layer.config() == {}


@pytest.mark.torch
def test_relu6_matches_torch(backend, torch):
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((3, 4, 5, 6)) * 5 + 3).astype(dtype)
        x.flat[::7] = 6.0
        x.flat[3::11] = 0.0
        layer = layers.ReLU6()
        y = layer(x)
        dy = rng.standard_normal(x.shape).astype(dtype)
        dx = layer.backward(dy)
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        ty = torch.nn.functional.relu6(tx)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_array_equal(y, ty.detach().numpy())
        np.testing.assert_array_equal(dx, tx.grad.numpy())


def inverted_residual(dtype=np.float32, seed=0):
    """MobileNetV2's inverted residual block (expand 1x1, depthwise 3x3 stride
    2, project 1x1), then ResNeXt's grouped 3x3 and a classifier."""
    return Sequential(
        layers.Conv2d(4, 24, 1, bias=False, dtype=dtype, seed=seed),
        layers.BatchNorm2d(24, dtype=dtype),
        layers.ReLU6(),
        layers.Conv2d(24, 24, 3, stride=2, padding=1, bias=False, dtype=dtype, seed=seed + 1, groups=24),
        layers.BatchNorm2d(24, dtype=dtype),
        layers.ReLU6(),
        layers.Conv2d(24, 8, 1, bias=False, dtype=dtype, seed=seed + 2),
        layers.BatchNorm2d(8, dtype=dtype),
        layers.Conv2d(8, 8, 3, padding=1, dtype=dtype, seed=seed + 3, groups=4),
        layers.ReLU(),
        layers.BatchNorm2d(8, dtype=dtype),
        layers.GlobalAvgPool2d(),
        layers.Linear(8, 5, dtype=dtype, seed=seed + 4),
    )


def torch_inverted_residual(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(4, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 24, 3, stride=2, padding=1, bias=False, groups=24), nn.BatchNorm2d(24), nn.ReLU6(),
        nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(), nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_mobilenet_block_matches_torch(backend, torch, copy_to_torch, mode, precision):
    dtype, tol = PRECISIONS[precision]
    model = inverted_residual(dtype)
    # Batch norms that send a share of their outputs past 6, where ReLU6
    # clamps: with none, the next batch norm would undo any scale of the
    # ones before it, and their weights' gradients would be all cancellation.
    for name in ("bn1", "bn2"):
        model.layer(name).params["weight"][...] = 4.0
    twin = torch_inverted_residual(torch).to(torch.float32 if dtype == np.float32 else torch.float64)
    keys = copy_to_torch(model, twin)
    assert keys["conv2.weight"] == "3.weight" and model.state_dict()["conv2.weight"].shape == (24, 1, 3, 3)
    model.train(mode == "train")
    twin.train(mode == "train")
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 4, 15, 15)) * 3).astype(dtype)
    labels = rng.integers(0, 5, 4)
    loss = losses.CrossEntropyLoss()
    logits = model.forward(x)
    value = loss(logits, labels)
    model.zero_grad()
    dx = model.backward(loss.backward())
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    t_logits = twin(tx)
    t_value = torch.nn.CrossEntropyLoss()(t_logits, torch.from_numpy(labels))
    t_value.backward()
    assert value == pytest.approx(t_value.item(), rel=tol)
    errors = {"logits": relative_to_max(logits, t_logits), "dx": relative_to_max(dx, tx.grad)}
    t_params = dict(twin.named_parameters())
    for key, grad in model.gradients().items():
        errors[key] = relative_to_max(grad, t_params[keys[key]].grad)
    # Four batch norms in training mode amplify the rounding of the sums
    # before them: the tolerances of tests/test_torch_parity.py's networks.
    limit = 1e-4 if dtype == np.float32 else 1e-10
    worst = max(errors, key=errors.get)
    assert errors[worst] < limit, (worst, errors[worst])
    clamped = model.forward(x, until="relu6_2")
    assert (clamped == 6).any() and (clamped == 0).any()


def test_fusion_leaves_grouped_convolutions_and_relu6_alone():
    model = inverted_residual(np.float64).train()
    passes = fusion.plan(model)
    fused = [p.names for p in passes if p.fusion is not None]
    # Only the ReLU before a batch norm fuses; ReLU6 (it clamps at 6 too)
    # and the grouped convolutions run by their own methods.
    assert fused == [("relu1", "bn4")]
    x = np.random.default_rng(7).standard_normal((3, 4, 9, 9))
    y = model.forward(x)
    dx = model.backward(np.cos(y))
    grads = {k: g.copy() for k, g in model.gradients().items()}
    # The same passes one layer at a time: a forward hook turns fusion off.
    unfused = copy.deepcopy(model)
    unfused.zero_grad()
    with unfused.register_forward_hook(lambda *args: None):
        y_alone = unfused.forward(x)
        dx_alone = unfused.backward(np.cos(y_alone))
    np.testing.assert_allclose(y, y_alone, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_alone, rtol=1e-12, atol=1e-12)
    for key, grad in unfused.gradients().items():
        np.testing.assert_allclose(grads[key], grad, rtol=1e-10, atol=1e-12, err_msg=key)


def test_save_and_load_round_trip(tmp_path):
    model = inverted_residual(np.float32, seed=8)
    x = np.random.default_rng(9).standard_normal((2, 4, 12, 12)).astype(np.float32)
    model.train()
    model.forward(x)  # running statistics away from their defaults
    model.eval()
    expected = model.forward(x)
    path = fastconv.save(model, tmp_path / "block.npz")
    loaded = fastconv.load(path)
    assert [(n, type(layer), layer.config()) for n, layer in loaded.named_layers()] == \
        [(n, type(layer), layer.config()) for n, layer in model.named_layers()]
    assert loaded.layer("conv2").groups == 24 and loaded.layer("conv4").groups == 4
    assert isinstance(loaded.layer("relu6_1"), layers.ReLU6)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    np.testing.assert_array_equal(loaded.eval().forward(x), expected)
