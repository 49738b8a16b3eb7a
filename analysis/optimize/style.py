"""Neural style transfer and texture synthesis (Gatys et al. 2015, 2016).

An image x in [0, 1] is optimized so that

* its features at ``content_layer`` match those of the content image:
  ||F - P||^2 / ||P||^2;
* at every layer l of ``style_layers``, its feature statistics match those
  of the style image: with Gram matrices G = F F^T / (H W) (channels by
  channels, averaged over positions), ||G - A||^2 / ||A||^2; or, with
  ``statistics='mean_var'``, each channel's mean and variance over
  positions, ||mu - mu_s||^2 / ||mu_s||^2 + ||var - var_s||^2 / ||var_s||^2;
* it is smooth: the total variation (squared differences of neighbours).

The loss is content_weight * content + style_weight * sum_l w_l style_l +
tv_weight * tv, with w_l = ``style_weights`` (default 1 / number of layers).
Dividing each term by the size of its target makes the weights carry over
between layers, networks and image sizes, trained weights or random ones.
Without a content image the same optimization synthesizes a texture.

The statistics are size-independent, so the style image may have any size;
the output has the content image's size (or ``size`` for a texture). Every
layer the losses read is computed in one forward pass and their gradients
flow back in one backward pass
(:func:`~fastconv.analysis.optimize.parametrize.backward_from`), through the
convolutional part only, at any image size.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.analysis.optimize import methods as O
from fastconv.analysis.optimize import parametrize as P
from fastconv.nn import init as I
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from collections.abc import Iterable

    from numpy.typing import ArrayLike

    import fastconv

STATISTICS = ("gram", "mean_var")


# -- statistics and losses -------------------------------------------------------------

def _features(features: ArrayLike) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 4:
        raise ValueError(f"features must be shaped (N, C, H, W), got {features.shape}")
    return features


def gram_matrix(features: ArrayLike) -> np.ndarray:
    """G[n] = F F^T / (H W) for features (N, C, H, W), F = features[n] as (C, H*W); (N, C, C)."""
    features = _features(features)
    n, channels, h, w = features.shape
    flat = features.reshape(n, channels, h * w)
    return flat @ flat.transpose(0, 2, 1) / (h * w)


def mean_variance(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (biased) variance over positions, each (N, C)."""
    features = _features(features)
    return features.mean(axis=(2, 3)), features.var(axis=(2, 3))


def style_statistics(features: ArrayLike, statistics: str = "gram") -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The style target of features: their Gram matrices, or (mean, variance)."""
    O._check_choice(statistics, STATISTICS, "statistics")
    return gram_matrix(features) if statistics == "gram" else mean_variance(features)


def _relative_square(difference: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    scale = max(float(np.sum(target ** 2)), 1e-12)
    return float(np.sum(difference ** 2)) / scale, 2.0 * difference / scale


def style_loss(features: ArrayLike, target: np.ndarray | tuple[np.ndarray, np.ndarray],
               statistics: str = "gram") -> tuple[float, np.ndarray]:
    """Style loss of ``features`` (N, C, H, W) against ``target`` (from
    :func:`style_statistics` of the style image, which may differ in size)
    and its gradient w.r.t. the features."""
    features = _features(features)
    n, channels, h, w = features.shape
    positions = h * w
    if statistics == "gram":
        target = np.asarray(target, dtype=np.float64)
        if target.shape[-2:] != (channels, channels):
            raise ValueError(f"the target Gram matrices are {target.shape} but the features have {channels} channels")
        value, gram_gradient = _relative_square(gram_matrix(features) - target, target)
        flat = features.reshape(n, channels, positions)
        symmetric = gram_gradient + gram_gradient.transpose(0, 2, 1)
        return value, (symmetric @ flat / positions).reshape(features.shape)
    O._check_choice(statistics, STATISTICS, "statistics")
    target_mean, target_var = (np.asarray(t, dtype=np.float64) for t in target)
    mean, var = mean_variance(features)
    mean_value, mean_gradient = _relative_square(mean - target_mean, target_mean)
    var_value, var_gradient = _relative_square(var - target_var, target_var)
    centred = features - mean[:, :, None, None]
    gradient = (mean_gradient[:, :, None, None] + var_gradient[:, :, None, None] * 2.0 * centred) / positions
    return mean_value + var_value, gradient


def content_loss(features: ArrayLike, target: ArrayLike) -> tuple[float, np.ndarray]:
    """||F - P||^2 / ||P||^2 and its gradient w.r.t. F."""
    features = np.asarray(features, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if features.shape != target.shape:
        raise ValueError(f"the features are {features.shape} but the content target is {target.shape}")
    return _relative_square(features - target, target)


# -- layers and networks ---------------------------------------------------------------

def _after_activation(model: fastconv.Model, name: str) -> str:
    """The activation right after ``name`` (past batch norm or dropout), else ``name``."""
    for following, layer in C.layers_after(model, name):
        if isinstance(layer, C.ACTIVATIONS):
            return following
        if not isinstance(layer, (L.BatchNorm2d, L.Dropout)):
            break
    return name


def _rectified_convolutions(model: fastconv.Model) -> list[str]:
    return [_after_activation(model, name) for name in C.conv_layer_names(model)]


def default_style_layers(model: fastconv.Model) -> list[str]:
    """The rectified output of the first convolution of each block (the
    first one, and each one that follows a pooling layer), as Gatys et al.
    take conv1_1 ... conv5_1 of VGG."""
    firsts = []
    block_starts = True
    for name, layer in model.named_layers():
        if isinstance(layer, L.Conv2d):
            if block_starts:
                firsts.append(_after_activation(model, name))
            block_starts = False
        elif isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
            block_starts = True
    return firsts


def default_content_layer(model: fastconv.Model) -> str:
    """The rectified output of the convolution two thirds of the way up."""
    layers = _rectified_convolutions(model)
    if not layers:
        raise ValueError("the model has no Conv2d layer to take content and style from")
    return layers[(2 * len(layers) - 1) // 3]


def random_weights(model: fastconv.Model, seed: int | None = 0) -> fastconv.Model:
    """A copy of ``model`` with fresh random weights: He-normal convolutions and
    linear layers with zero biases, batch norm as the identity (weight 1,
    bias 0, running mean 0, variance 1). Names, metadata and normalization
    are kept; a network that has learned nothing, for textures (Ustyuzhaninov
    et al. 2017)."""
    rng = P.check_seed(seed)
    clone = model.astype(model.dtype or np.float32)
    for _, layer in clone.named_layers():
        if isinstance(layer, (L.Conv2d, L.Linear)):
            I.kaiming_normal_(layer.params["weight"], rng, mode="fan_in", nonlinearity="relu")
            if "bias" in layer.params:
                layer.params["bias"].fill(0)
        elif isinstance(layer, L.BatchNorm2d):
            layer.params["weight"].fill(1)
            layer.params["bias"].fill(0)
            layer.buffers["running_mean"].fill(0)
            layer.buffers["running_var"].fill(1)
    return clone


# -- the objective ---------------------------------------------------------------------------

class StyleObjective:
    """loss(x) and its gradient for style transfer on ``model``, built once
    from the content image (or None for a texture) and the style image,
    each (C, H, W) in [0, 1]. Call it on an image (C, H, W) or (1, C, H, W):
    returns (loss, gradient shaped like the image, {'content', 'style', 'tv'}).
    """

    def __init__(self, model: fastconv.Model, content: np.ndarray | None, style: np.ndarray,
                 content_layer: str | None = None, style_layers: Iterable[str] | None = None,
                 style_weights: Iterable[float] | None = None, content_weight: float = 1.0,
                 style_weight: float = 100.0, tv_weight: float = 1.0, statistics: str = "gram") -> None:
        self.model = model
        self.statistics = O._check_choice(statistics, STATISTICS, "statistics")
        self.content_weight = P.check_weight(content_weight, "content_weight")
        self.style_weight = P.check_weight(style_weight, "style_weight")
        self.tv_weight = P.check_weight(tv_weight, "tv_weight")
        self.style_layers = default_style_layers(model) if style_layers is None else list(style_layers)
        if not self.style_layers:
            raise ValueError("style_layers is empty")
        for layer in self.style_layers:
            C.check_layer(model, layer, "style layer")
        if style_weights is None:
            style_weights = [1.0 / len(self.style_layers)] * len(self.style_layers)
        style_weights = list(style_weights)
        if len(style_weights) != len(self.style_layers):
            raise ValueError(
                f"{len(style_weights)} style_weights for {len(self.style_layers)} style layers: {style_weights!r}"
            )
        self.style_weights = [P.check_weight(w, f"style weight of {name!r}")
                              for w, name in zip(style_weights, self.style_layers)]
        self.space = P.PixelSpace(model)
        style = O._single_image(style, model, "style")
        self.content_layer: str | None = None
        if content is not None:
            content = O._single_image(content, model, "content")
            self.content_layer = default_content_layer(model) if content_layer is None else content_layer
            C.check_layer(model, self.content_layer, "content layer")
        self.layers = list(dict.fromkeys(self.style_layers + ([self.content_layer] if self.content_layer else [])))
        names = C.layer_names(model)
        self.deepest = max(self.layers, key=names.index)
        for image in (style, content):
            if image is not None:
                shape = O.output_shape(model, self.deepest, image.shape)
                if len(shape) != 4:
                    raise ValueError(
                        f"style transfer needs layers with spatial outputs; {self.deepest!r} outputs {shape}"
                    )
        style_features = self._features(style)
        self.style_targets = {name: style_statistics(style_features[name], statistics) for name in self.style_layers}
        self.content_target: np.ndarray | None = None
        if content is not None:
            assert self.content_layer is not None  # set above with the content image
            self.content_target = self._features(content)[self.content_layer].astype(np.float64)

    def _features(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        with C.evaluating(self.model):
            _, captured = C.forward_with_outputs(self.model, self.space.to_input(pixels), self.layers,
                                                 until=self.deepest)
        return captured

    def __call__(self, image: np.ndarray) -> tuple[float, np.ndarray, dict[str, float]]:
        pixels = image if image.ndim == 4 else image[None]
        pixels = np.asarray(pixels, dtype=np.float64)
        wanted = set(self.layers)
        captured: dict[str, np.ndarray] = {}

        def keep(name: str, layer: L.Layer, output: np.ndarray) -> None:
            if name in wanted:
                captured[name] = output

        with C.evaluating(self.model):
            handle = self.model.register_forward_hook(keep)
            try:
                self.model.forward(self.space.to_input(pixels), until=self.deepest)
            finally:
                handle.remove()
            gradients: dict[str, np.ndarray] = {}
            parts = {"content": 0.0, "style": 0.0, "tv": 0.0}
            for name, weight in zip(self.style_layers, self.style_weights):
                value, grad = style_loss(captured[name], self.style_targets[name], self.statistics)
                parts["style"] += weight * value
                gradients[name] = self.style_weight * weight * grad
            if self.content_layer is not None:
                assert self.content_target is not None  # set with the content layer
                value, grad = content_loss(captured[self.content_layer], self.content_target)
                parts["content"] = value
                gradients[self.content_layer] = gradients.get(self.content_layer, 0.0) + self.content_weight * grad
            dtype = captured[self.deepest].dtype
            grad = P.backward_from(self.model, {k: np.asarray(v).astype(dtype) for k, v in gradients.items()})
        pixel_gradient = self.space.pixel_gradient(grad)
        if self.tv_weight:
            parts["tv"], tv_gradient = P.total_variation(pixels)
            pixel_gradient = pixel_gradient + self.tv_weight * tv_gradient
        loss = (self.content_weight * parts["content"] + self.style_weight * parts["style"]
                + self.tv_weight * parts["tv"])
        return loss, pixel_gradient.reshape(image.shape), parts


@dataclass
class Stylized:
    """The result of :func:`style_transfer`: ``image`` (C, H, W) float64 in
    [0, 1] (the evaluated image with the lowest loss); ``history['loss']``,
    ``['content']``, ``['style']``, ``['tv']`` at every evaluation of the
    objective; ``seconds`` of wall-clock time."""

    image: np.ndarray
    method: str
    content_layer: str | None
    style_layers: list[str]
    seconds: float
    history: dict[str, np.ndarray]

    @property
    def evaluations(self) -> int:
        return len(self.history["loss"])


def style_transfer(model: fastconv.Model, content: np.ndarray | None, style: np.ndarray, steps: int = 200,
                   method: str = "lbfgs", lr: float = 0.02, size: int | tuple[int, int] | None = None,
                   init: str | np.ndarray | None = None, content_layer: str | None = None,
                   style_layers: Iterable[str] | None = None, style_weights: Iterable[float] | None = None,
                   content_weight: float = 1.0, style_weight: float = 100.0, tv_weight: float = 1.0,
                   statistics: str = "gram", seed: int | None = 0, progress: bool | None = None) -> Stylized:
    """Render ``content`` (C, H, W) in the style of ``style`` (C, H', W'), both
    in [0, 1]; with ``content=None``, synthesize a texture of ``size`` (an int
    or (H, W)) from ``style``.

    ``steps`` is the number of evaluations of the loss (forward and backward
    passes) for either ``method``: 'lbfgs' (SciPy's L-BFGS-B, pixels boxed in
    [0, 1]) or 'adam' (step ``lr``, pixels clipped). ``init``: 'content'
    (default with a content image), 'noise' (uniform noise in [0, 1], the
    default for a texture) or an image. See the module docstring for the
    loss and its weights.
    """
    objective = StyleObjective(model, content, style, content_layer, style_layers, style_weights,
                               content_weight, style_weight, tv_weight, statistics)
    rng = P.check_seed(seed)
    if content is not None:
        shape = O._single_image(content, model, "content").shape
        if size is not None:
            raise ValueError(f"size={size!r} is for textures; the output takes the content image's size {shape[2:]}")
    else:
        if size is None:
            raise ValueError("a texture (content=None) needs size=(H, W)")
        shape = (1,) + O.input_shape(model, size)
        O.output_shape(model, objective.deepest, shape)
    if init is None:
        init = "content" if content is not None else "noise"
    if isinstance(init, np.ndarray):
        start = P.as_pixel_batch(init, "init")
        if start.shape != shape:
            raise ValueError(f"init has shape {start.shape[1:]} but the output is {shape[1:]}")
    elif init == "content" and content is not None:
        start = O._single_image(content, model, "content").copy()
    elif init == "noise":
        start = rng.uniform(0.0, 1.0, shape)
    else:
        raise ValueError(f"init must be 'content', 'noise' or an image, got {init!r}")
    parts: dict[str, list[float]] = {"content": [], "style": [], "tv": []}

    def loss_and_gradient(pixels: np.ndarray) -> tuple[float, np.ndarray]:
        loss, gradient, values = objective(pixels)
        for key, value in values.items():
            parts[key].append(value)
        return loss, gradient

    started = time.perf_counter()
    best, losses = P.minimize(loss_and_gradient, start, method=method, evaluations=steps, lr=lr,
                              progress=progress, description="style transfer" if content is not None else "texture")
    seconds = time.perf_counter() - started
    history = {"loss": np.array(losses)}
    history.update({k: np.array(v) for k, v in parts.items()})
    return Stylized(image=best[0], method=method, content_layer=objective.content_layer,
                    style_layers=objective.style_layers, seconds=seconds, history=history)
