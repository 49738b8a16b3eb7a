"""cifar6 and mnist2 against hand-built PyTorch twins on identical weights:
outputs, loss, the gradient w.r.t. the input and every parameter, running
statistics and one optimizer step, in training and evaluation mode."""
import numpy as np
import pytest

from fastconv import models, optim
from fastconv.nn import losses

pytestmark = pytest.mark.torch


def torch_cifar6(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(32), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 4 * 4, 10),
    )


def torch_mnist2(torch, batchnorm=False):
    nn = torch.nn

    def norm():
        return [nn.BatchNorm2d(32)] if batchnorm else []

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), *norm(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), *norm(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1568, 500), nn.ReLU(), nn.Linear(500, 10),
    )


NETWORKS = {
    "cifar6": (lambda: models.cifar6(seed=0), torch_cifar6, (3, 32, 32)),
    "mnist2": (lambda: models.mnist2(seed=0), torch_mnist2, (1, 28, 28)),
    "mnist2-batchnorm": (lambda: models.mnist2(batchnorm=True, seed=0),
                         lambda torch: torch_mnist2(torch, batchnorm=True), (1, 28, 28)),
}

PRECISIONS = {
    "float64": (np.float64, 4, 1e-10),
    "float32": (np.float32, 16, 1e-4),
}


def relative_to_max(ours, theirs):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    return np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)


def randomize_batchnorm(model, rng):
    """BatchNorm scale, shift and running statistics away from their identity defaults."""
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith((".running_var", ".weight")) and "bn" in key:
            state[key] = rng.uniform(0.5, 2.0, value.shape)
        elif key.endswith((".running_mean", ".bias")) and "bn" in key:
            state[key] = rng.standard_normal(value.shape) * 0.2
    model.load_state_dict(state)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_torch(backend, torch, copy_to_torch, network, mode, precision):
    build, build_twin, sample_shape = NETWORKS[network]
    dtype, batch, tol = PRECISIONS[precision]
    rng = np.random.default_rng(0)
    model = build().astype(dtype)
    randomize_batchnorm(model, rng)
    twin = build_twin(torch).to(torch.float64 if dtype == np.float64 else torch.float32)
    keys = copy_to_torch(model, twin)
    model.train(mode == "train")
    twin.train(mode == "train")

    x = rng.standard_normal((batch,) + sample_shape).astype(dtype)
    labels = rng.integers(0, 10, batch)
    loss = losses.CrossEntropyLoss()
    logits = model.forward(x)
    value = loss(logits, labels)
    model.zero_grad()
    dx = model.backward(loss.backward())

    t_x = torch.from_numpy(x.copy()).requires_grad_(True)
    t_logits = twin(t_x)
    t_value = torch.nn.CrossEntropyLoss()(t_logits, torch.from_numpy(labels))
    t_value.backward()

    errors = {"logits": relative_to_max(logits, t_logits), "input gradient": relative_to_max(dx, t_x.grad)}
    assert value == pytest.approx(t_value.item(), rel=tol)
    t_params = dict(twin.named_parameters())
    for key, grad in model.gradients().items():
        errors[f"{key} gradient"] = relative_to_max(grad, t_params[keys[key]].grad)

    opt = optim.SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-3)
    t_opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt.step()
    t_opt.step()
    t_state = twin.state_dict()
    for key, value in model.state_dict().items():
        errors[f"{key} after the step"] = relative_to_max(value, t_state[keys[key]])
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, (worst, errors[worst])
    if mode == "eval":
        for key, value in model.state_dict().items():
            if "running" in key:
                assert np.array_equal(value, t_state[keys[key]].numpy())
