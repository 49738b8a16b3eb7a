"""The pieces shared by the tools that optimize an image through a fixed network.

Images live in pixel space: floats in [0, 1], shaped (N, C, H, W).
:class:`PixelSpace` applies the model's normalization on the way in and its
derivative on the way back, so every tool states its objective and priors
in pixels whatever statistics the model was trained with.

* Parametrizations hold the numbers actually optimized and render them as
  pixels: :class:`PixelImage` (the pixels themselves, kept in [0, 1]) and
  :class:`FourierImage` (a 1/f-scaled spectrum, an optional colour
  decorrelation and a sigmoid, after Olah et al. 2017).
* :class:`RandomTransform` jitters, scales and rotates the rendered image
  before each forward pass (transformation robustness); its adjoint carries
  the gradient back.
* Priors with their gradients: :func:`total_variation` and
  :func:`alpha_norm` (Mahendran & Vedaldi 2015), :func:`gaussian_blur`.
* Optimizers on plain arrays: :class:`Adam`, :func:`normalized_step` and
  :func:`minimize` (L-BFGS-B or Adam under a fixed budget of evaluations).
* :func:`backward_from`: one backward pass that takes gradients at several
  layers at once (style transfer needs it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage, sparse

from fastconv import _checks
from fastconv.analysis import _common as C

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from numpy.typing import ArrayLike
    from tqdm.auto import tqdm

    import fastconv

PARAMETRIZATIONS = ("pixel", "fourier")


def progress_bar(total: int, description: str, progress: bool | None = None) -> tqdm:
    """A tqdm bar on stderr; ``progress=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True,
                disable=None if progress is None else not progress)


def check_weight(value: float, name: str) -> float:
    """A non-negative finite number, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    value = check_weight(value, name)
    if value == 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def check_seed(seed: int | None) -> np.random.Generator:
    if seed is not None and not C.is_int(seed):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    return np.random.default_rng(seed)


# -- pixel space ---------------------------------------------------------------

class PixelSpace:
    """Pixels in [0, 1] <-> the model input x = (p - mean) / std.

    The statistics come from the model's metadata (:class:`Normalizer`);
    a model without them gets x = p, as the trainer feeds it pixels / 255.
    """

    def __init__(self, model: fastconv.Model, normalizer: C.Normalizer | None = None) -> None:
        self.normalizer = normalizer if normalizer is not None else C.Normalizer.from_model(model)
        self.dtype = C.model_dtype(model)
        self.channels = C.input_channels(model)

    def stats(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std in pixel units, each shaped (1, C, 1, 1)."""
        return self.normalizer.per_channel(channels)

    def mean_color(self, channels: int) -> np.ndarray:
        """The pixel colour the model sees as a zero input, shape (C,), clipped to [0, 1]."""
        return np.clip(self.stats(channels)[0].reshape(-1), 0.0, 1.0)

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        mean, std = self.stats(pixels.shape[1])
        return ((pixels - mean) / std).astype(self.dtype)

    def pixel_gradient(self, input_gradient: np.ndarray) -> np.ndarray:
        """d/d pixels from d/d model input."""
        _, std = self.stats(input_gradient.shape[1])
        return input_gradient.astype(np.float64) / std


def as_pixel_batch(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A float64 batch (N, C, H, W) in [0, 1] from one image (C, H, W) or a batch.

    uint8 images are divided by 255; float images must already lie in [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (C, H, W) in [0, 1], got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or 0 in image.shape:
        raise ValueError(f"{name} must be shaped (C, H, W) or (N, C, H, W), got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if image.dtype.kind != "f":
        raise TypeError(f"{name} must hold floats in [0, 1] or uint8 pixels, got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} holds NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must lie in [0, 1] (pixel space), got values from {lo:.4g} to {hi:.4g}")
    return image.astype(np.float64)


# -- parametrizations -----------------------------------------------------------

class PixelImage:
    """The pixels are the parameters, projected back into [0, 1] after every step."""

    name = "pixel"

    def __init__(self, pixels: ArrayLike, center: ArrayLike) -> None:
        self.params = np.array(pixels, dtype=np.float64)
        self.center = np.asarray(center, dtype=np.float64).reshape(1, -1, 1, 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.params.shape

    def render(self) -> np.ndarray:
        return self.params.copy()

    def backward(self, pixel_gradient: np.ndarray) -> np.ndarray:
        return pixel_gradient

    def project(self) -> None:
        np.clip(self.params, 0.0, 1.0, out=self.params)

    def decay(self, rate: float) -> None:
        """Shrink the image towards the colour the model sees as zero."""
        self.params -= rate * (self.params - self.center)

    def blur(self, sigma: float) -> None:
        self.params = gaussian_blur(self.params, sigma)

    def zero_pixels(self, mask: np.ndarray) -> None:
        """Set the pixels where ``mask`` (N, H, W) is true to the zero-input colour."""
        self.params = np.where(mask[:, None], self.center, self.params)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def color_correlation(images: ArrayLike) -> np.ndarray:
    """Square root of the channel covariance of ``images`` (N, C, H, W), scaled
    so that its largest column has norm 1; a (C, C) matrix.

    Used by :class:`FourierImage` to turn independent channels into colours
    correlated as in the data. ``images`` are uint8 or floats in [0, 1].
    """
    pixels = as_pixel_batch(np.asarray(images), "images")
    channels = pixels.shape[1]
    flat = pixels.transpose(1, 0, 2, 3).reshape(channels, -1)
    covariance = np.atleast_2d(np.cov(flat))
    values, vectors = np.linalg.eigh(covariance)
    root = vectors @ np.diag(np.sqrt(np.maximum(values, 0.0))) @ vectors.T
    norm = np.linalg.norm(root, axis=0).max()
    if norm == 0:
        raise ValueError("the images have no colour variance to decorrelate")
    return root / norm


class FourierImage:
    """pixels = sigmoid(M @ irfft2(S * scale) + logit(center)).

    S is a complex half-spectrum stored as (N, C, H, W//2 + 1, 2) reals,
    ``scale`` = 1 / max(f, 1/max(H, W)) ** decay_power boosts the low
    frequencies (natural images have a 1/f spectrum), normalized so a
    white S maps to pixels of the same spread. M (C, C) correlates the
    channels as in the data (:func:`color_correlation`); the identity when
    None. The sigmoid keeps every pixel in (0, 1) without clipping, and
    zero parameters render as the colour ``center``.
    """

    name = "fourier"

    def __init__(self, shape: tuple[int, int, int, int], center: ArrayLike, rng: np.random.Generator,
                 color: ArrayLike | None = None, std: float = 0.01, decay_power: float = 1.0) -> None:
        n, channels, h, w = shape
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        frequency = np.sqrt(fy ** 2 + fx ** 2)
        scale = 1.0 / np.maximum(frequency, 1.0 / max(h, w)) ** decay_power
        self.scale = scale / np.sqrt(np.mean(scale ** 2))
        # irfft2 counts every column between DC and Nyquist twice (itself and
        # its mirror), so its adjoint doubles them.
        self.fold = np.full(w // 2 + 1, 2.0)
        self.fold[0] = 1.0
        if w % 2 == 0:
            self.fold[-1] = 1.0
        self.size = (h, w)
        self.color = np.eye(channels) if color is None else np.asarray(color, dtype=np.float64)
        if self.color.shape != (channels, channels):
            raise ValueError(
                f"the colour matrix must be ({channels}, {channels}) for {channels}-channel images, "
                f"got shape {self.color.shape}"
            )
        self.offset = _logit(np.asarray(center, dtype=np.float64)).reshape(1, -1, 1, 1)
        self.params = rng.normal(0.0, 1.0, (n, channels, h, w // 2 + 1, 2)) * std
        self._pixels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, channels, h = self.params.shape[:3]
        return (n, channels, h, self.size[1])

    def render(self) -> np.ndarray:
        spectrum = (self.params[..., 0] + 1j * self.params[..., 1]) * self.scale
        spatial = np.fft.irfft2(spectrum, s=self.size, norm="ortho")
        mixed = np.einsum("dc,nchw->ndhw", self.color, spatial) + self.offset
        self._pixels = 1.0 / (1.0 + np.exp(-mixed))
        return self._pixels.copy()

    def backward(self, pixel_gradient: np.ndarray) -> np.ndarray:
        if self._pixels is None:
            self.render()
        assert self._pixels is not None  # render() has set it
        mixed_gradient = pixel_gradient * self._pixels * (1.0 - self._pixels)
        spatial_gradient = np.einsum("dc,ndhw->nchw", self.color, mixed_gradient)
        spectrum_gradient = np.fft.rfft2(spatial_gradient, norm="ortho") * self.fold * self.scale
        return np.stack([spectrum_gradient.real, spectrum_gradient.imag], axis=-1)

    def project(self) -> None:
        self._pixels = None

    def decay(self, rate: float) -> None:
        self.params *= 1.0 - rate


# -- transformations -------------------------------------------------------------

def check_range(value: float | Sequence[float] | None, name: str) -> tuple[float, float] | None:
    """None, or a pair (low, high) of positive numbers with low <= high."""
    if value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value, value)
    try:
        # A bool is not iterable: it raises the TypeError reported below.
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (0 < low <= high and np.isfinite(high)):
        raise ValueError(f"{name} must be a pair 0 < low <= high, got {value!r}")
    return low, high


def _warp_matrix(h: int, w: int, scale: float, angle_degrees: float) -> sparse.csr_matrix:
    """Sparse (H*W, H*W) matrix of a bilinear zoom by ``scale`` and rotation
    about the image centre; sources outside the image take the nearest edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    theta = np.deg2rad(angle_degrees)
    cos, sin = np.cos(theta), np.sin(theta)
    dy, dx = yy - cy, xx - cx
    sy = np.clip(cy + (cos * dy + sin * dx) / scale, 0, h - 1).ravel()
    sx = np.clip(cx + (-sin * dy + cos * dx) / scale, 0, w - 1).ravel()
    y0 = np.minimum(np.floor(sy).astype(np.int64), max(h - 2, 0))
    x0 = np.minimum(np.floor(sx).astype(np.int64), max(w - 2, 0))
    fy, fx = sy - y0, sx - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    rows = np.tile(np.arange(h * w), 4)
    cols = np.concatenate([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])
    weights = np.concatenate([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return sparse.csr_matrix((weights, (rows, cols)), shape=(h * w, h * w))


class RandomTransform:
    """Random jitter (a circular shift of up to ``jitter`` pixels), zoom by a
    factor drawn from ``scale`` (low, high) and rotation by up to ``rotate``
    degrees either way, drawn afresh by :meth:`sample` and applied to the
    whole batch. :meth:`adjoint` sends a gradient back through the last
    sampled transformation.
    """

    def __init__(self, jitter: int = 0, scale: float | Sequence[float] | None = None, rotate: float = 0.0) -> None:
        if not C.is_int(jitter) or jitter < 0:
            raise ValueError(f"jitter must be a non-negative int (pixels), got {jitter!r}")
        self.jitter = int(jitter)
        self.scale = check_range(scale, "scale")
        self.rotate = check_weight(rotate, "rotate")
        self._shift: tuple[int, ...] = (0, 0)
        self._matrix: sparse.csr_matrix | None = None

    @property
    def active(self) -> bool:
        return bool(self.jitter or self.scale or self.rotate)

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        h, w = size
        self._shift = tuple(int(v) for v in rng.integers(-self.jitter, self.jitter + 1, 2)) if self.jitter else (0, 0)
        factor = rng.uniform(*self.scale) if self.scale else 1.0
        angle = rng.uniform(-self.rotate, self.rotate) if self.rotate else 0.0
        self._matrix = _warp_matrix(h, w, factor, angle) if (factor != 1.0 or angle != 0.0) else None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.roll(images, self._shift, axis=(2, 3)) if self._shift != (0, 0) else images
        if self._matrix is None:
            return out
        n, c, h, w = out.shape
        flat = out.reshape(n * c, h * w)
        return (self._matrix @ flat.T).T.reshape(n, c, h, w)

    def adjoint(self, gradient: np.ndarray) -> np.ndarray:
        if self._matrix is not None:
            n, c, h, w = gradient.shape
            flat = gradient.reshape(n * c, h * w)
            gradient = (self._matrix.T @ flat.T).T.reshape(n, c, h, w)
        if self._shift != (0, 0):
            gradient = np.roll(gradient, (-self._shift[0], -self._shift[1]), axis=(2, 3))
        return gradient


# -- priors -----------------------------------------------------------------------

def gaussian_blur(images: ArrayLike, sigma: float) -> np.ndarray:
    """Blur each channel of (N, C, H, W) images with a Gaussian of ``sigma`` pixels."""
    sigma = check_weight(sigma, "sigma")
    if sigma == 0:
        return np.array(images, dtype=np.float64)
    return ndimage.gaussian_filter(np.asarray(images, dtype=np.float64), sigma=(0, 0, sigma, sigma), mode="nearest")


def total_variation(images: ArrayLike, beta: float = 2.0, eps: float = 1e-8) -> tuple[float, np.ndarray]:
    """Mean over pixels and channels of ((dI/dx)^2 + (dI/dy)^2)^(beta/2), with
    forward differences; returns (value, gradient shaped like images).

    beta = 2 penalizes squared differences (smooth images); beta = 1 is the
    classic total variation, which keeps edges (``eps`` keeps it
    differentiable where the image is flat).
    """
    beta = check_positive(beta, "beta")
    images = np.asarray(images, dtype=np.float64)
    if images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"total variation needs images of at least 2x2 pixels, got shape {images.shape}")
    corner = images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - corner
    dy = images[..., 1:, :-1] - corner
    squared = dx ** 2 + dy ** 2
    if beta != 2.0:
        squared = squared + eps
    count = squared.size
    value = float(np.sum(squared ** (beta / 2))) / count
    factor = beta * squared ** (beta / 2 - 1) / count
    gradient = np.zeros_like(images)
    gradient[..., :-1, 1:] += factor * dx
    gradient[..., 1:, :-1] += factor * dy
    gradient[..., :-1, :-1] -= factor * (dx + dy)
    return value, gradient


def alpha_norm(values: ArrayLike, alpha: float = 6.0) -> tuple[float, np.ndarray]:
    """``mean(|v|^alpha)`` and its gradient; a large alpha keeps values in a bounded range."""
    alpha = check_positive(alpha, "alpha")
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    value = float(np.mean(magnitude ** alpha))
    gradient = alpha * magnitude ** (alpha - 1) * np.sign(values) / values.size
    return value, gradient


# -- optimizers ------------------------------------------------------------------------

class Adam:
    """Adam (Kingma & Ba) on one array, minimizing: ``step(x, gradient)`` updates x in place."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr = check_positive(lr, "lr")
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, x: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m = np.zeros_like(x)
            self.v = np.zeros_like(x)
        assert self.v is not None  # set together with self.m
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient ** 2
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        x -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return x


def normalized_step(gradient: np.ndarray, lr: float, norm: str = "rms") -> np.ndarray:
    """``lr`` times each example's gradient divided by its root mean square
    (``'rms'``) or its mean absolute value (``'mean_abs'``, as in DeepDream):
    a step whose size does not depend on the scale of the network's outputs."""
    axes = tuple(range(1, gradient.ndim))
    if norm == "rms":
        size = np.sqrt(np.mean(gradient ** 2, axis=axes, keepdims=True))
    elif norm == "mean_abs":
        size = np.mean(np.abs(gradient), axis=axes, keepdims=True)
    else:
        raise ValueError(f"norm must be 'rms' or 'mean_abs', got {norm!r}")
    return lr * gradient / (size + 1e-12)


METHODS = ("lbfgs", "adam")


class _BudgetSpent(Exception):
    pass


def minimize(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, method: str = "lbfgs",
             evaluations: int = 200, lr: float = 0.02, bounds: tuple[float, float] = (0.0, 1.0),
             progress: bool | None = None, description: str = "optimizing") -> tuple[np.ndarray, list[float]]:
    """Minimize ``objective(x) -> (loss, gradient)`` over x within ``bounds``,
    spending exactly ``evaluations`` calls of the objective at most.

    ``method='lbfgs'`` runs SciPy's L-BFGS-B (the bounds are a box
    constraint it handles itself); ``'adam'`` takes one Adam step of ``lr``
    per evaluation and clips x into the bounds. Returns (x with the lowest
    loss seen, list of every loss in evaluation order).
    """
    from scipy.optimize import Bounds
    from scipy.optimize import minimize as scipy_minimize

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    evaluations = _checks.positive_int(evaluations, "steps")
    shape = x0.shape
    losses: list[float] = []
    best: dict[str, Any] = {"loss": np.inf, "x": np.array(x0, dtype=np.float64)}
    with progress_bar(evaluations, description, progress) as bar:

        def counted(flat: np.ndarray) -> tuple[float, np.ndarray]:
            if len(losses) >= evaluations:
                raise _BudgetSpent
            x = flat.reshape(shape)
            loss, gradient = objective(x)
            losses.append(float(loss))
            if loss < best["loss"]:
                best["loss"] = float(loss)
                best["x"] = x.copy()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            return float(loss), np.asarray(gradient, dtype=np.float64).ravel()

        x = np.clip(np.array(x0, dtype=np.float64), *bounds)
        if method == "lbfgs":
            try:
                scipy_minimize(counted, x.ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(*bounds),
                               options={"maxiter": evaluations, "maxfun": evaluations, "maxcor": 20,
                                        "ftol": 0.0, "gtol": 0.0})
            except _BudgetSpent:
                pass
        else:
            adam = Adam(lr)
            while len(losses) < evaluations:
                _, gradient = counted(x.ravel())
                adam.step(x, gradient.reshape(shape))
                np.clip(x, *bounds, out=x)
    return best["x"], losses


# -- gradients at several layers ----------------------------------------------------

def backward_from(model: fastconv.Model, gradients: Mapping[str, np.ndarray]) -> np.ndarray:
    """Gradient w.r.t. the model input of sum_l <g_l, output of layer l>, for
    ``gradients`` = {layer name: g_l}, in one backward pass.

    The model must just have run ``forward`` through the deepest of those
    layers. Each layer's own ``backward`` is called once, from the deepest
    named layer down, and each g_l is added in as the pass reaches layer l;
    the result equals the sum of ``model.backward(g_l, start=l)`` over l.
    """
    if not gradients:
        raise ValueError("backward_from needs at least one layer's gradient")
    names = [name for name, _ in model.named_layers()]
    layers = {name: C.check_layer(model, name) for name in gradients}
    deepest = max(gradients, key=names.index)
    reached: set[str] = set()
    handles = []
    for name, layer in layers.items():
        if name == deepest:
            continue

        # A pre-hook adds g_l to the gradient the pass brings to layer l, the
        # gradient w.r.t. its output: whatever the wiring in between.
        def add(_layer: object, grad: np.ndarray, name: str = name) -> np.ndarray:
            reached.add(name)
            return grad + gradients[name]

        handles.append(layer.register_backward_pre_hook(add))
    try:
        grad = model.backward(gradients[deepest], start=deepest, param_grads=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(gradients) - reached - {deepest}, key=names.index)
    if missing:
        raise ValueError(f"layer {missing[0]!r} is not on a path from the input to {deepest!r}, "
                         "so a gradient given there cannot reach the input")
    return grad


# -- objectives on a layer's output ---------------------------------------------------

def _pooled(activations: np.ndarray, position: tuple[int, int] | None) -> np.ndarray:
    """Each image's activation vector (N, C): the channels at ``position``
    (i, j), or their mean over positions; a flat layer's output as it is."""
    if activations.ndim == 2:
        return activations
    if position is not None:
        return activations[:, :, position[0], position[1]]
    return activations.mean(axis=(2, 3))


def _spread(vector_gradient: np.ndarray, shape: tuple[int, ...], position: tuple[int, int] | None) -> np.ndarray:
    """The adjoint of :func:`_pooled`: a gradient (N, C) back to the layer's shape."""
    if len(shape) == 2:
        return vector_gradient
    gradient = np.zeros(shape)
    if position is not None:
        gradient[:, :, position[0], position[1]] = vector_gradient
        return gradient
    gradient[...] = vector_gradient[:, :, None, None] / (shape[2] * shape[3])
    return gradient


def direction_objective(activations: ArrayLike, vectors: ArrayLike, position: tuple[int, int] | None = None,
                        cosine_power: float = 0.0, floor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """How far each image's activation points along its direction, with the gradient.

    ``activations`` (N, C, H, W) or (N, C); ``vectors`` (N, C), or (C,) for
    all. With a = the activation vector at ``position`` (i, j), or its mean
    over positions when None, and v the direction, the value is
    ``<v, a> * max(cos(v, a), floor) ** cosine_power``. ``cosine_power=0``
    gives the plain dot product, a linear objective (a channel combination
    when v weights channels); a positive power rewards pointing the same way
    as v rather than a large activation in roughly that direction, as in the
    activation atlas of Carter et al. 2019. Returns (values (N,), gradient of
    their sum w.r.t. ``activations``).
    """
    cosine_power = check_weight(cosine_power, "cosine_power")
    activations = np.asarray(activations, dtype=np.float64)
    a = _pooled(activations, position)
    v = np.broadcast_to(np.asarray(vectors, dtype=np.float64), a.shape)
    dot = np.sum(v * a, axis=1)
    if cosine_power == 0:
        return dot, _spread(np.array(v), activations.shape, position)
    v_norm = np.linalg.norm(v, axis=1) + 1e-12
    a_norm = np.linalg.norm(a, axis=1) + 1e-12
    cosine = dot / (v_norm * a_norm)
    clipped = np.maximum(cosine, floor)
    values = dot * clipped ** cosine_power
    cosine_gradient = v / (v_norm * a_norm)[:, None] - (dot / (v_norm * a_norm ** 3))[:, None] * a
    # Below the floor the factor is constant: only the dot product moves.
    active = (cosine > floor)[:, None]
    gradient = clipped[:, None] ** cosine_power * v + np.where(
        active, cosine_power * (dot * clipped ** (cosine_power - 1))[:, None] * cosine_gradient, 0.0)
    return values, _spread(gradient, activations.shape, position)


def gram_similarity(activations: ArrayLike) -> tuple[float, np.ndarray]:
    """How alike a batch of images is in style: the mean over images of the
    summed cosine similarity between its Gram matrix and every other image's,
    with the gradient w.r.t. ``activations`` (N, C, H, W) or (N, C).

    With G_n = A_n A_n^T / (H W) and g_n = G_n / ||G_n||, the value is
    ``sum over n != m of <g_n, g_m> / N``: N - 1 when all images share one
    Gram matrix, lower as they differ in which channels fire together. The
    diversity term of Olah et al. 2017 subtracts it from the objective.
    """
    activations = np.asarray(activations, dtype=np.float64)
    n = activations.shape[0]
    if n < 2:
        raise ValueError(f"a similarity between images needs at least 2 of them, got {n}")
    flat = activations.reshape(n, activations.shape[1], -1)
    positions = flat.shape[2]
    grams = flat @ flat.transpose(0, 2, 1) / positions
    norms = np.sqrt(np.sum(grams ** 2, axis=(1, 2))) + 1e-12
    unit = grams / norms[:, None, None]
    total = unit.sum(axis=0)
    value = float((np.sum(total ** 2) - np.sum(unit ** 2)) / n)
    others = (total[None] - unit) * (2.0 / n)
    along = np.sum(others * unit, axis=(1, 2))
    gram_gradient = (others - along[:, None, None] * unit) / norms[:, None, None]
    symmetric = gram_gradient + gram_gradient.transpose(0, 2, 1)
    gradient = symmetric @ flat / positions
    return value, gradient.reshape(activations.shape)
