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
al. 2017 (integrated gradients), Shrikumar et al. 2016 (input x gradient)
and 2017 (DeepLIFT), Lundberg & Lee 2017 (gradient SHAP, as Captum defines
it), Dhamdhere et al. 2018 (layer conductance). Layer-wise relevance
propagation is in :mod:`fastconv.analysis.attribution.lrp`.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast, overload

import numpy as np

from fastconv import _checks
from fastconv import reference as R
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
        return _broadcast_baseline(x, baseline)


def _broadcast_baseline(x: np.ndarray, baseline: ArrayLike | None) -> np.ndarray:
    """The baseline as an array shaped like x (zeros when None)."""
    if baseline is None:
        return np.zeros_like(x)
    base = np.asarray(baseline, dtype=x.dtype)
    try:
        return np.broadcast_to(base, x.shape).copy()
    except ValueError:
        raise ValueError(
            f"baseline of shape {base.shape} does not broadcast to the input shape {x.shape}"
        ) from None


class InputXGradient(Attribution):
    """The input times the gradient of the target unit (Shrikumar et al. 2016)."""

    def attribute(self, x: np.ndarray, target: C.Target) -> np.ndarray:
        return x * self._gradient(x, target)


# Elementwise nonlinearities, whose DeepLIFT multiplier is delta-out / delta-in.
_ELEMENTWISE = (L.ReLU, L.ReLU6, L.LeakyReLU, L.GELU)
_MAX_POOLS = (L.MaxPool2d, L.GlobalMaxPool2d)


def _max_pool(layer: L.Layer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, argmax) of a max-pooling layer for input x, as 4-D arrays."""
    if isinstance(layer, L.MaxPool2d):
        return R.maxpool2d_forward(x, layer.kernel_size, layer.stride, layer.padding)
    plane = x.shape[2:]
    return R.maxpool2d_forward(x, plane, plane, 0)


def _rescale_maxpool(layer: L.Layer, x: np.ndarray, x0: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """DeepLIFT's rule for max pooling, as Captum computes it: each window's
    change of output, delta = max(x) - max(x0), goes to the input that is the
    maximum of x when delta >= 0 and to the maximum of x0 otherwise; the
    multiplier of an input is what it received divided by its own change."""
    y, where_x = _max_pool(layer, x)
    y0, where_x0 = _max_pool(layer, x0)
    dy = dy.reshape(y.shape)
    delta = (y - y0) * dy
    return (R.maxpool2d_backward(np.where(y >= y0, delta, 0), where_x, x.shape)
            + R.maxpool2d_backward(np.where(y < y0, delta, 0), where_x0, x.shape))


class DeepLift(Attribution):
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017), in Captum's form.

    Both x and the baseline run forward; the backward pass is the gradient's
    except at the nonlinear layers, where the multiplier replaces the local
    derivative: delta-out / delta-in for an elementwise activation (ReLU,
    ReLU6, LeakyReLU, GELU; the derivative itself where the input barely
    moved, ``|delta-in| < eps``), and for max pooling the window's change of
    output routed to the maximum of x or of the baseline (see
    :func:`_rescale_maxpool`). Linear layers (convolution, batch norm in
    eval mode, average pooling, a graph's sums and concatenations) keep
    their gradient, which is their multiplier. The attribution is
    (x - baseline) times the multipliers; for a network of such layers it
    adds up to f(x) - f(baseline) exactly (summation to delta).
    """

    def __init__(self, model: fastconv.Model, layer: str | None = None, eps: float = 1e-10) -> None:
        super().__init__(model, layer)
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps = float(eps)

    @overload
    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = ...,
                  return_convergence_delta: Literal[False] = ...) -> np.ndarray:
        ...

    @overload
    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = ..., *,
                  return_convergence_delta: Literal[True]) -> tuple[np.ndarray, np.ndarray]:
        ...

    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = None,
                  return_convergence_delta: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        C.check_images(self.model, x)
        base = _broadcast_baseline(x, baseline)
        n = x.shape[0]
        targets = C.target_list(target, n, "DeepLIFT")
        seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def keep(layer: L.Layer, inputs: np.ndarray, output: np.ndarray) -> None:
            seen[id(layer)] = (inputs, output)

        def rule(layer: L.Layer, grad_input: np.ndarray | None, grad_output: np.ndarray) -> np.ndarray | None:
            if grad_input is None:
                return None
            inputs, outputs = seen[id(layer)]
            x1, x0 = inputs[:n], inputs[n:]
            delta_in = x1 - x0
            if isinstance(layer, _MAX_POOLS):
                routed = _rescale_maxpool(layer, x1, x0, grad_output[:n])
            else:
                routed = grad_output[:n] * (outputs[:n] - outputs[n:])
            with np.errstate(divide="ignore", invalid="ignore"):
                multiplier = np.where(np.abs(delta_in) < self.eps, grad_input[:n], routed / delta_in)
            # Only x's half is seeded, so the baseline's half carries no gradient.
            return np.concatenate([multiplier.astype(grad_input.dtype), np.zeros_like(grad_input[n:])])

        handles: list[L.HookHandle] = []
        try:
            for _, layer in self.model.named_layers():
                if isinstance(layer, _ELEMENTWISE + _MAX_POOLS):
                    handles.append(layer.register_forward_hook(keep))
                    handles.append(layer.register_backward_hook(rule))
            with C.evaluating(self.model):
                out = self.model.forward(np.concatenate([x, base]), until=self.layer)
                seed = np.zeros_like(out)
                seed[:n] = C.seed_gradient(out[:n], targets, self._where())
                grad = self.model.backward(seed, start=self.layer, param_grads=False)[:n]
        finally:
            for handle in handles:
                handle.remove()
        attributions = (x - base) * grad
        if not return_convergence_delta:
            return attributions
        delta = attributions.reshape(n, -1).sum(axis=1, dtype=np.float64) - (
            (out[:n] * seed[:n]).reshape(n, -1).sum(axis=1, dtype=np.float64)
            - (out[n:] * seed[:n]).reshape(n, -1).sum(axis=1, dtype=np.float64))
        return attributions, delta


class GradientShap(Attribution):
    """Gradient SHAP as Captum defines it: expected gradients over random
    baselines, random points between them and the input, and Gaussian noise
    on the input.

    For each example and each of ``samples`` draws: a baseline b picked
    uniformly from ``baselines`` (shaped (B, C, H, W), or one image), noise
    e ~ N(0, stdevs^2) added to the input, x' = x + e, a position alpha ~
    U(0, 1), and the term (x' - b) * grad f(b + alpha (x' - b)); the
    attribution is their mean. The draws come from ``seed``
    (:meth:`draw`), so a call is repeatable.
    """

    @staticmethod
    def draw(n: int, samples: int, baselines: int, shape: tuple[int, ...], stdevs: float,
             seed: np.random.Generator | int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The random draws of :meth:`attribute`: baseline indices (n, samples),
        noise (n, samples) + shape and alphas (n, samples)."""
        rng = np.random.default_rng(seed)
        index = rng.integers(0, baselines, (n, samples))
        noise = rng.standard_normal((n, samples) + tuple(shape)) * stdevs
        alphas = rng.uniform(0.0, 1.0, (n, samples))
        return index, noise, alphas

    def attribute(self, x: np.ndarray, target: C.Target, baselines: ArrayLike | None = None, samples: int = 5,
                  stdevs: float = 0.0, seed: np.random.Generator | int | None = 0,
                  batch_size: int = 256) -> np.ndarray:
        C.check_images(self.model, x)
        samples = _checks.positive_int(samples, "samples")
        if not (isinstance(stdevs, (int, float)) and stdevs >= 0):
            raise ValueError(f"stdevs must be a non-negative number, got {stdevs!r}")
        refs = np.zeros((1,) + x.shape[1:], x.dtype) if baselines is None else np.asarray(baselines, x.dtype)
        if refs.shape == x.shape[1:]:
            refs = refs[None]
        if refs.ndim != 4 or refs.shape[1:] != x.shape[1:] or refs.shape[0] == 0:
            raise ValueError(f"baselines must be shaped (B,) + {x.shape[1:]} or {x.shape[1:]}, got {refs.shape}")
        n = x.shape[0]
        targets = C.target_list(target, n, "gradient SHAP")
        index, noise, alphas = self.draw(n, samples, refs.shape[0], x.shape[1:], float(stdevs), seed)
        # Example-major rows, as Captum repeats each example for its samples.
        noisy = (x[:, None] + noise.astype(x.dtype)).reshape((n * samples,) + x.shape[1:])
        chosen = refs[index.reshape(-1)]
        alpha = alphas.reshape((-1, 1, 1, 1)).astype(x.dtype)
        points = alpha * noisy + (1 - alpha) * chosen
        row_targets = [t for t in targets for _ in range(samples)]
        grads = np.empty_like(points)
        for start, stop in C.batches(len(points), batch_size):
            grads[start:stop] = self._gradient(points[start:stop], row_targets[start:stop])
        terms = (noisy - chosen) * grads
        return terms.reshape((n, samples) + x.shape[1:]).mean(axis=1)


class LayerConductance:
    """Conductance of the units of a hidden layer (Dhamdhere et al. 2018), in Captum's form.

    Along the straight path from the baseline to x, each unit of ``layer``
    collects d target / d unit times the unit's change between neighbouring
    points of the path, for ``steps + 1`` points placed by ``method`` (those
    of :func:`integration_points`). The result has the layer's output shape;
    a layer's conductances add up to about f(x) - f(baseline).
    """

    def __init__(self, model: fastconv.Model, layer: str) -> None:
        self.model = model
        C.check_layer(model, layer)
        self.layer = layer

    def attribute(self, x: np.ndarray, target: C.Target, baseline: ArrayLike | None = None, steps: int = 50,
                  method: str = "gausslegendre", batch_size: int = 256) -> np.ndarray:
        C.check_images(self.model, x)
        base = _broadcast_baseline(x, baseline)
        steps = _checks.positive_int(steps, "steps")
        alphas = integration_points(steps + 1, method)[0]
        n = x.shape[0]
        targets = C.target_list(target, n, "layer conductance")
        per_batch = max(1, _checks.positive_int(batch_size, "batch_size") // n)
        activations, gradients = [], []
        with C.evaluating(self.model):
            for start, stop in C.batches(len(alphas), per_batch):
                a = alphas[start:stop].astype(x.dtype).reshape(-1, 1, 1, 1, 1)
                points = (base[None] + a * (x - base)[None]).reshape((-1,) + x.shape[1:])
                k = stop - start
                activation, grad = C.activation_and_gradient(
                    self.model, points, self.layer,
                    lambda out, k=k: C.seed_gradient(out, targets * k, "the model output"))
                activations.append(activation.reshape((k, n) + activation.shape[1:]))
                gradients.append(grad.reshape((k, n) + grad.shape[1:]))
        act, grad = np.concatenate(activations), np.concatenate(gradients)
        return ((act[1:] - act[:-1]) * grad[:-1]).sum(axis=0)


METHODS: dict[str, type[Attribution] | type[SmoothGrad]] = {
    "gradient": Gradient,
    "saliency": Saliency,
    "deconvnet": Deconvnet,
    "guided-backprop": GuidedBackprop,
    "gradcam": GradCAM,
    "guided-gradcam": GuidedGradCAM,
    "smoothgrad": SmoothGrad,
    "integrated-gradients": IntegratedGradients,
    "input-x-gradient": InputXGradient,
    "deeplift": DeepLift,
    "gradient-shap": GradientShap,
}
