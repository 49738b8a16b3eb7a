"""What people coming from PyTorch reach for first, checked against PyTorch
or against fastconv's explicit API; and ``help()`` on the public modules."""
import copy
import gc
import importlib
import inspect
import json
import pickle
import pkgutil
import pydoc
import re
import weakref

import numpy as np
import pytest

from fastconv import optim
from fastconv.nn import layers, losses
from fastconv.nn.model import Sequential

# help(): every public module says what it exports, and documents it

def public_modules():
    names = ["fastconv"]
    for package in ("fastconv.nn", "fastconv.optim", "fastconv.data"):
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")]
    return names


def documented(cls, attr):
    """The docstring ``attr`` of class ``cls`` has in fastconv's own code (its own or a base's)."""
    for base in cls.__mro__:
        if base.__module__.split(".")[0] != "fastconv" or attr not in vars(base):
            continue
        value = vars(base)[attr]
        value = getattr(value, "__func__", value)  # staticmethod, classmethod
        doc = value.__doc__ if isinstance(value, property) or inspect.isfunction(value) else None
        if doc and doc.strip():
            return True
    return False


def undocumented_members(cls):
    """Public methods, properties and __call__ of cls whose help() would show no docstring."""
    missing = []
    for attr in dir(cls):
        if attr.startswith("_") and attr != "__call__":
            continue
        value = inspect.getattr_static(cls, attr)
        if isinstance(value, (property, staticmethod, classmethod)) or inspect.isfunction(value):
            if not documented(cls, attr):
                missing.append(f"{cls.__module__}.{cls.__qualname__}.{attr}")
    return missing


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_declares_and_documents_what_it_exports(name):
    module = importlib.import_module(name)
    assert module.__doc__ and module.__doc__.strip(), f"{name} has no docstring"
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    missing = [export for export in module.__all__ if not hasattr(module, export)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"
    # Imported helpers (np, math, copy, ...) are not part of the API.
    foreign = [export for export in module.__all__ if inspect.ismodule(getattr(module, export))
               and not getattr(module, export).__name__.startswith("fastconv.")]
    assert not foreign, f"{name}.__all__ exports other packages' modules: {foreign}"
    undocumented = []
    own = {key: value for key, value in vars(module).items()
           if not key.startswith("_") and getattr(value, "__module__", None) == name}
    exported = {export: getattr(module, export) for export in module.__all__}
    for key, value in {**own, **exported}.items():
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        if not (value.__doc__ and value.__doc__.strip()):
            undocumented.append(f"{name}.{key}")
        if inspect.isclass(value):
            undocumented += undocumented_members(value)
    assert sorted(undocumented) == []


@pytest.mark.parametrize("name", sorted({f"{module}.{export}" for module in public_modules()
                                         for export in importlib.import_module(module).__all__
                                         if inspect.isclass(getattr(importlib.import_module(module), export))}))
def test_help_shows_no_source_comment_as_documentation(name):
    # pydoc falls back on the comment lines just above a def without a
    # docstring: a section divider would be shown as the method's help.
    module, _, export = name.rpartition(".")
    text = pydoc.render_doc(getattr(importlib.import_module(module), export), renderer=pydoc.plaintext)
    dividers = [line.strip() for line in text.splitlines() if re.search(r"#\s*[-=]{2,}", line)]
    assert dividers == []


# loss = loss_fn(model(x), y); loss.backward(); opt.step()

def small_model(dtype=np.float64, seed=0):
    return Sequential(
        layers.Conv2d(2, 4, 3, padding=1, dtype=dtype, seed=seed),
        layers.ReLU(),
        layers.BatchNorm2d(4, dtype=dtype),
        layers.MaxPool2d(2),
        layers.Flatten(),
        layers.Linear(36, 3, dtype=dtype, seed=seed + 1),
    )


def torch_twin(torch):
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(36, 3)).double()


def batch(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((5, 2, 6, 6)).astype(dtype), rng.integers(0, 3, 5)


def pytorch_way(model, opt, loss_fn, x, y):
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_grad", [False, True])
def test_a_step_the_pytorch_way_is_the_explicit_step_bit_for_bit(backend, dtype, input_grad):
    x, y = batch(dtype)
    ours, explicit = small_model(dtype), small_model(dtype)
    opt, opt_explicit = optim.Adam(ours.parameters(), lr=1e-2), optim.Adam(explicit, lr=1e-2)
    loss_fn, loss_explicit = losses.CrossEntropyLoss(), losses.CrossEntropyLoss()
    for step in range(3):
        value = pytorch_way(ours, opt, loss_fn, x, y)
        opt_explicit.zero_grad()
        expected = loss_explicit(explicit.forward(x), y)
        explicit.backward(loss_explicit.backward(), input_grad=input_grad)
        opt_explicit.step()
        assert float(value) == float(expected)
        for key, grad in ours.gradients().items():
            np.testing.assert_array_equal(grad, explicit.gradients()[key], err_msg=f"step {step} {key}")
        for key, param in ours.state_dict().items():
            np.testing.assert_array_equal(param, explicit.state_dict()[key], err_msg=f"step {step} {key}")


@pytest.mark.parametrize("make_opt, make_torch_opt", [
    (lambda p: optim.SGD(p, lr=0.1, momentum=0.9), lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda p: optim.AdamW(p, lr=1e-2), lambda t, p: t.optim.AdamW(p, lr=1e-2)),
], ids=["sgd-momentum", "adamw"])
def test_training_the_pytorch_way_follows_pytorch(backend, torch, copy_to_torch, make_opt, make_torch_opt):
    model, twin = small_model(), torch_twin(torch)
    keys = copy_to_torch(model, twin)
    opt, t_opt = make_opt(model.parameters()), make_torch_opt(torch, twin.parameters())
    loss_fn, t_loss_fn = losses.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for step in range(3):
        x, y = batch(seed=step)
        loss = pytorch_way(model, opt, loss_fn, x, y)
        t_opt.zero_grad()
        t_loss = t_loss_fn(twin(torch.from_numpy(x)), torch.from_numpy(y))
        t_loss.backward()
        t_opt.step()
        assert loss.item() == pytest.approx(t_loss.item(), rel=1e-10)
        theirs = twin.state_dict()
        for key, value in model.state_dict().items():
            np.testing.assert_allclose(value, theirs[keys[key]].numpy(), rtol=1e-7, atol=1e-10,
                                       err_msg=f"step {step} {key}")


def test_a_loss_on_a_partial_pass_backpropagates_from_where_it_stopped(backend):
    x, y = batch()
    ours, explicit = small_model(), small_model()
    # Seen from "flatten1", the 36 features are a 36-class problem: what matters is where backward starts.
    labels = np.arange(5) % 36
    loss_fn, loss_explicit = losses.CrossEntropyLoss(), losses.CrossEntropyLoss()
    loss_fn(ours.forward(x, until="flatten1"), labels).backward()
    loss_explicit(explicit.forward(x, until="flatten1"), labels)
    explicit.backward(loss_explicit.backward(), start="flatten1", input_grad=False)
    for key, grad in ours.gradients().items():
        np.testing.assert_array_equal(grad, explicit.gradients()[key], err_msg=key)
    assert not ours.gradients()["fc1.weight"].any()


def test_nll_of_a_log_softmax_layer_backpropagates_too():
    x, y = batch()
    model = Sequential(*small_model().named_layers(), ("log_probs", layers.LogSoftmax()))
    twin = Sequential([(name, layer.astype(np.float64)) for name, layer in model.named_layers()])
    losses.NLLLoss()(model(x), y).backward()
    loss_fn = losses.NLLLoss()
    loss_fn(twin.forward(x), y)
    twin.backward(loss_fn.backward())
    for key, grad in model.gradients().items():
        np.testing.assert_array_equal(grad, twin.gradients()[key], err_msg=key)


def test_a_loss_value_is_a_number():
    x, y = batch()
    model = small_model()
    loss_fn = losses.CrossEntropyLoss()
    loss = loss_fn(model(x), y)
    value = float(loss)
    assert isinstance(loss, float) and type(float(loss)) is float
    assert loss.item() == value and type(loss.item()) is float
    assert str(loss) == str(value) and repr(loss) == repr(value) and f"{loss:.3f}" == f"{value:.3f}"
    assert loss == value and loss < value + 1 and loss > value - 1 and loss != value + 1
    assert loss * 2 == value * 2 and type(loss + 1) is float and np.isclose(loss, value)
    assert json.dumps({"loss": loss}) == json.dumps({"loss": value})
    # copies and pickles are the number alone, not the model behind it
    for twin in (pickle.loads(pickle.dumps(loss)), copy.copy(loss), copy.deepcopy(loss)):
        assert type(twin) is float and twin == value


def test_a_loss_value_keeps_neither_the_model_nor_its_arrays():
    x, y = batch()
    model = small_model()
    logits = model(x)
    loss = losses.CrossEntropyLoss()(logits, y)
    model_ref, logits_ref = weakref.ref(model), weakref.ref(logits)
    del model, logits
    gc.collect()
    assert model_ref() is None and logits_ref() is None
    with pytest.raises(RuntimeError, match="cannot tell which model.*gone"):
        loss.backward()


def test_backward_refuses_what_it_cannot_do_right():
    x, y = batch()
    model = small_model()
    loss_fn = losses.CrossEntropyLoss()
    not_model_outputs = {
        "a copy": lambda: model(x).copy(),
        "a computed result": lambda: model(x) * 2,
        "a slice": lambda: model(x)[:4],
        "predict's output": lambda: model.predict(x),
        "a made-up array": lambda: np.zeros((5, 3)),
    }
    for what, make in not_model_outputs.items():
        scores = make()
        loss = loss_fn(scores, y[:len(scores)])
        with pytest.raises(RuntimeError, match=r"cannot tell which model.*model.backward\(loss_fn.backward\(\)\)"):
            loss.backward()
        loss_fn(scores, y[:len(scores)])
        assert loss_fn.backward().shape == scores.shape, what  # the explicit way stays as it was
    stale = loss_fn(model(x), y)
    model(x)
    with pytest.raises(RuntimeError, match="another forward pass"):
        stale.backward()
    first = loss_fn(model(x), y)
    loss_fn(np.zeros((5, 3)), y)
    with pytest.raises(RuntimeError, match="CrossEntropyLoss has been called again"):
        first.backward()
    model.zero_grad()
    loss_fn(model(x), y).backward()  # the latest value of the latest pass
    assert model.gradients()["conv1.weight"].any()


# model[i], model["conv1"], model[a:b], len, iteration, in

def test_a_model_is_indexed_like_a_list_of_named_layers():
    model = small_model()
    pairs = model.named_layers()
    assert len(model) == 6 and list(model) == [layer for _, layer in pairs]
    assert model[0] is pairs[0][1] and model[-1] is pairs[-1][1] and model[np.int64(2)] is pairs[2][1]
    for name, layer in pairs:
        assert model[name] is layer is model.layer(name)
        assert name in model and layer in model
    assert "conv9" not in model and layers.ReLU() not in model and 0 not in model
    with pytest.raises(IndexError, match="index 6 is out of range for a model of 6 layers"):
        model[6]
    with pytest.raises(IndexError, match="-7"):
        model[-7]
    with pytest.raises(KeyError, match="'conv9'.*conv1, relu1, bn1, pool1, flatten1, fc1"):
        model["conv9"]
    for bad in (1.5, True, None):
        with pytest.raises(TypeError, match="position, name or a slice"):
            model[bad]


def test_a_slice_is_a_model_sharing_the_layers(backend):
    x, y = batch()
    model = small_model().eval()
    features = model[:5]
    assert [name for name, _ in features.named_layers()] == ["conv1", "relu1", "bn1", "pool1", "flatten1"]
    assert all(a is b for a, b in zip(features, model)) and not features.training
    np.testing.assert_array_equal(features(x), model.forward(x, until="flatten1"))
    np.testing.assert_array_equal(model[2:](model.forward(x, until="relu1")), model.forward(x))
    assert len(model[:]) == 6 and len(model[-1:]) == 1 and len(model[1:100]) == 5
    # training the slice trains the model
    before = model["conv1"].params["weight"].copy()
    opt = optim.SGD(features.parameters(), lr=0.1)
    out = features(x)
    features.backward(np.ones_like(out))
    opt.step()
    assert not np.array_equal(model["conv1"].params["weight"], before)
    np.testing.assert_array_equal(model["conv1"].params["weight"], features["conv1"].params["weight"])
    with pytest.raises(ValueError, match="step 2"):
        model[::2]
    with pytest.raises(ValueError, match=r"model\[4:2\] selects no layers"):
        model[4:2]


def test_a_slice_keeps_the_meta_that_still_applies():
    model = small_model()
    model.meta = {"normalization": {"mean": [0.5], "std": [0.25], "scale": 255.0},
                  "preprocessing": "torch", "classes": ["a", "b", "c"], "epochs": 3}
    assert model[:].meta == model.meta
    assert model[:4].meta == {"normalization": model.meta["normalization"], "preprocessing": "torch", "epochs": 3}
    assert model[1:].meta == {"classes": ["a", "b", "c"], "epochs": 3}
    assert model[1:3].meta == {"epochs": 3}
    head = model[:4]
    head.meta["normalization"]["mean"][0] = 0.0
    assert model.meta["normalization"]["mean"] == [0.5]
    raw = np.random.default_rng(0).integers(0, 256, (2, 2, 6, 6), dtype=np.uint8)
    np.testing.assert_array_equal(model[:4].preprocess(raw), model.preprocess(raw))


def test_a_loss_refuses_to_backpropagate_a_pass_a_slice_has_replaced():
    x, y = batch()
    model = small_model()
    loss = losses.CrossEntropyLoss()(model(x), y)
    model[:3](x[:2])
    with pytest.raises(RuntimeError, match="layer 'conv1' has run another forward pass.*slice"):
        loss.backward()
    model.predict(x)  # keeps no record, so it replaces nothing
    loss = losses.CrossEntropyLoss()(model(x), y)
    model.predict(x[:1])
    loss.backward()
    assert model.gradients()["fc1.weight"].any()
