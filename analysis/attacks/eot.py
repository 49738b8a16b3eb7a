"""Adversarial images that survive being photographed: expectation over transformation.

An adversarial image printed and photographed again reaches the network
rotated, rescaled, blurred, brighter or darker, and JPEG-compressed, and an
ordinary adversarial perturbation, fitted to exact pixels, often does not
survive that (Kurakin et al. 2017). Athalye et al. 2018 make it survive by
maximizing the loss averaged over a distribution of such transformations
(expectation over transformation, EOT): each step of :class:`EOT` is a PGD
step along the gradient averaged over ``samples`` random transformations.

The geometric part and the blur of a transformation are one linear map of
the pixels (bilinear resampling after rotation and scaling about the centre,
then a Gaussian blur), built as a sparse matrix so that its gradient is its
exact transpose; brightness is a gain and an offset; JPEG compression has no
useful gradient and is passed over in the backward pass as the identity
(Athalye, Carlini & Wagner 2018's straight-through approximation).

:func:`survival` measures what the attack is for: the share of random
transformations of each adversarial image under which it still fools the
network.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    import fastconv

__all__ = ["Transformations", "Transform", "EOT", "survival"]


def _bilinear(height: int, width: int, angle: float, scale: float) -> sparse.csr_matrix:
    """(H*W, H*W) matrix taking an image to it rotated by ``angle`` radians and scaled by
    ``scale`` about its centre, by bilinear interpolation; outside the image is black."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = math.cos(angle), math.sin(angle)
    # each output pixel reads the source point that the inverse map sends it to
    dy, dx = (rows - cy) / scale, (cols - cx) / scale
    sy = cos * dy + sin * dx + cy
    sx = -sin * dy + cos * dx + cx
    y0, x0 = np.floor(sy), np.floor(sx)
    out_index, in_index, weights = [], [], []
    target = np.arange(height * width).reshape(height, width)
    for oy in (0, 1):
        for ox in (0, 1):
            yy, xx = y0 + oy, x0 + ox
            weight = (1 - np.abs(sy - yy)) * (1 - np.abs(sx - xx))
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width) & (weight > 0)
            out_index.append(target[inside])
            in_index.append((yy[inside] * width + xx[inside]).astype(np.intp))
            weights.append(weight[inside])
    return sparse.csr_matrix((np.concatenate(weights), (np.concatenate(out_index), np.concatenate(in_index))),
                             shape=(height * width, height * width))


def _blur_1d(size: int, sigma: float) -> sparse.csr_matrix:
    """(size, size) Gaussian blur of standard deviation sigma, weights renormalized at the edges."""
    if sigma <= 0:
        return sparse.identity(size, format="csr")
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    dense = np.zeros((size, size))
    for i in range(size):
        columns = i + offsets
        inside = (columns >= 0) & (columns < size)
        dense[i, columns[inside]] = kernel[inside] / kernel[inside].sum()
    return sparse.csr_matrix(dense)


@dataclass(frozen=True)
class Transform:
    """One drawn transformation: rotation (degrees), scale, blur sigma (pixels),
    brightness gain and offset, and a JPEG quality (None: no compression)."""

    rotation: float
    scale: float
    blur: float
    gain: float
    offset: float
    jpeg_quality: int | None

    def _linear(self, height: int, width: int) -> sparse.csr_matrix:
        blur = sparse.kron(_blur_1d(height, self.blur), _blur_1d(width, self.blur), format="csr")
        return (blur @ _bilinear(height, width, math.radians(self.rotation), self.scale)).tocsr()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The transformed batch x (N, C, H, W), [0, 1] pixels."""
        n, c, h, w = x.shape
        moved = (self._linear(h, w) @ x.reshape(n * c, h * w).T.astype(np.float64)).T.reshape(x.shape)
        out = np.clip(self.gain * moved + self.offset, 0, 1)
        if self.jpeg_quality is not None:
            out = _jpeg(out, self.jpeg_quality)
        return out.astype(x.dtype)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """The gradient w.r.t. the input of a gradient w.r.t. the output; clipping and
        JPEG pass it through unchanged."""
        n, c, h, w = grad.shape
        flat = (self.gain * grad).reshape(n * c, h * w).astype(np.float64)
        return (self._linear(h, w).T @ flat.T).T.reshape(grad.shape).astype(grad.dtype)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Each image of x through a JPEG encoder and decoder (Pillow) at ``quality``."""
    from PIL import Image

    out = np.empty(x.shape, dtype=np.float64)
    for i, image in enumerate(x):
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        picture = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float64) / 255
        out[i] = decoded[None] if decoded.ndim == 2 else decoded.transpose(2, 0, 1)
    return out


class Transformations:
    """The distribution transformations are drawn from: a rotation uniform in
    +-``rotation`` degrees, a scale uniform in ``scale`` (low, high), a blur
    sigma uniform in [0, ``blur``] pixels, a brightness gain uniform in
    ``gain`` and an offset uniform in +-``offset``, and, with probability
    ``jpeg``, JPEG compression at a quality uniform in ``jpeg_quality``."""

    def __init__(self, rotation: float = 15.0, scale: tuple[float, float] = (0.9, 1.1), blur: float = 1.0,
                 gain: tuple[float, float] = (0.8, 1.2), offset: float = 0.1, jpeg: float = 0.5,
                 jpeg_quality: tuple[int, int] = (30, 90)) -> None:
        self.rotation = A._number(rotation, "rotation", 0.0)
        self.scale = self._interval(scale, "scale", strict=True)
        self.blur = A._number(blur, "blur", 0.0)
        self.gain = self._interval(gain, "gain", strict=True)
        self.offset = A._number(offset, "offset", 0.0)
        self.jpeg = A._number(jpeg, "jpeg", 0.0)
        if self.jpeg > 1:
            raise ValueError(f"jpeg is a probability, got {jpeg!r}")
        low, high = self._interval(jpeg_quality, "jpeg_quality")
        if not (1 <= low and high <= 95):
            raise ValueError(f"jpeg_quality must lie in [1, 95], got {jpeg_quality!r}")
        self.jpeg_quality = (int(low), int(high))

    @staticmethod
    def _interval(values: tuple[float, float], name: str, strict: bool = False) -> tuple[float, float]:
        if not isinstance(values, (tuple, list)) or len(values) != 2:
            raise ValueError(f"{name} must be a pair (low, high), got {values!r}")
        low, high = (A._number(v, name, 0.0, strict=strict) for v in values)
        if low > high:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {values!r}")
        return low, high

    def __repr__(self) -> str:
        return (f"Transformations(rotation={self.rotation:g}, scale={self.scale}, blur={self.blur:g}, "
                f"gain={self.gain}, offset={self.offset:g}, jpeg={self.jpeg:g}, jpeg_quality={self.jpeg_quality})")

    def config(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "scale": list(self.scale), "blur": self.blur, "gain": list(self.gain),
                "offset": self.offset, "jpeg": self.jpeg, "jpeg_quality": list(self.jpeg_quality)}

    def sample(self, rng: np.random.Generator) -> Transform:
        """One random transformation."""
        return Transform(
            rotation=float(rng.uniform(-self.rotation, self.rotation)),
            scale=float(rng.uniform(*self.scale)),
            blur=float(rng.uniform(0, self.blur)),
            gain=float(rng.uniform(*self.gain)),
            offset=float(rng.uniform(-self.offset, self.offset)),
            jpeg_quality=int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            if rng.uniform() < self.jpeg else None,
        )


class EOT(A.PGD):
    """PGD under L-infinity whose every step follows the gradient of the loss
    averaged over ``samples`` transformations drawn from ``transformations``
    (one draw for the whole batch per sample): adversarial images meant to
    stay adversarial when rotated, rescaled, blurred, brightened or
    compressed. The other parameters are PGD's; the transformations are drawn
    from ``seed``, as the random start is.
    """

    name = "eot"
    loss_name = ("cross-entropy of the label (untargeted, rises) or of the target (targeted, falls), "
                 "averaged over the transformations")

    def __init__(self, model: fastconv.Model, eps: float = 8 / 255, alpha: float | None = None, steps: int = 20,
                 samples: int = 8, transformations: Transformations | None = None, random_start: bool = True,
                 seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, eps, alpha, steps, random_start, seed, batch_size)
        self.samples = _checks.positive_int(samples, "samples")
        self.transformations = transformations if transformations is not None else Transformations()
        if not isinstance(self.transformations, Transformations):
            raise TypeError(f"transformations must be a Transformations, got {type(transformations).__name__}")

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        alpha = x.dtype.type(self.step_size())
        x_adv = self._start(x, rng) if self.random_start else x.copy()
        classes = target if target is not None else y
        for step in range(self.steps):
            grad = np.zeros(x.shape, dtype=np.float64)
            loss = np.zeros(x.shape[0])
            for _ in range(self.samples):
                transform = self.transformations.sample(rng)
                logits = pixels.logits(transform.apply(x_adv))
                loss += A._cross_entropy(logits, np.asarray(classes))
                grad += transform.backward(pixels.input_gradient(A._cross_entropy_ascent(logits, y, target),
                                                                 x.shape[1]))
            self._record(step, loss / self.samples)
            delta = self._project(x_adv + self._step(grad.astype(x.dtype), alpha) - x)
            x_adv = np.clip(x + delta, 0, 1).astype(x.dtype)
        return x_adv


def survival(model: fastconv.Model, x_adv: np.ndarray, y: ArrayLike | None = None, target: ArrayLike | None = None,
             transformations: Transformations | None = None, draws: int = 50, seed: int = 0) -> dict[str, Any]:
    """How often the adversarial images x_adv still fool ``model`` after a random transformation.

    Each of ``draws`` transformations (from ``seed``) is applied to every
    image; an image survives a draw when the model's prediction of the
    transformed image is still wrong (differs from y) or, with ``target``,
    is still the target. Returns {"draws", "images", "survival_rate" (over
    all images and draws), "per_image" (each image's rate), "untransformed"
    (the success of x_adv as it is)}.
    """
    x_adv = A.check_pixels(model, x_adv, "x_adv")
    n = x_adv.shape[0]
    if (y is None) == (target is None):
        raise ValueError("give the true labels y (untargeted) or the target (targeted), one of the two")
    draws = _checks.positive_int(draws, "draws")
    transformations = transformations if transformations is not None else Transformations()
    classes = np.broadcast_to(np.asarray(target if target is not None else y), (n,))

    def succeeded(images: np.ndarray) -> np.ndarray:
        predicted = A.predict_pixels(model, images).argmax(axis=1)
        return predicted == classes if target is not None else predicted != classes

    rng = np.random.default_rng(seed)
    wins = np.zeros(n)
    with C.evaluating(model):
        for _ in range(draws):
            wins += succeeded(transformations.sample(rng).apply(x_adv))
        untransformed = succeeded(x_adv)
    per_image = wins / draws
    return {"draws": draws, "images": int(n), "survival_rate": float(per_image.mean()),
            "per_image": per_image.tolist(), "untransformed": float(untransformed.mean())}
