"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019).

The target unit's value is the relevance at the output; each layer hands its
output's relevance R down to its input by a rule, and the relevance that
reaches the image is the attribution. The rules, for a layer z = f(x):

* epsilon: R_x = x * J^T (R / (z + eps sign(z))), J^T being the layer's own
  backward pass (sign(0) counts as 1, as in Captum). For a convolution or a
  linear layer this is sum_j x_i w_ij R_j / (z_j + eps); for max pooling it
  hands each window's relevance to its maximum; for average pooling, batch
  norm (in eval mode) and a graph's ``Add`` it splits the relevance in
  proportion to each input's share of the output. The relevance taken by a
  bias (or a batch norm's shift) is lost; eps absorbs some more.
* alpha-beta (convolution and linear layers): the contributions z_ij =
  x_i w_ij are split into their positive and negative parts, and R_i =
  sum_j (alpha z_ij+ / z_j+ - beta z_ij- / z_j-) R_j with alpha - beta = 1
  (alpha=1, beta=0 is the z+ rule, Captum's ``Alpha1_Beta0_Rule``). With
  ``bias=True`` the bias's positive and negative parts join z+ and z-.
* z^B (for the first layer, whose input is bounded by ``low`` and ``high``
  per pixel): R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) R_j / z_j^B.

Activations (ReLU, ReLU6, LeakyReLU, GELU), dropout, flattening, identities,
a ResNet's padded shortcut and ``Concat`` pass the relevance through
unchanged. Each rule runs as a backward pre-hook and hook on the layer for
the duration of one call: the model's layers and weights are untouched (the
alpha-beta and z^B rules run the layer's forward and backward on a copy with
clipped weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn import graph as G
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from numpy.typing import ArrayLike

    import fastconv


@dataclass(frozen=True)
class Epsilon:
    """The epsilon rule (eps=0 is LRP-0)."""

    epsilon: float = 1e-9

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon >= 0):
            raise ValueError(f"epsilon must be a non-negative number, got {self.epsilon!r}")


@dataclass(frozen=True)
class AlphaBeta:
    """The alpha-beta rule; alpha - beta must be 1."""

    alpha: float = 1.0
    beta: float = 0.0
    bias: bool = False
    epsilon: float = 1e-9

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and isinstance(self.beta, (int, float))
                and self.beta >= 0 and abs(self.alpha - self.beta - 1) < 1e-12):
            raise ValueError(f"alpha-beta needs beta >= 0 and alpha - beta = 1, got alpha={self.alpha!r}, "
                             f"beta={self.beta!r}")


@dataclass(frozen=True)
class ZBox:
    """The z^B rule for an input bounded by ``low`` and ``high`` (scalars or arrays shaped like one image)."""

    low: ArrayLike
    high: ArrayLike
    epsilon: float = 1e-9


Rule = Union[Epsilon, AlphaBeta, ZBox]
_WEIGHTED = (L.Conv2d, L.Linear)
_EPSILON_ONLY = (L.MaxPool2d, L.AvgPool2d, L.GlobalAvgPool2d, L.GlobalMaxPool2d, L.AdaptiveAvgPool2d,
                 L.BatchNorm2d, L.Scale, G.Add)
_PASS = (L.ReLU, L.ReLU6, L.LeakyReLU, L.GELU, L.Dropout, L.Flatten, G.Identity, G.PadShortcut, G.Concat)


def _stabilize(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z >= 0, 1, -1).astype(z.dtype)


def _divide(relevance: np.ndarray, z: np.ndarray) -> np.ndarray:
    """relevance / z, and 0 where z is 0 (with eps = 0: an output that nothing fed)."""
    safe = np.where(z == 0, 1, z)
    return np.where(z == 0, 0, relevance / safe).astype(relevance.dtype, copy=False)


def _shadow(layer: L.Layer, weight: np.ndarray, bias: np.ndarray | None) -> L.Layer:
    """A fresh layer of ``layer``'s kind and geometry with the given weight and bias."""
    config = dict(layer.config())
    config["bias"] = bias is not None
    copy = type(layer)(**config)
    copy.params["weight"][...] = weight
    if bias is not None:
        copy.params["bias"][...] = bias
    return copy.eval()


def _through(layer: L.Layer, x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z, J^T s) of a shadow layer at input x."""
    z = layer.forward(x)
    return z, layer.backward(s.reshape(z.shape), param_grads=False)


def _alpha_beta(layer: L.Layer, rule: AlphaBeta, x: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    weight = layer.params["weight"]
    bias = layer.params.get("bias") if rule.bias else None
    pos_w, neg_w = np.maximum(weight, 0), np.minimum(weight, 0)
    pos_x, neg_x = np.maximum(x, 0), np.minimum(x, 0)

    def share(w_for_pos_x: np.ndarray, w_for_neg_x: np.ndarray, b: np.ndarray | None, sign: float) -> np.ndarray:
        a = _shadow(layer, w_for_pos_x, b)
        c = _shadow(layer, w_for_neg_x, None)
        z = a.forward(pos_x) + c.forward(neg_x)
        s = _divide(relevance, z + sign * rule.epsilon)
        return pos_x * a.backward(s, param_grads=False) + neg_x * c.backward(s, param_grads=False)

    out = rule.alpha * share(pos_w, neg_w, None if bias is None else np.maximum(bias, 0), 1.0)
    if rule.beta:
        out = out - rule.beta * share(neg_w, pos_w, None if bias is None else np.minimum(bias, 0), -1.0)
    return out


def _zbox(layer: L.Layer, rule: ZBox, x: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    weight = layer.params["weight"]
    low = np.broadcast_to(np.asarray(rule.low, x.dtype), x.shape)
    high = np.broadcast_to(np.asarray(rule.high, x.dtype), x.shape)
    plain = _shadow(layer, weight, None)
    pos = _shadow(layer, np.maximum(weight, 0), None)
    neg = _shadow(layer, np.minimum(weight, 0), None)
    z = plain.forward(x) - pos.forward(low) - neg.forward(high)
    s = _divide(relevance, _stabilize(z, rule.epsilon))
    return (x * plain.backward(s, param_grads=False) - low * pos.backward(s, param_grads=False)
            - high * neg.backward(s, param_grads=False))


class LRP:
    """Layer-wise relevance propagation: ``LRP(model, rule).attribute(x, target)``.

    ``rule`` applies to every convolution and linear layer (default
    :class:`Epsilon`), ``rules`` overrides it per layer name (say
    ``{"conv1": ZBox(low, high)}``); pooling, batch norm and ``Add`` always
    take the epsilon rule with ``rule``'s epsilon. The result is shaped like
    x, its sum per example is the target's value less what biases and the
    stabilizer absorbed (``attribute(..., return_relevance_lost=True)`` also
    returns that difference).
    """

    def __init__(self, model: fastconv.Model, rule: Rule | None = None,
                 rules: Mapping[str, Rule] | None = None) -> None:
        self.model = model
        self.rule = Epsilon() if rule is None else rule
        self.rules = dict(rules or {})
        for name, value in list(self.rules.items()) + [("rule", self.rule)]:
            if not isinstance(value, (Epsilon, AlphaBeta, ZBox)):
                raise TypeError(f"an LRP rule must be Epsilon, AlphaBeta or ZBox, got {value!r} for {name!r}")
        for name in self.rules:
            layer = C.check_layer(model, name)
            if not isinstance(layer, _WEIGHTED):
                raise ValueError(f"LRP rules apply to Conv2d and Linear layers; {name!r} is {type(layer).__name__}")
        for name, layer in model.named_layers():
            if not isinstance(layer, _WEIGHTED + _EPSILON_ONLY + _PASS):
                raise ValueError(f"LRP has no rule for layer {name!r} ({type(layer).__name__})")

    def attribute(self, x: np.ndarray, target: C.Target,
                  return_relevance_lost: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        C.check_images(self.model, x)
        inputs: dict[int, np.ndarray | list[np.ndarray]] = {}
        outputs: dict[int, np.ndarray] = {}
        eps = self.rule.epsilon

        def keep(layer: L.Layer, x_in: np.ndarray | list[np.ndarray], z: np.ndarray) -> None:
            inputs[id(layer)], outputs[id(layer)] = x_in, z

        def divide_by_output(e: float) -> Callable[[L.Layer, np.ndarray], np.ndarray]:
            return lambda layer, relevance: _divide(relevance, _stabilize(outputs[id(layer)], e))

        def times_input(layer: L.Layer, grad_input: object, grad_output: np.ndarray) -> object:
            x_in = inputs[id(layer)]
            if isinstance(x_in, list):
                return [a * g for a, g in zip(x_in, grad_input)]  # type: ignore[call-overload]
            return None if grad_input is None else x_in * grad_input

        def passing(layer: L.Layer, grad_input: np.ndarray | None, grad_output: np.ndarray) -> np.ndarray | None:
            return None if grad_input is None else grad_output.copy()

        def custom(rule: Rule) -> object:
            def hook(layer: L.Layer, grad_input: np.ndarray | None, grad_output: np.ndarray) -> np.ndarray | None:
                if grad_input is None:
                    return None
                x_in = inputs[id(layer)]
                assert isinstance(x_in, np.ndarray)
                if isinstance(rule, AlphaBeta):
                    return _alpha_beta(layer, rule, x_in, grad_output).astype(x_in.dtype)
                return _zbox(layer, rule, x_in, grad_output).astype(x_in.dtype)  # type: ignore[arg-type]
            return hook

        handles: list[L.HookHandle] = []
        try:
            for name, layer in self.model.named_layers():
                rule = self.rules.get(name, self.rule) if isinstance(layer, _WEIGHTED) else Epsilon(eps)
                if isinstance(layer, (L.ReLU, L.ReLU6, L.LeakyReLU, L.GELU)):
                    handles.append(layer.register_backward_hook(passing))
                elif isinstance(layer, _PASS):
                    continue
                elif isinstance(rule, Epsilon):
                    handles.append(layer.register_forward_hook(keep))
                    handles.append(layer.register_backward_pre_hook(divide_by_output(rule.epsilon)))
                    handles.append(layer.register_backward_hook(times_input))  # type: ignore[arg-type]
                else:
                    handles.append(layer.register_forward_hook(keep))
                    handles.append(layer.register_backward_hook(custom(rule)))  # type: ignore[arg-type]
            with C.evaluating(self.model):
                out = self.model.forward(x)
                seed = C.seed_gradient(out, target)
                relevance = out * seed
                attributions = self.model.backward(relevance, param_grads=False)
        finally:
            for handle in handles:
                handle.remove()
        if not return_relevance_lost:
            return attributions
        n = x.shape[0]
        lost = (relevance.reshape(n, -1).sum(axis=1, dtype=np.float64)
                - attributions.reshape(n, -1).sum(axis=1, dtype=np.float64))
        return attributions, lost
