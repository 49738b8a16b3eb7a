"""Learning-rate schedules with PyTorch's rules: ``step()`` once per epoch
(StepLR, CosineAnnealingLR) or once per batch (OneCycleLR, PiecewiseLinearLR)
sets ``optimizer.lr``."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

from fastconv import _checks
from fastconv.optim.optimizers import SGD, Adam, Optimizer

if TYPE_CHECKING:
    from typing import Any

__all__ = ["StepLR", "CosineAnnealingLR", "OneCycleLR", "PiecewiseLinearLR"]


class _Schedule:
    """Base class: sets ``optimizer.lr`` at construction (step 0) and at every ``step()``."""

    _config_names: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastconv Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = -1
        self.step()

    def step(self) -> None:
        """Advance one epoch (or one batch, for OneCycleLR) and set the optimizer's lr."""
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr()
        self.last_lr = self.optimizer.lr

    def get_last_lr(self) -> float:
        """The learning rate the last ``step()`` (or the construction) set."""
        return self.last_lr

    def _next_lr(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The position in the schedule and its settings, for ``load_state_dict``."""
        names = ("base_lr", "last_epoch", "last_lr") + self._config_names
        return {"type": type(self).__name__, **{name: getattr(self, name) for name in names}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position in the schedule; also sets the optimizer's lr to the last value."""
        if not isinstance(state_dict, dict) or state_dict.get("type") != type(self).__name__:
            found = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict is for {found!r}, not {type(self).__name__}")
        names = set(self.state_dict())
        unknown = sorted(set(state_dict) - names)
        if unknown:
            raise ValueError(f"unexpected entry {unknown[0]!r} in the {type(self).__name__} state_dict")
        for name, value in state_dict.items():
            if name != "type":
                setattr(self, name, value)
        self.optimizer.lr = self.last_lr


class StepLR(_Schedule):
    """Multiply the lr by gamma every step_size steps."""

    _config_names = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _checks.positive_int(step_size, "step_size")
        self.gamma = _checks.real_number(gamma, "gamma")
        super().__init__(optimizer)

    def _next_lr(self) -> float:
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(_Schedule):
    """Cosine from the initial lr down to eta_min over T_max steps (then back up,
    periodically), applied recursively to the current lr as PyTorch does."""

    _config_names = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _checks.positive_int(T_max, "T_max")
        self.eta_min = _checks.real_number(eta_min, "eta_min")
        super().__init__(optimizer)

    def _next_lr(self) -> float:
        lr, epoch, t_max = self.optimizer.lr, self.last_epoch, self.T_max
        if epoch == 0:
            return lr
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
            return lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        return ((1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max))
                * (lr - self.eta_min) + self.eta_min)


class OneCycleLR(_Schedule):
    """The 1cycle policy: lr rises from max_lr / div_factor to max_lr over the
    first pct_start of total_steps, then falls to that start / final_div_factor;
    momentum (SGD's momentum, Adam's beta1) moves the opposite way between
    max_momentum and base_momentum when cycle_momentum is set. Step once per batch.
    """

    _config_names = ("total_steps", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
                     "max_momentum", "initial_lr", "max_lr", "min_lr", "three_phase", "last_momentum")

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False) -> None:
        self.total_steps = _checks.positive_int(total_steps, "total_steps")
        self.pct_start = _checks.real_number(pct_start, "pct_start", 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.max_lr = _checks.real_number(max_lr, "max_lr")
        positive: dict[str, Any] = {"low": 0.0, "high": math.inf, "low_open": True, "high_open": True}
        self.initial_lr = self.max_lr / _checks.real_number(div_factor, "div_factor", **positive)
        self.min_lr = self.initial_lr / _checks.real_number(final_div_factor, "final_div_factor", **positive)
        self.three_phase = bool(three_phase)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = _checks.real_number(base_momentum, "base_momentum")
        self.max_momentum = _checks.real_number(max_momentum, "max_momentum")
        self.last_momentum: float | None = None
        if self.cycle_momentum and not isinstance(optimizer, (SGD, Adam)):
            raise ValueError(
                f"cycle_momentum needs an optimizer with momentum or betas, got {type(optimizer).__name__}"
            )
        super().__init__(optimizer)

    def _phases(self) -> list[tuple[float, float, float, float, float]]:
        """(end step, start lr, end lr, start momentum, end momentum) of each phase."""
        n, pct = self.total_steps, self.pct_start
        lo_m, hi_m = self.base_momentum, self.max_momentum
        if self.three_phase:
            return [
                (float(pct * n) - 1, self.initial_lr, self.max_lr, hi_m, lo_m),
                (float(2 * pct * n) - 2, self.max_lr, self.initial_lr, lo_m, hi_m),
                (n - 1, self.initial_lr, self.min_lr, hi_m, hi_m),
            ]
        return [
            (float(pct * n) - 1, self.initial_lr, self.max_lr, hi_m, lo_m),
            (n - 1, self.max_lr, self.min_lr, lo_m, hi_m),
        ]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _set_momentum(self, momentum: float) -> None:
        if isinstance(self.optimizer, Adam):
            self.optimizer.betas = (momentum, self.optimizer.betas[1])
        else:
            cast(SGD, self.optimizer).momentum = momentum  # __init__ took an SGD or an Adam

    def _next_lr(self) -> float:  # type: ignore[return]  # the loop returns in its last phase at the latest
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"tried to step {step} times; OneCycleLR was set up for total_steps={self.total_steps}")
        phases = self._phases()
        start_step = 0.0
        for i, (end_step, start_lr, end_lr, start_m, end_m) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.cycle_momentum:
                    self.last_momentum = self._anneal(start_m, end_m, pct)
                    self._set_momentum(self.last_momentum)
                return self._anneal(start_lr, end_lr, pct)
            start_step = end_step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.cycle_momentum and self.last_momentum is not None:
            self._set_momentum(self.last_momentum)


class PiecewiseLinearLR(_Schedule):
    """The initial lr times a factor that goes linearly from ``factors[i]`` at
    step ``milestones[i]`` to ``factors[i + 1]`` at ``milestones[i + 1]``,
    held at the last factor past the last milestone: PyTorch's ``LambdaLR``
    with ``lambda step: numpy.interp(step, milestones, factors)``. Step
    once per batch (or per epoch, with milestones counted in epochs).

    The airbench schedule is ``milestones=[0, w, total], factors=[0.2, 1,
    0]``: a linear warm-up to the peak over w steps, then a linear fall to 0.
    """

    _config_names = ("milestones", "factors")

    def __init__(self, optimizer: Optimizer, milestones: list[float], factors: list[float]) -> None:
        milestones = [_checks.real_number(m, "milestone") for m in milestones]
        factors = [_checks.real_number(f, "factor", -math.inf) for f in factors]
        if len(milestones) < 1 or len(milestones) != len(factors):
            raise ValueError(f"milestones and factors must be two lists of the same length (at least 1), got "
                             f"{len(milestones)} milestones and {len(factors)} factors")
        if any(b < a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must not decrease, got {milestones}")
        if not all(math.isfinite(f) for f in factors):
            raise ValueError(f"factors must be finite, got {factors}")
        self.milestones = milestones
        self.factors = factors
        super().__init__(optimizer)

    def _next_lr(self) -> float:
        step, points, values = self.last_epoch, self.milestones, self.factors
        if step <= points[0]:
            return self.base_lr * values[0]
        for (a, fa), (b, fb) in zip(zip(points, values), zip(points[1:], values[1:])):
            if step <= b:
                return self.base_lr * (fa + (fb - fa) * (step - a) / (b - a) if b > a else fb)
        return self.base_lr * values[-1]
