"""Attribution methods of fastconv.analysis: the rules they implement, their
defining properties, and agreement with Captum on the same weights."""

import numpy as np
import pytest

import fastconv.analysis as fa
from fastconv.nn import layers as L
from fastconv.nn import losses
from fastconv.nn.model import Sequential

BAR_SIZE = 24


pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")


def bars(n, seed):
    """Noisy images with one bar at a random place: class 0 horizontal (2x8), class 1 vertical (8x2).

    Returns images (n, 1, 24, 24), labels and the bar boxes (top, left, bottom, right).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.1, (n, 1, BAR_SIZE, BAR_SIZE)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = np.empty((n, 4), dtype=np.int64)
    for i in range(n):
        h, w = (2, 8) if y[i] == 0 else (8, 2)
        top = rng.integers(0, BAR_SIZE - h + 1)
        left = rng.integers(0, BAR_SIZE - w + 1)
        x[i, 0, top:top + h, left:left + w] += 1.0
        boxes[i] = (top, left, top + h, left + w)
    return x, y, boxes


def bar_net(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential([
        L.Conv2d(1, 6, 3, padding=1, seed=rng), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(6, 12, 3, padding=1, seed=rng), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(12, 12, 3, padding=1, seed=rng), L.ReLU(),
        L.GlobalAvgPool2d(), L.Linear(12, 2, seed=rng),
    ])


@pytest.fixture(scope="module")
def bar_model(fit_briefly):
    """A small all-convolutional net trained to tell horizontal from vertical bars."""
    x, y, _ = bars(512, seed=0)
    model = fit_briefly(bar_net(), x, y, steps=150, lr=3e-3)
    x_test, y_test, _ = bars(64, seed=5)
    accuracy = np.mean(model.predict(x_test).argmax(axis=1) == y_test)
    assert accuracy > 0.9, f"the bar model did not learn (accuracy {accuracy})"
    return model


def rgb_net(seed=3, dtype=np.float32):
    """An untrained RGB net with batch norm, max-pooling and a linear head."""
    rng = np.random.default_rng(seed)
    model = Sequential([
        L.Conv2d(3, 5, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.BatchNorm2d(5, dtype=dtype),
        L.MaxPool2d(2), L.Conv2d(5, 6, 3, seed=rng, dtype=dtype), L.ReLU(),
        L.Flatten(), L.Linear(6 * 4 * 4, 8, seed=rng, dtype=dtype), L.ReLU(), L.Linear(8, 4, seed=rng, dtype=dtype),
    ])
    for _, layer in model.named_layers():
        if isinstance(layer, L.BatchNorm2d):
            layer.buffers["running_mean"][...] = rng.normal(0, 0.2, 5)
            layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 5)
            layer.params["weight"][...] = rng.uniform(0.5, 1.5, 5)
            layer.params["bias"][...] = rng.normal(0, 0.1, 5)
    return model.eval()


# -- ReLU backward rules ------------------------------------------------------

def one_relu_model(sign_mix, seed=0):
    """conv -> ReLU -> flatten -> linear, float64; all weights positive unless sign_mix."""
    rng = np.random.default_rng(seed)
    conv = L.Conv2d(2, 3, 3, dtype=np.float64)
    fc = L.Linear(3 * 4 * 4, 5, dtype=np.float64)
    if sign_mix:
        conv.params["weight"][...] = rng.normal(size=conv.params["weight"].shape)
        conv.params["bias"][...] = rng.normal(size=3)
        fc.params["weight"][...] = rng.normal(size=fc.params["weight"].shape)
    else:
        conv.params["weight"][...] = rng.uniform(0.1, 1.0, conv.params["weight"].shape)
        conv.params["bias"][...] = rng.uniform(0.1, 1.0, 3)
        fc.params["weight"][...] = rng.uniform(0.1, 1.0, fc.params["weight"].shape)
    return Sequential([("conv", conv), ("relu", L.ReLU()), ("flat", L.Flatten()), ("fc", fc)]).eval()


def test_gradient_deconvnet_guided_agree_with_one_relu_positive_input_and_gradient():
    model = one_relu_model(sign_mix=False)
    x = np.random.default_rng(1).uniform(0.1, 1.0, (3, 2, 6, 6))
    target = [0, 2, 4]
    plain = fa.Gradient(model).attribute(x, target)
    assert np.all(plain > 0)
    np.testing.assert_allclose(fa.Deconvnet(model).attribute(x, target), plain, rtol=1e-12)
    np.testing.assert_allclose(fa.GuidedBackprop(model).attribute(x, target), plain, rtol=1e-12)
    np.testing.assert_allclose(fa.Saliency(model).attribute(x, target), np.abs(plain), rtol=1e-12)


def test_relu_rules_differ_exactly_as_defined():
    """With mixed signs, each method is the conv's backward of its own ReLU rule."""
    model = one_relu_model(sign_mix=True)
    x = np.random.default_rng(2).normal(size=(4, 2, 6, 6))
    target = [0, 1, 2, 3]
    pre_relu = model.forward(x, until="conv")
    logits = model.forward(x)
    seed = np.zeros_like(logits)
    seed[np.arange(4), target] = 1
    upstream = (seed @ model.layer("fc").params["weight"]).reshape(pre_relu.shape)
    assert np.any(upstream < 0) and np.any(pre_relu < 0)

    def through_conv(grad_at_conv_output):
        model.forward(x)
        return model.backward(grad_at_conv_output, start="conv")

    expected = {
        "gradient": through_conv(upstream * (pre_relu > 0)),
        "deconvnet": through_conv(np.maximum(upstream, 0)),
        "guided": through_conv(np.maximum(upstream, 0) * (pre_relu > 0)),
    }
    got = {
        "gradient": fa.Gradient(model).attribute(x, target),
        "deconvnet": fa.Deconvnet(model).attribute(x, target),
        "guided": fa.GuidedBackprop(model).attribute(x, target),
    }
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-12, err_msg=name)
    for a, b in (("gradient", "deconvnet"), ("gradient", "guided"), ("deconvnet", "guided")):
        assert not np.allclose(got[a], got[b]), f"{a} and {b} should differ here"


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_relu_override_is_removed_even_after_an_error(rule):
    model = one_relu_model(sign_mix=True)
    x = np.random.default_rng(2).normal(size=(2, 2, 6, 6))
    plain = fa.Gradient(model).attribute(x, 1)
    with pytest.raises(RuntimeError, match="inside"):
        with fa.relu_backward_rule(model, rule):
            out = model.forward(x)
            seed = np.zeros_like(out)
            seed[:, 1] = 1
            changed = model.backward(seed, param_grads=False)
            assert not np.allclose(changed, plain)
            raise RuntimeError("inside")
    # The hooks are gone: the same call gives the plain gradient again, and
    # the ReLU's methods were never replaced on the instance.
    relu = model.layer("relu")
    assert not relu._has_backward_hooks()
    assert "backward" not in relu.__dict__ and "forward" not in relu.__dict__
    np.testing.assert_array_equal(fa.Gradient(model).attribute(x, 1), plain)
    with pytest.raises(ValueError, match="'sideways'"):
        with fa.relu_backward_rule(model, "sideways"):
            pass


def test_unit_gradient_at_a_hidden_layer_matches_finite_differences():
    model = rgb_net(dtype=np.float64)
    x = np.random.default_rng(4).normal(size=(1, 3, 12, 12))
    unit = (2, 1, 3)
    grad = fa.Gradient(model, layer="conv2").attribute(x, unit)
    rng = np.random.default_rng(5)
    for _ in range(5):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        eps = 1e-6
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (model.forward(plus, until="conv2")[(0,) + unit]
                   - model.forward(minus, until="conv2")[(0,) + unit]) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8)


# -- defining properties --------------------------------------------------------

@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_completeness(bar_model, method):
    x, y, _ = bars(6, seed=9)
    ig = fa.IntegratedGradients(bar_model)
    baseline = np.full_like(x, -0.1)
    attributions, delta = ig.attribute(x, y.tolist(), baseline=baseline, steps=64, method=method,
                                       return_convergence_delta=True)
    out = bar_model.predict(x).astype(np.float64)[np.arange(6), y]
    base = bar_model.predict(baseline).astype(np.float64)[np.arange(6), y]
    total = attributions.reshape(6, -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(total, out - base, rtol=0.01)
    np.testing.assert_allclose(delta, total - (out - base), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer", ["conv3", None])
def test_gradcam_on_last_conv_highlights_the_object(bar_model, layer):
    x, y, boxes = bars(48, seed=7)
    gradcam = fa.GradCAM(bar_model, layer)
    assert gradcam.conv_layer == (layer or "relu3")
    cam = gradcam.attribute(x, y.tolist())
    assert cam.shape == (48, 1, BAR_SIZE, BAR_SIZE)
    assert np.all(cam >= 0)
    hits = 0
    for i in range(len(x)):
        row, col = np.unravel_index(np.argmax(cam[i, 0]), cam[i, 0].shape)
        top, left, bottom, right = boxes[i]
        hits += (top - 2 <= row < bottom + 2) and (left - 2 <= col < right + 2)
    assert hits / len(x) >= 0.8
    mass_inside = []
    for i in range(len(x)):
        top, left, bottom, right = boxes[i]
        mask = np.zeros((BAR_SIZE, BAR_SIZE), bool)
        mask[max(top - 2, 0):bottom + 2, max(left - 2, 0):right + 2] = True
        mass_inside.append(cam[i, 0][mask].mean() / max(cam[i, 0][~mask].mean(), 1e-12))
    assert np.median(mass_inside) > 3


def test_smoothgrad_averages_the_method_over_noisy_copies(bar_model):
    x, y, _ = bars(2, seed=11)
    smooth = fa.SmoothGrad(bar_model).attribute(x, y.tolist(), samples=6, noise_level=0.2, seed=3)
    rng = np.random.default_rng(3)
    span = (x.reshape(2, -1).max(axis=1) - x.reshape(2, -1).min(axis=1)).reshape(2, 1, 1, 1)
    noise = rng.standard_normal((6,) + x.shape).astype(np.float32) * (0.2 * span).astype(np.float32)
    saliency = fa.Saliency(bar_model)
    expected = np.mean([saliency.attribute(x + noise[k], y.tolist()) for k in range(6)], axis=0)
    np.testing.assert_allclose(smooth, expected, rtol=1e-5, atol=1e-7)
    no_noise = fa.SmoothGrad(bar_model).attribute(x, y.tolist(), samples=3, noise_level=0.0)
    np.testing.assert_allclose(no_noise, saliency.attribute(x, y.tolist()), rtol=1e-6)


def test_guided_gradcam_is_guided_backprop_times_upsampled_cam(bar_model):
    x, y, _ = bars(3, seed=12)
    layer = "conv2"
    cam = fa.GradCAM(bar_model, layer).layer_map(x, y.tolist())
    assert cam.shape == (3, 1, 12, 12)
    upsampled = np.repeat(np.repeat(cam, 2, axis=2), 2, axis=3)
    guided = fa.GuidedBackprop(bar_model).attribute(x, y.tolist())
    np.testing.assert_allclose(fa.GuidedGradCAM(bar_model, layer).attribute(x, y.tolist()),
                               guided * upsampled, rtol=1e-6)


def test_attribution_leaves_the_model_as_it_was():
    """Mode, parameter gradients of a model in mid-training, and the ReLU layers."""
    model = rgb_net()
    model.train()
    x = np.random.default_rng(0).normal(size=(2, 3, 12, 12)).astype(np.float32)
    loss = losses.CrossEntropyLoss()
    loss(model.forward(x), np.array([0, 1]))
    model.backward(loss.backward())
    before = {k: v.copy() for k, v in model.gradients().items()}
    fa.GuidedBackprop(model).attribute(x, 1)
    fa.GradCAM(model).attribute(x, 2)
    assert model.training
    assert all("backward" not in layer.__dict__ for _, layer in model.named_layers())
    for key, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, before[key], err_msg=key)


# -- bad input -------------------------------------------------------------------------

def test_bad_input_is_a_clear_error(bar_model):
    x, _, _ = bars(2, seed=0)
    with pytest.raises(ValueError, match="'conv9'"):
        fa.Saliency(bar_model, layer="conv9")
    with pytest.raises(ValueError, match="'conv9'"):
        fa.GradCAM(bar_model, "conv9")
    with pytest.raises(ValueError, match="target 2 is out of range"):
        fa.Saliency(bar_model).attribute(x, 2)
    with pytest.raises(ValueError, match="target -1 is out of range"):
        fa.IntegratedGradients(bar_model).attribute(x, [0, -1])
    with pytest.raises(ValueError, match=r"target \(0, 20, 0\) is out of range"):
        fa.Gradient(bar_model, layer="conv2").attribute(x, (0, 20, 0))
    with pytest.raises(ValueError, match="3 channels"):
        fa.Saliency(bar_model).attribute(np.zeros((1, 3, BAR_SIZE, BAR_SIZE), np.float32), 0)
    with pytest.raises(TypeError, match="float64"):
        fa.Saliency(bar_model).attribute(x.astype(np.float64), 0)
    with pytest.raises(ValueError, match=r"\(2, 1, 24\)"):
        fa.Saliency(bar_model).attribute(x[:, :, 0], 0)
    with pytest.raises(ValueError, match="3 entries"):
        fa.Saliency(bar_model).attribute(x, [0, 1, 1])
    with pytest.raises(ValueError, match="'sideways'"):
        fa.IntegratedGradients(bar_model).attribute(x, 0, method="sideways")
    wrong_size = rgb_net()
    with pytest.raises(ValueError, match=r"\(1, 3, 10, 10\)"):
        fa.Saliency(wrong_size).attribute(np.zeros((1, 3, 10, 10), np.float32), 0)


# -- agreement with Captum ----------------------------------------------------------------

def torch_twin(model):
    """The same network in PyTorch (float64), weights copied through state_dict."""
    torch = pytest.importorskip("torch")
    from collections import OrderedDict

    nn = torch.nn
    modules = []
    for name, layer in model.named_layers():
        cfg = layer.config()
        if isinstance(layer, L.Conv2d):
            module = nn.Conv2d(cfg["in_channels"], cfg["out_channels"], tuple(cfg["kernel_size"]),
                               tuple(cfg["stride"]), tuple(cfg["padding"]), bias=cfg["bias"])
        elif isinstance(layer, L.ReLU):
            module = nn.ReLU()
        elif isinstance(layer, L.MaxPool2d):
            module = nn.MaxPool2d(tuple(cfg["kernel_size"]), tuple(cfg["stride"]), tuple(cfg["padding"]))
        elif isinstance(layer, L.BatchNorm2d):
            module = nn.BatchNorm2d(cfg["num_features"], eps=cfg["eps"], momentum=cfg["momentum"])
        elif isinstance(layer, L.GlobalAvgPool2d):
            module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        elif isinstance(layer, L.Flatten):
            module = nn.Flatten()
        elif isinstance(layer, L.Linear):
            module = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg["bias"])
        else:
            raise AssertionError(f"no twin for {layer!r}")
        modules.append((name, module))
    twin = nn.Sequential(OrderedDict(modules)).double().eval()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in model.state_dict().items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return twin


def relative_error(ours, theirs):
    theirs = np.asarray(theirs, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - theirs)) / max(np.max(np.abs(theirs)), 1e-300))


@pytest.fixture(scope="module")
def captum_cases(bar_model):
    """(our float64 model, its torch twin, inputs, targets, Grad-CAM layer) for a
    trained grey net with global pooling and an untrained RGB net with batch norm."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    pytest.importorskip("captum", reason="Captum is not installed (pip install captum)")
    # One thread: small ops are far slower when torch's pool competes for a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    grey = bar_model.astype(np.float64).eval()
    x_grey, y_grey, _ = bars(3, seed=21)
    rgb = rgb_net(dtype=np.float64)
    x_rgb = np.random.default_rng(22).normal(size=(3, 3, 12, 12))
    yield [
        (grey, torch_twin(grey), x_grey.astype(np.float64), y_grey.tolist(), "conv3"),
        (rgb, torch_twin(rgb), x_rgb, [0, 3, 1], "conv2"),
    ]
    torch.set_num_threads(threads)


CASE_IDS = ["grey-gap", "rgb-bn"]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_gradient_methods_match_captum(captum_cases, case):
    import torch
    from captum import attr

    model, twin, x, target, _ = captum_cases[case]
    xt = torch.from_numpy(x)
    pairs = [
        (fa.Saliency(model).attribute(x, target), attr.Saliency(twin).attribute(xt, target=target)),
        (fa.GuidedBackprop(model).attribute(x, target), attr.GuidedBackprop(twin).attribute(xt, target=target)),
        (fa.Deconvnet(model).attribute(x, target), attr.Deconvolution(twin).attribute(xt, target=target)),
    ]
    for name, (ours, theirs) in zip(("saliency", "guided backprop", "deconvnet"), pairs):
        assert relative_error(ours, theirs.detach().numpy()) < 1e-4, name


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_integrated_gradients_match_captum(captum_cases, case):
    import torch
    from captum import attr

    model, twin, x, target, _ = captum_cases[case]
    baseline = np.full_like(x, 0.05)
    ours = fa.IntegratedGradients(model).attribute(x, target, baseline=baseline, steps=20, method="gausslegendre")
    theirs = attr.IntegratedGradients(twin).attribute(
        torch.from_numpy(x), baselines=torch.from_numpy(baseline), target=target, n_steps=20, method="gausslegendre")
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    # Not riemann_trapezoid: Captum weights its n points 1/n (halved at the
    # ends), which sum to (n - 1)/n; ours are the trapezoid rule's 1/(n - 1).
    for method in ("riemann_left", "riemann_middle", "riemann_right"):
        ours = fa.IntegratedGradients(model).attribute(x, target, steps=15, method=method)
        theirs = attr.IntegratedGradients(twin).attribute(torch.from_numpy(x), target=target, n_steps=15, method=method)
        assert relative_error(ours, theirs.detach().numpy()) < 1e-4, method


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_gradcam_and_guided_gradcam_match_captum(captum_cases, case):
    import torch
    from captum import attr

    model, twin, x, target, layer = captum_cases[case]
    xt = torch.from_numpy(x)
    module = getattr(twin, layer)
    for relu in (False, True):
        ours = fa.GradCAM(model, layer).layer_map(x, target, relu=relu)
        theirs = attr.LayerGradCam(twin, module).attribute(xt, target=target, relu_attributions=relu)
        assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    ours = fa.GuidedGradCAM(model, layer).attribute(x, target)
    theirs = attr.GuidedGradCam(twin, module).attribute(xt, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", [0, 1], ids=CASE_IDS)
def test_occlusion_matches_captum(captum_cases, case):
    import torch
    from captum import attr

    model, twin, x, target, _ = captum_cases[case]
    channels, size = x.shape[1], x.shape[2]
    patch, stride = (8, 4) if size == BAR_SIZE else (4, 2)
    ours = fa.Occlusion(model).attribute(x, target, patch=patch, stride=stride, fill=0.25)
    theirs = attr.Occlusion(twin).attribute(
        torch.from_numpy(x), sliding_window_shapes=(channels, patch, patch),
        strides=(channels, stride, stride), baselines=0.25, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
