"""ImageNet conventions: the 1,000 class names, preprocessing and decoding.

Networks trained on ImageNet (ILSVRC-2012) expect their input prepared the way
their training images were:

* ``"torch"`` (torchvision, and most PyTorch weights): RGB scaled to [0, 1],
  then per channel minus mean (0.485, 0.456, 0.406) and over std
  (0.229, 0.224, 0.225);
* ``"caffe"`` (Keras's VGG16/VGG19/ResNet50 and the original Caffe models):
  pixel values in [0, 255] minus the per-channel mean (123.68, 116.779,
  103.939 in RGB order). Those networks read BGR; :func:`fastconv.models.weights.load_weights`
  turns their first convolution around to RGB on import, so in fastconv every
  ImageNet model takes RGB images and only the arithmetic differs.

:func:`normalization` gives each mode as the ``mean``/``std``/``scale`` dict
that ``model.meta['normalization']`` holds, x = (pixels / 255 - mean) / std,
the form the analysis tools read (Caffe's mean is divided by 255 and its std
is 1/255 there).

Images are resized so that their shorter side is ``resize`` (256) pixels
(bilinear, with antialiasing, as PIL does it), then the central ``size`` x
``size`` (224) square is cut out: the standard evaluation crop.
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from fastconv.data import transforms

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from numpy.typing import ArrayLike, DTypeLike
    from PIL.Image import Image

__all__ = [
    "PREPROCESSING", "NUM_CLASSES", "CAFFE_MEAN_RGB", "class_names", "normalization", "load_image", "resize_and_crop",
    "preprocess", "deprocess", "decode",
]

PREPROCESSING = ("torch", "caffe")
NUM_CLASSES = 1000
_CLASS_FILE = "imagenet_classes.txt"

CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
# Both modes in the form x = (pixels / 255 - mean) / std, the form every tool
# that works in [0, 1] pixel space reads: Caffe's x = pixels - mean is
# mean / 255 and std 1 / 255 there.
_STATS: dict[str, dict[str, list[float] | float]] = {
    "torch": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 255.0},
    "caffe": {"mean": [m / 255.0 for m in CAFFE_MEAN_RGB], "std": [1.0 / 255.0] * 3, "scale": 255.0},
}


@functools.lru_cache(maxsize=1)
def _class_names() -> tuple[str, ...]:
    text = (resources.files("fastconv") / "sample_data" / _CLASS_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"fastconv/sample_data/{_CLASS_FILE} holds {len(names)} names, not {NUM_CLASSES}")
    return names


def class_names() -> list[str]:
    """The 1,000 ILSVRC-2012 class names, index 0 (tench) to 999 (toilet tissue).

    Short names, one per class, in the order of the standard class index that
    ImageNet-trained networks use for their outputs (two classes, 134 the bird
    and 517 the machine, are both called "crane").
    """
    return list(_class_names())


def _check_mode(mode: str) -> str:
    if mode not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}, got {mode!r}")
    return mode


def normalization(mode: str = "torch") -> dict[str, list[float] | float]:
    """{'mean': [r, g, b], 'std': [r, g, b], 'scale': 255.0} of a preprocessing mode,
    for x = (pixels / scale - mean) / std on RGB pixels in [0, 255]."""
    stats = _STATS[_check_mode(mode)]
    return {key: list(value) if isinstance(value, list) else value for key, value in stats.items()}


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as a uint8 array (H, W, 3), RGB (grey and RGBA images are converted)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read") from None


def _as_rgb_uint8(image: str | os.PathLike | Image | np.ndarray) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image must be shaped (H, W, 3) or (H, W), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise TypeError(f"an image array must be uint8 (pixels 0-255), got dtype {array.dtype}")
    return array[:, :, :3]


def resize_and_crop(image: str | os.PathLike | Image | np.ndarray, size: int | None = 224,
                    resize: int | None = 256) -> np.ndarray:
    """Resize so that the shorter side is ``resize`` pixels, then cut the central
    ``size`` x ``size`` square; uint8 (size, size, 3).

    ``image``: a file path, a PIL image or a uint8 array (H, W, 3). ``resize``
    None keeps the image's scale; ``size`` None keeps the whole resized image.
    """
    return transforms.resize_and_crop(_as_rgb_uint8(image), size=size, resize=resize)


def preprocess(images: str | os.PathLike | Image | np.ndarray | Iterable[str | os.PathLike | Image | np.ndarray],
               mode: str = "torch", size: int | None = 224, resize: int | None = 256,
               dtype: DTypeLike = np.float32) -> np.ndarray:
    """A batch (N, 3, size, size) ready for an ImageNet network.

    ``images``: one image or a list of them, each a file path, a PIL image or
    a uint8 array (H, W, 3) RGB. Each is resized and cropped as
    :func:`resize_and_crop` says, then normalized per ``mode`` ('torch' or
    'caffe', see :func:`normalization`). With ``size=None`` the images keep
    their resized shape and must all agree (for fully convolutional models).
    """
    stats = normalization(mode)
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert") or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        # One image: mypy's hasattr() narrowing cannot rule out a sequence of images that has a convert method.
        images = [images]  # type: ignore[list-item]
    crops = [resize_and_crop(image, size, resize) for image in images]
    if not crops:
        raise ValueError("no images to preprocess")
    shapes = {crop.shape for crop in crops}
    if len(shapes) > 1:
        raise ValueError(f"the images have different sizes after resizing {sorted(shapes)}; pass size= to crop them")
    pixels = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float64)
    mean = np.asarray(stats["mean"]).reshape(1, 3, 1, 1)
    std = np.asarray(stats["std"]).reshape(1, 3, 1, 1)
    return ((pixels / stats["scale"] - mean) / std).astype(dtype)


def deprocess(x: ArrayLike, mode: str = "torch") -> np.ndarray:
    """Undo :func:`preprocess`: (N, 3, H, W) model inputs -> uint8 images (N, H, W, 3), clipped."""
    stats = normalization(mode)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected model inputs shaped (N, 3, H, W), got shape {x.shape}")
    mean = np.asarray(stats["mean"]).reshape(1, 3, 1, 1)
    std = np.asarray(stats["std"]).reshape(1, 3, 1, 1)
    pixels = (x * std + mean) * stats["scale"]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def decode(logits: ArrayLike, top: int = 5,
           classes: Sequence[str] | None = None) -> list[list[tuple[int, str, float]]]:
    """The ``top`` most probable classes of each row of ``logits`` (N, K):
    a list per image of (index, name, probability), most probable first.

    Probabilities are the softmax of the logits; ``classes`` defaults to the
    ImageNet names when K is 1000 and to the indices otherwise.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[None]
    if logits.ndim != 2:
        raise ValueError(f"logits must be shaped (N, classes), got shape {logits.shape}")
    k = logits.shape[1]
    if classes is None:
        classes = class_names() if k == NUM_CLASSES else [str(i) for i in range(k)]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} outputs")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}")
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(top, k)]
    return [[(int(i), classes[i], float(p[i])) for i in row] for row, p in zip(order, probabilities)]
