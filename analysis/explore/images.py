"""Images in and out of the explorer: uploads checked and brought to the
model's input, arrays encoded as PNG, attributions drawn as heat maps.

An upload is refused before it is decoded when its header already shows it
is not an image or is too large (a small file can declare an enormous image:
a decompression bomb); every refusal is an :class:`UploadError` carrying the
HTTP status the server answers with and one sentence for the page.
"""
from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

from fastconv.data.transforms import resize_and_crop

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["UploadError", "decode_upload", "fit_to_input", "to_display", "png_bytes", "data_url", "heat_map",
           "signed_map", "overlay", "projection_picture"]


class UploadError(ValueError):
    """An upload the explorer refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, channels: int, size: Sequence[int], max_side: int) -> np.ndarray:
    """The image in ``data`` as pixels in [0, 1], float32 (C, H, W), brought to
    the model's ``size`` (H, W) the way folder data sets are (shorter side
    resized, then the centre cut out) and to its ``channels`` (1: luminance,
    3: RGB; transparent parts laid on white).

    UploadError (status 415) for a file Pillow cannot identify as an image,
    413 for one whose width or height exceeds ``max_side`` or that Pillow
    calls a decompression bomb, 400 for one that is truncated or damaged.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"the explorer shows images of 1 or 3 channels, the model takes {channels}")
    if not data:
        raise UploadError("the upload is empty: choose an image file", 400)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise UploadError(f"the image is too large to open: {error}", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadError(f"the upload ({len(data):,} bytes) is not an image file this server can read "
                          "(PNG, JPEG, GIF, BMP, WebP, ...)", 415) from None
    width, height = image.size
    if width > max_side or height > max_side:
        raise UploadError(f"the image is {width}x{height} pixels; the largest side accepted is {max_side} pixels",
                          413)
    if width < 1 or height < 1:
        raise UploadError(f"the image is {width}x{height} pixels: it holds no pixel", 400)
    try:
        image.load()
        picture: Image.Image = ImageOps.exif_transpose(image) or image
        if picture.mode in ("RGBA", "LA", "P", "PA") or "transparency" in picture.info:
            picture = picture.convert("RGBA")
            background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
            picture = Image.alpha_composite(background, picture)
        array = np.asarray(picture.convert("L" if channels == 1 else "RGB"))
    except Image.DecompressionBombError as error:
        raise UploadError(f"the image is too large to open: {error}", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise UploadError(f"the image file is damaged or truncated: {error}", 400) from None
    return fit_to_input(array, size).astype(np.float32) / 255.0


def fit_to_input(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A uint8 image (H, W) or (H, W, C) brought to (C, h, w), where (h, w) is
    ``size``: scaled to cover it, then the centre cut out."""
    h, w = (int(v) for v in size)
    if h == w:
        fitted = resize_and_crop(array, size=h, resize=h)
    else:
        # resize_and_crop cuts squares: scale the shorter side so that the
        # image covers both sides, then cut the rectangle here.
        rows, cols = array.shape[:2]
        shorter = int(np.ceil(max(h / rows, w / cols) * min(rows, cols)))
        scaled = resize_and_crop(array, resize=shorter)
        top, left = (scaled.shape[0] - h) // 2, (scaled.shape[1] - w) // 2
        fitted = scaled[top:top + h, left:left + w]
    fitted = fitted[:, :, None] if fitted.ndim == 2 else fitted
    return np.ascontiguousarray(fitted.transpose(2, 0, 1))


def to_display(pixels: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] (C, H, W), C 1 or 3, as a uint8 picture (H, W) or (H, W, 3)."""
    picture = np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    return picture[0] if picture.shape[0] == 1 else picture.transpose(1, 2, 0)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 picture (H, W) or (H, W, 3) as PNG bytes (fast compression: they are served at once)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(picture: np.ndarray) -> str:
    """A picture as a ``data:image/png;base64,...`` URL, for JSON answers that carry images."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def _colormap(name: str, values: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](values)[..., :3] * 255).astype(np.uint8)


def heat_map(values: np.ndarray) -> np.ndarray:
    """A non-negative map (H, W) scaled to its maximum, in the 'inferno' colours, (H, W, 3) uint8."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    peak = values.max()
    return _colormap("inferno", values / peak if peak > 0 else np.zeros_like(values))


def signed_map(values: np.ndarray) -> np.ndarray:
    """A signed map (H, W), zero white, positive red, negative blue, scaled to its largest magnitude."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    peak = np.abs(values).max()
    scaled = values / peak if peak > 0 else np.zeros_like(values)
    return _colormap("RdBu_r", 0.5 + 0.5 * scaled)


def overlay(pixels: np.ndarray, colours: np.ndarray, weight: np.ndarray | float = 0.6) -> np.ndarray:
    """``colours`` (H, W, 3) laid over the image ``pixels`` (C, H, W) in grey, with opacity ``weight``."""
    grey = np.asarray(pixels, dtype=np.float64).mean(axis=0)[:, :, None] * 255
    weight = np.asarray(weight, dtype=np.float64)
    weight = weight[:, :, None] if weight.ndim == 2 else weight
    mixed = (1 - weight) * grey + weight * colours.astype(np.float64)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def projection_picture(projection: np.ndarray) -> np.ndarray:
    """A projection to pixel space (C, H, W) as Zeiler & Fergus show it: zero
    grey, scaled so that the largest magnitude reaches black or white."""
    values = np.asarray(projection, dtype=np.float64)
    peak = np.abs(values).max()
    return to_display(0.5 + 0.5 * (values / peak if peak > 0 else values))
