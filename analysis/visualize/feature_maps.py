"""Every feature map of one layer for one image, before and after its ReLU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fastconv.analysis import _common as C
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    import fastconv


@dataclass
class Activations:
    """Feature maps of one image at one layer.

    ``before`` is the output of ``layer`` (C, h, w) or (D,); ``after`` the
    output of the ReLU that follows it (``after_layer``), or None when no
    ReLU follows before the next layer with weights or pooling.
    """

    layer: str
    before: np.ndarray
    after_layer: str | None
    after: np.ndarray | None
    prediction: int | None
    probabilities: np.ndarray | None


def _following_activation(model: fastconv.Model, layer: str) -> str | None:
    """Name of the ReLU/LeakyReLU after ``layer``, skipping batch norm and dropout."""
    for name, current in C.layers_after(model, layer):
        if isinstance(current, C.ACTIVATIONS):
            return name
        if not isinstance(current, (L.BatchNorm2d, L.Dropout)):
            return None
    return None


def activations(model: fastconv.Model, image: np.ndarray, layer: str) -> Activations:
    """All feature maps of ``layer`` for one ``image`` (C, H, W) or (1, C, H, W).

    If ``layer`` is itself a ReLU, ``before`` is the output of the layer
    feeding it and ``after`` its own output.
    """
    x = image[None] if isinstance(image, np.ndarray) and image.ndim == 3 else image
    C.check_images(model, x, "image")
    if x.shape[0] != 1:
        raise ValueError(f"activations are shown for one image, got a batch of shape {x.shape}")
    current = C.check_layer(model, layer)
    names = C.layer_names(model)
    after_name: str | None
    if isinstance(current, C.ACTIVATIONS) and names.index(layer) > 0:
        before_name, after_name = names[names.index(layer) - 1], layer
    else:
        before_name, after_name = layer, _following_activation(model, layer)
    wanted = [before_name] + ([after_name] if after_name else [])
    with C.evaluating(model):
        out, captured = C.forward_with_outputs(model, x, wanted)
    probabilities = softmax(out.astype(np.float64), axis=1)[0] if out.ndim == 2 else None
    return Activations(
        layer=before_name,
        before=captured[before_name][0].astype(np.float64),
        after_layer=after_name,
        after=captured[after_name][0].astype(np.float64) if after_name else None,
        prediction=int(np.argmax(probabilities)) if probabilities is not None else None,
        probabilities=probabilities,
    )
