"""Lookahead (Zhang et al., 2019): slow weights that follow an optimizer's fast ones.

``Lookahead(optimizer, k=5, alpha=0.5)`` is used as the optimizer itself::

    opt = Lookahead(SGD(model.parameters(), lr=0.1, momentum=0.9), k=5, alpha=0.5)
    ...
    opt.zero_grad(); loss.backward(); opt.step()

Every ``k`` steps the slow weights move ``alpha`` of the way towards the
fast ones and the fast ones start again from them. With ``total_steps`` and
``ramp_power`` p the step's alpha is ``1 - (1 - alpha) * (t / total_steps)
** p``: 1 at the start, where the slow weights simply follow, falling to
``alpha`` at the end, where they average most; the airbench recipe's form
(k=5, alpha = 1 - 0.95**5, p = 3). At step ``total_steps`` the fast weights
are set to the slow ones, so that the trained model is the averaged one.

Frozen parameters are carried along unchanged. Schedules take the wrapped
optimizer (``schedule = StepLR(opt.optimizer, ...)``); ``opt.lr`` reads and
sets its rate.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv import _checks
from fastconv.optim.optimizers import Optimizer

if TYPE_CHECKING:
    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv
    from fastconv.nn.model import Parameter

__all__ = ["Lookahead"]


class Lookahead:
    """Slow weights updated every ``k`` steps of ``optimizer`` (see the module docstring)."""

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5, total_steps: int | None = None,
                 ramp_power: float = 0.0) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastconv Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.k = _checks.positive_int(k, "k")
        self.alpha = _checks.real_number(alpha, "alpha", 0.0, 1.0)
        self.total_steps = None if total_steps is None else _checks.positive_int(total_steps, "total_steps")
        self.ramp_power = _checks.real_number(ramp_power, "ramp_power")
        if self.ramp_power and self.total_steps is None:
            raise ValueError("ramp_power needs total_steps, the step at which alpha reaches its final value")
        self.step_count = 0
        self.slow = {param.name: param.data.copy() for param in optimizer.parameters()}

    # -- the optimizer's interface ---------------------------------------------
    @property
    def model(self) -> fastconv.Model | None:
        """The wrapped optimizer's model (None when it was given parameters)."""
        return self.optimizer.model

    @property
    def lr(self) -> float:
        """The wrapped optimizer's learning rate."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    def parameters(self) -> list[Parameter]:
        """The parameters the wrapped optimizer updates."""
        return self.optimizer.parameters()

    def zero_grad(self) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad()

    def alpha_at(self, step: int) -> float:
        """The interpolation factor of the synchronization after step ``step`` (counting from 1)."""
        if self.total_steps is None or not self.ramp_power:
            return self.alpha
        progress = min(step / self.total_steps, 1.0)
        return 1.0 - (1.0 - self.alpha) * progress ** self.ramp_power

    def step(self) -> None:
        """One step of the wrapped optimizer, then, every k steps, the slow weights'."""
        self.optimizer.step()
        self.step_count += 1
        if self.step_count % self.k == 0:
            self._synchronize(self.alpha_at(self.step_count))
        if self.total_steps is not None and self.step_count == self.total_steps:
            self._synchronize(0.0)

    def _synchronize(self, alpha: float) -> None:
        """slow += alpha * (fast - slow); fast = slow."""
        for param in self.optimizer.parameters():
            slow, fast = self.slow[param.name], param.data
            if alpha:
                slow += param.dtype.type(alpha) * (fast - slow)
            fast[...] = slow

    def state_dict(self) -> dict[str, Any]:
        """The settings, the step count, the slow weights (copies) and the wrapped optimizer's state."""
        return {"type": type(self).__name__, "k": self.k, "alpha": self.alpha, "total_steps": self.total_steps,
                "ramp_power": self.ramp_power, "step_count": self.step_count,
                "slow": {name: value.copy() for name, value in self.slow.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned, the wrapped optimizer's state included."""
        if not isinstance(state_dict, dict) or state_dict.get("type") != type(self).__name__:
            found = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict is for {found!r}, not {type(self).__name__}")
        slow = state_dict["slow"]
        if set(slow) != set(self.slow):
            raise ValueError("state_dict holds slow weights of other parameters than this optimizer's")
        for name, value in slow.items():
            value = np.asarray(value)
            if value.shape != self.slow[name].shape:
                raise ValueError(f"slow weight {name!r} has shape {value.shape}, the parameter has "
                                 f"{self.slow[name].shape}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.k = _checks.positive_int(state_dict["k"], "k")
        self.alpha = _checks.real_number(state_dict["alpha"], "alpha", 0.0, 1.0)
        total = state_dict["total_steps"]
        self.total_steps = None if total is None else _checks.positive_int(total, "total_steps")
        self.ramp_power = _checks.real_number(state_dict["ramp_power"], "ramp_power")
        self.step_count = int(state_dict["step_count"])
        for name, value in slow.items():
            self.slow[name][...] = value

    def __repr__(self) -> str:
        ramp = f", total_steps={self.total_steps}, ramp_power={self.ramp_power:g}" if self.ramp_power else ""
        return f"Lookahead({type(self.optimizer).__name__}, k={self.k}, alpha={self.alpha:.4g}{ramp})"
