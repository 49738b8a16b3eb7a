"""Layers: numerical gradient checks in float64, modes, initialization and bad input."""
import math

import numpy as np
import pytest

from fastconv.nn import init, layers

RTOL_GRAD = 1e-6


def rel_error(a, b):
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    return np.abs(a - b).max() / scale


def numerical_gradient(f, array, h=1e-6):
    """Central differences of the scalar f() w.r.t. every element of array (perturbed in place)."""
    grad = np.zeros_like(array)
    flat, out = array.reshape(-1), grad.reshape(-1)
    assert np.shares_memory(flat, array)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        plus = f()
        flat[i] = saved - h
        minus = f()
        flat[i] = saved
        out[i] = (plus - minus) / (2 * h)
    return grad


def away_from_zero(rng, shape, margin=0.05):
    """Random values with |v| >= margin, so that ReLU-like kinks are never crossed."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(margin, 1.0, size=shape)


def distinct(rng, shape):
    """Values spaced 0.01 apart in random order: max-pooling windows have no ties."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01 - 1.0).astype(np.float64)


def check_gradients(layer, x, prepare=lambda: None, seed=0):
    """Compare dx and every parameter gradient with central differences of sum(y * r)."""
    rng = np.random.default_rng(seed)
    prepare()
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(r)
    analytic = {name: g.copy() for name, g in layer.grads.items()}

    def objective():
        prepare()
        return float(np.sum(layer.forward(x) * r))

    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert rel_error(dx, numerical_gradient(objective, x)) < RTOL_GRAD
    for name, param in layer.params.items():
        err = rel_error(analytic[name], numerical_gradient(objective, param))
        assert err < RTOL_GRAD, (name, err)
    return dx


CONV_CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=1, padding=1),
    dict(in_channels=2, out_channels=3, kernel_size=(2, 3), stride=2, padding=(0, 1)),
    dict(in_channels=3, out_channels=2, kernel_size=1, bias=False),
    dict(in_channels=1, out_channels=2, kernel_size=(3, 1), stride=(1, 2), padding=2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv2d_gradients(backend, case):
    rng = np.random.default_rng(1)
    layer = layers.Conv2d(**case, dtype=np.float64, seed=2)
    check_gradients(layer, rng.standard_normal((2, case["in_channels"], 5, 6)))


def test_relu_and_leaky_relu_gradients(backend):
    rng = np.random.default_rng(3)
    check_gradients(layers.ReLU(), away_from_zero(rng, (2, 3, 4, 5)))
    # ReLU6: values below 0, between 0 and 6 and above 6, at least 0.1 from either kink.
    shape = (2, 3, 4, 5)
    x = rng.choice([-1.0, 3.0, 7.0], size=shape) + rng.uniform(-0.9, 0.9, shape)
    dx = check_gradients(layers.ReLU6(), x)
    np.testing.assert_array_equal(dx != 0, (x > 0) & (x < 6))
    check_gradients(layers.ReLU(), away_from_zero(rng, (3, 7)))
    check_gradients(layers.LeakyReLU(0.2), away_from_zero(rng, (2, 3, 4, 5)))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm2d_gradients(backend, training):
    rng = np.random.default_rng(4)
    layer = layers.BatchNorm2d(3, dtype=np.float64)
    layer.params["weight"][:] = rng.uniform(0.5, 2, 3)
    layer.params["bias"][:] = rng.standard_normal(3)
    layer.buffers["running_mean"][:] = rng.standard_normal(3)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2, 3)
    layer.train(training)
    check_gradients(layer, rng.standard_normal((3, 3, 4, 5)) * 2 + 1)


@pytest.mark.parametrize("cls", [layers.MaxPool2d, layers.AvgPool2d])
@pytest.mark.parametrize("kernel_size, stride, padding", [(2, None, 0), (3, 2, 1), ((2, 3), 1, (1, 0))])
def test_pooling_gradients(backend, cls, kernel_size, stride, padding):
    x = distinct(np.random.default_rng(5), (2, 3, 6, 7))
    check_gradients(cls(kernel_size, stride, padding), x)


def test_global_avg_pool_flatten_logsoftmax_gradients(backend):
    rng = np.random.default_rng(6)
    check_gradients(layers.GlobalAvgPool2d(), rng.standard_normal((2, 3, 4, 5)))
    check_gradients(layers.Flatten(), rng.standard_normal((2, 3, 4, 5)))
    check_gradients(layers.LogSoftmax(), rng.standard_normal((4, 6)) * 3)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(backend, bias):
    layer = layers.Linear(7, 4, bias=bias, dtype=np.float64, seed=0)
    check_gradients(layer, np.random.default_rng(7).standard_normal((5, 7)))


def test_dropout_gradients_with_fixed_mask(backend):
    layer = layers.Dropout(0.4)

    def same_mask():
        layer.rng = np.random.default_rng(11)

    x = np.random.default_rng(8).standard_normal((4, 3, 5, 5))
    dx = check_gradients(layer, x, prepare=same_mask)
    same_mask()
    dropped = layer.forward(x) == 0
    assert dropped.any() and (~dropped).any()
    assert np.all(dx[dropped] == 0)


# -- forward semantics -------------------------------------------------------------

def test_conv2d_matches_direct_sum(backend):
    rng = np.random.default_rng(9)
    layer = layers.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 2, 5, 4))
    y = layer(x)
    w, b = layer.params["weight"], layer.params["bias"]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    expected = np.zeros_like(y)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            patch = xp[:, :, 2 * i:2 * i + 3, j:j + 2]
            expected[:, :, i, j] = np.einsum("nchw,fchw->nf", patch, w) + b
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_running_statistics_follow_pytorch_rule(backend):
    rng = np.random.default_rng(10)
    layer = layers.BatchNorm2d(4, momentum=0.3, dtype=np.float64)
    mean, var = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    for _ in range(3):
        x = rng.standard_normal((3, 4, 2, 5)) * 3 + 2
        y = layer(x)
        batch_mean = x.mean(axis=(0, 2, 3))
        mean = 0.7 * mean + 0.3 * batch_mean
        var = 0.7 * var + 0.3 * x.var(axis=(0, 2, 3), ddof=1)
        np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(layer.buffers["running_var"], var, rtol=1e-12)
        np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    layer.eval()
    x = rng.standard_normal((2, 4, 3, 3))
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_mean"], mean, rtol=1e-15)


def test_batchnorm_training_needs_more_than_one_value_per_channel(backend):
    layer = layers.BatchNorm2d(2, dtype=np.float64)
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 1\)"):
        layer(np.ones((1, 2, 1, 1)))
    layer.eval()
    assert layer(np.ones((1, 2, 1, 1))).shape == (1, 2, 1, 1)


def test_dropout_train_and_eval():
    x = np.ones((200, 50), dtype=np.float32)
    layer = layers.Dropout(0.25, seed=3)
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert y.dtype == np.float32
    assert np.array_equal(layers.Dropout(0.25, seed=3)(x), y)
    assert not np.array_equal(layer(x), y)
    layer.eval()
    assert np.array_equal(layer(x), x)
    assert np.array_equal(layer.backward(x * 2), x * 2)
    assert np.array_equal(layers.Dropout(0.0)(x), x)
    assert not layers.Dropout(1.0)(x).any()


def test_leaky_relu_values():
    x = np.array([[-2.0, -0.5, 0.0, 1.5]])
    np.testing.assert_array_equal(layers.LeakyReLU(0.1)(x), [[-0.2, -0.05, 0.0, 1.5]])


def test_gradients_accumulate_until_zero_grad(backend):
    rng = np.random.default_rng(12)
    layer = layers.Conv2d(2, 3, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 2, 4, 4))
    y = layer(x)
    layer.backward(np.ones_like(y))
    once = layer.grads["weight"].copy()
    layer.backward(np.ones_like(y))
    np.testing.assert_allclose(layer.grads["weight"], 2 * once, rtol=1e-14)
    layer.zero_grad()
    assert not layer.grads["weight"].any() and not layer.grads["bias"].any()


def test_backward_without_input_gradient_still_fills_parameter_gradients(backend):
    rng = np.random.default_rng(13)
    layer = layers.Conv2d(2, 3, 3, padding=1, dtype=np.float64, seed=0)
    y = layer(rng.standard_normal((2, 2, 4, 4)))
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    full = layer.grads["weight"].copy()
    layer.zero_grad()
    assert layer.backward(dy, need_dx=False) is None
    assert dx is not None
    np.testing.assert_allclose(layer.grads["weight"], full, rtol=1e-14)


ALL_LAYERS = [
    (lambda dt: layers.Conv2d(3, 4, 3, stride=2, padding=1, dtype=dt), (2, 3, 7, 6)),
    (lambda dt: layers.Conv2d(4, 6, 3, padding=1, groups=2, dtype=dt), (2, 4, 7, 6)),
    (lambda dt: layers.Conv2d(3, 6, 3, stride=2, padding=1, groups=3, dtype=dt), (2, 3, 7, 6)),
    (lambda dt: layers.ReLU(), (2, 3, 7, 6)),
    (lambda dt: layers.ReLU6(), (2, 3, 7, 6)),
    (lambda dt: layers.LeakyReLU(), (2, 3, 7, 6)),
    (lambda dt: layers.BatchNorm2d(3, dtype=dt), (2, 3, 7, 6)),
    (lambda dt: layers.MaxPool2d(3, 2, 1), (2, 3, 7, 6)),
    (lambda dt: layers.AvgPool2d(2), (2, 3, 7, 6)),
    (lambda dt: layers.GlobalAvgPool2d(), (2, 3, 7, 6)),
    (lambda dt: layers.Flatten(), (2, 3, 7, 6)),
    (lambda dt: layers.Linear(6, 5, dtype=dt), (4, 6)),
    (lambda dt: layers.Dropout(0.5, seed=0), (4, 6)),
    (lambda dt: layers.LogSoftmax(), (4, 6)),
    (lambda dt: layers.GELU(), (2, 3, 7, 6)),
    (lambda dt: layers.GlobalMaxPool2d(), (2, 3, 7, 6)),
    (lambda dt: layers.Scale(0.5), (4, 6)),
]


@pytest.mark.parametrize("make, shape", ALL_LAYERS, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_dtypes_and_non_contiguous_input(backend, make, shape, dtype):
    rng = np.random.default_rng(14)
    layer = make(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(layer.output_shape(shape)).astype(dtype)

    def run(inputs):
        if isinstance(layer, layers.Dropout):
            layer.rng = np.random.default_rng(0)
        y = layer(inputs)
        return y, layer.backward(dy)

    y, dx = run(x)
    assert y.shape == dy.shape and y.dtype == dtype
    assert dx.shape == x.shape and dx.dtype == dtype
    # reductions may sum in another order for another layout
    tol = 1e-6 if dtype == np.float32 else 1e-14
    layouts = {
        "fortran": np.asfortranarray(x),
        "negative strides": np.ascontiguousarray(x[::-1])[::-1],
        "every other element": np.repeat(x, 2, axis=-1)[..., ::2],
    }
    for name, view in layouts.items():
        assert not view.flags.c_contiguous and np.array_equal(view, x), name
        y_view, dx_view = run(view)
        np.testing.assert_allclose(y_view, y, rtol=tol, atol=tol, err_msg=name)
        np.testing.assert_allclose(dx_view, dx, rtol=tol, atol=tol, err_msg=name)


# -- configuration and bad input -------------------------------------------------------

@pytest.mark.parametrize("make, error, fragment", [
    (lambda: layers.Conv2d(3, 0, 3), ValueError, "0"),
    (lambda: layers.Conv2d(0, 3, 3), ValueError, "in_channels"),
    (lambda: layers.Conv2d(3, 4, 0), ValueError, r"kernel_size.*0"),
    (lambda: layers.Conv2d(3, 4, 3, stride=(1, 0)), ValueError, r"stride.*\(1, 0\)"),
    (lambda: layers.Conv2d(3, 4, 3, padding=-1), ValueError, "-1"),
    (lambda: layers.Conv2d(3, 4, 2.5), TypeError, "2.5"),
    (lambda: layers.Conv2d(3.0, 4, 3), TypeError, "3.0"),
    (lambda: layers.Conv2d(3, 4, 3, dtype=np.int32), TypeError, "int32"),
    (lambda: layers.Conv2d(6, 4, 3, groups=4), ValueError, "in_channels 6 is not divisible by groups 4"),
    (lambda: layers.Conv2d(6, 4, 3, groups=3), ValueError, "out_channels 4 is not divisible by groups 3"),
    (lambda: layers.Conv2d(6, 6, 3, groups=0), ValueError, "groups must be a positive int, got 0"),
    (lambda: layers.Conv2d(6, 6, 3, groups=2.0), TypeError, "2.0"),
    (lambda: layers.Linear(4, -2), ValueError, "-2"),
    (lambda: layers.BatchNorm2d(4, momentum=1.5), ValueError, "1.5"),
    (lambda: layers.BatchNorm2d(4, eps=0), ValueError, "eps"),
    (lambda: layers.Dropout(1.2), ValueError, "1.2"),
    (lambda: layers.MaxPool2d(2, padding=2), ValueError, r"\(2, 2\)"),
    (lambda: layers.AvgPool2d(0), ValueError, "0"),
    (lambda: layers.LeakyReLU("a"), TypeError, "'a'"),
])
def test_constructor_rejects_bad_arguments(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_forward_rejects_bad_input(backend):
    conv = layers.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"4-D.*\(3, 8, 8\)"):
        conv(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="int64"):
        conv(np.zeros((1, 3, 8, 8), np.int64))
    with pytest.raises(TypeError, match="float64.*float32"):
        conv(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="3 channels, got 1"):
        conv(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"zero-size.*\(0, 3, 8, 8\)"):
        conv(np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"larger than the padded input"):
        conv(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="list"):
        conv([[1.0]])
    with pytest.raises(ValueError, match="5 features, got 4"):
        layers.Linear(5, 2)(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="2 channels, got 3"):
        layers.BatchNorm2d(2)(np.zeros((2, 3, 2, 2), np.float32))


def test_backward_checks(backend):
    for layer in (layers.Conv2d(1, 1, 1), layers.ReLU(), layers.Linear(2, 2), layers.Dropout()):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.zeros((1, 1, 1, 1), np.float32))
    conv = layers.Conv2d(2, 3, 3)
    conv(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 2\).*\(1, 3, 3, 3\)"):
        conv.backward(np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(TypeError, match="float64"):
        conv.backward(np.zeros((1, 3, 3, 3), np.float64))


# -- initialization ---------------------------------------------------------------------

def test_default_initialization_follows_pytorch_bounds():
    conv = layers.Conv2d(16, 64, 3, seed=0)
    bound = 1 / math.sqrt(16 * 9)
    w = conv.params["weight"]
    assert w.dtype == np.float32 and w.shape == (64, 16, 3, 3)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.03 * bound
    assert np.abs(conv.params["bias"]).max() <= bound
    fc = layers.Linear(400, 30, seed=0)
    assert np.abs(fc.params["weight"]).max() <= 1 / 20 and fc.params["bias"].shape == (30,)
    bn = layers.BatchNorm2d(5)
    assert np.array_equal(bn.params["weight"], np.ones(5)) and not bn.params["bias"].any()
    assert np.array_equal(bn.buffers["running_var"], np.ones(5)) and not bn.buffers["running_mean"].any()


def test_initialization_is_seedable():
    same = [layers.Conv2d(3, 8, 3, seed=5).params["weight"] for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], layers.Conv2d(3, 8, 3, seed=6).params["weight"])
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    assert np.array_equal(layers.Linear(4, 4, seed=rng_a).params["weight"],
                          layers.Linear(4, 4, seed=rng_b).params["weight"])


@pytest.mark.parametrize("fill, expected_std", [
    (lambda a, r: init.kaiming_normal_(a, r, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda a, r: init.kaiming_normal_(a, r, mode="fan_out", nonlinearity="relu"), math.sqrt(2 / (128 * 9))),
    (lambda a, r: init.kaiming_uniform_(a, r, nonlinearity="relu"), math.sqrt(2 / (64 * 9))),
    (lambda a, r: init.xavier_normal_(a, r), math.sqrt(2 / (64 * 9 + 128 * 9))),
    (lambda a, r: init.xavier_uniform_(a, r), math.sqrt(2 / (64 * 9 + 128 * 9))),
])
def test_init_distributions(fill, expected_std):
    array = np.zeros((128, 64, 3, 3), np.float64)
    assert fill(array, np.random.default_rng(0)) is array
    assert abs(array.std() - expected_std) < 0.01 * expected_std
    assert abs(array.mean()) < 0.01 * expected_std


def test_init_gain_and_fans_match_torch(torch):
    for nonlinearity, param in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("linear", None)]:
        assert init.calculate_gain(nonlinearity, param) == pytest.approx(
            torch.nn.init.calculate_gain(nonlinearity, param), rel=1e-12)
    for shape in [(8, 3, 5, 2), (7, 11)]:
        tensor = torch.empty(shape)
        expected = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
        assert init.fans(np.empty(shape)) == expected


def test_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'fan_sideways'"):
        init.kaiming_normal_(np.zeros((2, 2)), 0, mode="fan_sideways")
    with pytest.raises(ValueError, match="'swish'"):
        init.kaiming_uniform_(np.zeros((2, 2)), 0, nonlinearity="swish")
    with pytest.raises(ValueError, match=r"\(5,\)"):
        init.xavier_uniform_(np.zeros(5), 0)
    with pytest.raises(TypeError, match="'seed'"):
        init.kaiming_normal_(np.zeros((2, 2)), "seed")


def test_layer_astype_copies():
    conv = layers.Conv2d(2, 3, 3, seed=0)
    double = conv.astype(np.float64)
    assert double.dtype == np.float64 and conv.dtype == np.float32
    np.testing.assert_array_equal(double.params["weight"], conv.params["weight"])
    double.params["weight"][:] = 0
    assert conv.params["weight"].any()
    assert double.config() == {**conv.config(), "dtype": "float64"}


# -- GELU, global max-pooling, Scale, freezing and the identity and whitening initializations

def test_gelu_global_max_pool_and_scale_gradients(backend):
    rng = np.random.default_rng(21)
    check_gradients(layers.GELU(), rng.standard_normal((2, 3, 4, 5)) * 2)
    check_gradients(layers.GELU(), rng.standard_normal((3, 7)))
    check_gradients(layers.GlobalMaxPool2d(), distinct(rng, (2, 3, 4, 5)))
    check_gradients(layers.GlobalMaxPool2d(), distinct(rng, (1, 2, 1, 1)))
    check_gradients(layers.Scale(1 / 9), rng.standard_normal((4, 6)))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_gelu_global_max_pool_and_scale_match_torch(backend, torch, dtype, tol):
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((3, 4, 5, 6)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    t_x = torch.tensor(x, requires_grad=True)
    t_y = torch.nn.GELU()(t_x)
    t_y.backward(torch.tensor(dy))
    gelu = layers.GELU()
    assert rel_error(gelu(x), t_y.detach().numpy()) < tol
    assert rel_error(gelu.backward(dy), t_x.grad.numpy()) < tol
    pool = layers.GlobalMaxPool2d()
    dy_pool = rng.standard_normal((3, 4)).astype(dtype)
    t_x = torch.tensor(x, requires_grad=True)
    t_y = torch.nn.AdaptiveMaxPool2d(1)(t_x).flatten(1)
    t_y.backward(torch.tensor(dy_pool))
    np.testing.assert_array_equal(pool(x), t_y.detach().numpy())
    np.testing.assert_array_equal(pool.backward(dy_pool), t_x.grad.numpy())
    scale = layers.Scale(1 / 9)
    np.testing.assert_allclose(scale(x), x * dtype(1 / 9), rtol=tol)
    assert scale(x).dtype == dtype and scale.backward(dy).dtype == dtype


def test_global_max_pool_takes_the_first_of_tied_maxima(backend):
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
    pool = layers.GlobalMaxPool2d()
    assert pool(x).shape == (1, 1)
    np.testing.assert_array_equal(pool.backward(np.array([[2.0]])), [[[[0.0, 2.0], [0.0, 0.0]]]])


def test_new_layers_rebuild_from_their_configuration():
    for layer in (layers.GELU(), layers.GlobalMaxPool2d(), layers.Scale(-0.25)):
        clone = layers.LAYER_TYPES[type(layer).__name__](**layer.config())
        assert repr(clone) == repr(layer)
    assert layers.Scale(0.5).config() == {"factor": 0.5}
    for bad, error in (("2", TypeError), (float("inf"), ValueError), (float("nan"), ValueError)):
        with pytest.raises(error, match="factor"):
            layers.Scale(bad)
    with pytest.raises(ValueError, match="4-D"):
        layers.GlobalMaxPool2d()(np.zeros((2, 3)))


def test_a_frozen_parameter_gets_no_gradient_and_the_rest_the_same(backend):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((4, 3, 5, 5))
    dy = rng.standard_normal((4, 3, 5, 5))
    free, partly = layers.BatchNorm2d(3, dtype=np.float64), layers.BatchNorm2d(3, dtype=np.float64)
    assert partly.requires_grad_(False, "weight") is partly and partly.frozen == {"weight"}
    free(x)
    partly(x)
    np.testing.assert_array_equal(partly.backward(dy), free.backward(dy))
    np.testing.assert_array_equal(partly.grads["bias"], free.grads["bias"])
    assert free.grads["weight"].any() and not partly.grads["weight"].any()
    partly.requires_grad_(True)
    assert partly.frozen == frozenset()


def test_a_layer_frozen_whole_computes_no_parameter_gradient(backend):
    rng = np.random.default_rng(24)
    conv = layers.Conv2d(2, 3, 3, padding=1, dtype=np.float64, seed=0).requires_grad_(False)
    assert conv.frozen == {"weight", "bias"}
    x = rng.standard_normal((2, 2, 4, 4))
    dy = rng.standard_normal((2, 3, 4, 4))
    seen = []
    conv.register_backward_hook(lambda layer, dx, g: seen.append(dx))
    conv(x)
    dx = conv.backward(dy)
    assert not conv.grads["weight"].any() and not conv.grads["bias"].any()
    free = layers.Conv2d(2, 3, 3, padding=1, dtype=np.float64, seed=0)
    free(x)
    np.testing.assert_array_equal(dx, free.backward(dy))
    assert conv.backward(dy, need_dx=False) is None and seen[-1] is None
    with pytest.raises(ValueError, match="no parameter 'scale'.*'bias', 'weight'"):
        conv.requires_grad_(False, "scale")
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        conv.requires_grad_(0)
    assert layers.ReLU().requires_grad_(False).frozen == frozenset()


def test_dirac_init_matches_torch_and_passes_the_input_through(backend, torch):
    for shape, groups in (((6, 4, 3, 3), 1), ((4, 6, 3, 5), 1), ((6, 2, 3, 3), 3), ((5, 3, 1, 1), 1),
                          ((4, 3, 3), 1), ((4, 2, 3, 3, 3), 2)):
        ours = init.dirac_(np.full(shape, 7.0), groups)
        theirs = torch.nn.init.dirac_(torch.full(shape, 7.0, dtype=torch.float64), groups)
        np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=str((shape, groups)))
    conv = layers.Conv2d(4, 8, 3, padding=1, bias=False, dtype=np.float64, seed=0)
    init.dirac_(conv.params["weight"][:4])
    x = np.random.default_rng(25).standard_normal((2, 4, 5, 5))
    y = conv(x)
    np.testing.assert_array_equal(y[:, :4], x)
    assert np.abs(y[:, 4:]).sum() > 0  # the rest keep their random filters
    with pytest.raises(ValueError, match="6 output channels do not split into 4 groups"):
        init.dirac_(np.zeros((6, 2, 3, 3)), 4)
    with pytest.raises(ValueError, match="3 to 5 dimensions"):
        init.dirac_(np.zeros((6, 2)))


def test_patch_whitening_makes_the_patches_uncorrelated_with_unit_variance():
    rng = np.random.default_rng(26)
    # Correlated channels and neighbouring pixels, as in photographs.
    base = rng.standard_normal((300, 1, 9, 9))
    smooth = base + np.roll(base, 1, axis=2) + np.roll(base, 1, axis=3)
    images = np.concatenate([smooth, 0.5 * smooth + 0.1 * rng.standard_normal(smooth.shape),
                             rng.standard_normal(smooth.shape) * 3], axis=1)
    weight = init.patch_whitening_(np.zeros((24, 3, 2, 2)), images, eps=1e-9)
    np.testing.assert_array_equal(weight[12:], -weight[:12])
    windows = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(2, 3))
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    whitened = (patches - patches.mean(axis=0)) @ weight[:12].reshape(12, -1).T
    np.testing.assert_allclose(np.cov(whitened.T), np.eye(12), atol=1e-6)
    # The same filters as a convolution, as the network applies them.
    conv = layers.Conv2d(3, 24, 2, bias=False, dtype=np.float64)
    conv.params["weight"][...] = weight
    out = conv(images)[:, :12].transpose(0, 2, 3, 1).reshape(-1, 12)
    np.testing.assert_allclose(np.cov(out.T), np.eye(12), atol=1e-6)
    # Components are in decreasing order of variance, eps damps the weak ones.
    damped = init.patch_whitening_(np.zeros((24, 3, 2, 2)), images, eps=1.0)
    variances = np.diag(np.cov(((patches - patches.mean(axis=0)) @ damped[:12].reshape(12, -1).T).T))
    assert (np.diff(variances) <= 1e-12).all() and variances[-1] < 0.5 < variances[0] < 1


def test_patch_whitening_refuses_what_it_cannot_use():
    images = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="24 filters"):
        init.patch_whitening_(np.zeros((12, 3, 2, 2)), images)
    with pytest.raises(ValueError, match="images have 1 channels"):
        init.patch_whitening_(np.zeros((24, 3, 2, 2)), np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="no 2x2 patch"):
        init.patch_whitening_(np.zeros((24, 3, 2, 2)), np.zeros((2, 3, 1, 4)))
    with pytest.raises(ValueError, match="eps"):
        init.patch_whitening_(np.zeros((24, 3, 2, 2)), images, eps=0.0)
