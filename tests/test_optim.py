"""Optimizers and schedules: trajectories against PyTorch, resuming from state_dict, bad arguments."""
import numpy as np
import pytest
from test_layers import rel_error

from fastconv import optim
from fastconv.nn import layers, losses
from fastconv.nn.model import Sequential

STEPS = 7


def tiny_model(seed=0):
    return Sequential(
        layers.Conv2d(2, 4, 3, padding=1, dtype=np.float64, seed=seed),
        layers.ReLU(),
        layers.BatchNorm2d(4, dtype=np.float64),
        layers.MaxPool2d(2),
        layers.Flatten(),
        layers.Linear(36, 3, dtype=np.float64, seed=seed + 1),
    )


def torch_twin(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(36, 3),
    ).double()


def batches(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((4, 2, 6, 6)), rng.integers(0, 3, 4)) for _ in range(count)]


def train_step(model, opt, x, labels, loss=None):
    loss = loss or losses.CrossEntropyLoss()
    opt.zero_grad()
    loss(model.forward(x), labels)
    model.backward(loss.backward(), input_grad=False)
    opt.step()


OPTIMIZERS = {
    "sgd": (lambda m: optim.SGD(m, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    "sgd-momentum": (lambda m: optim.SGD(m, lr=0.05, momentum=0.9),
                     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd-nesterov-wd": (lambda m: optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
                        lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "adam": (lambda m: optim.Adam(m, lr=1e-2), lambda t, p: t.optim.Adam(p, lr=1e-2)),
    "adam-wd": (lambda m: optim.Adam(m, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2),
                lambda t, p: t.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    "adamw": (lambda m: optim.AdamW(m, lr=1e-2, weight_decay=0.1),
              lambda t, p: t.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
}

SCHEDULES = {
    "none": (None, None),
    "step": (lambda o: optim.StepLR(o, step_size=2, gamma=0.5),
             lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
    "cosine": (lambda o: optim.CosineAnnealingLR(o, T_max=3, eta_min=1e-3),
               lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3, eta_min=1e-3)),
    "onecycle": (lambda o: optim.OneCycleLR(o, max_lr=0.05, total_steps=STEPS),
                 lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS)),
    "onecycle-linear-3phase": (
        lambda o: optim.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, pct_start=0.25,
                                   anneal_strategy="linear", three_phase=True),
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, pct_start=0.25,
                                                     anneal_strategy="linear", three_phase=True)),
    "onecycle-fixed-momentum": (
        lambda o: optim.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, cycle_momentum=False),
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, cycle_momentum=False)),
}

CASES = [(o, "none") for o in OPTIMIZERS] + [
    ("sgd-momentum", "step"), ("adam", "step"), ("sgd-nesterov-wd", "cosine"), ("adamw", "cosine"),
    ("sgd-momentum", "onecycle"), ("adam", "onecycle"), ("sgd", "onecycle"),
    ("adamw", "onecycle-linear-3phase"), ("sgd-momentum", "onecycle-fixed-momentum"),
]


@pytest.mark.parametrize("opt_name, schedule_name", CASES)
def test_trajectory_matches_torch(backend, torch, copy_to_torch, opt_name, schedule_name):
    model = tiny_model()
    twin = torch_twin(torch)
    keys = copy_to_torch(model, twin)
    make_opt, make_torch_opt = OPTIMIZERS[opt_name]
    make_schedule, make_torch_schedule = SCHEDULES[schedule_name]
    opt, t_opt = make_opt(model), make_torch_opt(torch, twin.parameters())
    schedule = make_schedule(opt) if make_schedule else None
    t_schedule = make_torch_schedule(torch, t_opt) if make_torch_schedule else None
    t_loss = torch.nn.CrossEntropyLoss()
    for step, (x, labels) in enumerate(batches(STEPS)):
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        train_step(model, opt, x, labels)
        t_opt.zero_grad()
        t_loss(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        t_opt.step()
        if schedule is not None:
            schedule.step()
            t_schedule.step()
        theirs = twin.state_dict()
        for key, value in model.state_dict().items():
            err = rel_error(value, theirs[keys[key]].numpy())
            assert err < 1e-6, (step, key, err)


def run_steps(model, opt, schedule, data):
    trajectory = []
    for x, labels in data:
        train_step(model, opt, x, labels)
        if schedule is not None:
            schedule.step()
        trajectory.append((opt.lr, model.state_dict()))
    return trajectory


@pytest.mark.parametrize("opt_name, schedule_name", [
    ("sgd-nesterov-wd", "onecycle"), ("adam", "cosine"), ("adamw", "step"), ("sgd-momentum", "none"),
    ("adam", "onecycle"),
])
@pytest.mark.parametrize("scheduler_first", [True, False])
def test_resuming_from_state_dicts_gives_the_same_trajectory(backend, opt_name, schedule_name, scheduler_first):
    make_opt = OPTIMIZERS[opt_name][0]
    make_schedule = SCHEDULES[schedule_name][0]
    data = batches(STEPS)
    model = tiny_model()
    opt = make_opt(model)
    schedule = make_schedule(opt) if make_schedule else None
    run_steps(model, opt, schedule, data[:3])
    saved = (model.state_dict(), opt.state_dict(), schedule.state_dict() if schedule else None)
    uninterrupted = run_steps(model, opt, schedule, data[3:])

    resumed = tiny_model(seed=9)
    resumed.load_state_dict(saved[0])
    new_opt = make_opt(resumed)
    new_schedule = make_schedule(new_opt) if make_schedule else None
    restore = [lambda: new_opt.load_state_dict(saved[1])]
    if new_schedule is not None:
        restore.append(lambda: new_schedule.load_state_dict(saved[2]))
    for call in (reversed(restore) if scheduler_first else restore):
        call()
    for (lr_a, state_a), (lr_b, state_b) in zip(uninterrupted, run_steps(resumed, new_opt, new_schedule, data[3:])):
        assert lr_a == lr_b
        for key in state_a:
            np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


def test_state_dict_is_a_snapshot(backend):
    model = tiny_model()
    opt = optim.Adam(model, lr=1e-2)
    x, labels = batches(1)[0]
    train_step(model, opt, x, labels)
    state = opt.state_dict()
    assert state["type"] == "Adam" and state["step_count"] == 1
    assert state["hyperparams"] == {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    before = state["state"]["conv1.weight"]["exp_avg"].copy()
    train_step(model, opt, x, labels)
    np.testing.assert_array_equal(state["state"]["conv1.weight"]["exp_avg"], before)


def test_lr_is_settable_and_used(backend):
    model = tiny_model()
    opt = optim.SGD(model, lr=0.1)
    x, labels = batches(1)[0]
    opt.lr = 0.0
    before = model.state_dict()
    train_step(model, opt, x, labels)
    for key, value in model.named_parameters():
        np.testing.assert_array_equal(value, before[key])
    with pytest.raises(ValueError, match="nan"):
        opt.lr = float("nan")


def test_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="-1"):
        optim.SGD(model, lr=-1)
    with pytest.raises(ValueError, match="beta1.*1.0"):
        optim.Adam(model, betas=(1.0, 0.999))
    with pytest.raises(TypeError, match="Sequential"):
        optim.SGD("model", lr=0.1)
    with pytest.raises(TypeError, match="Optimizer"):
        optim.StepLR("optimizer", 3)
    with pytest.raises(ValueError, match="step_size.*0"):
        optim.StepLR(optim.SGD(model, lr=0.1), 0)
    with pytest.raises(ValueError, match="'Adam'.*SGD"):
        optim.SGD(model, lr=0.1).load_state_dict(optim.Adam(model).state_dict())
    with pytest.raises(ValueError, match="'exponential'"):
        optim.OneCycleLR(optim.SGD(model, lr=0.1), 0.1, 10, anneal_strategy="exponential")
    # A zero divisor was let through and failed as a ZeroDivisionError.
    with pytest.raises(ValueError, match=r"div_factor must be in \(0.0, inf\), got 0"):
        optim.OneCycleLR(optim.SGD(model, lr=0.1), 0.1, 10, div_factor=0)
    with pytest.raises(ValueError, match="lr is too large for a float"):
        optim.SGD(model, lr=10 ** 400)
    schedule = optim.OneCycleLR(optim.SGD(model, lr=0.1), max_lr=0.1, total_steps=2)
    schedule.step()
    schedule.step()
    with pytest.raises(ValueError, match="total_steps=2"):
        schedule.step()
