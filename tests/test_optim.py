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
    with pytest.raises(TypeError, match="a fastconv model or its parameters"):
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


# Built on model.parameters(), as in PyTorch

@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_an_optimizer_of_the_parameters_steps_as_one_of_the_model(backend, opt_name):
    make_opt = OPTIMIZERS[opt_name][0]
    data = batches(STEPS)
    by_model, by_params = tiny_model(), tiny_model()
    opt_a, opt_b = make_opt(by_model), make_opt(by_params.parameters())
    assert opt_a.model is by_model and opt_b.model is None
    for x, labels in data:
        train_step(by_model, opt_a, x, labels)
        train_step(by_params, opt_b, x, labels)
    for (key, a), b in zip(by_model.state_dict().items(), by_params.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)
    # the same checkpoint either way: each loads into the other kind and continues alike
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a.keys() == state_b.keys() and state_a["state"].keys() == state_b["state"].keys()
    for key, entries in state_a["state"].items():
        for name, value in entries.items():
            np.testing.assert_array_equal(value, state_b["state"][key][name], err_msg=f"{key} {name}")
    resumed = tiny_model(seed=5)
    resumed.load_state_dict(by_model.state_dict())
    swapped = make_opt(resumed.parameters())
    swapped.load_state_dict(state_a)
    x, labels = batches(1, seed=3)[0]
    train_step(by_model, opt_a, x, labels)
    train_step(resumed, swapped, x, labels)
    for (key, a), b in zip(by_model.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_the_parameters_reach_the_models_arrays_and_gradients():
    model = tiny_model()
    params = model.parameters()
    assert [p.name for p in params] == [key for key, _ in model.named_parameters()]
    grads = model.gradients()
    for param, (_, array) in zip(params, model.named_parameters()):
        assert param.data is array and param.grad is grads[param.name]
        assert param.shape == array.shape and param.dtype == array.dtype and param.size == array.size
    assert repr(params[0]) == "Parameter('conv1.weight', shape=(4, 2, 3, 3), dtype=float64)"
    assert sum(p.size for p in params) == model.num_parameters()


def test_a_part_of_the_parameters_is_all_that_steps_and_zeroes(torch, copy_to_torch):
    # Fine-tuning the head alone, against PyTorch doing the same.
    model, twin = tiny_model(), torch_twin(torch)
    copy_to_torch(model, twin)
    head = [p for p in model.parameters() if p.name.startswith("fc")]
    opt = optim.SGD(head, lr=0.1, momentum=0.9)
    t_opt = torch.optim.SGD(twin[-1].parameters(), lr=0.1, momentum=0.9)
    body_before = {k: v.copy() for k, v in model.state_dict().items() if not k.startswith("fc")}
    for x, labels in batches(3):
        train_step(model, opt, x, labels)
        t_opt.zero_grad()
        torch.nn.CrossEntropyLoss()(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        t_opt.step()
    for name in ("weight", "bias"):
        assert rel_error(model.layer("fc1").params[name], getattr(twin[-1], name).detach().numpy()) < 1e-10
    for key, value in body_before.items():
        if "running" not in key:  # batch-norm statistics move with every forward pass
            np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    assert model.gradients()["conv1.weight"].any()
    opt.zero_grad()
    assert not any(p.grad.any() for p in head)
    assert model.gradients()["conv1.weight"].any()
    assert set(opt.state_dict()["state"]) == {"fc1.weight", "fc1.bias"}
    with pytest.raises(ValueError, match="'conv1.weight'.*not among the optimized"):
        opt.load_state_dict(optim.SGD(model, lr=0.1, momentum=0.9).state_dict() | {
            "state": {"conv1.weight": {"momentum_buffer": np.zeros((4, 2, 3, 3))}}})


def test_what_is_not_parameters_is_refused():
    model = tiny_model()
    with pytest.raises(TypeError, match="a fastconv model or its parameters.*ndarray"):
        optim.Adam(model.layer("conv1").params["weight"])
    with pytest.raises(TypeError, match="Parameter objects.*tuple at position 0"):
        optim.Adam(model.named_parameters())
    with pytest.raises(TypeError, match="Parameter objects.*Conv2d at position 0"):
        optim.SGD(iter(model.named_layers()[0][1:]), lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="two parameters are named 'conv1.weight'"):
        optim.SGD(model.parameters() + tiny_model(seed=1).parameters(), lr=0.1)
    generator = (p for p in model.parameters() if p.name.endswith("bias"))
    assert [p.name for p in optim.SGD(generator, lr=0.1).parameters()] == ["conv1.bias", "bn1.bias", "fc1.bias"]


# Parameter groups, frozen parameters, PiecewiseLinearLR and Lookahead

def grouped(model, names_lr_wd):
    """PyTorch-style groups of ``model``'s parameters: [(name filter, lr or None, wd or None)]."""
    groups = []
    for keep, lr, wd in names_lr_wd:
        group = {"params": [p for p in model.parameters() if keep(p.name)]}
        if lr is not None:
            group["lr"] = lr
        if wd is not None:
            group["weight_decay"] = wd
        groups.append(group)
    return groups


GROUPS = [(lambda n: n.endswith("weight"), None, None), (lambda n: n.endswith("bias"), 0.4, 0.0)]


def torch_grouped(twin):
    named = list(twin.named_parameters())
    return [{"params": [p for n, p in named if n.endswith("weight")]},
            {"params": [p for n, p in named if n.endswith("bias")], "lr": 0.4, "weight_decay": 0.0}]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_parameter_groups_match_torch_under_a_schedule(backend, torch, copy_to_torch, opt_name):
    model, twin = tiny_model(), torch_twin(torch)
    keys = copy_to_torch(model, twin)
    if opt_name == "sgd":
        opt = optim.SGD(grouped(model, GROUPS), lr=0.05, momentum=0.85, nesterov=True, weight_decay=5e-3)
        t_opt = torch.optim.SGD(torch_grouped(twin), lr=0.05, momentum=0.85, nesterov=True, weight_decay=5e-3)
    else:
        opt = optim.Adam(grouped(model, GROUPS), lr=0.05, weight_decay=5e-3)
        t_opt = torch.optim.Adam(torch_grouped(twin), lr=0.05, weight_decay=5e-3)
    schedule = optim.StepLR(opt, step_size=2, gamma=0.5)
    t_schedule = torch.optim.lr_scheduler.StepLR(t_opt, step_size=2, gamma=0.5)
    for step, (x, labels) in enumerate(batches(STEPS)):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in t_opt.param_groups])
        train_step(model, opt, x, labels)
        t_opt.zero_grad()
        torch.nn.CrossEntropyLoss()(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        t_opt.step()
        schedule.step()
        t_schedule.step()
        theirs = twin.state_dict()
        for key, value in model.state_dict().items():
            assert rel_error(value, theirs[keys[key]].numpy()) < 1e-6, (step, key)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-3, 0.0]


def test_frozen_parameters_are_left_alone_as_in_torch(backend, torch, copy_to_torch):
    # A batch norm with its scale frozen and a convolution frozen whole, under
    # momentum and weight decay that would move them if they were stepped.
    model, twin = tiny_model(), torch_twin(torch)
    keys = copy_to_torch(model, twin)
    model.layer("bn1").requires_grad_(False, "weight")
    model.layer("conv1").requires_grad_(False)
    twin[2].weight.requires_grad_(False)
    twin[0].requires_grad_(False)
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("conv1") or k == "bn1.weight"}
    opt = optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    t_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for x, labels in batches(3):
        train_step(model, opt, x, labels)
        t_opt.zero_grad()
        torch.nn.CrossEntropyLoss()(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        t_opt.step()
    theirs = twin.state_dict()
    for key, value in model.state_dict().items():
        assert rel_error(value, theirs[keys[key]].numpy()) < 1e-10, key
    for key, value in frozen.items():
        np.testing.assert_array_equal(model.state_dict()[key], value, err_msg=key)
    assert not set(opt.state_dict()["state"]) & set(frozen)


def test_piecewise_linear_schedule_matches_torch_lambda(torch):
    model, twin = tiny_model(), torch_twin(torch)
    milestones, factors = [0, 3, 10], [0.2, 1.0, 0.0]
    opt = optim.SGD(model, lr=0.5)
    schedule = optim.PiecewiseLinearLR(opt, milestones, factors)
    t_opt = torch.optim.SGD(twin.parameters(), lr=0.5)
    t_schedule = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda s: float(np.interp(s, milestones, factors)))
    for _ in range(13):
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], abs=1e-15)
        t_opt.step()  # no gradients: changes nothing, and keeps PyTorch from warning about the order
        schedule.step()
        t_schedule.step()
    resumed = optim.PiecewiseLinearLR(optim.SGD(tiny_model(), lr=0.5), milestones, factors)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.optimizer.lr == opt.lr and resumed.last_epoch == schedule.last_epoch
    with pytest.raises(ValueError, match="must not decrease"):
        optim.PiecewiseLinearLR(opt, [0, 5, 2], [1, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        optim.PiecewiseLinearLR(opt, [0, 5], [1])


def torch_lookahead_steps(torch, twin, data, k, alphas, total):
    """The oracle: PyTorch's SGD and, every k steps, slow += alpha * (fast - slow), fast = slow."""
    opt = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    slow = [p.detach().clone() for p in twin.parameters()]
    for step, (x, labels) in enumerate(data, start=1):
        opt.zero_grad()
        torch.nn.CrossEntropyLoss()(twin(torch.from_numpy(x)), torch.from_numpy(labels)).backward()
        opt.step()
        with torch.no_grad():
            if step % k == 0:
                for s, p in zip(slow, twin.parameters()):
                    s += alphas(step) * (p - s)
                    p.copy_(s)
            if step == total:
                for s, p in zip(slow, twin.parameters()):
                    p.copy_(s)


@pytest.mark.parametrize("ramp_power, total", [(0.0, None), (3.0, 11)])
def test_lookahead_matches_a_torch_loop(backend, torch, copy_to_torch, ramp_power, total):
    model, twin = tiny_model(), torch_twin(torch)
    keys = copy_to_torch(model, twin)
    data = batches(11)
    opt = optim.Lookahead(optim.SGD(model, lr=0.05, momentum=0.9, nesterov=True), k=3, alpha=0.3,
                          total_steps=total, ramp_power=ramp_power)
    for x, labels in data:
        train_step(model, opt, x, labels)
    alphas = (lambda s: 0.3) if not ramp_power else (lambda s: 1 - 0.7 * (s / total) ** ramp_power)
    torch_lookahead_steps(torch, twin, data, 3, alphas, total)
    theirs = twin.state_dict()
    for key, value in model.state_dict().items():
        if "running" not in key:  # batch-norm statistics are buffers, which Lookahead does not average
            assert rel_error(value, theirs[keys[key]].numpy()) < 1e-10, key
    if total:  # the model ends on the slow weights
        for param in model.parameters():
            np.testing.assert_array_equal(param.data, opt.slow[param.name])
    assert opt.alpha_at(0) == (0.3 if not ramp_power else 1.0)


def test_lookahead_resumes_from_its_state_dict(backend):
    data = batches(9)

    def make(model):
        sgd = optim.SGD(grouped(model, GROUPS), lr=0.05, momentum=0.9)
        return optim.Lookahead(sgd, k=2, alpha=0.5, total_steps=9, ramp_power=2.0), sgd

    straight = tiny_model()
    opt, _ = make(straight)
    for x, labels in data:
        train_step(straight, opt, x, labels)
    first = tiny_model()
    opt_first, sgd_first = make(first)
    schedule = optim.StepLR(sgd_first, step_size=100)
    for x, labels in data[:5]:
        train_step(first, opt_first, x, labels)
    saved_model, saved_opt = first.state_dict(), opt_first.state_dict()
    assert saved_opt["type"] == "Lookahead" and opt_first.lr == schedule.get_last_lr()
    resumed = tiny_model(seed=7)
    resumed.load_state_dict(saved_model)
    opt_resumed, _ = make(resumed)
    opt_resumed.load_state_dict(saved_opt)
    for x, labels in data[5:]:
        train_step(resumed, opt_resumed, x, labels)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)
    with pytest.raises(ValueError, match="for 'SGD', not Lookahead"):
        opt_resumed.load_state_dict(optim.SGD(resumed, lr=0.1).state_dict())


def test_parameter_groups_and_lookahead_refuse_nonsense():
    model = tiny_model()
    params = model.parameters()
    with pytest.raises(ValueError, match="group 0 has the key 'momentum'"):
        optim.SGD([{"params": params, "momentum": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match="group 1 has no parameters"):
        optim.SGD([{"params": params}, {"params": []}], lr=0.1)
    with pytest.raises(ValueError, match="group 0 has no 'params'"):
        optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(TypeError, match="not both mixed"):
        optim.SGD([params[0], {"params": params[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="each once"):
        optim.SGD([{"params": params}, {"params": params[:1]}], lr=0.1)
    with pytest.raises(ValueError, match="lr 0.5 while the optimizer's lr is 0"):
        optim.SGD([{"params": params, "lr": 0.5}], lr=0.0)
    with pytest.raises(TypeError, match="lr of parameter group 0 must be a number"):
        optim.SGD([{"params": params, "lr": "1"}], lr=0.1)
    opt = optim.SGD(grouped(model, GROUPS), lr=0.1)
    other = optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match="parameter group"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(TypeError, match="fastconv Optimizer"):
        optim.Lookahead(model)
    with pytest.raises(ValueError, match="ramp_power needs total_steps"):
        optim.Lookahead(opt, ramp_power=2.0)
    with pytest.raises(ValueError, match="alpha"):
        optim.Lookahead(opt, alpha=1.5)
