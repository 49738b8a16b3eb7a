"""Hooks on layers and on Sequential, and the fused passes they turn off."""
import numpy as np
import pytest

from fastconv import backend as backend_module
from fastconv import models
from fastconv.analysis.attribution.methods import relu_backward_rule
from fastconv.nn import fusion, layers, losses
from fastconv.nn.model import Sequential


def hooked_model(dtype=np.float64, seed=0):
    """conv - ReLU - batch norm (fused in training) - pool - conv - ReLU - flatten - linear."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        layers.Conv2d(2, 4, 3, padding=1, dtype=dtype, seed=rng),
        layers.ReLU(),
        layers.BatchNorm2d(4, dtype=dtype),
        layers.MaxPool2d(2),
        layers.Conv2d(4, 3, 3, padding=1, dtype=dtype, seed=rng),
        layers.ReLU(),
        layers.Flatten(),
        layers.Linear(3 * 3 * 3, 5, dtype=dtype, seed=rng),
    )
    bn = model.layer("bn1")
    bn.params["weight"][:] = rng.uniform(0.5, 1.5, 4)
    bn.params["bias"][:] = rng.standard_normal(4) * 0.1
    return model


def batch(dtype=np.float64, seed=1, n=4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 6, 6)).astype(dtype), rng.integers(0, 5, n)


def plain_gradients(model, x, grad):
    """Forward with every layer alone, then backward layer by layer by hand:
    {name: (grad_input, grad_output)} and the input gradient."""
    handle = model.register_forward_hook(lambda name, layer, y: None)  # nothing fused
    model.forward(x)
    handle.remove()
    seen = {}
    for name, layer in reversed(model.named_layers()):
        grad_input = layer.backward(grad)
        seen[name] = (grad_input, grad)
        grad = grad_input
    return seen, grad


# -- layer hooks ---------------------------------------------------------------

@pytest.mark.parametrize("train", [True, False])
def test_backward_hooks_see_the_gradients_of_a_plain_backward(backend, train):
    x, _ = batch()
    grad = np.random.default_rng(2).standard_normal((4, 5))
    want, want_dx = plain_gradients(hooked_model().train(train), x, grad)

    model = hooked_model().train(train)
    by_layer, by_model = {}, {}
    for name, layer in model.named_layers():
        layer.register_backward_hook(
            lambda layer, gi, go, name=name: by_layer.__setitem__(name, (gi.copy(), go.copy())))
    model.register_backward_hook(lambda name, layer, gi, go: by_model.__setitem__(name, (gi, go)))
    model.forward(x)
    dx = model.backward(grad)

    np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)
    assert list(by_model) == [name for name, _ in reversed(model.named_layers())]
    for name, (grad_input, grad_output) in want.items():
        for seen in (by_layer[name], by_model[name]):
            np.testing.assert_allclose(seen[0], grad_input, rtol=1e-12, atol=1e-14, err_msg=name)
            np.testing.assert_allclose(seen[1], grad_output, rtol=1e-12, atol=1e-14, err_msg=name)


def test_a_model_backward_hook_sees_no_input_gradient_where_none_is_made():
    model = hooked_model()
    x, _ = batch()
    seen = {}
    model.register_backward_hook(lambda name, layer, gi, go: seen.__setitem__(name, gi))
    model.backward(np.ones_like(model.forward(x)), input_grad=False)
    assert seen["conv1"] is None and seen["relu1"] is not None
    assert list(seen)[-1] == "conv1"


def test_a_pre_hook_that_replaces_the_output_gradient_changes_dx_and_parameter_gradients():
    x, _ = batch()
    grad = np.random.default_rng(3).standard_normal((4, 5))
    plain = hooked_model()
    plain.forward(x)
    plain_dx = plain.backward(grad)

    model = hooked_model()
    calls = []

    def triple(layer, grad_output):
        calls.append(grad_output.shape)
        return 3 * grad_output

    model.layer("conv2").register_backward_pre_hook(triple)
    model.forward(x)
    dx = model.backward(grad)
    assert calls == [(4, 3, 3, 3)]
    # Everything below conv2 is linear in the gradient conv2 receives.
    np.testing.assert_allclose(dx, 3 * plain_dx, rtol=1e-12, atol=1e-14)
    for key, value in plain.gradients().items():
        factor = 1 if key.startswith("fc1") else 3
        np.testing.assert_allclose(model.gradients()[key], factor * value, rtol=1e-12, atol=1e-14,
                                   err_msg=key)


def test_a_backward_hook_replaces_the_input_gradient_only():
    x, _ = batch()
    grad = np.ones((4, 5))
    plain = hooked_model()
    plain.forward(x)
    plain.backward(grad)

    model = hooked_model()
    model.layer("relu2").register_backward_hook(lambda layer, gi, go: np.zeros_like(gi))
    model.forward(x)
    dx = model.backward(grad)
    assert not dx.any()
    np.testing.assert_array_equal(model.gradients()["fc1.weight"], plain.gradients()["fc1.weight"])
    assert not model.gradients()["conv2.weight"].any()


def test_hooks_run_in_order_and_each_sees_the_last_replacement():
    relu = layers.ReLU()
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    relu.forward(x)
    order = []
    relu.register_backward_pre_hook(lambda layer, dy: order.append("pre1") or dy + 1)
    relu.register_backward_pre_hook(lambda layer, dy: order.append(("pre2", dy[0, 0])))
    relu.register_backward_hook(lambda layer, dx, dy: order.append(("post", dy[0, 0])) or dx * 2)
    dx = relu.backward(np.zeros_like(x))
    assert order == ["pre1", ("pre2", 1.0), ("post", 1.0)]
    np.testing.assert_array_equal(dx, 2.0 * (x > 0))


def test_forward_hooks_see_input_and_output_of_forward_and_infer():
    layer = layers.LeakyReLU(0.5)
    seen = []
    handle = layer.register_forward_hook(lambda layer, x, y: seen.append((x, y)))
    x = np.array([[-2.0, 4.0]])
    layer.forward(x)
    layer.infer(x)
    assert len(seen) == 2
    for got_x, got_y in seen:
        assert got_x is x
        np.testing.assert_array_equal(got_y, [[-1.0, 4.0]])
    handle.remove()
    layer.forward(x)
    assert len(seen) == 2


def test_handles_remove_hooks():
    model = hooked_model()
    x, _ = batch()
    calls = []
    conv = model.layer("conv1")
    handles = [
        conv.register_forward_hook(lambda *args: calls.append("forward")),
        conv.register_backward_pre_hook(lambda *args: calls.append("pre")),
        conv.register_backward_hook(lambda *args: calls.append("post")),
        model.register_forward_hook(lambda *args: calls.append("model forward")),
        model.register_backward_hook(lambda *args: calls.append("model backward")),
    ]
    model.backward(np.ones_like(model.forward(x)))
    assert set(calls) == {"forward", "pre", "post", "model forward", "model backward"}
    for handle in handles:
        handle.remove()
        handle.remove()  # a second remove is harmless
    calls.clear()
    model.backward(np.ones_like(model.forward(x)))
    assert calls == []
    assert not conv._has_forward_hooks() and not conv._has_backward_hooks()
    with conv.register_backward_hook(lambda *args: calls.append("scoped")):
        model.backward(np.ones_like(model.forward(x)))
    model.backward(np.ones_like(model.forward(x)))
    assert calls == ["scoped"]


def test_hooks_must_be_callable_and_replacements_must_fit():
    relu = layers.ReLU()
    for register in (relu.register_forward_hook, relu.register_backward_pre_hook, relu.register_backward_hook,
                     Sequential(layers.ReLU()).register_backward_hook):
        with pytest.raises(TypeError, match="callable"):
            register(42)
    x = np.ones((2, 3))
    relu.forward(x)
    with relu.register_backward_pre_hook(lambda layer, dy: dy[:1]):
        with pytest.raises(ValueError, match="pre-hook of ReLU returned grad_output of shape \\(1, 3\\)"):
            relu.backward(x)
    with relu.register_backward_hook(lambda layer, dx, dy: dx.astype(np.float32)):
        with pytest.raises(TypeError, match="backward hook of ReLU returned grad_input of dtype float32"):
            relu.backward(x)
    with relu.register_backward_hook(lambda layer, dx, dy: dx.tolist()):
        with pytest.raises(TypeError, match="returned list"):
            relu.backward(x)


def test_the_standard_checks_run_before_any_hook():
    calls = []
    conv = layers.Conv2d(2, 3, 3, dtype=np.float64)
    conv.register_backward_pre_hook(lambda *args: calls.append("pre"))
    conv.register_backward_hook(lambda *args: calls.append("post"))
    with pytest.raises(RuntimeError, match="before forward"):
        conv.backward(np.ones((1, 3, 2, 2)))
    conv.forward(np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="gradient has shape"):
        conv.backward(np.ones((1, 3, 3, 3)))
    with pytest.raises(TypeError, match="gradient dtype float32"):
        conv.backward(np.ones((1, 3, 2, 2), dtype=np.float32))
    assert calls == []


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_backward_rules_keep_the_standard_checks(rule):
    model = hooked_model().eval()
    x, _ = batch()
    relu = model.layer("relu2")
    with relu_backward_rule(model, rule):
        with pytest.raises(RuntimeError, match="before forward"):
            relu.backward(np.ones((4, 3, 3, 3)))
        model.forward(x)
        with pytest.raises(ValueError, match="gradient has shape"):
            relu.backward(np.ones((4, 3, 3, 2)))
        with pytest.raises(TypeError, match="gradient dtype float32"):
            relu.backward(np.ones((4, 3, 3, 3), dtype=np.float32))
        with pytest.raises(ValueError, match="layer 'relu2'.*gradient has shape"):
            model.backward(np.ones((4, 3, 3, 2)), start="relu2")


@pytest.mark.parametrize("rule", ["gradient", "deconvnet", "guided"])
def test_backward_rules_are_hooks_removed_on_exit_even_when_the_block_raises(rule):
    model = hooked_model()
    x, _ = batch()
    relus = [layer for _, layer in model.named_layers() if isinstance(layer, layers.ReLU)]
    with pytest.raises(KeyError):
        with relu_backward_rule(model, rule):
            assert all(relu._has_backward_hooks() == (rule != "gradient") for relu in relus)
            # A rule on a ReLU turns its fusion with the batch norm off.
            model.forward(x)
            assert model.layer("bn1")._ran_relu_fused() == (rule == "gradient")
            raise KeyError("inside")
    assert not any(relu._has_backward_hooks() for relu in relus)
    model.forward(x)
    assert model.layer("bn1")._ran_relu_fused()


def test_deconvnet_and_guided_rules_on_one_relu():
    relu = layers.ReLU()
    model = Sequential([("relu", relu)])
    x = np.array([[-1.0, 2.0, -3.0, 4.0]])
    dy = np.array([[5.0, -6.0, -7.0, 8.0]])
    model.forward(x)
    got = {}
    for rule in ("gradient", "deconvnet", "guided"):
        with relu_backward_rule(model, rule):
            got[rule] = model.backward(dy)
    np.testing.assert_array_equal(got["gradient"], [[0.0, -6.0, 0.0, 8.0]])
    np.testing.assert_array_equal(got["deconvnet"], [[5.0, 0.0, 0.0, 8.0]])
    np.testing.assert_array_equal(got["guided"], [[0.0, 0.0, 0.0, 8.0]])


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_gradients_that_meet_at_a_hooked_layer_accumulate(backend, scale):
    # Two backward passes from different layers both reach conv1, whose
    # hooks watch (scale 1) or double (scale 2) what it receives: its
    # parameter gradients add up, as without hooks, scaled as the hook says.
    x, _ = batch()
    rng = np.random.default_rng(4)
    grad_out, grad_mid = rng.standard_normal((4, 5)), rng.standard_normal((4, 3, 3, 3))

    def run(model):
        model.zero_grad()
        model.forward(x)
        model.backward(grad_out)
        model.backward(grad_mid, start="conv2")
        return {key: value.copy() for key, value in model.gradients().items()}

    want = run(hooked_model())
    model = hooked_model()
    seen = []
    conv1 = model.layer("conv1")
    conv1.register_backward_pre_hook(lambda layer, dy: None if scale == 1.0 else scale * dy)
    conv1.register_backward_hook(lambda layer, dx, dy: seen.append(dy.shape))
    model.register_backward_hook(lambda *args: None)
    got = run(model)
    assert seen == [(4, 4, 6, 6)] * 2
    for key, value in want.items():
        factor = scale if key.startswith("conv1") else 1.0
        np.testing.assert_allclose(got[key], factor * value, rtol=1e-12, atol=1e-14, err_msg=key)


# -- fusion ----------------------------------------------------------------------

class KernelSpy:
    """Records the relu_input / through_relu flags the batch-norm kernels get."""

    def __init__(self, monkeypatch):
        self.calls = []
        kernels = backend_module.current()
        forward, backward = kernels.batchnorm2d_forward_train, kernels.batchnorm2d_backward

        def spy_forward(*args, relu_input=False, **kwargs):
            self.calls.append(("forward", relu_input))
            return forward(*args, relu_input=relu_input, **kwargs)

        def spy_backward(*args, through_relu=False, **kwargs):
            self.calls.append(("backward", through_relu))
            return backward(*args, through_relu=through_relu, **kwargs)

        monkeypatch.setattr(kernels, "batchnorm2d_forward_train", spy_forward)
        monkeypatch.setattr(kernels, "batchnorm2d_backward", spy_backward)


def training_step(model, x, labels, optimizer=None):
    model.zero_grad()
    out = model.forward(x)
    loss_fn = losses.CrossEntropyLoss()
    loss = loss_fn(out, labels)
    dx = model.backward(loss_fn.backward())
    grads = {key: value.copy() for key, value in model.gradients().items()}
    if optimizer is not None:
        optimizer.step()
    return out, loss, dx, grads


def test_a_plain_training_step_runs_relu_and_batchnorm_fused(backend, monkeypatch):
    model = hooked_model()
    assert [step.names for step in fusion.plan(model) if step.fusion is not None] == [("relu1", "bn1")]
    assert isinstance(fusion.plan(model)[1].fusion, fusion.ReLUBatchNorm)
    spy = KernelSpy(monkeypatch)
    training_step(model, *batch())
    assert spy.calls == [("forward", True), ("backward", True)]


def test_mnist2_with_batchnorm_trains_through_the_fused_kernels(backend, monkeypatch):
    from fastconv import optim
    model = models.mnist2(batchnorm=True, seed=0)
    assert len([step for step in fusion.plan(model) if step.fusion is not None]) == 2
    spy = KernelSpy(monkeypatch)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    training_step(model, x, np.arange(8), optim.Adam(model))
    assert spy.calls == [("forward", True)] * 2 + [("backward", True)] * 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_and_unfused_training_steps_give_the_same_bits(backend, monkeypatch, dtype):
    # A forward hook on the model turns fusion off. Two Adam steps, so that
    # the second runs on weights and running statistics the first updated.
    from fastconv import optim
    x, labels = batch(dtype, n=6)
    spy = KernelSpy(monkeypatch)
    results = {}
    for fused in (True, False):
        model = hooked_model(dtype)
        if not fused:
            model.register_forward_hook(lambda name, layer, y: None)
        optimizer = optim.Adam(model, lr=1e-2)
        spy.calls.clear()
        steps = [training_step(model, x, labels, optimizer) for _ in range(2)]
        assert spy.calls == [("forward", fused), ("backward", fused)] * 2
        results[fused] = steps, model.state_dict()
    for (fused_step, plain_step) in zip(results[True][0], results[False][0]):
        np.testing.assert_array_equal(fused_step[0], plain_step[0])
        assert fused_step[1] == plain_step[1]
        np.testing.assert_array_equal(fused_step[2], plain_step[2])
        for key in plain_step[3]:
            np.testing.assert_array_equal(fused_step[3][key], plain_step[3][key], err_msg=key)
    for key, value in results[False][1].items():
        np.testing.assert_array_equal(results[True][1][key], value, err_msg=key)


@pytest.mark.parametrize("where", ["relu1 forward", "bn1 forward", "relu1 pre", "bn1 post"])
def test_a_hook_on_either_layer_turns_fusion_off(backend, monkeypatch, where):
    name, kind = where.split()
    model = hooked_model()
    layer = model.layer(name)
    register = {"forward": layer.register_forward_hook, "pre": layer.register_backward_pre_hook,
                "post": layer.register_backward_hook}[kind]
    register(lambda *args: None)
    assert all(step.fusion is None for step in fusion.plan(model))
    spy = KernelSpy(monkeypatch)
    training_step(model, *batch())
    assert spy.calls == [("forward", False), ("backward", False)]


def test_a_hook_registered_after_a_fused_forward_gets_the_unfused_backward(backend, monkeypatch):
    x, labels = batch()
    grad = np.random.default_rng(5).standard_normal((4, 5))
    want, want_dx = plain_gradients(hooked_model(), x, grad)
    spy = KernelSpy(monkeypatch)
    for register in ("layer", "model"):
        model = hooked_model()
        spy.calls.clear()
        model.forward(x)
        seen = {}
        if register == "layer":
            model.layer("relu1").register_backward_hook(
                lambda layer, gi, go, seen=seen: seen.__setitem__("relu1", (gi, go)))
        else:
            model.register_backward_hook(lambda name, layer, gi, go, seen=seen: seen.__setitem__(name, (gi, go)))
        dx = model.backward(grad)
        assert spy.calls == [("forward", True), ("backward", False)]
        np.testing.assert_allclose(dx, want_dx, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(seen["relu1"][1], want["relu1"][1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(seen["relu1"][0], want["relu1"][0], rtol=1e-12, atol=1e-14)


def test_plan_follows_until_and_eval_mode():
    model = hooked_model()
    assert [step.names for step in fusion.plan(model, until="relu1")] == [("conv1",), ("relu1",)]
    steps = fusion.plan(model, until="bn1")
    assert [(step.start, step.stop) for step in steps] == [(0, 1), (1, 3)]
    model.eval()
    assert all(step.fusion is None for step in fusion.plan(model))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        fusion.plan(model, until="nope")
