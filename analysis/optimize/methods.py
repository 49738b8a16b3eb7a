"""Optimization to image: the network is fixed and the input changes.

* :func:`class_model`: the image that maximizes a class score (Simonyan et
  al. 2014), with the regularizers of Yosinski et al. 2015: L2 decay, a
  Gaussian blur every few steps, jitter, clipping of small-norm and of
  small-contribution pixels.
* :func:`feature_visualization` / :func:`feature_grid`: the same for any
  channel or unit of any layer, optionally in a Fourier-space,
  colour-decorrelated parametrization with random jitter, scaling and
  rotation (transformation robustness; Olah et al. 2017). Every option of
  one is an option of the other, and they compose.
* :func:`to_class`: push a real image towards a chosen class until the
  model gives it a set probability, recording the probability per step.
* :func:`invert` / :func:`invert_layers`: reconstruct an image from its
  code at a layer under total-variation and alpha-norm priors (Mahendran &
  Vedaldi 2015).
* :func:`deep_dream`: amplify what a layer already sees (the gradient at the
  layer is set to its activation), over octaves, on images of any size the
  convolutional part of the model accepts.

Images are floats in [0, 1] (pixel space), one image shaped (C, H, W), a
batch (N, C, H, W); the model's normalization is applied inside
(:class:`~fastconv.analysis.optimize.parametrize.PixelSpace`). Every result has
``image`` (C, H, W), float64 in [0, 1], and ``history``, a dict of per-step
arrays. Random choices (noise, jitter, transformations) come from
``numpy.random.default_rng(seed)``, so a call is repeatable for a given seed
(and thread count). Long runs show a progress bar on a terminal
(``progress=None``), always (``True``) or never (``False``). Every tool runs
the model in evaluation mode and leaves its mode and parameter gradients as
they were.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.optimize import parametrize as P
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    import PIL.Image
    from numpy.typing import ArrayLike

    import fastconv

INITS = ("zeros", "noise")
OPTIMIZERS = ("sgd", "adam")
# The fraction of the best value so far below which the diversity term stops pushing an image.
DIVERSITY_FLOOR = 0.6


# -- images from files ---------------------------------------------------------------

# Images that ship with fastconv's dependencies, so demos need no download.
SAMPLE_IMAGES = {
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "present": ("matplotlib", "Minduka_Present_Blue_Pack.png"),
    "flower": ("sklearn", "flower.jpg"),
    "china": ("sklearn", "china.jpg"),
}


def _open_sample(name: str) -> PIL.Image.Image:
    from PIL import Image

    package, filename = SAMPLE_IMAGES[name]
    if package == "matplotlib":
        from matplotlib import cbook

        return Image.open(cbook.get_sample_data(filename, asfileobj=False))
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(filename))


def load_image(source: str | os.PathLike, channels: int = 3, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as (C, H, W) float64 in [0, 1].

    ``source`` is a file path (anything Pillow reads) or the name of a
    sample image shipped with the dependencies: ``grace_hopper``, ``present``
    (matplotlib) or ``flower``, ``china`` (scikit-learn). ``channels`` is 1
    (luminance) or 3 (RGB); transparent parts are laid on white. ``size``:
    None keeps the size, an int scales the longer side to that many pixels,
    a pair (H, W) scales the image to cover H x W and crops the centre.
    """
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(source, str) and source in SAMPLE_IMAGES and not os.path.exists(source):
        image = _open_sample(source)
    else:
        try:
            path = os.fspath(source)
        except TypeError:
            raise TypeError(f"source must be a file path or a sample name, got {source!r}") from None
        if not os.path.isfile(path):
            raise ValueError(f"no image file {path!r} (sample images: {', '.join(SAMPLE_IMAGES)})")
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path!r} is not an image Pillow can read: {error}") from None
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("L" if channels == 1 else "RGB")
    image = _resized(image, size)
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def _resized(image: PIL.Image.Image, size: int | tuple[int, int] | None) -> PIL.Image.Image:
    from PIL import Image

    if size is None:
        return image
    width, height = image.size
    if C.is_int(size):
        size = cast(int, _checks.positive_int(size, "size"))
        factor = size / max(width, height)
        target = (max(1, round(width * factor)), max(1, round(height * factor)))
        # Pillow sets its resampling constants through globals(), unseen by type checkers;
        # Image.Resampling.LANCZOS would need Pillow 9.1.
        return image.resize(target, Image.LANCZOS)  # type: ignore[attr-defined]
    out_h, out_w = C.check_pair(size, "size")
    factor = max(out_w / width, out_h / height)
    cover = (max(out_w, round(width * factor)), max(out_h, round(height * factor)))
    image = image.resize(cover, Image.LANCZOS)  # type: ignore[attr-defined]  # as above
    left, top = (cover[0] - out_w) // 2, (cover[1] - out_h) // 2
    return image.crop((left, top, left + out_w, top + out_h))


# -- shared checks ---------------------------------------------------------------------

def logits_layer(model: fastconv.Model) -> str:
    """The layer holding the class scores before the softmax: the last one,
    or the one before a final LogSoftmax."""
    pairs = model.named_layers()
    if isinstance(pairs[-1][1], L.LogSoftmax) and len(pairs) > 1:
        return pairs[-2][0]
    return pairs[-1][0]


def input_shape(model: fastconv.Model, size: int | tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the images to optimize: ``size`` (an int or (H, W)), else
    the ``input_shape`` in the model's metadata."""
    channels = C.input_channels(model)
    meta_shape = (getattr(model, "meta", None) or {}).get("input_shape")
    if channels is None and meta_shape is not None:
        channels = int(meta_shape[0])
    if channels is None:
        raise ValueError("cannot tell how many channels the model's input has; its first layer has no weight")
    if size is not None:
        return (channels,) + C.check_pair(size, "size")
    if meta_shape is not None:
        return (channels, int(meta_shape[1]), int(meta_shape[2]))
    side = _square_side(model, channels)
    if side is None:
        raise ValueError("the model's metadata has no input_shape and its layers take any image size; "
                         "pass size=(H, W)")
    return (channels, side, side)


def _square_side(model: fastconv.Model, channels: int, largest: int = 1024) -> int | None:
    """The side of the square images a model takes, when a fully connected
    layer after a Flatten fixes it (its in_features); None when any size fits
    (no such layer) or no square side gives the features."""
    from fastconv.nn.layers import Flatten, Linear

    pairs = model.named_layers()
    flatten = next((i for i, (_, layer) in enumerate(pairs) if isinstance(layer, Flatten)), None)
    if flatten is None or not any(isinstance(layer, Linear) for _, layer in pairs[flatten:]):
        return None
    linear = next(layer for _, layer in pairs[flatten:] if isinstance(layer, Linear))
    for side in range(1, largest + 1):
        try:
            shape = model.output_shapes((1, channels, side, side), until=pairs[flatten][0])[pairs[flatten][0]]
        except ValueError:
            continue
        if shape[-1] == linear.in_features:
            return side
        if shape[-1] > linear.in_features:
            return None
    return None


def output_shape(model: fastconv.Model, layer: str, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of layer ``layer``'s output for an input batch of ``shape``;
    ValueError naming the layer and the size when the input does not fit."""
    C.check_layer(model, layer)
    try:
        return model.output_shapes(shape, until=layer)[layer]
    except (ValueError, TypeError) as error:
        raise ValueError(f"an input of shape {tuple(shape)} does not reach layer {layer!r}: {error}") from None


def _check_choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_percentile(value: float, name: str) -> float:
    value = P.check_weight(value, name)
    if value >= 100:
        raise ValueError(f"{name} is a percentile and must be below 100, got {value!r}")
    return value


def _unit_list(channel: int | tuple[int, ...] | Sequence[int | Sequence[int]] | np.ndarray, layer: str,
               out_shape: Sequence[int], what: str = "channel") -> list[tuple[int, ...]]:
    """One (c,) or (c, i, j) per image from an int, a tuple (c, i, j) or a list of those."""
    per_example = out_shape[1:]
    if C.is_int(channel) or (isinstance(channel, tuple) and all(C.is_int(v) for v in channel)):
        items: list[Any] = [channel]
    elif isinstance(channel, (list, np.ndarray)) and len(channel) > 0:
        items = [tuple(v) if isinstance(v, (list, tuple)) else v for v in channel]
    else:
        raise TypeError(f"{what} must be an int, a tuple (c, i, j) or a non-empty list of those, got {channel!r}")
    units: list[tuple[int, ...]] = []
    for item in items:
        if C.is_int(item):
            if not 0 <= int(item) < per_example[0]:
                raise ValueError(
                    f"{what} {int(item)} is out of range for layer {layer!r} with {per_example[0]} "
                    f"{'outputs' if len(per_example) == 1 else 'channels'} (valid: 0..{per_example[0] - 1})"
                )
            units.append((int(item),))
        elif isinstance(item, tuple) and all(C.is_int(v) for v in item):
            unit = tuple(int(v) for v in item)
            if len(unit) != len(per_example) or any(not 0 <= v < s for v, s in zip(unit, per_example)):
                raise ValueError(f"unit {unit} is out of range for layer {layer!r} whose output is {per_example}")
            units.append(unit)
        else:
            raise TypeError(f"{what} must be an int or a tuple of ints, got {item!r}")
    return units


def _unit_seed(units: Sequence[tuple[int, ...]], out_shape: Sequence[int]) -> np.ndarray:
    """The gradient at the layer of sum over images of each image's unit; a
    whole channel counts as the mean over its positions."""
    seed = np.zeros((len(units),) + tuple(out_shape[1:]))
    for k, unit in enumerate(units):
        if len(unit) == 1 and len(out_shape) == 4:
            seed[k, unit[0]] = 1.0 / (out_shape[2] * out_shape[3])
        else:
            seed[(k,) + unit] = 1.0
    return seed


def _unit_values(out: np.ndarray, seed: np.ndarray) -> np.ndarray:
    return (out.astype(np.float64) * seed).reshape(len(seed), -1).sum(axis=1)


def _single_image(image: np.ndarray, model: fastconv.Model, name: str = "image") -> np.ndarray:
    pixels = P.as_pixel_batch(image, name)
    if pixels.shape[0] != 1:
        raise ValueError(f"{name} must be one image (C, H, W), got a batch of shape {pixels.shape}")
    channels = C.input_channels(model)
    if channels is not None and pixels.shape[1] != channels:
        raise ValueError(
            f"{name} has {pixels.shape[1]} channels (shape {pixels.shape[1:]}) but the model expects {channels}"
        )
    return pixels


# -- class models and feature visualization ------------------------------------------------

@dataclass
class Visualization:
    """Images optimized to excite units of one layer.

    ``images`` (N, C, H, W) float64 in [0, 1], one per unit; ``image`` is the
    first, (C, H, W). ``units`` are (c,) for a whole channel (its mean over
    positions) or a neuron of a flat layer, (c, i, j) for one position.
    ``values`` (N,) are the units' final values on the images as they are
    (no jitter or transformation). ``history['objective']`` (steps, N) holds
    each step's values, under that step's random transformation; a class
    model also has ``history['probability']`` (steps, N). A
    :func:`direction_visualization` has no ``units`` but ``directions``
    (N, C), the vector each image was pushed along.
    """

    layer: str
    units: list[tuple[int, ...]]
    images: np.ndarray
    values: np.ndarray
    history: dict[str, np.ndarray] = field(default_factory=dict)
    directions: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        return self.images[0]


def _initial_pixels(init: str | np.ndarray, shape: tuple[int, int, int, int], center: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    if isinstance(init, np.ndarray):
        pixels = P.as_pixel_batch(init, "init")
        if pixels.shape[1:] != shape[1:]:
            raise ValueError(f"init has shape {pixels.shape[1:]} but the images to optimize are {shape[1:]}")
        return np.broadcast_to(pixels, shape).copy()
    _check_choice(init, INITS, "init")
    pixels = np.broadcast_to(center.reshape(1, -1, 1, 1), shape).copy()
    if init == "noise":
        pixels += rng.normal(0.0, 0.1, shape)
    return np.clip(pixels, 0.0, 1.0)


def _parametrization(parametrization: str, init: str | np.ndarray, shape: tuple[int, int, int, int],
                     center: np.ndarray, rng: np.random.Generator,
                     color: ArrayLike | None) -> P.PixelImage | P.FourierImage:
    _check_choice(parametrization, P.PARAMETRIZATIONS, "parametrization")
    if parametrization == "pixel":
        if color is not None:
            raise ValueError("color decorrelation needs parametrization='fourier'")
        return P.PixelImage(_initial_pixels(init, shape, center, rng), center)
    if isinstance(init, np.ndarray):
        raise ValueError("an init image needs parametrization='pixel'; the Fourier one starts from 'zeros' or 'noise'")
    _check_choice(init, INITS, "init")
    if color is not None:
        color = np.asarray(color)
        if color.ndim == 4:
            color = P.color_correlation(color)
    return P.FourierImage(shape, center, rng, color=color, std=0.1 if init == "noise" else 0.0)


def feature_visualization(model: fastconv.Model, layer: str,
                          channel: int | tuple[int, ...] | Sequence[int | Sequence[int]] | np.ndarray,
                          steps: int = 256, seed: int | None = 0, init: str | np.ndarray = "noise",
                          size: int | tuple[int, int] | None = None, optimizer: str = "adam", lr: float = 0.05,
                          l2_decay: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.5, jitter: int = 0,
                          scale: float | Sequence[float] | None = None, rotate: float = 0.0, clip_norm: float = 0.0,
                          clip_contribution: float = 0.0, parametrization: str = "pixel",
                          color: ArrayLike | None = None, diversity: float = 0.0, diversity_layer: str | None = None,
                          progress: bool | None = None) -> Visualization:
    """Images that maximize ``channel`` of ``layer`` (gradient ascent on the input).

    ``channel``: an int (a whole channel, its mean over positions; a neuron
    of a flat layer), a tuple (c, i, j) (one unit), or a list of those (one
    image each, optimized together as a batch).

    ``size``: the image size (int or (H, W)); default the model's input size
    from its metadata. A layer of the convolutional part accepts any size.
    ``init``: 'zeros' (the colour the model sees as zero input: the data
    mean), 'noise' (that plus Gaussian noise of std 0.1) or an image.
    ``optimizer``: 'adam' (step ``lr``) or 'sgd' (each step moves the
    parameters by ``lr`` times the gradient over its root mean square).

    Regularizers of Yosinski et al., on the pixel parametrization, after
    every step: ``l2_decay`` (shrink towards the zero image by that
    fraction), ``blur_every`` k steps a Gaussian blur of ``blur_sigma``
    pixels, ``clip_norm`` / ``clip_contribution`` (percentiles: pixels whose
    norm over channels, or whose ``|sum over channels of (pixel - zero image)
    * gradient|``, is below that percentile are reset to the zero image).

    Transformation robustness: before each forward pass the image is
    shifted by up to ``jitter`` pixels, zoomed by a factor in ``scale``
    (low, high) and rotated by up to ``rotate`` degrees.

    ``parametrization='fourier'`` optimizes a 1/f-scaled spectrum through a
    sigmoid instead of the pixels; ``color`` ((C, C) matrix, or images
    (N, C, H, W) to take the channel correlation from) decorrelates it.

    ``diversity`` > 0 keeps the images of the batch apart (Olah et al.
    2017): it penalizes their Gram-matrix similarity at ``diversity_layer``
    (default ``layer`` when its output is spatial, else the last Conv2d
    before it; :func:`~fastconv.analysis.optimize.parametrize.gram_similarity`,
    a sum of cosine similarities, so free of the layer's scale). The weight
    is scale-free too: image k's share of the penalty is multiplied by
    ``diversity`` times its current value above a floor, ``DIVERSITY_FLOOR``
    (0.6) of the best value reached so far, so the same weight trades
    similarity against a fraction of the objective at any layer and in any
    model, and an image that falls to the floor is no longer pushed away
    from the others. Weights around 10 give visibly different images that
    still keep most of the unit's activation; :func:`diverse_visualization`
    makes such a batch for one unit.
    ``history['similarity']`` then holds the similarity per step.
    """
    C.check_layer(model, layer)
    one_shape = input_shape(model, size)
    probe = output_shape(model, layer, (1,) + one_shape)
    is_class = layer == logits_layer(model) and len(probe) == 2
    units = _unit_list(channel, layer, probe, "class" if is_class else "channel")
    seed_gradient = _unit_seed(units, output_shape(model, layer, (len(units),) + one_shape))
    labels = np.array([u[0] for u in units])

    def objective(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _unit_values(out, seed_gradient), seed_gradient

    def probability(out: np.ndarray) -> np.ndarray:
        return softmax(out.astype(np.float64), axis=1)[np.arange(len(units)), labels]

    images, values, history = _ascend(
        model, layer, objective, len(units), one_shape, probability if is_class else None,
        steps=steps, seed=seed, init=init, optimizer=optimizer, lr=lr, l2_decay=l2_decay, blur_every=blur_every,
        blur_sigma=blur_sigma, jitter=jitter, scale=scale, rotate=rotate, clip_norm=clip_norm,
        clip_contribution=clip_contribution, parametrization=parametrization, color=color, diversity=diversity,
        diversity_layer=diversity_layer, progress=progress)
    return Visualization(layer=layer, units=units, images=images, values=values, history=history)


def _default_diversity_layer(model: fastconv.Model, layer: str, one_shape: tuple[int, int, int]) -> str:
    if len(output_shape(model, layer, (1,) + one_shape)) == 4:
        return layer
    names = C.layer_names(model)
    convs = [name for name in C.conv_layer_names(model) if names.index(name) < names.index(layer)]
    if not convs:
        raise ValueError(f"layer {layer!r} has no spatial output and no Conv2d before it; "
                         "pass diversity_layer=...")
    return convs[-1]


def _ascend(model: fastconv.Model, layer: str, objective: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
            count: int, one_shape: tuple[int, int, int],
            probability: Callable[[np.ndarray], np.ndarray] | None, steps: int, seed: int | None,
            init: str | np.ndarray, optimizer: str, lr: float, l2_decay: float, blur_every: int,
            blur_sigma: float, jitter: int, scale: float | Sequence[float] | None, rotate: float,
            clip_norm: float, clip_contribution: float, parametrization: str, color: ArrayLike | None,
            diversity: float, diversity_layer: str | None,
            progress: bool | None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Gradient ascent on ``objective`` (the layer's output -> each image's
    value and the gradient of their sum) for a batch of ``count`` images,
    with every regularizer of :func:`feature_visualization`. Returns
    (images, final values, history)."""
    steps = _checks.positive_int(steps, "steps")
    _check_choice(optimizer, OPTIMIZERS, "optimizer")
    lr = P.check_positive(lr, "lr")
    l2_decay = P.check_weight(l2_decay, "l2_decay")
    if l2_decay >= 1:
        raise ValueError(f"l2_decay is the fraction removed per step and must be below 1, got {l2_decay!r}")
    if not C.is_int(blur_every) or blur_every < 0:
        raise ValueError(f"blur_every must be a non-negative int (0: never), got {blur_every!r}")
    blur_sigma = P.check_weight(blur_sigma, "blur_sigma")
    clip_norm = _check_percentile(clip_norm, "clip_norm")
    clip_contribution = _check_percentile(clip_contribution, "clip_contribution")
    diversity = P.check_weight(diversity, "diversity")
    transform = P.RandomTransform(jitter, scale, rotate)
    pixel_only = {"blur_every": blur_every, "clip_norm": clip_norm, "clip_contribution": clip_contribution}
    if parametrization == "fourier" and any(pixel_only.values()):
        used = ", ".join(f"{k}={v!r}" for k, v in pixel_only.items() if v)
        raise ValueError(f"{used} act on pixels; use parametrization='pixel' with them")
    spread: str | None = None
    if diversity:
        if count < 2:
            raise ValueError(f"diversity={diversity!r} needs at least 2 images to keep apart, got {count}")
        spread = diversity_layer if diversity_layer is not None else _default_diversity_layer(model, layer, one_shape)
        C.check_layer(model, spread)
        output_shape(model, spread, (1,) + one_shape)
    elif diversity_layer is not None:
        raise ValueError(f"diversity_layer={diversity_layer!r} is used only with diversity > 0")
    rng = P.check_seed(seed)
    space = P.PixelSpace(model)
    shape = (count,) + one_shape
    center = space.mean_color(one_shape[0])
    image = _parametrization(parametrization, init, shape, center, rng, color)
    adam = P.Adam(lr) if optimizer == "adam" else None
    history: dict[str, list[Any]] = {"objective": []}
    if probability is not None:
        history["probability"] = []
    if spread is not None:
        history["similarity"] = []
    reference = 0.0
    with C.evaluating(model), P.progress_bar(steps, f"visualizing {layer}", progress) as bar:
        for step in range(steps):
            pixels = image.render()
            transform.sample(rng, one_shape[1:])
            x = space.to_input(transform(pixels))
            if spread is None:
                out = model.forward(x, until=layer)
                values, layer_gradient = objective(out)
                grad = model.backward(layer_gradient.astype(out.dtype), start=layer, param_grads=False)
            else:
                names = C.layer_names(model)
                deepest = max(layer, spread, key=names.index)
                _, outputs = C.forward_with_outputs(model, x, {layer, spread}, until=deepest)
                out = outputs[layer]
                values, layer_gradient = objective(out)
                similarity, similarity_gradient = P.gram_similarity(outputs[spread])
                history["similarity"].append(similarity)
                gradients = {layer: layer_gradient.astype(out.dtype)}
                # The penalty's weight scales with each image's value above a floor, a fraction of the
                # best value reached so far: the trade is then in units of the objective itself (free of the
                # layer's scale), and an image that drops to the floor is no longer pushed apart.
                reference = max(reference, float(np.max(values)))
                size = np.maximum(values - DIVERSITY_FLOOR * reference, 0.0) * count / (count - 1)
                penalty = (-diversity * size.reshape((-1,) + (1,) * (similarity_gradient.ndim - 1))
                           * similarity_gradient).astype(out.dtype)
                gradients[spread] = gradients[spread] + penalty if spread == layer else penalty
                grad = P.backward_from(model, gradients)
            history["objective"].append(values)
            if probability is not None:
                history["probability"].append(probability(out))
            pixel_gradient = transform.adjoint(space.pixel_gradient(grad))
            param_gradient = image.backward(pixel_gradient)
            if adam is not None:
                adam.step(image.params, -param_gradient)
            else:
                image.params += P.normalized_step(param_gradient, lr)
            if l2_decay:
                image.decay(l2_decay)
            if blur_every and (step + 1) % blur_every == 0:
                image.blur(blur_sigma)
            if clip_norm or clip_contribution:
                _clip_pixels(image, pixel_gradient, clip_norm, clip_contribution)
            image.project()
            bar.update(1)
            bar.set_postfix(objective=f"{values.mean():.4g}", refresh=False)
        final = image.render()
        values, _ = objective(model.forward(space.to_input(final), until=layer))
    return final, values, {k: np.array(v) for k, v in history.items()}


def diverse_visualization(model: fastconv.Model, layer: str, channel: int | tuple[int, ...], count: int = 4,
                          diversity: float = 10.0, **options: Any) -> Visualization:
    """``count`` different images that each maximize one ``channel`` (an int,
    or (c, i, j) for one unit) of ``layer``: :func:`feature_visualization`
    of the unit repeated ``count`` times with the scale-free diversity term of
    weight ``diversity`` (see there), from noise. Every option of :func:`feature_visualization`
    applies (``diversity_layer`` among them)."""
    count = _checks.positive_int(count, "count")
    if count < 2:
        raise ValueError(f"count must be at least 2 for images that differ, got {count}")
    if not (C.is_int(channel) or (isinstance(channel, tuple) and all(C.is_int(v) for v in channel))):
        raise TypeError(f"channel must be one int or one tuple (c, i, j), got {channel!r}")
    return feature_visualization(model, layer, [channel] * count, diversity=diversity, **options)


# -- directions and channel combinations ----------------------------------------------------

def combine_channels(weights: Mapping[int, float], channels: int) -> np.ndarray:
    """The direction (channels,) that weights channel c by ``weights[c]`` and
    the others by zero: ``{3: 1.0, 7: 0.5}`` is channel 3 plus half of channel 7."""
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(f"weights must be a non-empty mapping {{channel: weight}}, got {weights!r}")
    vector = np.zeros(channels)
    for c, w in weights.items():
        if not C.is_int(c) or not 0 <= c < channels:
            raise ValueError(f"channel {c!r} is out of range for a layer with {channels} channels "
                             f"(valid: 0..{channels - 1})")
        if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating)) or not np.isfinite(w):
            raise ValueError(f"the weight of channel {c} must be a finite number, got {w!r}")
        vector[int(c)] = float(w)
    return vector


def _direction_vectors(directions: ArrayLike | Mapping[int, float] | Sequence[Mapping[int, float]],
                       channels: int, layer: str) -> np.ndarray:
    if isinstance(directions, Mapping):
        return combine_channels(directions, channels)[None]
    if isinstance(directions, (list, tuple)) and directions and all(isinstance(d, Mapping) for d in directions):
        return np.stack([combine_channels(d, channels) for d in directions])
    try:
        vectors = np.array(directions, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("directions must be a vector (C,), an array (K, C), a mapping {channel: weight} "
                        f"or a list of mappings, got {directions!r}") from None
    vectors = np.atleast_2d(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != channels or len(vectors) == 0:
        raise ValueError(f"directions for layer {layer!r} must be shaped (C,) or (K, C) with C = {channels}, "
                         f"got shape {vectors.shape}")
    if not np.all(np.isfinite(vectors)) or np.any(np.abs(vectors).sum(axis=1) == 0):
        raise ValueError("every direction must be finite and not all zeros")
    return vectors


def direction_visualization(model: fastconv.Model, layer: str,
                            directions: ArrayLike | Mapping[int, float] | Sequence[Mapping[int, float]],
                            position: tuple[int, int] | None = None, cosine_power: float = 0.0,
                            **options: Any) -> Visualization:
    """Images that push ``layer``'s activation along directions of its channel space.

    ``directions``: a vector (C,) or one per image (K, C); or a channel
    combination, a mapping {channel: weight} (:func:`combine_channels`), or
    a list of those. The objective of image k is
    :func:`~fastconv.analysis.optimize.parametrize.direction_objective` of
    direction k with the activation vector at ``position`` (i, j), or its
    mean over positions when None (a flat layer's output is a vector
    already), and ``cosine_power``. Every option of
    :func:`feature_visualization` applies. The result has ``units`` empty
    and ``directions`` (K, C); ``values`` are the objectives' final values.
    """
    C.check_layer(model, layer)
    one_shape = input_shape(model, options.pop("size", None))
    probe = output_shape(model, layer, (1,) + one_shape)
    vectors = _direction_vectors(directions, probe[1], layer)
    if position is not None:
        if len(probe) != 4:
            raise ValueError(f"layer {layer!r} outputs vectors {probe[1:]}; a position needs a spatial layer")
        if (not isinstance(position, (tuple, list)) or len(position) != 2
                or not all(C.is_int(v) for v in position)
                or not (0 <= position[0] < probe[2] and 0 <= position[1] < probe[3])):
            raise ValueError(f"position must be (i, j) within layer {layer!r}'s {probe[2]}x{probe[3]} map, "
                             f"got {position!r}")
        position = (int(position[0]), int(position[1]))
    P.check_weight(cosine_power, "cosine_power")

    def objective(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return P.direction_objective(out, vectors, position, cosine_power)

    images, values, history = _ascend(model, layer, objective, len(vectors), one_shape, None,
                                      **_ascent_options(options))
    return Visualization(layer=layer, units=[], images=images, values=values, history=history, directions=vectors)


_ASCENT_DEFAULTS: dict[str, Any] = {
    "steps": 256, "seed": 0, "init": "noise", "optimizer": "adam", "lr": 0.05, "l2_decay": 0.0, "blur_every": 0,
    "blur_sigma": 0.5, "jitter": 0, "scale": None, "rotate": 0.0, "clip_norm": 0.0, "clip_contribution": 0.0,
    "parametrization": "pixel", "color": None, "diversity": 0.0, "diversity_layer": None, "progress": None,
}


def _ascent_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`feature_visualization`'s defaults with ``options`` over them; an unknown name is a TypeError."""
    unknown = sorted(set(options) - set(_ASCENT_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r} (options: size, {', '.join(_ASCENT_DEFAULTS)})")
    return {**_ASCENT_DEFAULTS, **options}


def _clip_pixels(image: P.PixelImage, pixel_gradient: np.ndarray, norm_percentile: float,
                 contribution_percentile: float) -> None:
    """Yosinski et al.'s pixel clipping: reset the weakest pixels to the zero image."""
    offset = image.params - image.center
    mask = np.zeros((offset.shape[0],) + offset.shape[2:], dtype=bool)
    if norm_percentile:
        norms = np.sqrt((offset ** 2).sum(axis=1))
        mask |= norms < np.percentile(norms.reshape(len(norms), -1), norm_percentile, axis=1)[:, None, None]
    if contribution_percentile:
        contribution = np.abs((offset * pixel_gradient).sum(axis=1))
        limit = np.percentile(contribution.reshape(len(contribution), -1), contribution_percentile, axis=1)
        mask |= contribution < limit[:, None, None]
    image.zero_pixels(mask)


def class_model(model: fastconv.Model, target: int | Sequence[int], steps: int = 200, seed: int | None = 0,
                init: str | np.ndarray = "zeros", optimizer: str = "sgd", lr: float = 0.05, l2_decay: float = 0.01,
                **options: Any) -> Visualization:
    """The image that maximizes the pre-softmax score of class ``target``
    (Simonyan et al.): gradient ascent from the zero image (or ``init='noise'``)
    with L2 decay, plus any regularizer of :func:`feature_visualization`
    (``blur_every``, ``blur_sigma``, ``jitter``, ``clip_norm``,
    ``clip_contribution``, ``scale``, ``rotate``, ``parametrization``, ...).

    ``target`` is a class index or a list of them (one image each). Returns
    a :class:`Visualization` whose ``history`` also holds the class
    probability per step.
    """
    layer = logits_layer(model)
    return feature_visualization(model, layer, target if not isinstance(target, tuple) else list(target),
                                 steps=steps, seed=seed, init=init, optimizer=optimizer, lr=lr,
                                 l2_decay=l2_decay, **options)


def default_feature_layers(model: fastconv.Model) -> list[str]:
    return C.conv_layer_names(model)


def spread_channels(count: int, per_layer: int) -> list[int]:
    """``per_layer`` channel indices spread evenly over 0..count-1."""
    per_layer = _checks.positive_int(per_layer, "per_layer")
    return [int(c) for c in np.unique(np.linspace(0, count - 1, min(per_layer, count)).round())]


def feature_grid(model: fastconv.Model, layers: Iterable[str] | None = None, per_layer: int = 8,
                 channels: Iterable[int] | None = None, center: bool = False,
                 **options: Any) -> dict[str, Visualization]:
    """:func:`feature_visualization` of several channels at each of ``layers``
    (default: every Conv2d). ``channels`` (a list) picks the same channels
    in every layer; otherwise ``per_layer`` channels spread evenly over each
    layer's range. ``center=True`` maximizes each channel's unit at the
    centre of the map instead of the channel's mean, which shows the pattern
    a unit looks for within its receptive field. Returns {layer:
    Visualization}, in layer order.
    """
    layers = default_feature_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError("no layers to visualize: the model has no Conv2d layer; pass layers=[...]")
    shape = (1,) + input_shape(model, options.get("size"))
    grid: dict[str, Visualization] = {}
    for layer in layers:
        out_shape = output_shape(model, layer, shape)
        chosen: list[int] | list[tuple[int, int, int]]  # channels, then perhaps (c, i, j) units
        chosen = list(channels) if channels is not None else spread_channels(out_shape[1], per_layer)
        if center and len(out_shape) == 4:
            chosen = [(c, out_shape[2] // 2, out_shape[3] // 2) for c in chosen]
        grid[layer] = feature_visualization(model, layer, chosen, **options)
    return grid


# -- pushing an image towards a class -----------------------------------------------------

@dataclass
class ToClass:
    """A real image pushed towards class ``target``.

    ``image`` (C, H, W) is the last image, ``original`` the start;
    ``reached`` says whether p(target) passed ``threshold``, after ``steps``
    gradient steps. ``history['probability']`` (steps + 1,) holds p(target)
    before each step and at the end; ``history['score']`` the pre-softmax
    score and ``history['predicted']`` the most probable class.
    """

    target: int
    threshold: float
    image: np.ndarray
    original: np.ndarray
    reached: bool
    steps: int
    history: dict[str, np.ndarray]

    @property
    def probability(self) -> float:
        return float(self.history["probability"][-1])


def to_class(model: fastconv.Model, image: np.ndarray, target: int, threshold: float = 0.9, max_steps: int = 300,
             lr: float = 0.01, progress: bool | None = None) -> ToClass:
    """Change ``image`` (C, H, W) until the model gives class ``target`` a
    probability of at least ``threshold``, or ``max_steps`` steps have run.

    Each step moves the pixels along the gradient of log p(target), scaled
    to a root mean square of ``lr`` (pixel units), and clips them to [0, 1].
    """
    original = _single_image(image, model)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) \
            or not 0 < threshold < 1:
        raise ValueError(f"threshold is a probability and must lie strictly between 0 and 1, got {threshold!r}")
    max_steps = _checks.positive_int(max_steps, "max_steps")
    lr = P.check_positive(lr, "lr")
    layer = logits_layer(model)
    space = P.PixelSpace(model)
    units = _unit_list(target, layer, output_shape(model, layer, original.shape), "class")
    if len(units) != 1 or len(units[0]) != 1:
        raise ValueError(f"target must be one class index, got {target!r}")
    target = units[0][0]
    pixels = original.copy()
    history: dict[str, list[float]] = {"probability": [], "score": [], "predicted": []}
    reached = False
    steps = 0
    with C.evaluating(model), P.progress_bar(max_steps, f"towards class {target}", progress) as bar:
        while True:
            out = model.forward(space.to_input(pixels), until=layer)
            probabilities = softmax(out.astype(np.float64), axis=1)[0]
            history["probability"].append(probabilities[target])
            history["score"].append(float(out[0, target]))
            history["predicted"].append(int(np.argmax(probabilities)))
            bar.set_postfix(p=f"{probabilities[target]:.3f}", refresh=False)
            if probabilities[target] >= threshold:
                reached = True
                break
            if steps == max_steps:
                break
            log_probability_gradient = -probabilities[None]
            log_probability_gradient[0, target] += 1.0
            grad = model.backward(log_probability_gradient.astype(out.dtype), start=layer, param_grads=False)
            pixels = np.clip(pixels + P.normalized_step(space.pixel_gradient(grad), lr), 0.0, 1.0)
            steps += 1
            bar.update(1)
    return ToClass(target=target, threshold=float(threshold), image=pixels[0], original=original[0],
                   reached=reached, steps=steps, history={k: np.array(v) for k, v in history.items()})


# -- feature inversion -------------------------------------------------------------------------

@dataclass
class Inversion:
    """An image reconstructed from the code of ``original`` at ``layer``.

    ``relative_error`` is ``||code(image) - code(original)|| / ||code(original)||``;
    ``history['loss']``, ``['representation']`` (the squared relative error)
    and ``['prior']`` hold the objective and its parts at every evaluation.
    """

    layer: str
    image: np.ndarray
    original: np.ndarray
    relative_error: float
    history: dict[str, np.ndarray]


def invert(model: fastconv.Model, image: np.ndarray, layer: str, steps: int = 200, method: str = "lbfgs",
           lr: float = 0.05, tv_weight: float = 0.3, tv_beta: float = 2.0, alpha_weight: float = 1e-3,
           alpha: float = 6.0, init: str | np.ndarray = "noise", seed: int | None = 0,
           progress: bool | None = None) -> Inversion:
    """Reconstruct ``image`` (C, H, W) from its code at ``layer``.

    Minimizes ``||code(x) - code(image)||^2 / ||code(image)||^2
    + tv_weight * TV_beta(x) + alpha_weight * mean(|x - m|^alpha)``
    over pixels x in [0, 1], where m is the colour the model sees as zero
    (:func:`~fastconv.analysis.optimize.parametrize.total_variation`,
    :func:`~fastconv.analysis.optimize.parametrize.alpha_norm`), with ``steps``
    evaluations of L-BFGS-B (``method='lbfgs'``) or Adam (``'adam'``, step
    ``lr``), from the zero image with a little noise (``init='noise'``) or
    without (``'zeros'``).
    """
    original = _single_image(image, model)
    C.check_layer(model, layer)
    output_shape(model, layer, original.shape)
    tv_weight = P.check_weight(tv_weight, "tv_weight")
    alpha_weight = P.check_weight(alpha_weight, "alpha_weight")
    rng = P.check_seed(seed)
    space = P.PixelSpace(model)
    center = space.mean_color(original.shape[1])
    start = _initial_pixels(init, original.shape, center, rng)
    parts: dict[str, list[float]] = {"representation": [], "prior": []}
    with C.evaluating(model):
        target = model.forward(space.to_input(original), until=layer).astype(np.float64)
        scale = max(float(np.sum(target ** 2)), 1e-12)

        def objective(pixels: np.ndarray) -> tuple[float, np.ndarray]:
            out = model.forward(space.to_input(pixels), until=layer)
            difference = out.astype(np.float64) - target
            representation = float(np.sum(difference ** 2)) / scale
            seed = (2.0 * difference / scale).astype(out.dtype)
            grad = space.pixel_gradient(model.backward(seed, start=layer, param_grads=False))
            tv, tv_grad = P.total_variation(pixels, tv_beta)
            norm, norm_grad = P.alpha_norm(pixels - center.reshape(1, -1, 1, 1), alpha)
            prior = tv_weight * tv + alpha_weight * norm
            parts["representation"].append(representation)
            parts["prior"].append(prior)
            return representation + prior, grad + tv_weight * tv_grad + alpha_weight * norm_grad

        best, losses = P.minimize(objective, start, method=method, evaluations=steps, lr=lr,
                                  progress=progress, description=f"inverting {layer}")
        code = model.forward(space.to_input(best), until=layer).astype(np.float64)
    error = float(np.sqrt(np.sum((code - target) ** 2) / scale))
    history = {"loss": np.array(losses)}
    history.update({k: np.array(v) for k, v in parts.items()})
    return Inversion(layer=layer, image=best[0], original=original[0], relative_error=error, history=history)


def default_inversion_layers(model: fastconv.Model) -> list[str]:
    """The output of every activation, pooling layer and the logits, in order."""
    names = [name for name, layer in model.named_layers()
             if isinstance(layer, C.ACTIVATIONS + (L.MaxPool2d, L.AvgPool2d, L.GlobalAvgPool2d))]
    logits = logits_layer(model)
    return names + ([logits] if logits not in names else [])


def invert_layers(model: fastconv.Model, image: np.ndarray, layers: Iterable[str] | None = None,
                  **options: Any) -> list[Inversion]:
    """:func:`invert` from each of ``layers`` (default
    :func:`default_inversion_layers`); a list of :class:`Inversion`."""
    layers = default_inversion_layers(model) if layers is None else list(layers)
    for layer in layers:
        C.check_layer(model, layer)
    return [invert(model, image, layer, **options) for layer in layers]


# -- DeepDream ---------------------------------------------------------------------------------

@dataclass
class Dream:
    """``image`` (C, H, W) dreamed from ``original`` at ``layer``.

    ``sizes`` are the octaves' (H, W), smallest first;
    ``history['objective']`` holds half the mean squared activation of the
    layer at every step and ``history['octave']`` the octave of each step.
    """

    layer: str
    image: np.ndarray
    original: np.ndarray
    sizes: list[tuple[int, int]]
    history: dict[str, np.ndarray]


def deep_dream(model: fastconv.Model, image: np.ndarray, layer: str, steps: int = 10, octaves: int = 4,
               octave_scale: float = 1.4, lr: float = 0.01, jitter: int = 8, channel: int | None = None,
               seed: int | None = 0, progress: bool | None = None) -> Dream:
    """DeepDream: gradient ascent on half the squared activations of ``layer``
    (the gradient at the layer is the activation itself; only channel
    ``channel`` when given), ``steps`` steps per octave.

    The image (C, H, W), of any size the convolutional part accepts, is
    dreamed first at 1 / ``octave_scale`` ** (octaves - 1) of its size and
    the detail added is carried up octave by octave (octaves too small for
    the layer are skipped). Each step rolls the image by up to ``jitter``
    pixels and moves it by ``lr`` times the gradient over its mean absolute
    value (pixel units).
    """
    original = _single_image(image, model)
    steps = _checks.positive_int(steps, "steps")
    octaves = _checks.positive_int(octaves, "octaves")
    octave_scale = P.check_positive(octave_scale, "octave_scale")
    if octave_scale <= 1:
        raise ValueError(f"octave_scale must be above 1, got {octave_scale!r}")
    lr = P.check_positive(lr, "lr")
    full_shape = output_shape(model, layer, original.shape)
    if len(full_shape) != 4:
        convs = ", ".join(C.conv_layer_names(model))
        raise ValueError(
            f"deep_dream needs a layer with a spatial output; {layer!r} outputs shape {full_shape} "
            f"(use a layer of the convolutional part, e.g. {convs})"
        )
    if channel is not None and (not C.is_int(channel) or not 0 <= channel < full_shape[1]):
        raise ValueError(f"channel {channel!r} is out of range for layer {layer!r} with {full_shape[1]} channels")
    transform = P.RandomTransform(jitter)
    rng = P.check_seed(seed)
    space = P.PixelSpace(model)
    _, _, h, w = original.shape
    sizes: list[tuple[int, int]] = []
    for k in range(octaves - 1, -1, -1):
        size = (max(1, round(h / octave_scale ** k)), max(1, round(w / octave_scale ** k)))
        try:
            if len(output_shape(model, layer, (1, original.shape[1]) + size)) == 4:
                sizes.append(size)
        except ValueError:
            continue
    history: dict[str, list[float]] = {"objective": [], "octave": []}
    detail = np.zeros((1, original.shape[1]) + sizes[0])
    with C.evaluating(model), P.progress_bar(steps * len(sizes), f"dreaming at {layer}", progress) as bar:
        for octave, size in enumerate(sizes):
            base = C.resize(original, size)
            pixels = np.clip(base + C.resize(detail, size), 0.0, 1.0)
            for _ in range(steps):
                transform.sample(rng, size)
                out = model.forward(space.to_input(transform(pixels)), until=layer)
                activation = out.astype(np.float64)
                if channel is not None:
                    kept = np.zeros_like(activation)
                    kept[:, channel] = activation[:, channel]
                    activation = kept
                history["objective"].append(0.5 * float(np.mean(activation ** 2)))
                history["octave"].append(octave)
                grad = model.backward(activation.astype(out.dtype), start=layer, param_grads=False)
                pixel_gradient = transform.adjoint(space.pixel_gradient(grad))
                pixels = np.clip(pixels + P.normalized_step(pixel_gradient, lr, norm="mean_abs"), 0.0, 1.0)
                bar.update(1)
            detail = pixels - base
    return Dream(layer=layer, image=pixels[0], original=original[0], sizes=sizes,
                 history={k: np.array(v) for k, v in history.items()})
