"""Preparation of uint8 image batches for training: per-channel normalization
(``Normalize``) and batch-vectorized augmentation (``Augment``)."""
import numpy as np

__all__ = ["Normalize", "Augment"]


class Normalize:
    """x -> (x / scale - mean[c]) / std[c], per channel, to float32 (or the given dtype).

    ``Normalize.fit(x_train)`` computes mean and std from uint8 images;
    ``to_meta()`` gives the JSON-able dict stored in ``model.meta['normalization']``
    and ``undo`` maps a normalized array back to pixel values in [0, scale].
    """

    def __init__(self, mean, std, scale=255.0):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        self.scale = float(scale)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape} and std {self.std.shape} must have one value per channel each")
        if not np.all(self.std > 0):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    @classmethod
    def fit(cls, x, chunk=4096):
        """Per-channel mean and std of uint8 images x (N, C, H, W), scaled to [0, 1]."""
        if x.ndim != 4 or len(x) == 0:
            raise ValueError(f"expected a non-empty (N, C, H, W) array, got shape {x.shape}")
        total = np.zeros(x.shape[1])
        total_sq = np.zeros(x.shape[1])
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk].astype(np.float64) / 255.0
            total += part.sum(axis=(0, 2, 3))
            total_sq += np.square(part).sum(axis=(0, 2, 3))
        count = x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
        return cls(mean, np.where(std > 1e-6, std, 1.0), 255.0)

    def __call__(self, x, dtype=np.float32):
        shape = (1, -1, 1, 1)
        mean = (self.mean * self.scale).astype(dtype).reshape(shape)
        inv = (1.0 / (self.std * self.scale)).astype(dtype).reshape(shape)
        if x.shape[1] != self.mean.size:
            raise ValueError(f"images have {x.shape[1]} channels, the normalization {self.mean.size}")
        return (x.astype(dtype) - mean) * inv

    def undo(self, x):
        """Pixel values (float, in [0, scale] for in-range input) of normalized images."""
        shape = (1, -1, 1, 1)
        return (x * self.std.reshape(shape) + self.mean.reshape(shape)) * self.scale

    def to_meta(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "scale": self.scale}

    @classmethod
    def from_meta(cls, meta):
        try:
            return cls(meta["mean"], meta["std"], meta.get("scale", 255.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a normalization record: {meta!r}") from exc

    def __repr__(self):
        return f"Normalize(mean={np.round(self.mean, 4).tolist()}, std={np.round(self.std, 4).tolist()})"


class Augment:
    """Random crop after zero padding, and random horizontal flip, for a whole batch at once.

    Each image gets its own offset (dy, dx) in [0, 2*padding] and, when flip
    is on, a coin toss for mirroring; all random numbers come from the rng
    passed in, drawn in a fixed order, so a seed gives the same batch.
    """

    def __init__(self, padding=4, flip=True):
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __call__(self, x, rng):
        n, c, h, w = x.shape
        p = self.padding
        dy = rng.integers(0, 2 * p + 1, size=n)
        dx = rng.integers(0, 2 * p + 1, size=n)
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        rows = dy[:, None] + np.arange(h)
        cols = dx[:, None] + np.arange(w)
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
        return padded[
            np.arange(n)[:, None, None, None],
            np.arange(c)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def config(self):
        return {"padding": self.padding, "flip": self.flip}

    def __repr__(self):
        return f"Augment(padding={self.padding}, flip={self.flip})"
