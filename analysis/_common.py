"""Helpers shared by the analysis tools: input checks, layer lookup, targets,
evaluation mode and the normalization stored in a model's metadata.

Everything here goes through the model's public API: ``named_layers()``,
``forward(x, until=name)``, ``backward(grad, start=name)``, ``eval()`` and
the layers' own ``forward``/``backward``.
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np

from fastconv import _checks
from fastconv.data.transforms import Normalize
from fastconv.nn import graph as G
from fastconv.nn import layers as L

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from typing_extensions import TypeIs

    import fastconv

# Layers that do not change the spatial geometry of what flows through them.
POINTWISE = (L.ReLU, L.LeakyReLU, L.BatchNorm2d, L.Dropout)
ACTIVATIONS = (L.ReLU, L.LeakyReLU)
# Layers between a convolution and its activation that leave its maps in place:
# normalization, dropout, and a graph's identity or residual sum.
PASS_THROUGH = (L.BatchNorm2d, L.Dropout, G.Add, G.Identity)

# The target of an attribution: one unit of an output (an output index, a
# channel of a spatial output, or a position (c, i, j)), or one per example.
Unit = Union[int, np.integer, tuple[int, ...]]
Target = Union[Unit, Sequence[Unit], np.ndarray]


def layer_names(model: fastconv.Model) -> list[str]:
    return [name for name, _ in model.named_layers()]


def check_layer(model: fastconv.Model, name: str, what: str = "layer") -> L.Layer:
    """Return the layer called ``name``; ValueError listing the valid names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a layer name (str), got {name!r}")
    for layer_name, layer in model.named_layers():
        if layer_name == name:
            return layer
    raise ValueError(f"unknown {what} {name!r}; the model's layers are {layer_names(model)}")


def layer_index(model: fastconv.Model, name: str) -> int:
    check_layer(model, name)
    return layer_names(model).index(name)


def layers_after(model: fastconv.Model, name: str) -> list[tuple[str, L.Layer]]:
    """The (name, layer) pairs that follow layer ``name`` along a chain: in a
    Sequential every later layer; in a Graph the nodes that each read only the
    one before and are its only reader (a node whose output branches, or that
    merges several, ends the chain)."""
    pairs = list(model.named_layers())
    consumers = getattr(model, "consumers", None)
    if consumers is None:
        return pairs[layer_index(model, name) + 1:]
    check_layer(model, name)
    chain: list[tuple[str, L.Layer]] = []
    while True:
        readers = consumers(name)
        if len(readers) != 1 or len(model.inputs(readers[0])) != 1:  # type: ignore[attr-defined]
            return chain
        name = readers[0]
        chain.append((name, model.layer(name)))


def conv_layer_names(model: fastconv.Model) -> list[str]:
    return [name for name, layer in model.named_layers() if isinstance(layer, L.Conv2d)]


def last_conv_name(model: fastconv.Model) -> str:
    names = conv_layer_names(model)
    if not names:
        raise ValueError("the model has no Conv2d layer")
    return names[-1]


def model_dtype(model: fastconv.Model) -> np.dtype:
    for _, layer in model.named_layers():
        for value in layer.params.values():
            return value.dtype
    return np.dtype(np.float32)


def input_channels(model: fastconv.Model) -> int | None:
    """Channels the first layer with a weight expects (None if it cannot tell)."""
    for _, layer in model.named_layers():
        if isinstance(layer, L.Conv2d):
            return int(layer.params["weight"].shape[1])
        if isinstance(layer, L.BatchNorm2d):
            return int(layer.params["weight"].shape[0])
        if isinstance(layer, L.Linear):
            return None
    return None


def check_images(model: fastconv.Model, x: np.ndarray, name: str = "x") -> np.ndarray:
    """Check that x is a float batch (N, C, H, W) this model accepts; return it.

    The spatial size is checked by following the shapes through every layer,
    so an image of the wrong size fails here, with its size in the message,
    rather than deep inside a kernel.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of images (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images shaped (N, C, H, W), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {x.shape}")
    dtype = model_dtype(model)
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the model's parameters are {dtype}; "
            f"convert with x.astype(np.{dtype.name}) (and normalize uint8 images first)"
        )
    channels = input_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels (shape {x.shape}) but the model expects {channels}"
        )
    try:
        model.output_shapes(x.shape)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} of shape {x.shape} does not fit the model: {err}") from None
    return x


def activation_and_gradient(model: fastconv.Model, x: np.ndarray, layer: str,
                            seed: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(A, dT/dA): the output A of ``layer`` for x, and the gradient of the
    model output's target T w.r.t. A, where ``seed(output)`` gives dT/d output.

    Runs the whole model forward and back with hooks that keep A and its
    gradient, so it works whatever the wiring between ``layer`` and the output
    (a chain, or a graph's branches and merges)."""
    check_layer(model, layer)
    kept: dict[str, np.ndarray] = {}

    def keep_activation(name: str, _layer: L.Layer, output: np.ndarray) -> None:
        if name == layer:
            kept["activation"] = output

    def keep_gradient(name: str, _layer: L.Layer, _grad_input: object, grad_output: np.ndarray) -> None:
        if name == layer:
            kept["gradient"] = grad_output

    forward = model.register_forward_hook(keep_activation)
    try:
        out = model.forward(x)
    finally:
        forward.remove()
    backward = model.register_backward_hook(keep_gradient)
    try:
        model.backward(seed(out), param_grads=False)
    finally:
        backward.remove()
    return kept["activation"], kept["gradient"]


@contextlib.contextmanager
def evaluating(model: fastconv.Model) -> Iterator[fastconv.Model]:
    """Run the block with the model in eval mode, then restore its mode and
    its parameter gradients.

    Attributions must not depend on dropout masks or on batch statistics,
    and a tool handed a model in the middle of training must leave it as it
    was: the backward passes it runs add into the layers' ``grads``.
    """
    was_training = bool(model.training)
    saved_grads = [{key: grad.copy() for key, grad in layer.grads.items()} for _, layer in model.named_layers()]
    model.eval()
    try:
        yield model
    finally:
        for (_, layer), grads in zip(model.named_layers(), saved_grads):
            for key, grad in grads.items():
                layer.grads[key][...] = grad
        if was_training:
            model.train()


def forward_with_outputs(model: fastconv.Model, x: np.ndarray, names: Iterable[str],
                         until: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward x once and return (output, {name: that layer's output})."""
    captured: dict[str, np.ndarray] = {}
    wanted = set(names)

    def keep(name: str, layer: L.Layer, output: np.ndarray) -> None:
        if name in wanted:
            captured[name] = output.copy()

    handle = model.register_forward_hook(keep)
    try:
        out = model.forward(x, until=until)
    finally:
        handle.remove()
    return out, captured


def tail_forward(pairs: Sequence[tuple[str, L.Layer]], a: np.ndarray) -> np.ndarray:
    for _, layer in pairs:
        a = layer.forward(a)
    return a


def tail_backward(pairs: Sequence[tuple[str, L.Layer]], grad: np.ndarray) -> np.ndarray:
    for _, layer in reversed(pairs):
        grad = layer.backward(grad, param_grads=False)
    return grad


def is_int(value: object) -> TypeIs[int | np.integer]:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def target_list(target: Target | None, n: int, where: str) -> list[Unit]:
    """Normalize a target to a list of n per-example targets.

    A target is an int (an output index, or a channel for a spatial output),
    a tuple (c, i, j) naming one unit of a spatial output, or a sequence of
    n such targets, one per example.
    """
    if target is None:
        raise ValueError(f"a target is required for {where}")
    if is_int(target) or (isinstance(target, tuple) and all(is_int(t) for t in target)):
        return [target] * n
    if isinstance(target, np.ndarray) and target.ndim == 1:
        target = target.tolist()
    if isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(
                f"target has {len(target)} entries but the batch holds {n} examples: {target!r}"
            )
        items = [tuple(t) if isinstance(t, (list, tuple)) else t for t in target]
        for t in items:
            if not (is_int(t) or (isinstance(t, tuple) and all(is_int(v) for v in t))):
                raise TypeError(f"a target must be an int or a tuple of ints, got {t!r}")
        return items
    raise TypeError(f"target must be an int, a tuple (c, i, j) or a sequence of those, got {target!r}")


def seed_gradient(out: np.ndarray, target: Target | None, where: str = "the model output") -> np.ndarray:
    """One-hot gradient on ``out`` selecting each example's target unit.

    For a spatial output (N, C, H, W), an int target c selects the position
    where channel c is largest in that example (the unit Zeiler & Fergus
    follow back to the image); (c, i, j) selects one unit.
    """
    n = out.shape[0]
    targets = target_list(target, n, where)
    seed = np.zeros_like(out)
    per_example = out.shape[1:]
    for k, t in enumerate(targets):
        index = _unit_index(out[k], t, per_example, where)
        seed[(k,) + index] = 1
    return seed


def _unit_index(example_out: np.ndarray, t: Unit, per_example: tuple[int, ...], where: str) -> tuple[int, ...]:
    if is_int(t):
        t = int(t)
        if not 0 <= t < per_example[0]:
            raise ValueError(
                f"target {t} is out of range for {where} with {per_example[0]} "
                f"{'channels' if len(per_example) == 3 else 'outputs'} (valid: 0..{per_example[0] - 1})"
            )
        if len(per_example) == 1:
            return (t,)
        plane = example_out[t]
        flat = int(np.argmax(plane))
        return (t,) + tuple(int(v) for v in np.unravel_index(flat, plane.shape))
    t = tuple(int(v) for v in t)
    if len(t) != len(per_example) or any(not 0 <= v < s for v, s in zip(t, per_example)):
        raise ValueError(
            f"target {t} is out of range for {where} whose examples are shaped {per_example}"
        )
    return t




def check_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if is_int(value):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if not (is_int(a) and is_int(b)) or a < 1 or b < 1:
        raise ValueError(f"{name} must be positive ints, got {value!r}")
    return int(a), int(b)




def resize(maps: np.ndarray, size: Sequence[int], mode: str = "bilinear") -> np.ndarray:
    """Resize (N, C, h, w) to (N, C, H, W) as torch.nn.functional.interpolate does.

    ``nearest`` takes source index floor(i * h / H); ``bilinear`` samples at
    (i + 0.5) * h / H - 0.5 (align_corners=False), clamped at the edges.
    """
    out_h, out_w = size
    n, c, h, w = maps.shape
    if (h, w) == (out_h, out_w):
        return maps.copy()
    if mode == "nearest":
        rows = np.minimum((np.arange(out_h) * h) // out_h, h - 1)
        cols = np.minimum((np.arange(out_w) * w) // out_w, w - 1)
        return maps[:, :, rows][:, :, :, cols]
    if mode != "bilinear":
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {mode!r}")

    def axis(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), in_size - 1)
        hi = np.minimum(lo + 1, in_size - 1)
        frac = (src - lo).astype(maps.dtype)
        return lo, hi, frac

    r0, r1, fr = axis(out_h, h)
    c0, c1, fc = axis(out_w, w)
    top = maps[:, :, r0] * (1 - fr)[:, None] + maps[:, :, r1] * fr[:, None]
    return top[:, :, :, c0] * (1 - fc) + top[:, :, :, c1] * fc


def meta_classes(model: fastconv.Model, count: int | None = None) -> list[str] | None:
    """Class names from the model's metadata, or '0', '1', ... when it has none."""
    classes = None
    meta = getattr(model, "meta", None) or {}
    if meta.get("classes") is not None:
        classes = [str(c) for c in meta["classes"]]
    if classes is None and count is not None:
        classes = [str(i) for i in range(count)]
    return classes


# The analysis tools normalize as the trainer does: with the one Normalize.
Normalizer = Normalize


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    batch_size = _checks.positive_int(batch_size, "batch_size")
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)
