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

Parameter groups take PyTorch's form: a list of dicts, each with its
``params`` and, optionally, its own ``lr`` and ``weight_decay``::

    SGD([{"params": weights}, {"params": biases, "lr": 0.64, "weight_decay": 0.0}],
        lr=0.01, momentum=0.85, nesterov=True)

A group's learning rate keeps the ratio to the optimizer's ``lr`` that it
started with: schedules set ``optimizer.lr`` and every group follows (for
StepLR, or any schedule that multiplies the rate, the same as PyTorch's
per-group rates). A group without its own weight decay takes the
optimizer's. Frozen parameters (``layer.requires_grad_(False)``) are left
alone: no update, no weight decay, no momentum.

To resume, rebuild the model, optimizer and schedule as before, then call
``load_state_dict`` on each with what ``state_dict()`` returned.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv import _checks, backend
from fastconv.nn.model import Model, Parameter

if TYPE_CHECKING:
    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


_GROUP_KEYS = ("params", "lr", "weight_decay")


class _Group:
    """One parameter group: its parameters, the ratio of its learning rate to
    the optimizer's, and its weight decay (None: the optimizer's)."""

    def __init__(self, params: list[Parameter], lr_scale: float = 1.0, weight_decay: float | None = None) -> None:
        self.params = params
        self.lr_scale = lr_scale
        self.weight_decay = weight_decay


def _parameter_list(value: object, where: str) -> list[Parameter]:
    if isinstance(value, (str, bytes, np.ndarray, Mapping)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a fastconv model or its parameters(), got {type(value).__name__}")
    params = list(value)
    for i, param in enumerate(params):
        if not isinstance(param, Parameter):
            raise TypeError(f"expected the Parameter objects model.parameters() returns, "
                            f"got a {type(param).__name__} at position {i}{' of ' + where if where != 'model' else ''}")
    return params


def _parameters(model: object) -> tuple[fastconv.Model | None, list[Parameter], list[dict[str, Any]]]:
    """(the model or None, the Parameters to optimize, the parameter groups as
    given: one dict per group, without 'params' for a plain list)."""
    if isinstance(model, Model):
        params = model.parameters()
        if not params:
            raise ValueError("the model has no parameters to optimize")
        return model, params, [{"params": params}]
    if isinstance(model, (str, bytes, np.ndarray, Mapping)) or not isinstance(model, Iterable):
        raise TypeError(f"model must be a fastconv model or its parameters(), got {type(model).__name__}")
    items = list(model)
    if items and all(isinstance(item, Mapping) for item in items):
        groups = []
        for i, item in enumerate(items):
            unknown = sorted(set(item) - set(_GROUP_KEYS))
            if unknown:
                raise ValueError(f"parameter group {i} has the key {unknown[0]!r}; a group takes "
                                 f"{', '.join(map(repr, _GROUP_KEYS))}")
            if "params" not in item:
                raise ValueError(f"parameter group {i} has no 'params'")
            group_params = item["params"]
            if isinstance(group_params, Model):
                group_params = group_params.parameters()
            group = dict(item, params=_parameter_list(group_params, f"the 'params' of parameter group {i}"))
            if not group["params"]:
                raise ValueError(f"parameter group {i} has no parameters")
            groups.append(group)
        params = [param for group in groups for param in group["params"]]
    elif any(isinstance(item, Mapping) for item in items):
        raise TypeError("give either parameters or parameter groups (dicts with 'params'), not both mixed")
    else:
        params = _parameter_list(items, "model")
        groups = [{"params": params}]
    if not params:
        raise ValueError("no parameters to optimize: the list is empty")
    seen: set[str] = set()
    for param in params:
        if param.name in seen:
            raise ValueError(f"two parameters are named {param.name!r}: the optimizer keeps its state by name, "
                             "so it takes the parameters of one model, each once")
        seen.add(param.name)
    return None, params, groups


def _is_frozen(param: Parameter) -> bool:
    return param.key in param.layer.frozen


class Optimizer:
    """Base class: the parameters, ``lr``, per-parameter state and its (de)serialization.

    ``model`` is a ``fastconv.Model`` (all its parameters) or an iterable
    of the :class:`~fastconv.nn.model.Parameter` objects its ``parameters()``
    returns (those alone). ``self.model`` is the model, or None when the
    optimizer was given parameters.
    """

    _state_names: tuple[str, ...] = ()
    weight_decay = 0.0

    def __init__(self, model: fastconv.Model | Iterable[Parameter] | Iterable[Mapping[str, Any]],
                 lr: float) -> None:
        self.model, self._params, given = _parameters(model)
        self.lr = _checks.real_number(lr, "lr")
        self._groups = [self._group(i, group) for i, group in enumerate(given)]
        self.state: dict[str, dict[str, np.ndarray]] = {}  # by parameter key, then state name
        self.step_count = 0

    def _group(self, index: int, given: Mapping[str, Any]) -> _Group:
        lr_scale = 1.0
        if "lr" in given:
            group_lr = _checks.real_number(given["lr"], f"lr of parameter group {index}")
            if self.lr == 0 and group_lr != 0:
                raise ValueError(f"parameter group {index} has lr {group_lr} while the optimizer's lr is 0: a "
                                 "group's rate is kept in proportion to the optimizer's, give the optimizer a "
                                 "nonzero lr")
            lr_scale = group_lr / self.lr if self.lr else 1.0
        weight_decay = None
        if "weight_decay" in given:
            weight_decay = _checks.real_number(given["weight_decay"], f"weight_decay of parameter group {index}")
        return _Group(list(given["params"]), lr_scale, weight_decay)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The parameter groups as PyTorch shows them: dicts with ``params``,
        the group's current ``lr`` and its ``weight_decay`` (a copy; schedules
        change the rates through ``lr``)."""
        return [{"params": list(group.params), "lr": self.lr * group.lr_scale,
                 "weight_decay": self.weight_decay if group.weight_decay is None else group.weight_decay}
                for group in self._groups]

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
        """Apply one update with the gradients currently in the parameters
        (frozen ones excepted), each group at its own rate and weight decay."""
        self.step_count += 1
        for group in self._groups:
            lr = self.lr * group.lr_scale
            weight_decay = self.weight_decay if group.weight_decay is None else group.weight_decay
            for param in group.params:
                if not _is_frozen(param):
                    self._update(param.data, param.grad, self.state.setdefault(param.name, {}), lr, weight_decay)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float,
                weight_decay: float) -> None:
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
        """{'type', 'hyperparams', 'step_count', 'state': {param key: {name: array}}, 'groups': [{'params':
        [param keys], 'lr_scale', 'weight_decay'}]}; arrays are copies."""
        return {
            "type": type(self).__name__,
            "hyperparams": self.hyperparams(),
            "step_count": self.step_count,
            "state": {key: {k: v.copy() for k, v in s.items()} for key, s in self.state.items()},
            "groups": [{"params": [param.name for param in group.params], "lr_scale": group.lr_scale,
                        "weight_decay": group.weight_decay} for group in self._groups],
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
        groups = state_dict.get("groups")  # absent from the state of an optimizer without groups
        if groups is not None:
            ours = [[param.name for param in group.params] for group in self._groups]
            theirs = [list(group["params"]) for group in groups]
            if ours != theirs:
                raise ValueError(f"state_dict has {len(theirs)} parameter group(s) of other parameters than "
                                 f"this optimizer's {len(ours)}")
        hyperparams = state_dict["hyperparams"]
        self._set_hyperparams(**hyperparams)
        if groups is not None:
            for group, saved in zip(self._groups, groups):
                group.lr_scale = float(saved["lr_scale"])
                group.weight_decay = None if saved["weight_decay"] is None else float(saved["weight_decay"])
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

    def __init__(self, model: fastconv.Model | Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> None:
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

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float,
                weight_decay: float) -> None:
        if weight_decay != 0:
            grad = grad + weight_decay * param
        if self.momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= self.momentum
                buf += grad
            grad = grad + self.momentum * buf if self.nesterov else buf
        step = self._scratch(param)
        np.multiply(grad, lr, out=step)
        param -= step


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction and eps placement;
    weight_decay adds weight_decay * p to the gradient (L2)."""

    _state_names = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, model: fastconv.Model | Iterable[Parameter] | Iterable[Mapping[str, Any]],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
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

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float,
                weight_decay: float) -> None:
        beta1, beta2 = self.betas
        if weight_decay != 0:
            if self._decoupled:
                param *= 1.0 - lr * weight_decay
            else:
                grad = grad + weight_decay * param
        if not state:
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        # One fused pass on the compiled backend instead of the NumPy twin's
        # eleven array passes (docs/engine.md has the timing).
        backend.current().adam_update(param, grad, state["exp_avg"], state["exp_avg_sq"],
                                      lr, beta1, beta2, self.eps, self.step_count)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * weight_decay`` before the Adam step."""

    _decoupled = True

    def __init__(self, model: fastconv.Model | Iterable[Parameter] | Iterable[Mapping[str, Any]],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(model, lr, betas, eps, weight_decay)
