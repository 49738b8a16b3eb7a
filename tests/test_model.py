"""Sequential: naming, partial passes, hooks, modes, state, save/load and bad input."""
import json
import os
import re

import numpy as np
import pytest
from test_layers import numerical_gradient, rel_error

import fastconv
from fastconv import models
from fastconv.nn import layers, losses
from fastconv.nn.model import Sequential


def small_model(dtype=np.float64, seed=0):
    model = Sequential(
        layers.Conv2d(2, 3, 3, padding=1, dtype=dtype, seed=seed),
        layers.ReLU(),
        layers.BatchNorm2d(3, dtype=dtype),
        layers.MaxPool2d(2),
        layers.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(0, 1), dtype=dtype, seed=seed + 1),
        layers.LeakyReLU(0.1),
        layers.AvgPool2d((1, 2), stride=1),
        layers.Flatten(),
        layers.Dropout(0.3, seed=seed),
        layers.Linear(8, 5, dtype=dtype, seed=seed + 2),
    )
    rng = np.random.default_rng(seed)
    bn = model.layer("bn1")
    bn.params["weight"][:] = rng.uniform(0.5, 1.5, 3)
    bn.params["bias"][:] = rng.standard_normal(3) * 0.1
    return model


def inputs(shape=(3, 2, 6, 6), dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_automatic_and_explicit_names():
    model = small_model()
    assert [name for name, _ in model.named_layers()] == [
        "conv1", "relu1", "bn1", "pool1", "conv2", "lrelu1", "pool2", "flatten1", "dropout1", "fc1"]
    named = Sequential([("features", layers.Conv2d(1, 2, 3)), layers.Conv2d(2, 2, 3),
                        ("conv1", layers.ReLU()), layers.ReLU()])
    assert [name for name, _ in named.named_layers()] == ["features", "conv2", "conv1", "relu1"]
    assert isinstance(named.layer("conv1"), layers.ReLU)
    with pytest.raises(ValueError, match="'nope'"):
        named.layer("nope")
    with pytest.raises(ValueError, match="duplicate.*'a'"):
        Sequential([("a", layers.ReLU()), ("a", layers.ReLU())])
    with pytest.raises(ValueError, match="'a.b'"):
        Sequential([("a.b", layers.ReLU())])
    relu = layers.ReLU()
    with pytest.raises(ValueError, match="twice"):
        Sequential(relu, relu)
    with pytest.raises(TypeError, match="42"):
        Sequential(layers.ReLU(), 42)
    with pytest.raises(ValueError, match="at least one"):
        Sequential()


def test_model_input_gradient_matches_numerical(backend):
    model = small_model()
    x = inputs()
    labels = np.array([0, 3, 4])
    loss = losses.CrossEntropyLoss()

    def objective():
        model.layer("dropout1").rng = np.random.default_rng(7)
        return loss(model.forward(x), labels)

    objective()
    model.zero_grad()
    dx = model.backward(loss.backward())
    analytic = {k: g.copy() for k, g in model.gradients().items()}
    assert rel_error(dx, numerical_gradient(objective, x)) < 1e-6
    for key, param in model.named_parameters():
        assert rel_error(analytic[key], numerical_gradient(objective, param)) < 1e-6, key


def test_eval_mode_input_gradient_matches_numerical(backend):
    model = small_model()
    model.forward(inputs(seed=5))  # running statistics away from their initial values
    model.eval()
    x = inputs()
    r = np.random.default_rng(2).standard_normal((3, 5))

    def objective():
        return float(np.sum(model.forward(x) * r))

    objective()
    dx = model.backward(r)
    assert rel_error(dx, numerical_gradient(objective, x)) < 1e-6


def test_partial_forward_and_backward_equal_slices_of_a_full_pass(backend):
    model = small_model()
    model.eval()
    x = inputs()
    recorded = {}
    model.register_forward_hook(lambda name, layer, out: recorded.__setitem__(name, out.copy()))
    y = model.forward(x)
    g = np.random.default_rng(3).standard_normal(y.shape)
    full_dx = model.backward(g)
    names = [name for name, _ in model.named_layers()]
    for k, name in enumerate(names):
        np.testing.assert_array_equal(model.forward(x, until=name), recorded[name])
        # carry g back through the layers after `name` by hand, then let the model finish
        grad = g
        model.forward(x)
        for later in reversed(names[k + 1:]):
            grad = model.layer(later).backward(grad)
        np.testing.assert_allclose(model.backward(grad, start=name), full_dx, rtol=1e-12, atol=1e-15)
    prefix = Sequential(model.named_layers()[:5])
    a = model.forward(x, until="conv2")
    np.testing.assert_array_equal(prefix.forward(x), a)
    ga = np.random.default_rng(4).standard_normal(a.shape)
    np.testing.assert_allclose(model.backward(ga, start="conv2"), prefix.backward(ga), rtol=1e-14)


def test_backward_needs_a_forward_through_the_start_layer(backend):
    model = small_model()
    with pytest.raises(RuntimeError, match="before"):
        model.backward(np.zeros((3, 5)))
    a = model.forward(inputs(), until="pool1")
    with pytest.raises(RuntimeError, match="'conv2'.*'pool1'"):
        model.backward(np.zeros((3, 4, 2, 2)), start="conv2")
    with pytest.raises(ValueError, match=r"'pool1'.*\(3, 3, 2, 2\)"):
        model.backward(np.zeros((3, 3, 2, 2)), start="pool1")
    assert model.backward(np.ones_like(a), start="pool1").shape == (3, 2, 6, 6)
    with pytest.raises(ValueError, match="'fc9'"):
        model.forward(inputs(), until="fc9")


def test_training_without_input_gradient(backend):
    model = small_model()
    x = inputs()
    g = np.random.default_rng(5).standard_normal((3, 5))
    model.layer("dropout1").rng = np.random.default_rng(0)
    model.forward(x)
    model.backward(g)
    with_dx = {k: v.copy() for k, v in model.gradients().items()}
    model.zero_grad()
    model.layer("dropout1").rng = np.random.default_rng(0)
    model.forward(x)
    assert model.backward(g, input_grad=False) is None
    for key, grad in model.gradients().items():
        np.testing.assert_allclose(grad, with_dx[key], rtol=1e-14, err_msg=key)
    head_only = Sequential(layers.ReLU(), layers.Flatten(), layers.Linear(72, 2, dtype=np.float64))
    head_only.forward(x)
    assert head_only.backward(np.ones((3, 2)), input_grad=False) is None
    assert head_only.gradients()["fc1.bias"].tolist() == [3.0, 3.0]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_input_gradient_without_parameter_gradients(backend, mode):
    # Attacks and image optimization ask for the input gradient alone: it must
    # be the very same array, and the parameter gradients must stay as they were.
    model = small_model()
    getattr(model, mode)()
    x = inputs()
    g = np.random.default_rng(5).standard_normal((3, 5))
    model.layer("dropout1").rng = np.random.default_rng(0)
    model.forward(x)
    full = model.backward(g)
    before = {k: v.copy() for k, v in model.gradients().items()}
    model.layer("dropout1").rng = np.random.default_rng(0)
    model.forward(x)
    alone = model.backward(g, param_grads=False)
    np.testing.assert_array_equal(alone, full)
    for key, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, before[key], err_msg=key)
    with pytest.raises(ValueError, match="nothing to compute"):
        model.backward(g, input_grad=False, param_grads=False)


def test_hooks_record_every_layer_and_can_be_removed(backend):
    model = small_model()
    seen = []
    handle = model.register_forward_hook(lambda name, layer, out: seen.append((name, layer, out.shape)))
    model.forward(inputs(), until="pool1")
    assert [name for name, _, _ in seen] == ["conv1", "relu1", "bn1", "pool1"]
    assert all(layer is model.layer(name) for name, layer, _ in seen)
    assert [shape for _, _, shape in seen] == [(3, 3, 6, 6)] * 3 + [(3, 3, 3, 3)]
    handle.remove()
    handle.remove()
    seen.clear()
    model.forward(inputs())
    assert seen == []
    with pytest.raises(TypeError, match="callable"):
        model.register_forward_hook("not a function")


def test_train_and_eval_switch_batchnorm_and_dropout(backend):
    model = small_model()
    assert model.training
    x = inputs()
    model.forward(x)
    running = model.layer("bn1").buffers["running_mean"].copy()
    assert running.any()
    model.eval()
    assert not model.training
    assert all(not layer.training for _, layer in model.named_layers())
    y1, y2 = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(y1, y2)  # no dropout, running statistics
    np.testing.assert_array_equal(model.layer("bn1").buffers["running_mean"], running)
    bn_in = model.forward(x, until="relu1")
    bn = model.layer("bn1")
    expected = ((bn_in - running[:, None, None]) / np.sqrt(bn.buffers["running_var"][:, None, None] + 1e-5)
                * bn.params["weight"][:, None, None] + bn.params["bias"][:, None, None])
    np.testing.assert_allclose(model.forward(x, until="bn1"), expected, rtol=1e-12, atol=1e-14)
    model.train()
    assert not np.array_equal(model.forward(x), model.forward(x))


def test_predict_is_batched_eval_and_restores_mode(backend):
    model = small_model()
    x = inputs((7, 2, 6, 6))
    model.forward(x)
    state = model.state_dict()
    reference_out = model.eval().forward(x)
    model.train()
    predicted = model.predict(x, batch_size=3)
    np.testing.assert_allclose(predicted, reference_out, rtol=1e-13, atol=1e-15)
    assert model.training
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    with pytest.raises(ValueError, match="0"):
        model.predict(x, batch_size=0)


def test_summary_and_parameter_counts():
    mnist = models.mnist2(seed=0)
    text = mnist.summary((1, 1, 28, 28))
    assert "Total parameters: 799,078" in text
    assert mnist.num_parameters() == 799_078
    assert models.mnist2(batchnorm=True).num_parameters() == 799_078 + 4 * 32
    cifar = models.cifar6()
    expected_total = sum(p.size for _, p in cifar.named_parameters())
    text = cifar.summary((2, 3, 32, 32))
    assert f"Total parameters: {expected_total:,}" in text
    assert re.search(r"fc1 \(Linear\)\s+\(2, 10\)\s+20,490", text)
    assert re.search(r"conv6 \(Conv2d\)\s+\(2, 128, 8, 8\)\s+147,584", text)
    assert re.search(r"pool3 \(MaxPool2d\)\s+\(2, 128, 4, 4\)\s+0", text)
    with pytest.raises(ValueError, match="'conv1'.*3 channels, got 1"):
        cifar.summary((1, 1, 32, 32))


@pytest.mark.parametrize("build, shape", [(models.cifar6, (2, 3, 32, 32)), (models.mnist2, (2, 1, 28, 28))])
def test_summary_shapes_match_a_forward_pass(backend, build, shape):
    model = build(seed=0)
    text = model.summary(shape)
    shapes = {}
    model.register_forward_hook(lambda name, layer, out: shapes.__setitem__(name, out.shape))
    model.forward(np.zeros(shape, np.float32))
    for name, out_shape in shapes.items():
        assert re.search(rf"^{name} \(\w+\)\s+{re.escape(str(out_shape))}", text, re.M), name


def test_models_are_seedable_and_kaiming_initialized():
    a, b = models.cifar6(seed=3), models.cifar6(seed=3)
    for (key, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=key)
    assert not np.array_equal(a.layer("conv1").params["weight"], models.cifar6(seed=4).layer("conv1").params["weight"])
    w = models.mnist2(seed=0).layer("fc1").params["weight"]
    assert abs(w.std() - np.sqrt(2 / 1568)) < 0.01 * np.sqrt(2 / 1568)
    assert not models.mnist2(seed=0).layer("conv2").params["bias"].any()
    seven = models.cifar6(num_classes=7, in_channels=1)
    assert seven.summary((1, 1, 32, 32)).count("(1, 7)") == 1


@pytest.mark.parametrize("build", [models.cifar6, models.mnist2])
def test_torch_init_keeps_the_layer_defaults(build):
    # PyTorch's default: weights and biases uniform within 1/sqrt(fan_in),
    # here the only initialization, so the He-initialized biases are no
    # longer all zero.
    model = build(seed=0, init="torch")
    for name, layer in model.named_layers():
        if "weight" in layer.params and layer.params["weight"].ndim > 1:
            weight = layer.params["weight"]
            bound = 1 / np.sqrt(weight[0].size)
            assert np.abs(weight).max() <= bound, name
            assert weight.std() == pytest.approx(bound / np.sqrt(3), rel=0.1), name
            assert layer.params["bias"].any(), name
    with pytest.raises(ValueError, match="'xavier'"):
        build(init="xavier")


def test_state_dict_order_copies_and_load(backend):
    model = models.mnist2(batchnorm=True, seed=0)
    keys = list(model.state_dict())
    assert keys == [
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "conv2.weight", "conv2.bias", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [k for k, _ in model.named_parameters()] == [k for k in keys if "running" not in k]
    assert list(model.gradients()) == [k for k, _ in model.named_parameters()]
    state = model.state_dict()
    state["conv1.weight"][:] = 0
    assert model.layer("conv1").params["weight"].any()
    other = models.mnist2(batchnorm=True, seed=1)
    other.load_state_dict(model.state_dict())
    x = inputs((2, 1, 28, 28), np.float32)
    np.testing.assert_array_equal(other.eval().forward(x), model.eval().forward(x))


def test_load_state_dict_errors_name_the_key():
    model = models.mnist2(seed=0)
    state = model.state_dict()
    bad = dict(state, **{"fc1.weight": np.zeros((500, 1567), np.float32)})
    with pytest.raises(ValueError, match=r"'fc1.weight'.*\(500, 1567\).*\(500, 1568\)"):
        model.load_state_dict(bad)
    before = model.layer("conv1").params["weight"].copy()
    zeroed = {k: np.zeros_like(v) for k, v in state.items()}
    zeroed["fc2.bias"] = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match="fc2.bias"):
        model.load_state_dict(zeroed)
    np.testing.assert_array_equal(model.layer("conv1").params["weight"], before)  # all-or-nothing
    missing = {k: v for k, v in state.items() if k != "conv2.bias"}
    with pytest.raises(ValueError, match="missing key 'conv2.bias'"):
        model.load_state_dict(missing)
    assert model.load_state_dict(missing, strict=False) == (["conv2.bias"], [])
    with pytest.raises(ValueError, match="unexpected key 'extra.weight'"):
        model.load_state_dict(dict(state, **{"extra.weight": np.zeros(1)}))
    with pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([1, 2])


def test_save_and_load_round_trip(backend, tmp_path):
    model = small_model()
    x = inputs()
    model.forward(x)
    model.eval()
    model.meta = {"mean": np.array([0.5, 0.25]), "classes": ["a", "b", "c", "d", "e"], "epochs": np.int64(3)}
    path = tmp_path / "model.npz"
    assert model.save(path) == str(path)
    assert os.listdir(tmp_path) == ["model.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    loaded = fastconv.load(path)
    assert [(n, type(l), l.config()) for n, l in loaded.named_layers()] == \
        [(n, type(l), l.config()) for n, l in model.named_layers()]
    assert not loaded.training
    assert loaded.meta == {"mean": [0.5, 0.25], "classes": ["a", "b", "c", "d", "e"], "epochs": 3}
    for (key, value), (key2, value2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert key == key2 and value.dtype == value2.dtype
        np.testing.assert_array_equal(value, value2)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    model.layer("fc1").params["bias"][:] += 1
    model.save(path)  # overwrites in place
    np.testing.assert_array_equal(fastconv.load(path).forward(x), model.forward(x))
    assert os.listdir(tmp_path) == ["model.npz"]


def test_fastconv_save_beside_fastconv_load(tmp_path):
    model = small_model().eval()
    model.meta["classes"] = list("abcde")
    path = tmp_path / "model.npz"
    assert fastconv.save(model, path) == str(path)
    loaded = fastconv.load(path)
    assert loaded.meta == model.meta and not loaded.training
    for (key, value), (key2, value2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert key == key2
        np.testing.assert_array_equal(value, value2)
    x = inputs()
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    with pytest.raises(TypeError, match=r"Sequential or Graph\), got dict.*save_weights"):
        fastconv.save(model.state_dict(), tmp_path / "state.npz")
    with pytest.raises(TypeError, match=r"Sequential or Graph\), got PosixPath"):
        fastconv.save(path, model)
    assert os.listdir(tmp_path) == ["model.npz"]


def test_failed_save_leaves_the_old_file(tmp_path):
    model = models.mnist2(seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    model.meta["bad"] = object()
    with pytest.raises(TypeError, match="object"):
        model.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.npz"]


def test_load_rejects_corrupt_files(tmp_path):
    path = tmp_path / "m.npz"
    models.mnist2(seed=0).save(path)
    data = path.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
        "garbage.npz": b"this is not a model" * 100,
        "flipped.npz": data[:len(data) // 3] + bytes([data[len(data) // 3] ^ 0xFF]) + data[len(data) // 3 + 1:],
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            fastconv.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz.*architecture"):
        fastconv.load(other)
    arch = tmp_path / "arch.npz"
    np.savez(arch, architecture=np.array(json.dumps({"format": "fastconv.Sequential", "version": 1,
                                                     "training": True, "layers": [
                                                         {"name": "x", "class": "Evil", "config": {}}]})))
    with pytest.raises(ValueError, match="'Evil'"):
        fastconv.load(arch)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        fastconv.load(tmp_path / "missing.npz")


def test_bad_model_input_names_the_value(backend):
    model = models.cifar6(seed=0)
    with pytest.raises(ValueError, match=r"'conv1'.*4-D.*\(3, 32, 32\)"):
        model.forward(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(TypeError, match="int64"):
        model.forward(np.zeros((1, 3, 32, 32), np.int64))
    with pytest.raises(TypeError, match="float64.*float32"):
        model.forward(np.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="3 channels, got 1"):
        model.forward(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(0, 3, 32, 32\)"):
        model.forward(np.zeros((0, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"'fc1'.*2048 features, got 512"):
        model.forward(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(RuntimeError, match="before"):
        model.backward(np.zeros((1, 10), np.float32))


def test_non_contiguous_model_input(backend):
    model = small_model().eval()
    x = inputs((3, 2, 6, 6))
    expected = model.forward(x)
    expected_dx = model.backward(np.ones_like(expected))
    for view in (np.asfortranarray(x), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):
        np.testing.assert_allclose(model.forward(view), expected, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(model.backward(np.ones_like(expected)), expected_dx, rtol=1e-13, atol=1e-15)


def test_astype_returns_a_converted_copy(backend):
    model = small_model(dtype=np.float32).eval()
    model.meta["classes"] = list("abcde")
    double = model.astype(np.float64)
    assert double.dtype == np.float64 and model.dtype == np.float32
    assert not double.training and double.meta == model.meta
    x = inputs()
    np.testing.assert_allclose(double.forward(x), model.forward(x.astype(np.float32)), rtol=1e-4, atol=1e-5)
    double.layer("conv1").params["weight"][:] = 0
    assert model.layer("conv1").params["weight"].any()
    with pytest.raises(TypeError, match="int8"):
        model.astype(np.int8)


def test_gradients_accumulate_and_zero_grad(backend):
    model = small_model().eval()
    x = inputs()
    y = model.forward(x)
    model.backward(np.ones_like(y))
    once = {k: g.copy() for k, g in model.gradients().items()}
    model.backward(np.ones_like(y))
    for key, grad in model.gradients().items():
        np.testing.assert_allclose(grad, 2 * once[key], rtol=1e-14)
    model.zero_grad()
    assert not any(g.any() for g in model.gradients().values())


# ---------------------------------------------------------------------------
# A ReLU followed by a batch norm in training runs as one pass

def relu_batchnorm_model(seed=3):
    return models.cifar6(num_classes=4, seed=seed).astype(np.float64)


def train_pass(model, x, labels, until=None, start=None):
    """Output, loss, input gradient and parameter gradients of one training pass."""
    model.zero_grad()
    out = model.forward(x, until=until)
    if start is None:
        loss_fn = losses.CrossEntropyLoss()
        loss = loss_fn(out, labels)
        grad = loss_fn.backward()
    else:
        loss, grad = None, np.cos(out)
    dx = model.backward(grad, start=start)
    return out, loss, dx, {k: g.copy() for k, g in model.gradients().items()}


@pytest.mark.parametrize("backend", ["compiled", "numpy"])
def test_fusing_relu_into_batchnorm_changes_no_result(backend):
    # A hook sees every layer's output, so with one registered nothing is
    # fused: the same model and batch, run both ways, must agree.
    previous = fastconv.get_backend()
    fastconv.set_backend(backend)
    try:
        rng = np.random.default_rng(4)
        x = rng.standard_normal((4, 3, 32, 32))
        labels = rng.integers(0, 4, 4)
        fused_model, plain_model = relu_batchnorm_model(), relu_batchnorm_model()
        fused = train_pass(fused_model, x, labels)
        handle = plain_model.register_forward_hook(lambda name, layer, y: None)
        plain = train_pass(plain_model, x, labels)
        handle.remove()
    finally:
        fastconv.set_backend(previous)
    assert fused_model.layer("bn1")._ran_relu_fused()
    assert not plain_model.layer("bn1")._ran_relu_fused()
    np.testing.assert_allclose(fused[0], plain[0], rtol=1e-12, atol=1e-12)
    assert fused[1] == pytest.approx(plain[1], rel=1e-12)
    np.testing.assert_allclose(fused[2], plain[2], rtol=1e-9, atol=1e-12)
    for key in plain[3]:
        np.testing.assert_allclose(fused[3][key], plain[3][key], rtol=1e-9, atol=1e-12, err_msg=key)
    for name in ("bn1", "bn6"):
        for buffer in ("running_mean", "running_var"):
            np.testing.assert_allclose(fused_model.layer(name).buffers[buffer],
                                       plain_model.layer(name).buffers[buffer], rtol=1e-12)


def test_layers_of_a_fused_pair_still_backpropagate_one_by_one():
    # Tools that walk the layers themselves (layer.backward, last to first)
    # after a fused forward pass get what the model's backward gives.
    model = relu_batchnorm_model()
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32))
    out = model.forward(x, until="bn2")
    grad = np.sin(out)
    want = model.backward(grad, start="bn2")
    pairs = model.named_layers()[:model._position("bn2") + 1]
    got = grad
    for _, layer in reversed(pairs):
        got = layer.backward(got, param_grads=False)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_pass_that_stops_between_relu_and_batchnorm_is_not_fused():
    model = relu_batchnorm_model()
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32))
    relu_out = model.forward(x, until="relu1")
    assert (relu_out >= 0).all()
    np.testing.assert_array_equal(relu_out, np.maximum(model.forward(x, until="conv1"), 0))
    # Forward through the pair, backward from the ReLU: its cache still
    # holds what its backward needs.
    model.forward(x, until="bn1")
    out, _, dx, _ = train_pass(model, x, None, until="bn1", start="relu1")
    assert dx.shape == x.shape and np.isfinite(dx).all()
    reference = relu_batchnorm_model()
    handle = reference.register_forward_hook(lambda name, layer, y: None)
    _, _, want, _ = train_pass(reference, x, None, until="bn1", start="relu1")
    handle.remove()
    np.testing.assert_allclose(dx, want, rtol=1e-9, atol=1e-12)


def test_a_relu_whose_backward_rule_is_changed_is_not_fused():
    # The attribution tools change each ReLU's backward rule with hooks
    # (deconvnet, guided backprop); a fused pass would skip them.
    from fastconv.analysis.attribution.methods import relu_backward_rule
    model = relu_batchnorm_model()
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32))
    with relu_backward_rule(model, "deconvnet"):
        model.forward(x, until="bn1")
        assert not model.layer("bn1")._ran_relu_fused()
        grad = model.backward(np.ones((2, 32, 32, 32)), start="bn1")
    reference = relu_batchnorm_model()
    handle = reference.register_forward_hook(lambda name, layer, y: None)
    reference.forward(x, until="bn1")
    handle.remove()
    relu_grad = reference.layer("bn1").backward(np.ones((2, 32, 32, 32)), param_grads=False)
    want = reference.layer("conv1").backward(np.maximum(relu_grad, 0), param_grads=False)
    np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-12)


# A trained model applies its own preprocessing

@pytest.fixture(scope="module")
def trained_on_the_sample():
    """mnist2 after one epoch on 2,048 images of the bundled MNIST sample,
    trained by the Trainer with a fitted Normalize, on one thread:
    (model, data, normalize)."""
    from fastconv import optim
    from fastconv.data import Normalize, load_dataset
    from fastconv.train import Trainer

    before = fastconv.get_num_threads()
    fastconv.set_num_threads(1)
    try:
        data = load_dataset("mnist-sample")
        normalize = Normalize.fit(data.x_train)
        model = models.mnist2(seed=0)
        trainer = Trainer(model, optim.SGD(model, lr=0.05, momentum=0.9), normalize=normalize, progress=False,
                          log=None)
        trainer.fit(data.x_train[:2048], data.y_train[:2048], epochs=1)
    finally:
        fastconv.set_num_threads(before)
    return model, data, normalize


def test_preprocess_and_predict_give_what_the_trainers_evaluate_gives(trained_on_the_sample, tmp_path):
    from fastconv.train import evaluate

    model, data, normalize = trained_on_the_sample
    images, labels = data.x_test[:600], data.y_test[:600]
    result = evaluate(model, images, labels, normalize)
    assert result["accuracy"] > 0.5  # a trained model, whose predictions depend on the input
    inputs = model.preprocess(images)
    np.testing.assert_array_equal(inputs, normalize(images, dtype=model.dtype))
    model.eval()
    np.testing.assert_array_equal(model.forward(inputs).argmax(axis=1), result["predictions"])
    np.testing.assert_allclose(model.forward(inputs), result["logits"], rtol=1e-5, atol=1e-5)
    # uint8 images are raw: predict normalizes them, batch by batch, as evaluate does
    np.testing.assert_array_equal(model.predict(images), result["logits"])
    np.testing.assert_array_equal(model.classify(images), result["predictions"])
    # so does a model read back from its file
    path = model.save(tmp_path / "model.npz")
    np.testing.assert_array_equal(fastconv.load(path).classify(images), result["predictions"])
    # floats in [0, 1] are the same pixels
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(model.preprocess(pixels), inputs, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.classify(pixels), result["predictions"])
    # the mistake preprocess exists for: [0, 1] pixels fed as if they were the model's input
    assert not np.allclose(model.predict(pixels.astype(np.float32)), result["logits"], atol=1e-2)


def test_a_model_without_a_normalization_gets_what_the_trainer_feeds_it():
    from fastconv.train import evaluate

    model = small_model(dtype=np.float32).eval()
    assert "normalization" not in model.meta
    raw = np.random.default_rng(0).integers(0, 256, (7, 2, 6, 6), dtype=np.uint8)
    labels = np.arange(7) % 5
    # the trainer divides uint8 images by 255 when it has no statistics
    np.testing.assert_array_equal(model.predict(raw, batch_size=3), evaluate(model, raw, labels, None, 3)["logits"])
    pixels = raw / 255.0
    inputs = model.preprocess(pixels)
    assert inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs, pixels.astype(np.float32))
    np.testing.assert_array_equal(model.preprocess(pixels.astype(np.float32)), pixels.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess_is_the_textbook_normalization(dtype):
    model = small_model(dtype=dtype)
    mean, std = np.array([0.2, 0.6]), np.array([0.3, 0.1])
    model.meta["normalization"] = {"mean": mean.tolist(), "std": std.tolist(), "scale": 255.0}
    raw = np.random.default_rng(1).integers(0, 256, (3, 2, 4, 4), dtype=np.uint8)
    expected = (raw / 255.0 - mean[:, None, None]) / std[:, None, None]
    exact = 1e-12 if dtype == np.float64 else 1e-5
    for images, tol in ((raw, exact), (raw / 255.0, exact), ((raw / 255.0).astype(np.float32), 1e-5)):
        x = model.preprocess(images)
        assert x.dtype == dtype
        np.testing.assert_allclose(x, expected, rtol=tol, atol=tol)


def test_preprocess_refuses_what_is_not_raw_images():
    model = small_model(dtype=np.float32)
    model.meta["normalization"] = {"mean": [0.5], "std": [0.25], "scale": 255.0}
    raw = np.random.default_rng(2).integers(0, 256, (2, 2, 6, 6), dtype=np.uint8)
    raw[0, 0, 0, :2] = 0, 255
    with pytest.raises(ValueError, match=r"\[0, 1\], got values from 0.0 to 255.0"):
        model.preprocess(raw.astype(np.float32))  # 0-255 floats
    with pytest.raises(ValueError, match=r"\[0, 1\].*-2.0"):
        model.preprocess(model.preprocess(raw))  # normalized twice
    with pytest.raises(ValueError, match=r"\[0, 1\].*nan"):
        model.preprocess(np.full((1, 2, 6, 6), np.nan, np.float32))
    with pytest.raises(TypeError, match="int64"):
        model.preprocess(raw.astype(np.int64))
    with pytest.raises(TypeError, match="int64"):
        model.predict(raw.astype(np.int64))
    with pytest.raises(TypeError, match="list"):
        model.classify(raw.tolist())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model.preprocess(raw[0])


@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_preprocess_of_an_imagenet_model_is_imagenet_preprocess(mode):
    from fastconv.models import imagenet

    model = models.cifar6(num_classes=4, seed=0)
    model.meta["normalization"] = imagenet.normalization(mode)
    images = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    expected = imagenet.preprocess(list(images), mode, size=None, resize=None)
    tol = 1e-5 * (255 if mode == "caffe" else 1)  # caffe inputs are in pixel units
    np.testing.assert_allclose(model.preprocess(images.transpose(0, 3, 1, 2)), expected, rtol=1e-6, atol=tol)
