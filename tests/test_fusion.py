"""Evaluation-mode fusion (fastconv.nn.fuse): a convolution with the batch
norm folded into it, and its ReLU, the batch norm after that and a max-pool
in its output pass, against the same model run layer by layer."""
import copy

import numpy as np
import pytest

from fastconv import _kernels, models, reference
from fastconv import backend as backend_module
from fastconv.nn import fuse, layers, losses
from fastconv.nn.graph import Add, Graph
from fastconv.nn.model import Sequential
from fastconv.optim import SGD

TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def randomize_batch_norms(model, rng):
    """Statistics and affine parameters far from the defaults, so that a
    batch norm left out or applied twice shows."""
    for _, layer in model.named_layers():
        if isinstance(layer, layers.BatchNorm2d):
            c = layer.num_features
            layer.params["weight"][:] = rng.uniform(0.5, 1.5, c)
            layer.params["bias"][:] = rng.standard_normal(c)
            layer.buffers["running_mean"][:] = rng.standard_normal(c)
            layer.buffers["running_var"][:] = rng.uniform(0.2, 3.0, c)
    return model


def chain(dtype, seed=0, bias=True):
    """Every pattern: conv-BN, conv-BN-ReLU, conv-ReLU-BN, conv-ReLU, and a grouped conv-BN."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("c1", layers.Conv2d(3, 4, 3, padding=1, dtype=dtype, seed=rng, bias=bias)),
        ("b1", layers.BatchNorm2d(4, dtype=dtype)),
        ("c2", layers.Conv2d(4, 6, 3, padding=1, dtype=dtype, seed=rng)),
        ("b2", layers.BatchNorm2d(6, dtype=dtype)),
        ("r2", layers.ReLU()),
        ("c3", layers.Conv2d(6, 6, 3, stride=2, padding=1, dtype=dtype, seed=rng)),
        ("r3", layers.ReLU()),
        ("b3", layers.BatchNorm2d(6, dtype=dtype)),
        ("c4", layers.Conv2d(6, 6, 3, padding=1, dtype=dtype, seed=rng, groups=3)),
        ("b4", layers.BatchNorm2d(6, dtype=dtype)),
        ("c5", layers.Conv2d(6, 4, 1, dtype=dtype, seed=rng)),
        ("r5", layers.ReLU()),
        ("flat", layers.Flatten()),
        ("fc", layers.Linear(4 * 4 * 4, 5, dtype=dtype, seed=rng)),
    )
    return randomize_batch_norms(model, rng)


def inputs(shape, dtype, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def unfused(model, x):
    model.inference_fusion = False
    try:
        return model.predict(x)
    finally:
        model.inference_fusion = True


def assert_close(actual, expected, dtype):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[dtype] * scale)


# -- the epilogue kernel ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 16, 8, 8), (1, 33, 1, 3)])
def test_epilogue_kernel_matches_its_twin_and_the_layers(dtype, relu, affine, shape):
    rng = np.random.default_rng(sum(shape))
    y = rng.standard_normal(shape).astype(dtype)
    y.flat[0] = np.nan
    c = shape[1]
    scale = rng.uniform(-2, 2, c).astype(dtype) if affine else None
    shift = rng.standard_normal(c).astype(dtype) if affine else None
    expected = reference.relu_forward(y) if relu else y.copy()
    if affine:
        expected = expected * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    twin, compiled = y.copy(), y.copy()
    assert reference.conv2d_epilogue(twin, relu, scale, shift) is twin
    assert _kernels.conv2d_epilogue(compiled, relu, scale, shift) is compiled
    np.testing.assert_allclose(twin, expected, rtol=TOLERANCE[dtype] * 10)
    np.testing.assert_allclose(compiled, twin, rtol=TOLERANCE[dtype] * 10)
    assert np.isnan(compiled.flat[0]) and np.isnan(twin.flat[0])  # NaN passes the ReLU, as relu_forward's


def bad_epilogue_calls():
    y = np.zeros((2, 3, 4, 4), np.float32)
    s = np.ones(3, np.float32)
    read_only = y.copy()
    read_only.flags.writeable = False
    return [
        ((y.astype(np.float16), False, None, None), TypeError, "float32 or float64"),
        ((y[0], False, None, None), ValueError, "4-D"),
        ((y[:, :, ::2], False, None, None), ValueError, "C-contiguous"),
        ((read_only, False, None, None), ValueError, "writeable"),
        (([[[[0.0]]]], False, None, None), TypeError, "numpy.ndarray"),
        ((y, 1, None, None), TypeError, "relu must be a bool"),
        ((y, False, s, None), ValueError, "scale and shift go together"),
        ((y, False, None, s), ValueError, "scale and shift go together"),
        ((y, False, s.astype(np.float64), s), TypeError, "scale has dtype float64"),
        ((y, False, s, np.ones(4, np.float32)), ValueError, "shift has shape (4,)"),
        ((y, False, s.reshape(3, 1), s), ValueError, "scale must be 1-D"),
        ((y, False, s, [1.0, 2.0, 3.0]), TypeError, "shift must be a numpy.ndarray"),
    ]


@pytest.mark.parametrize("module", [reference, _kernels], ids=["numpy", "compiled"])
@pytest.mark.parametrize("case", range(len(bad_epilogue_calls())))
def test_epilogue_kernel_refuses_bad_arguments_with_one_clear_error(module, case):
    args, error, message = bad_epilogue_calls()[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        module.conv2d_epilogue(*args)


def test_epilogue_fuzz_never_crashes():
    rng = np.random.default_rng(5)
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(0, 4, rng.integers(1, 6)))
        dtype = rng.choice([np.float32, np.float64, np.int32])
        y = np.zeros(shape, dtype)
        c = int(rng.integers(0, 5))
        scale = None if rng.random() < 0.3 else np.ones(c, rng.choice([np.float32, np.float64]))
        shift = None if rng.random() < 0.3 else np.ones(c, rng.choice([np.float32, np.float64]))
        outcomes = []
        for module in (reference, _kernels):
            try:
                module.conv2d_epilogue(y.copy(), bool(rng.random() < 0.5), scale, shift)
                outcomes.append(None)
            except (TypeError, ValueError) as error:
                outcomes.append(type(error))
        assert outcomes[0] == outcomes[1], (shape, dtype, c, scale, shift)


# -- the epilogue with a max-pool -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu,affine", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("shape,window", [
    ((2, 3, 8, 8), (2, None, 0)),      # the common 2x2 window, stride 2
    ((1, 4, 7, 9), (2, None, 0)),      # odd planes: the last row and column are left out
    ((2, 2, 6, 6), (3, 2, 1)),         # padded, overlapping windows
    ((1, 3, 5, 4), ((2, 3), (1, 2), (1, 1))),
    ((3, 1, 1, 1), (1, None, 0)),
])
def test_epilogue_maxpool_is_the_epilogue_then_the_max_pool(dtype, relu, affine, shape, window):
    rng = np.random.default_rng(sum(shape))
    y = rng.standard_normal(shape).astype(dtype)
    y.flat[1 % y.size] = np.nan
    c = shape[1]
    scale = rng.uniform(-2, 2, c).astype(dtype) if affine else None
    shift = rng.standard_normal(c).astype(dtype) if affine else None
    before = y.copy()
    expected, _ = reference.maxpool2d_forward(reference.conv2d_epilogue(y.copy(), relu, scale, shift), *window)
    for module in (reference, _kernels):
        got = module.epilogue_maxpool(y, *window, relu, scale, shift)
        assert got.shape == expected.shape and got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=TOLERANCE[dtype] * 10)  # NaN where expected has NaN
        np.testing.assert_array_equal(y, before)  # y is read, not changed
    # Without the epilogue it is the max-pool of inference: the same bits as maxpool2d_forward's values.
    np.testing.assert_array_equal(_kernels.epilogue_maxpool(y, *window), _kernels.maxpool2d_forward(y, *window)[0])


def bad_epilogue_maxpool_calls():
    y = np.zeros((2, 3, 4, 4), np.float32)
    s = np.ones(3, np.float32)
    return [
        ((y.astype(np.float16), 2), {}, TypeError, "float32 or float64"),
        ((y[0], 2), {}, ValueError, "4-D"),
        ((y, 5), {}, ValueError, "5"),
        ((y, 2, 0), {}, ValueError, "stride"),
        ((y, 2), {"relu": 1}, TypeError, "relu must be a bool"),
        ((y, 2), {"scale": s}, ValueError, "scale and shift go together"),
        ((y, 2), {"scale": s, "shift": np.ones(4, np.float32)}, ValueError, "shift has shape (4,)"),
        ((y, 2), {"scale": s.astype(np.float64), "shift": s}, TypeError, "scale has dtype float64"),
    ]


@pytest.mark.parametrize("module", [reference, _kernels], ids=["numpy", "compiled"])
@pytest.mark.parametrize("case", range(len(bad_epilogue_maxpool_calls())))
def test_epilogue_maxpool_refuses_bad_arguments_with_one_clear_error(module, case):
    args, kwargs, error, message = bad_epilogue_maxpool_calls()[case]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        module.epilogue_maxpool(*args, **kwargs)


def test_a_read_only_or_strided_input_is_pooled_like_a_contiguous_one():
    y = np.random.default_rng(0).standard_normal((2, 3, 8, 10)).astype(np.float32)
    strided = y[:, :, :, ::2]
    read_only = y.copy()
    read_only.flags.writeable = False
    for module in (reference, _kernels):
        np.testing.assert_array_equal(module.epilogue_maxpool(strided, 2, relu=True),
                                      module.epilogue_maxpool(np.ascontiguousarray(strided), 2, relu=True))
        np.testing.assert_array_equal(module.epilogue_maxpool(read_only, 2), module.epilogue_maxpool(y, 2))


def pooled_chain(dtype, seed=0):
    """The groups that end in a max-pool: conv-ReLU-BN-pool (cifar6's), conv-BN-ReLU-pool on an
    odd plane, conv-pool with a padded 3x3 window, conv-ReLU-pool (mnist2's)."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("c1", layers.Conv2d(3, 4, 3, padding=1, dtype=dtype, seed=rng)),
        ("r1", layers.ReLU()),
        ("b1", layers.BatchNorm2d(4, dtype=dtype)),
        ("p1", layers.MaxPool2d(2)),
        ("c2", layers.Conv2d(4, 5, 2, dtype=dtype, seed=rng)),
        ("b2", layers.BatchNorm2d(5, dtype=dtype)),
        ("r2", layers.ReLU()),
        ("p2", layers.MaxPool2d(2)),
        ("c3", layers.Conv2d(5, 6, 3, padding=1, dtype=dtype, seed=rng)),
        ("p3", layers.MaxPool2d(3, stride=2, padding=1)),
        ("c4", layers.Conv2d(6, 6, 1, dtype=dtype, seed=rng)),
        ("r4", layers.ReLU()),
        ("p4", layers.MaxPool2d(2)),
        ("flat", layers.Flatten()),
        ("fc", layers.Linear(6, 3, dtype=dtype, seed=rng)),
    )
    return randomize_batch_norms(model, rng)


def test_the_plan_takes_the_max_pool_into_the_group():
    model = pooled_chain(np.float64).eval()
    groups = list(fuse.plan(model).groups.values())
    assert [g.names for g in groups] == [("c1", "r1", "b1", "p1"), ("c2", "b2", "r2", "p2"), ("c3", "p3"),
                                         ("c4", "r4", "p4")]
    assert all(g.pool is model.layer(g.names[-1]) for g in groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooled_groups_equal_the_unfused_model(backend, dtype):
    model = pooled_chain(dtype)
    x = inputs((3, 3, 16, 16), dtype)
    assert_close(model.predict(x, batch_size=2), unfused(model, x), dtype)


def test_a_pool_that_does_not_fit_is_the_unfused_error():
    model = Sequential(("conv", layers.Conv2d(1, 2, 3, dtype=np.float64)), ("pool", layers.MaxPool2d(4)))
    x = inputs((1, 1, 4, 4), np.float64)  # the convolution's 2x2 output is smaller than the window
    messages = []
    for fusion in (True, False):
        model.inference_fusion = fusion
        with pytest.raises(ValueError) as caught:
            model.predict(x)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "pool" in messages[0]


def test_an_unfused_max_pool_infers_without_its_argmax(monkeypatch):
    pool = layers.MaxPool2d(2)
    x = inputs((2, 3, 6, 6), np.float32)
    expected = pool.forward(x)

    def refuse(*args, **kwargs):
        raise AssertionError("inference computed the argmax")

    # The kernel that computes the argmax is not called by an inference pass.
    monkeypatch.setattr(backend_module.current(), "maxpool2d_forward", refuse)
    np.testing.assert_array_equal(pool.infer(x), expected)


# -- which layers fuse -----------------------------------------------------------


def group_kinds(model):
    model.eval()
    steps = fuse.plan(model)
    assert steps is not None
    return [(g.names, g.folded is not None, g.relu, g.affine is not None) for g in steps.groups.values()]


def test_the_plan_finds_every_pattern():
    assert group_kinds(chain(np.float64)) == [
        (("c1", "b1"), True, False, False),
        (("c2", "b2", "r2"), True, True, False),
        (("c3", "r3", "b3"), False, True, True),
        (("c4", "b4"), True, False, False),
        (("c5", "r5"), False, True, False),
    ]


def test_nothing_fuses_in_training_mode_batch_norms_or_when_turned_off():
    model = chain(np.float64)
    model.eval()
    model.layer("b1").train()  # a batch norm in training mode is not folded
    kinds = [g.names for g in fuse.plan(model).groups.values()]
    assert ("c1",) not in kinds and kinds[0] == ("c2", "b2", "r2")
    model.inference_fusion = False
    assert fuse.plan(model) is None


def test_relu6_and_subclasses_do_not_fuse():
    class MyReLU(layers.ReLU):
        pass

    model = Sequential(layers.Conv2d(1, 2, 3, dtype=np.float64), layers.ReLU6(),
                       layers.Conv2d(2, 2, 3, dtype=np.float64), MyReLU())
    model.eval()
    assert fuse.plan(model) is None


# -- fused against unfused -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_predict_equals_the_unfused_model(backend, dtype, bias):
    model = chain(dtype, bias=bias)
    x = inputs((3, 3, 8, 8), dtype)
    before = model.state_dict()
    expected = unfused(model, x)
    assert_close(model.predict(x, batch_size=2), expected, dtype)
    # The fold is a copy: the model's own parameters and buffers are untouched.
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("net,shape", [("cifar6", (2, 3, 32, 32)), ("mnist2", (2, 1, 28, 28))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_zoo_nets_fused_equal_unfused(net, shape, dtype):
    model = getattr(models, net)(seed=0).astype(dtype)
    randomize_batch_norms(model, np.random.default_rng(2))
    x = inputs(shape, dtype)
    assert len(fuse.plan(model.eval()) or ()) > 0
    assert_close(model.predict(x), unfused(model, x), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resnet20_graph_fused_equals_unfused(dtype):
    model = models.resnet20(seed=0).astype(dtype)
    randomize_batch_norms(model, np.random.default_rng(3))
    steps = fuse.plan(model.eval())
    # Every convolution of a CIFAR ResNet is followed by its batch norm.
    assert len(steps) == sum(type(layer) is layers.Conv2d for layer in model)
    x = inputs((2, 3, 32, 32), dtype)
    assert_close(model.predict(x), unfused(model, x), dtype)


def small_graph(dtype=np.float64, output=None):
    """conv1 feeds both bn1 and the skip connection, so it must not fuse;
    conv2 -> bn2 -> relu2 does."""
    rng = np.random.default_rng(4)
    g = Graph()
    g.add("conv1", layers.Conv2d(2, 3, 3, padding=1, dtype=dtype, seed=rng), g.input)
    g.add("bn1", layers.BatchNorm2d(3, dtype=dtype), "conv1")
    g.add("conv2", layers.Conv2d(3, 3, 3, padding=1, dtype=dtype, seed=rng), "bn1")
    g.add("bn2", layers.BatchNorm2d(3, dtype=dtype), "conv2")
    g.add("relu2", layers.ReLU(), "bn2")
    g.add("add", Add(), "relu2", "conv1")
    g.add("flat", layers.Flatten(), "add")
    if output is not None:
        g.output = output
    return randomize_batch_norms(g, rng)


def test_graph_fuses_only_single_consumer_chains():
    g = small_graph()
    assert [steps.names for steps in fuse.plan(g.eval()).groups.values()] == [("conv2", "bn2", "relu2")]
    x = inputs((2, 2, 5, 5), np.float64)
    assert_close(g.predict(x), unfused(g, x), np.float64)


def test_graph_output_inside_a_chain_stops_the_group():
    g = small_graph(output="bn2")
    assert [steps.names for steps in fuse.plan(g.eval()).groups.values()] == [("conv2", "bn2")]
    x = inputs((2, 2, 5, 5), np.float64)
    assert_close(g.predict(x), unfused(g, x), np.float64)


# -- modes and parameter changes -------------------------------------------------


def test_train_after_fused_inference_is_the_unfused_model():
    model = chain(np.float64)
    fresh = copy.deepcopy(model)
    x = inputs((4, 3, 8, 8), np.float64)
    y = np.array([0, 1, 2, 3])
    model.eval()
    model.predict(x)
    model.train()
    fresh.train()
    for m in (model, fresh):
        m.zero_grad()
        loss = losses.CrossEntropyLoss()(m(x), y)
        loss.backward()
    np.testing.assert_array_equal(model(x), fresh(x))
    for key, grad in fresh.gradients().items():
        np.testing.assert_array_equal(model.gradients()[key], grad)
    # Evaluation-mode forward and backward (what the analysis tools run) are unfused too.
    model.eval()
    fresh.eval()
    np.testing.assert_array_equal(model(x), fresh(x))
    np.testing.assert_array_equal(model.backward(np.ones((4, 5))), fresh.backward(np.ones((4, 5))))


@pytest.mark.parametrize("graph", [False, True])
def test_parameter_updates_after_eval_train_eval_are_seen(graph):
    model = models.resnet20(seed=0).astype(np.float64) if graph else chain(np.float64)
    shape = (4, 3, 32, 32) if graph else (4, 3, 8, 8)
    x = inputs(shape, np.float64)
    y = np.array([0, 1, 2, 3])
    first = model.eval().predict(x)
    model.train()
    opt = SGD(model.parameters(), lr=0.5)
    for _ in range(2):  # moves the weights and the running statistics
        opt.zero_grad()
        losses.CrossEntropyLoss()(model(x), y).backward()
        opt.step()
    model.eval()
    second = model.predict(x)
    assert np.abs(second - first).max() > 1e-3
    assert_close(second, unfused(model, x), np.float64)
    # A change made by hand in evaluation mode, between two calls, is seen as well.
    conv = model.layer("conv1" if graph else "c1")
    conv.params["weight"] *= 0.5
    assert_close(model.predict(x), unfused(model, x), np.float64)


# -- hooks -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["c2", "b2", "r2", "c5"])
def test_a_hook_on_a_layer_sees_exactly_the_unfused_pass(where):
    model = chain(np.float64)
    x = inputs((2, 3, 8, 8), np.float64)
    seen = []
    # A forward hook anywhere turns fusion off: the hooked layer's input comes
    # from the groups before it, which round differently when fused.
    handle = model.layer(where).register_forward_hook(lambda layer, inp, out: seen.append((inp.copy(), out.copy())))
    assert fuse.plan(model.eval()) is None
    fused_output = model.predict(x)
    hooked = list(seen)
    seen.clear()
    expected_output = unfused(model, x)
    assert len(hooked) == len(seen) == 1
    np.testing.assert_array_equal(hooked[0][0], seen[0][0])
    np.testing.assert_array_equal(hooked[0][1], seen[0][1])
    np.testing.assert_array_equal(fused_output, expected_output)
    handle.remove()
    assert fuse.plan(model) is not None


@pytest.mark.parametrize("where", ["c2", "b2", "r2"])
def test_a_backward_hook_keeps_its_layer_out_of_the_groups(where):
    model = chain(np.float64)
    model.layer(where).register_backward_hook(lambda layer, dx, dy: None)
    names = [g.names for g in fuse.plan(model.eval()).groups.values()]
    assert names[0] == ("c1", "b1") and all(where not in group for group in names)
    x = inputs((2, 3, 8, 8), np.float64)
    assert_close(model.predict(x), unfused(model, x), np.float64)


def test_a_model_forward_hook_sees_every_layer():
    model = chain(np.float64)
    seen = []
    model.register_forward_hook(lambda name, layer, out: seen.append(name))
    assert fuse.plan(model.eval()) is None
    model.predict(inputs((1, 3, 8, 8), np.float64))
    assert seen == [name for name, _ in model.named_layers()]


def test_the_option_survives_astype_and_copies():
    model = chain(np.float64)
    model.inference_fusion = False
    assert model.astype(np.float32).inference_fusion is False
    assert copy.deepcopy(model).inference_fusion is False
    g = small_graph()
    g.inference_fusion = False
    assert g.astype(np.float32).inference_fusion is False
