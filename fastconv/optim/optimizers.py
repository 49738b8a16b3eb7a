"""Optimizers and learning-rate schedules with PyTorch's update rules.

An optimizer takes a model, or its parameters as PyTorch's do
(``Adam(model.parameters(), lr=1e-3)``, or a part of them): ``step()``
updates each parameter in place from its gradient. Gradients accumulate
across backward passes, so a training step is::

    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()           # or model.backward(loss_fn.backward())
    opt.step()
    scheduler.step()          # once per step (OneCycleLR) or per epoch

The optimizer's state is kept by parameter name (``conv1.weight``), so
``state_dict()`` is the same whichever way the optimizer was built.

To resume, rebuild the model, optimizer and schedule as before, then call
``load_state_dict`` on each with what ``state_dict()`` returned.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks, backend
from fastconv.nn.model import Model, Parameter

if TYPE_CHECKING:
    from typing import Any

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _parameters(model: object) -> tuple[fastconv.Model | None, list[Parameter]]:
    """(the model or None, the Parameters to optimize) of what an optimizer was given."""
    if isinstance(model, Model):
        params = model.parameters()
        if not params:
            raise ValueError("the model has no parameters to optimize")
        return model, params
    if isinstance(model, (str, bytes, np.ndarray, Mapping)) or not isinstance(model, Iterable):
        raise TypeError(f"model must be a fastconv model or its parameters(), got {type(model).__name__}")
    params = list(model)
    for i, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise TypeError(f"expected the Parameter objects model.parameters() returns, "
                            f"got a {type(param).__name__} at position {i}")
    if not params:
        raise ValueError("no parameters to optimize: the list is empty")
    seen: set[str] = set()
    for param in params:
        if param.name in seen:
            raise ValueError(f"two parameters are named {param.name!r}: the optimizer keeps its state by name, "
                             "so it takes the parameters of one model")
        seen.add(param.name)
    return None, params


class Optimizer:
    """Base class: the parameters, ``lr``, per-parameter state and its (de)serialization.

    ``model`` is a ``fastconv.Model`` (all its parameters) or an iterable
    of the :class:`~fastconv.nn.model.Parameter` objects its ``parameters()``
    returns (those alone). ``self.model`` is the model, or None when the
    optimizer was given parameters.
    """

    _state_names: tuple[str, ...] = ()

    def __init__(self, model: fastconv.Model | Iterable[Parameter], lr: float) -> None:
        self.model, self._params = _parameters(model)
        self.lr = _checks.real_number(lr, "lr")
        self.state: dict[str, dict[str, np.ndarray]] = {}  # by parameter key, then state name
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The learning rate of the next ``step()``; schedules set it, and so may you."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        # Any finite value, as PyTorch allows: a linear OneCycleLR's step past
        # its last one extrapolates slightly below zero.
        self._lr = _checks.real_number(value, "lr", -math.inf)
        if not math.isfinite(self._lr):
            raise ValueError(f"lr must be finite, got {value!r}")

    def hyperparams(self) -> dict[str, Any]:
        """The settings state_dict() saves, by constructor argument name."""
        return {"lr": self.lr}

    def parameters(self) -> list[Parameter]:
        """The parameters this optimizer updates, in order."""
        return list(self._params)

    def zero_grad(self) -> None:
        """Set the gradients of the optimized parameters to zero before the next backward."""
        for param in self._params:
            param.grad.fill(0)

    def step(self) -> None:
        """Apply one update with the gradients currently in the parameters."""
        self.step_count += 1
        for param in self._params:
            self._update(param.data, param.grad, self.state.setdefault(param.name, {}))

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _scratch(self, like: np.ndarray) -> np.ndarray:
        """An uninitialized array shaped and typed like `like`, a view of one
        buffer reused by every parameter and step instead of a fresh
        temporary per operation, which was measurably slower (docs/engine.md,
        "Measurements behind the code's comments")."""
        buffer = getattr(self, "_scratch_buffer", None)
        if buffer is None or buffer.size < like.size or buffer.dtype != like.dtype:
            buffer = self._scratch_buffer = np.empty(like.size, like.dtype)
        return buffer[:like.size].reshape(like.shape)

    def state_dict(self) -> dict[str, Any]:
        """{'type', 'hyperparams', 'step_count', 'state': {param key: {name: array}}}; arrays are copies."""
        return {
            "type": type(self).__name__,
            "hyperparams": self.hyperparams(),
            "step_count": self.step_count,
            "state": {key: {k: v.copy() for k, v in s.items()} for key, s in self.state.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore settings and state saved by state_dict() from an optimizer of the same type."""
        if not isinstance(state_dict, dict) or state_dict.get("type") != type(self).__name__:
            found = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"state_dict is for {found!r}, not {type(self).__name__}")
        params = {param.name: param.data for param in self._params}
        state: dict[str, dict[str, np.ndarray]] = {}
        for key, entries in state_dict["state"].items():
            if key not in params:
                raise ValueError(f"state_dict has state for {key!r}, which is not among the optimized parameters")
            state[key] = {}
            for name, value in entries.items():
                if name not in self._state_names:
                    raise ValueError(f"unexpected state {name!r} for {key!r}")
                value = np.asarray(value)
                if value.shape != params[key].shape:
                    raise ValueError(
                        f"state {name!r} of {key!r} has shape {value.shape}, the parameter has {params[key].shape}"
                    )
                # C order: Adam's kernel updates its state in place.
                state[key][name] = np.array(value, dtype=params[key].dtype, order="C", copy=True)
        hyperparams = state_dict["hyperparams"]
        self._set_hyperparams(**hyperparams)
        self.step_count = int(state_dict["step_count"])
        self.state = state

    def _set_hyperparams(self, lr: float) -> None:
        self.lr = lr


class SGD(Optimizer):
    """Stochastic gradient descent, PyTorch's rule:

    g = grad + weight_decay * p; buf = g at the first step, then
    buf = momentum * buf + g; g = g + momentum * buf (nesterov) or buf;
    p -= lr * g.
    """

    _state_names = ("momentum_buffer",)

    def __init__(self, model: fastconv.Model | Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(model, lr)
        self._set_hyperparams(lr, momentum, nesterov, weight_decay)

    def _set_hyperparams(self, lr: float, momentum: float,  # type: ignore[override]  # takes its own hyperparams()
                         nesterov: bool, weight_decay: float) -> None:
        self.lr = lr
        self.momentum = _checks.real_number(momentum, "momentum")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov momentum needs momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)
        self.weight_decay = _checks.real_number(weight_decay, "weight_decay")

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]) -> None:
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= self.momentum
                buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        step = self._scratch(param)
        np.multiply(grad, self.lr, out=step)
        param -= step


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and eps placement;
    weight_decay adds weight_decay * p to the gradient (L2)."""

    _state_names = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, model: fastconv.Model | Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(model, lr)
        self._set_hyperparams(lr, betas, eps, weight_decay)

    def _set_hyperparams(self, lr: float,  # type: ignore[override]  # takes its own hyperparams()
                         betas: tuple[float, float], eps: float, weight_decay: float) -> None:
        self.lr = lr
        self.betas = betas
        self.eps = _checks.real_number(eps, "eps")
        self.weight_decay = _checks.real_number(weight_decay, "weight_decay")

    @property
    def betas(self) -> tuple[float, float]:
        """(beta1, beta2): the decay rates of the gradient's running mean and of its square's."""
        return self._betas

    @betas.setter
    def betas(self, value: tuple[float, float]) -> None:
        try:
            beta1, beta2 = value
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {value!r}") from None
        self._betas = (_checks.real_number(beta1, "beta1", 0.0, 1.0, high_open=True),
                       _checks.real_number(beta2, "beta2", 0.0, 1.0, high_open=True))

    def hyperparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]) -> None:
        beta1, beta2 = self.betas
        if self.weight_decay != 0:
            if self._decoupled:
                param *= 1.0 - self.lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        if not state:
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        # One fused pass on the compiled backend instead of the NumPy twin's
        # eleven array passes (docs/engine.md has the timing).
        backend.current().adam_update(param, grad, state["exp_avg"], state["exp_avg_sq"],
                                      self.lr, beta1, beta2, self.eps, self.step_count)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay`` before the Adam step."""

    _decoupled = True

    def __init__(self, model: fastconv.Model | Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(model, lr, betas, eps, weight_decay)
