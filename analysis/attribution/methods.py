"""Gradient-based attribution: which input pixels a chosen output depends on.

Every method is an object built once on a model and called many times with
one verb, ``attribute(x, target)``, on a batch x shaped (N, C, H, W); the
result is shaped like x (Grad-CAM, whose map has one channel, returns
(N, 1, H, W)). ``target`` is an int (a class, or any output index), a
sequence of N ints (one per example), or for a ``layer=`` whose output is
spatial a channel c (its strongest position in each example) or a unit
(c, i, j).

The guided variants change only the backward rule of the ReLU layers, for
the duration of one call, with backward hooks registered on the model's ReLU
layers (:func:`relu_backward_rule`); the layers' methods are untouched.

References: Simonyan et al. 2014 (saliency), Zeiler & Fergus 2014
(deconvnet), Springenberg et al. 2015 (guided backpropagation), Selvaraju
et al. 2017 (Grad-CAM), Smilkov et al. 2017 (SmoothGrad), Sundararajan et
al. 2017 (integrated gradients).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast, overload

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Literal, Protocol

    from numpy.typing import ArrayLike

    import fastconv

    class AttributionMethod(Protocol):
        """What SmoothGrad averages: any object with a model and the ``attribute`` verb."""

        model: fastconv.Model

        def attribute(self, x: np.ndarray, target: C.Target) -> np.ndarray:
            ...

RULES = ("gradient", "deconvnet", "guided")


def _positive_part(dy: np.ndarray) -> np.ndarray:
    return np.maximum(dy, 0).astype(dy.dtype, copy=False)


def _guided(layer: L.Layer, grad_output: np.ndarray) -> np.ndarray:
    # A pre-hook: the ReLU's own backward then keeps the positive part where
    # its input was positive.
    return _positive_part(grad_output)


def _deconvnet(layer: L.Layer, grad_input: np.ndarray | None, grad_output: np.ndarray) -> np.ndarray | None:
    # A hook after the ReLU's own backward, which has checked grad_output
    # (shape, dtype, a forward before it) as usual: its result is replaced
    # with the positive part of grad_output, whatever the input was.
    return None if grad_input is None else _positive_part(grad_output)


@contextlib.contextmanager
def relu_backward_rule(model: fastconv.Model, rule: str) -> Iterator[fastconv.Model]:
    """Temporarily replace the backward pass of every ReLU layer of ``model``.

    ``rule`` is ``'gradient'`` (unchanged: dy where the input was positive),
    ``'deconvnet'`` (max(dy, 0), whatever the input was) or ``'guided'``
    (max(dy, 0) where the input was positive). The rule is a backward hook
    (deconvnet) or backward pre-hook (guided) registered on each ReLU and
    removed on exit, even if the block raises.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    handles: list[L.HookHandle] = []
    try:
        for _, layer in model.named_layers():
            if not isinstance(layer, L.ReLU) or rule == "gradient":
                continue
            if rule == "guided":
                handles.append(layer.register_backward_pre_hook(_guided))
            else:
                handles.append(layer.register_backward_hook(_deconvnet))
        yield model
    finally:
        for handle in handles:
            handle.remove()


class Attribution:
    """Base class: holds the model and the layer whose output is the target."""

    def __init__(self, model: fastconv.Model, layer: str | None = None) -> None:
        self.model = model
        if layer is not None:
            C.check_layer(model, layer)
        self.layer = layer

    def _where(self) -> str:
        return "the model output" if self.layer is None else f"the output of layer {self.layer!r}"

    def _gradient(self, x: np.ndarray, target: C.Target, rule: str = "gradient") -> np.ndarray:
        """d(target unit)/dx for the batch x, under a ReLU backward rule."""
        C.check_images(self.model, x)
        with C.evaluating(self.model), relu_backward_rule(self.model, rule):
            out = self.model.forward(x, until=self.layer)
            seed = C.seed_gradient(out, target, self._where())
            return self.model.backward(seed, start=self.layer, param_grads=False)

    def _output(self, x: np.ndarray, target: C.Target) -> np.ndarray:
        """The target unit's value for each example, shape (N,)."""
        with C.evaluating(self.model):
            out = self.model.forward(x, until=self.layer)
        seed = C.seed_gradient(out, target, self._where())
        return (out * seed).reshape(out.shape[0], -1).sum(axis=1)


class Gradient(Attribution):
    """The plain gradient of the target unit with respect to the input (signed)."""

    def attribute(self, x: np.ndarray, target: C.Target) -> np.ndarray:
        return self._gradient(x, target)


class Saliency(Attribution):
    """``|d target / d x|`` (Simonyan et al.); :func:`channel_max` gives their one-channel map."""

    def attribute(self, x: np.ndarray, target: C.Target, abs: bool = True) -> np.ndarray:
        grad = self._gradient(x, target)
        return np.abs(grad) if abs else grad


class Deconvnet(Attribution):
    """Backward pass where each ReLU lets through the positive part of its upstream gradient."""

    def attribute(self, x: np.ndarray, target: C.Target) -> np.ndarray:
        return self._gradient(x, target, rule="deconvnet")


class GuidedBackprop(Attribution):
    """Backward pass where each ReLU passes positive gradients at positive inputs only."""

    def attribute(self, x: np.ndarray, target: C.Target) -> np.ndarray:
        return self._gradient(x, target, rule="guided")


def channel_max(attributions: np.ndarray) -> np.ndarray:
    """Collapse (N, C, H, W) attributions to (N, H, W) by the max over channels."""
    if attributions.ndim != 4:
        raise ValueError(f"attributions must be shaped (N, C, H, W), got {attributions.shape}")
    return attributions.max(axis=1)


def default_gradcam_layer(model: fastconv.Model) -> str:
    """The rectified maps of the last convolution, as in Selvaraju et al.: the
    first ReLU after it, past a batch norm, dropout or, in a graph, the sum
    with a residual branch (so the output of a ResNet's last block); the
    convolution itself when no activation follows it."""
    conv = C.last_conv_name(model)
    pairs = list(model.named_layers())
    for name, layer in pairs[C.layer_index(model, conv) + 1:]:
        if isinstance(layer, C.ACTIVATIONS):
            return name
        if not isinstance(layer, C.PASS_THROUGH):
            break
    return conv


class GradCAM(Attribution):
    """Grad-CAM at any layer with a spatial output (default: see
    :func:`default_gradcam_layer`).

    Each channel k of the layer's output A gets the weight alpha_k, the mean
    over positions of d target / d A_k; the map is sum_k alpha_k A_k, passed
    through a ReLU unless ``relu=False``, and resized to the input with
    ``interpolation`` ('bilinear', 'nearest' or None to keep the layer's size).
    """

    def __init__(self, model: fastconv.Model, layer: str | None = None) -> None:
        if layer is None:
            layer = default_gradcam_layer(model)
        super().__init__(model, None)
        C.check_layer(model, layer)
        self.conv_layer = layer

    def layer_map(self, x: np.ndarray, target: C.Target, relu: bool = True) -> np.ndarray:
        """The map at the layer's own resolution, shape (N, 1, h, w)."""
        C.check_images(self.model, x)
        shape = self.model.output_shapes(x.shape, until=self.conv_layer)[self.conv_layer]
        if len(shape) != 4:
            raise ValueError(f"Grad-CAM needs a layer with a spatial output; {self.conv_layer!r} outputs shape {shape}")
        with C.evaluating(self.model):
            activation, grad = C.activation_and_gradient(
                self.model, x, self.conv_layer, lambda out: C.seed_gradient(out, target, "the model output"))
        weights = grad.mean(axis=(2, 3), keepdims=True)
        cam = (weights * activation).sum(axis=1, keepdims=True)
        return np.maximum(cam, 0) if relu else cam

    def attribute(self, x: np.ndarray, target: C.Target, relu: bool = True,
                  interpolation: str | None = "bilinear") -> np.ndarray:
        cam = self.layer_map(x, target, relu=relu)
        if interpolation is None:
            return cam
        return C.resize(cam, x.shape[2:], interpolation)


class GuidedGradCAM(Attribution):
    """Guided backpropagation multiplied by the Grad-CAM map resized to the input."""

    def __init__(self, model: fastconv.Model, layer: str | None = None) -> None:
        super().__init__(model, None)
        self.gradcam = GradCAM(model, layer)
        self.guided = GuidedBackprop(model)

    def attribute(self, x: np.ndarray, target: C.Target, interpolation: str | None = "nearest") -> np.ndarray:
        cam = self.gradcam.attribute(x, target, relu=True, interpolation=interpolation)
        return self.guided.attribute(x, target) * cam


class SmoothGrad:
    """Average an attribution over noisy copies of the input (Smilkov et al.).

    ``method`` is an attribution object (default: :class:`Saliency` of the
    model). The noise is Gaussian with standard deviation ``noise_level``
    times each example's value range.
    """

    def __init__(self, model_or_method: fastconv.Model | AttributionMethod) -> None:
        self.method: AttributionMethod
        if hasattr(model_or_method, "attribute"):
            self.method = cast("AttributionMethod", model_or_method)  # hasattr does not narrow the union
        else:
            self.method = Saliency(model_or_method)
        self.model = self.method.model

    def attribute(self, x: np.ndarray, target: C.Target, samples: int = 25, noise_level: float = 0.15,
                  seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> np.ndarray:
        C.check_images(self.model, x)
        samples = _checks.positive_int(samples, "samples")
        if not (isinstance(noise_level, (int, float)) and noise_level >= 0):
            raise ValueError(f"noise_level must be a non-negative number, got {noise_level!r}")
        rng = np.random.default_rng(seed)
        n = x.shape[0]
        targets = C.target_list(target, n, "SmoothGrad")
        span = (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1)).reshape(n, 1, 1, 1)
        total = np.zeros(x.shape, dtype=np.float64)
        per_batch = max(1, _checks.positive_int(batch_size, "batch_size") // n)
        for start, stop in C.batches(samples, per_batch):
            k = stop - start
            noise = rng.standard_normal((k,) + x.shape).astype(x.dtype) * (noise_level * span).astype(x.dtype)
            noisy = (x[None] + noise).reshape((k * n,) + x.shape[1:])
            attr = self.method.attribute(noisy, targets * k)
            total += attr.reshape((k,) + x.shape).sum(axis=0)
        return (total / samples).astype(x.dtype)


def integration_points(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Path positions alpha in [0, 1] and their quadrature weights for ``steps`` points."""
    steps = _checks.positive_int(steps, "steps")
    if method == "riemann_left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError(f"riemann_trapezoid needs at least 2 steps, got {steps}")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(
        "method must be one of 'gausslegendre', 'riemann_left', 'riemann_right', "
        f"'riemann_middle', 'riemann_trapezoid'; got {method!r}"
    )


class IntegratedGradients(Attribution):
    """(x - baseline) times the gradient averaged along the straight path from the baseline.

    The attributions of an example add up to f(x) - f(baseline) as the
    number of ``steps`` grows (completeness); ``convergence_delta`` reports
    how far from that a given call is.
    """

    @overload
    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = ..., steps: int = ...,
                  method: str = ..., batch_size: int = ...,
                  return_convergence_delta: Literal[False] = ...) -> np.ndarray:
        ...

    @overload
    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = ..., steps: int = ...,
                  method: str = ..., batch_size: int = ..., *,
                  return_convergence_delta: Literal[True]) -> tuple[np.ndarray, np.ndarray]:
        ...

    @overload
    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = ..., steps: int = ...,
                  method: str = ..., batch_size: int = ...,
                  return_convergence_delta: bool = ...) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        ...

    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = None, steps: int = 50,
                  method: str = "gausslegendre", batch_size: int = 256,
                  return_convergence_delta: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        C.check_images(self.model, x)
        base = self._baseline(x, baseline)
        alphas, weights = integration_points(steps, method)
        n = x.shape[0]
        targets = C.target_list(target, n, "integrated gradients")
        diff = x - base
        total = np.zeros(x.shape, dtype=np.float64)
        per_batch = max(1, _checks.positive_int(batch_size, "batch_size") // n)
        for start, stop in C.batches(len(alphas), per_batch):
            a = alphas[start:stop].astype(x.dtype).reshape(-1, 1, 1, 1, 1)
            points = (base[None] + a * diff[None]).reshape((-1,) + x.shape[1:])
            grad = self._gradient(points, targets * (stop - start)).reshape((stop - start,) + x.shape)
            total += np.tensordot(weights[start:stop], grad, axes=(0, 0))
        attributions = (diff * total).astype(x.dtype)
        if not return_convergence_delta:
            return attributions
        delta = attributions.reshape(n, -1).sum(axis=1, dtype=np.float64) - (
            self._output(x, targets).astype(np.float64) - self._output(base, targets).astype(np.float64)
        )
        return attributions, delta

    def _baseline(self, x: np.ndarray, baseline: ArrayLike | None) -> np.ndarray:
        if baseline is None:
            return np.zeros_like(x)
        base = np.asarray(baseline, dtype=x.dtype)
        try:
            return np.broadcast_to(base, x.shape).copy()
        except ValueError:
            raise ValueError(
                f"baseline of shape {base.shape} does not broadcast to the input shape {x.shape}"
            ) from None


METHODS: dict[str, type[Attribution] | type[SmoothGrad]] = {
    "gradient": Gradient,
    "saliency": Saliency,
    "deconvnet": Deconvnet,
    "guided-backprop": GuidedBackprop,
    "gradcam": GradCAM,
    "guided-gradcam": GuidedGradCAM,
    "smoothgrad": SmoothGrad,
    "integrated-gradients": IntegratedGradients,
}
