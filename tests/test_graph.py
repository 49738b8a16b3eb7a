"""Graph models: passes, branch gradients, hooks, state and files, against PyTorch and numerical gradients."""
import copy

import numpy as np
import pytest

import fastconv
from fastconv.nn import (
    Add,
    BatchNorm2d,
    Concat,
    Conv2d,
    CrossEntropyLoss,
    Flatten,
    Graph,
    Identity,
    Linear,
    ReLU,
)
from fastconv.optim import SGD

torch = pytest.importorskip("torch")
F = torch.nn.functional


def branching(dtype=np.float64, seed=0):
    """relu1's output is read by three nodes (two convolutions and the Add), and conv1's by two."""
    rng = np.random.default_rng(seed)
    g = Graph()
    a = g.add("conv1", Conv2d(3, 4, 3, padding=1, dtype=dtype, seed=rng))
    b = g.add("relu1", ReLU(), a)
    c1 = g.add("block.conv2", Conv2d(4, 4, 3, padding=1, dtype=dtype, seed=rng), b)
    c2 = g.add("block.conv3", Conv2d(4, 4, 1, dtype=dtype, seed=rng), b)
    s = g.add("add", Add(), c1, c2, b)
    g.add("cat", Concat(), s, a)
    g.add("flat", Flatten())
    g.add("fc", Linear(8 * 5 * 5, 3, dtype=dtype, seed=rng))
    return g


def torch_twin(state, x):
    w = {k: torch.tensor(v, requires_grad=True) for k, v in state.items()}
    tx = torch.tensor(x, requires_grad=True)
    a = F.conv2d(tx, w["conv1.weight"], w["conv1.bias"], padding=1)
    b = F.relu(a)
    s = (F.conv2d(b, w["block.conv2.weight"], w["block.conv2.bias"], padding=1)
         + F.conv2d(b, w["block.conv3.weight"], w["block.conv3.bias"]) + b)
    y = F.linear(torch.cat([s, a], 1).flatten(1), w["fc.weight"], w["fc.bias"])
    return tx, w, y


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_branch_gradients_match_pytorch(dtype, tol):
    g = branching(dtype)
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(dtype)
    y = g(x)
    dy = np.random.default_rng(2).normal(size=y.shape).astype(dtype)
    g.zero_grad()
    dx = g.backward(dy)
    tx, w, ty = torch_twin(g.state_dict(), x)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=tol, atol=tol)
    for key, grad in g.gradients().items():
        np.testing.assert_allclose(grad, w[key].grad.numpy(), rtol=tol, atol=tol, err_msg=key)


def test_branch_gradient_matches_numerical_gradient():
    g = branching()
    x = np.random.default_rng(3).normal(size=(1, 3, 5, 5))
    dy = np.random.default_rng(4).normal(size=(1, 3))
    g(x)
    dx = g.backward(dy)
    numeric = np.zeros_like(x)
    eps = 1e-6
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = ((g.predict(plus) - g.predict(minus)) * dy).sum() / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-8)


def test_partial_passes_run_only_what_the_node_needs():
    g = branching()
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 5))
    conv3 = g["block.conv3"]
    before = conv3._passes
    h = g.forward(x, until="block.conv2")
    assert conv3._passes == before  # not an ancestor of block.conv2
    np.testing.assert_allclose(h, g.forward(x)[:0].sum() + _conv2_of(g, x))
    g.forward(x, until="block.conv2")
    grad = g.backward(np.ones_like(h), start="block.conv2")
    assert grad.shape == x.shape
    with pytest.raises(RuntimeError, match="'add' needs a forward pass through it.*'block.conv2'"):
        g.backward(np.ones((2, 4, 5, 5)), start="add")


def _conv2_of(g, x):
    relu = np.maximum(g["conv1"].infer(x), 0)
    return g["block.conv2"].infer(relu)


def test_training_backward_skips_the_input_gradient_and_matches_the_full_pass():
    g = branching()
    x = np.random.default_rng(6).normal(size=(2, 3, 5, 5))
    dy = np.random.default_rng(7).normal(size=(2, 3))
    g(x)
    g.zero_grad()
    g.backward(dy)
    full = {k: v.copy() for k, v in g.gradients().items()}
    g(x)
    g.zero_grad()
    assert g.backward(dy, input_grad=False) is None
    for key, grad in g.gradients().items():
        np.testing.assert_array_equal(grad, full[key])
    g(x)
    g.zero_grad()
    g.backward(dy, param_grads=False)
    assert all(not grad.any() for grad in g.gradients().values())


def test_loss_backward_and_an_optimizer_step_train_a_graph():
    g = branching(np.float32)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 3, 5, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=8)
    loss_fn = CrossEntropyLoss()
    optimizer = SGD(g.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        g.zero_grad()
        loss = loss_fn(g(x), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_hooks_see_every_node_and_a_merge_hook_can_replace_its_gradients():
    g = branching()
    x = np.random.default_rng(9).normal(size=(2, 3, 5, 5))
    seen, backward_seen = [], []
    handle = g.register_forward_hook(lambda name, layer, out: seen.append(name))
    back = g.register_backward_hook(lambda name, layer, gin, gout: backward_seen.append(name))
    y = g(x)
    assert seen == [name for name, _ in g.named_layers()]
    g.backward(np.ones_like(y))
    assert backward_seen == list(reversed(seen))
    handle.remove()
    back.remove()
    # Zeroing the gradient the Add sends to its third input leaves only the convolutions' paths.
    g.zero_grad()
    y = g(x)
    g["add"].register_backward_hook(lambda layer, gin, gout: [gin[0], gin[1], np.zeros_like(gin[2])])
    g.backward(np.ones_like(y))
    state = g.state_dict()
    tx, w, ty = torch_twin(state, x)
    b = F.relu(F.conv2d(tx, w["conv1.weight"], w["conv1.bias"], padding=1))
    s = (F.conv2d(b, w["block.conv2.weight"], w["block.conv2.bias"], padding=1)
         + F.conv2d(b, w["block.conv3.weight"], w["block.conv3.bias"]) + b.detach())
    a = F.conv2d(tx, w["conv1.weight"], w["conv1.bias"], padding=1)
    F.linear(torch.cat([s, a], 1).flatten(1), w["fc.weight"], w["fc.bias"]).sum().backward()
    np.testing.assert_allclose(g.gradients()["conv1.weight"], w["conv1.weight"].grad.numpy(), rtol=1e-10)


def test_state_dict_save_load_astype_and_modes(tmp_path):
    g = branching(np.float32)
    g.add("bn", BatchNorm2d(4), "add")
    g.output = "fc"
    g.meta["classes"] = ["a", "b", "c"]
    assert "block.conv2.weight" in g.state_dict() and "bn.running_var" in g.state_dict()
    x = np.random.default_rng(10).normal(size=(2, 3, 5, 5)).astype(np.float32)
    path = fastconv.save(g.eval(), tmp_path / "g.npz")
    loaded = fastconv.load(path)
    assert isinstance(loaded, Graph) and loaded.output == "fc" and not loaded.training
    assert loaded.meta == g.meta and loaded.inputs("add") == ("block.conv2", "block.conv3", "relu1")
    np.testing.assert_array_equal(loaded.predict(x), g.predict(x))
    wide = g.astype(np.float64)
    assert wide.dtype == np.float64 and wide.output == "fc" and not wide.training
    np.testing.assert_allclose(wide.predict(x.astype(np.float64)), g.predict(x), rtol=1e-4, atol=1e-5)
    twin = copy.deepcopy(g)
    np.testing.assert_array_equal(twin.predict(x), g.predict(x))
    assert g.train().training and all(layer.training for layer in g)
    summary = g.summary((2, 3, 5, 5))
    assert "add (Add) <- block.conv2, block.conv3, relu1" in summary and "bn (BatchNorm2d) <- add" in summary


def test_identity_and_concat_of_one_input():
    g = Graph()
    g.add("id", Identity())
    g.add("cat", Concat(), "id")
    x = np.arange(8.0, dtype=np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(g(x), x)
    np.testing.assert_array_equal(g.backward(np.ones_like(x)), np.ones_like(x))


@pytest.mark.parametrize("build, error, match", [
    (lambda g: g.add("a", ReLU(), "nowhere"), ValueError, "reads 'nowhere', which is not a node"),
    (lambda g: (g.add("a", ReLU()), g.add("a", ReLU())), ValueError, "duplicate node name 'a'"),
    (lambda g: g.add("input", ReLU()), ValueError, "other than 'input'"),
    (lambda g: g.add("a..b", ReLU()), ValueError, "'a..b'"),
    (lambda g: g.add("s", Add(), "input"), ValueError, "at least 2 inputs, got 1"),
    (lambda g: (g.add("a", ReLU()), g.add("b", ReLU(), "a", "input")), ValueError, "takes one input, got 2"),
    (lambda g: g.add("a", "relu"), TypeError, "expected a Layer"),
])
def test_bad_structure_is_refused_with_a_message(build, error, match):
    with pytest.raises(error, match=match):
        build(Graph())


def test_a_layer_object_is_one_node_and_mismatched_adds_name_the_shapes():
    g = Graph()
    relu = ReLU()
    g.add("a", relu)
    with pytest.raises(ValueError, match="already a node"):
        g.add("b", relu)
    g.add("pool", fastconv.nn.MaxPool2d(2), "input")
    g.add("sum", Add(), "a", "pool")
    with pytest.raises(ValueError, match=r"layer 'sum' \(Add\): Add needs inputs of one shape, got \(1, 2, 4, 4\), "
                                         r"\(1, 2, 2, 2\)"):
        g(np.zeros((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="no nodes yet"):
        Graph()(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="indexed by a node's position or name"):
        g[0:1]
