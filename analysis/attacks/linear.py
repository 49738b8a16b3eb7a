"""The linear picture of adversarial examples.

A softmax classifier scores class k as w_k . x + b_k: each row w_k of its
weights is a template, an image the size of the input, and the score is
how well the image matches it. Adding a multiple of the template of class
t to any image raises the score of t by that multiple of ||w_t||^2; spread
over thousands of pixels, a change too small to see per pixel adds up to
a large change of score (Goodfellow et al. 2015). Nothing here is specific
to deep networks: they are fooled the same way because they are, locally,
close to linear.

:func:`linear_classifier` builds one as a fastconv model (Flatten then one
Linear layer), :func:`train_linear` trains it on [0, 1] pixels,
:func:`templates` returns its templates as images, and
:func:`add_template` / :func:`template_flip` do the demonstration.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike, DTypeLike

    import fastconv

__all__ = ["linear_classifier", "train_linear", "templates", "add_template", "template_flip"]


def linear_classifier(input_shape: Sequence[int], num_classes: int, seed: np.random.Generator | int | None = 0,
                      dtype: DTypeLike = np.float32) -> fastconv.Model:
    """Flatten then Linear(C*H*W -> num_classes): a softmax (multinomial
    logistic regression) classifier for images of ``input_shape`` (C, H, W)."""
    try:
        channels, height, width = (_checks.positive_int(v, "input_shape entry") for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (C, H, W) positive ints, got {input_shape!r}") from None
    num_classes = _checks.positive_int(num_classes, "num_classes")
    return Sequential([("flatten", L.Flatten()),
                       ("linear", L.Linear(channels * height * width, num_classes, seed=seed, dtype=dtype))])


def train_linear(x: np.ndarray, y: ArrayLike, num_classes: int | None = None, epochs: int = 5, batch_size: int = 128,
                 lr: float = 1e-3, weight_decay: float = 1e-3, seed: np.random.Generator | int | None = 0,
                 progress: Callable[[str], object] | None = None) -> fastconv.Model:
    """A softmax classifier trained with Adam on images x ([0, 1] pixels) and labels y.

    The L2 penalty ``weight_decay`` keeps the templates smooth enough to be
    read as images.
    """
    from fastconv.analysis.attacks.robustness import fit

    y = np.asarray(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    model = linear_classifier(x.shape[1:], num_classes, seed=seed, dtype=x.dtype)
    return fit(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               seed=seed, progress=progress)


def _linear_layer(model: fastconv.Model) -> L.Linear:
    layers = [layer for _, layer in model.named_layers()]
    linear = [layer for layer in layers if isinstance(layer, L.Linear)]
    if len(linear) != 1 or any(not isinstance(layer, (L.Linear, L.Flatten)) for layer in layers):
        kinds = [type(layer).__name__ for layer in layers]
        raise ValueError(f"templates need a linear classifier (Flatten and one Linear layer), got layers {kinds}")
    return linear[0]


def templates(model: fastconv.Model, input_shape: Sequence[int] | None = None) -> np.ndarray:
    """The weights of a linear classifier as one image per class, (K, C, H, W),
    in pixel units: the change of each class score per unit of each pixel
    (the model's normalization is folded in).

    ``input_shape`` (C, H, W) defaults to ``model.meta['input_shape']``, or a
    square single-channel image.
    """
    weight = _linear_layer(model).params["weight"].astype(np.float64)
    k, d = weight.shape
    if input_shape is None:
        input_shape = (model.meta or {}).get("input_shape")
    if input_shape is None:
        side = int(round(np.sqrt(d)))
        if side * side != d:
            raise ValueError(f"cannot tell the image shape of {d} inputs; pass input_shape=(C, H, W)")
        input_shape = (1, side, side)
    input_shape = tuple(int(v) for v in input_shape)
    if int(np.prod(input_shape)) != d:
        raise ValueError(f"input_shape {input_shape} has {int(np.prod(input_shape))} values, the classifier takes {d}")
    _, std = C.Normalizer.from_model(model).per_channel(input_shape[0])
    return weight.reshape((k,) + input_shape) / std


def add_template(model: fastconv.Model, x: np.ndarray, target: ArrayLike, eps: float) -> np.ndarray:
    """x plus the template of class ``target`` scaled so its largest pixel
    change is eps, clipped to [0, 1]; one target, or one per image."""
    x = A.check_pixels(model, x)
    eps = A._eps(eps)
    t = templates(model, x.shape[1:])
    target = A._class_array(target, x.shape[0], t.shape[0], "target")
    # target is the array _class_array returns: mypy cannot tell, as it does not follow the fastconv.analysis imports.
    chosen = t[target]  # type: ignore[index]
    scale = eps / np.abs(chosen.reshape(len(chosen), -1)).max(axis=1)
    return np.clip(x + chosen * scale.reshape(-1, 1, 1, 1), 0, 1).astype(x.dtype)


def template_flip(model: fastconv.Model, x: np.ndarray, target: ArrayLike,
                  eps_list: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the smallest eps in ``eps_list`` at which
    :func:`add_template` makes the linear classifier ``model`` predict
    ``target`` (one class, or one per image); NaN where none does.

    Returns (eps_needed (N,), x_flipped): the images at that eps (the
    largest eps tried for the ones that never flip).
    """
    x = A.check_pixels(model, x)
    eps_values = sorted(A._eps(e, "eps_list entry") for e in np.atleast_1d(eps_list).tolist())
    if not eps_values:
        raise ValueError("eps_list is empty")
    n = x.shape[0]
    target = np.broadcast_to(np.asarray(target), (n,))
    needed = np.full(n, np.nan)
    flipped = x.copy()
    for eps in eps_values:
        open_ = np.isnan(needed)
        if not open_.any():
            break
        candidate = add_template(model, x[open_], target[open_], eps)
        hit = A.predict_pixels(model, candidate).argmax(axis=1) == target[open_]
        rows = np.flatnonzero(open_)
        needed[rows[hit]] = eps
        flipped[rows] = candidate
    return needed, flipped

