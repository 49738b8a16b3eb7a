"""Sequential: a chain of named layers, with partial passes, hooks and save/load.

A trained model applies its own preprocessing: ``model.preprocess(images)``
turns raw images (uint8, or floats in [0, 1]) into its input with the
normalization it carries in ``model.meta['normalization']``;
``model.classify(images)`` gives class indices of raw images, and
``model.predict`` takes uint8 images as raw ones too (float input is the
model's input there, as in ``forward``).

The analysis tools work on this API only: ``forward(x, until=name)`` gives a
layer's activation, ``backward(grad, start=name)`` sends a chosen gradient of
that activation back to the image, and hooks watch the passes or change a
layer's backward rule:

* ``model.register_forward_hook(fn)``: ``fn(name, layer, output)`` after
  every layer of every forward pass (``predict`` included);
* ``model.register_backward_hook(fn)``: ``fn(name, layer, grad_input,
  grad_output)`` after every layer of every ``model.backward``;
* on any layer, ``register_forward_hook``, ``register_backward_pre_hook``
  (may replace the gradient the layer receives) and ``register_backward_hook``
  (may replace the gradient it passes on); see ``fastconv.nn.layers``.

Each returns a handle whose ``remove()`` unregisters the hook; the model's
hooks ignore return values. Some adjacent layers run as one pass
(``fastconv.nn.fusion``, a ReLU and the training-mode batch norm after it);
a hook on the model or on those layers turns that off where it would see or
change what passes between them, so hooks always see the unfused pass.
``predict`` and ``classify`` run a convolution and the batch norm and ReLU
after it as one pass (``fastconv.nn.fuse``) unless a forward hook is
registered anywhere or ``model.inference_fusion`` is False.

File format (``save`` / ``load``): an uncompressed ``.npz`` holding
``architecture`` (JSON: format tag, version, mode and, per layer, its name,
class and ``config()``), ``meta`` (JSON: the user's ``model.meta``) and one
array per ``state_dict()`` key.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import weakref
from typing import TYPE_CHECKING, NamedTuple, cast, overload

import numpy as np

from fastconv import _checks
from fastconv._files import atomic_write, open_npz
from fastconv.nn import fuse, fusion
from fastconv.nn.layers import LAYER_TYPES, HookHandle, Layer, _blame, _float_dtype, _register
from fastconv.nn.normalize import Normalize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import Any, Literal

    from numpy.typing import ArrayLike, DTypeLike
    from typing_extensions import Self

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv

__all__ = ["Model", "Sequential", "Parameter", "HookHandle", "save", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastconv.Sequential"
FORMAT_VERSION = 1
_RESERVED_ENTRIES = ("architecture", "meta")


class _Output(NamedTuple):
    """Where an array that ``Sequential.forward`` returned comes from."""
    array: weakref.ref[np.ndarray]
    model: weakref.ref[Model]
    until: str | None  # the layer the pass stopped at (None: the last one)
    forward_count: int  # the model's _forward_count once the pass was done
    layer_passes: tuple[int, ...]  # each layer's _passes once the pass was done, up to ``until``


# The arrays forward returned and still alive, by id: how a loss called on one
# of them finds the model to backpropagate through (LossValue.backward). Weak
# references on both sides, so neither the arrays nor the models are kept.
_OUTPUTS: dict[int, _Output] = {}


# Guards the thread records of every model (Sequential._pass): held for a few
# comparisons, never during a pass.
_THREADS = threading.Lock()


def _keep_output(model: Model, output: np.ndarray, until: str | None) -> None:
    key = id(output)

    def forget(ref: weakref.ref[np.ndarray]) -> None:
        if getattr(_OUTPUTS.get(key), "array", None) is ref:
            _OUTPUTS.pop(key, None)

    _OUTPUTS[key] = _Output(weakref.ref(output, forget), weakref.ref(model), until, model._forward_count,
                            model._layer_passes(until))


def _output_source(array: object) -> _Output | None:
    """The record of the forward pass that returned ``array`` itself, or None if none did."""
    record = _OUTPUTS.get(id(array))
    return record if record is not None and record.array() is array else None


def _json_default(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"meta holds {value!r} of type {type(value).__name__}, which cannot be saved as JSON")


class Parameter:
    """One trainable array of a model and its gradient, as ``model.parameters()``
    lists them for an optimizer: ``Adam(model.parameters(), lr=1e-3)``.

    ``name`` is the parameter's key in ``state_dict()``, ``named_parameters()``
    and an optimizer's state; ``data`` is the array itself (optimizers update
    it in place) and ``grad`` the array backward adds its gradient into, both
    looked up in ``layer`` at each access.
    """

    __slots__ = ("name", "layer", "key")

    def __init__(self, name: str, layer: Layer, key: str) -> None:
        if key not in layer.params:
            raise ValueError(f"{type(layer).__name__} has no parameter {key!r}; it has {sorted(layer.params)}")
        self.name = name
        self.layer = layer
        self.key = key

    @property
    def data(self) -> np.ndarray:
        """The parameter's array (the layer's own, not a copy)."""
        return self.layer.params[self.key]

    @property
    def grad(self) -> np.ndarray:
        """The gradient array backward adds into, shaped like ``data``."""
        return self.layer.grads[self.key]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the parameter."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the parameter (and of its gradient)."""
        return self.data.dtype

    @property
    def size(self) -> int:
        """Number of values in the parameter."""
        return self.data.size

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Model:
    """What every fastconv model offers, over its named layers in the order
    a forward pass runs them: passes up to or from a named layer, hooks,
    modes, parameters and state, raw-image prediction, saving.

    A subclass sets up its layers with ``_setup(names, layers)`` and
    implements the passes (``_forward_pass``, ``_backward_pass``,
    ``_infer_batch``), ``_output_shapes``, ``astype`` and ``architecture``.
    """

    _names: list[str]
    _layers: list[Layer]
    _reached: object  # what the last forward ran through (None: no pass to backpropagate)

    def _setup(self, names: list[str], layers: list[Layer]) -> None:
        """Take the model's layers, named, in the order a forward pass runs them."""
        self._names = names
        self._layers = layers
        self._index = {name: i for i, name in enumerate(names)}
        self._forward_hooks: dict[int, Callable[[str, Layer, np.ndarray], object]] = {}
        self._backward_hooks: dict[int, Callable[[str, Layer, np.ndarray | None, np.ndarray], object]] = {}
        self._reached = None
        self._fused: dict[int, fusion.Pass] = {}  # the last forward's fused passes, by the index of their last layer
        self._training = all(layer.training for layer in layers)
        self._forward_count = 0  # forward passes run, so that a loss can tell whether its input is the last one's
        # Whether predict and classify run a convolution and the layers after it as one pass (fastconv.nn.fuse).
        self.inference_fusion = True
        self._folds: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # folded weights kept between inference calls
        self._clear_threads()
        self.meta: dict[str, Any] = {}

    # -- one thread at a time ------------------------------------------------------
    # The layers keep what a pass needs for the next backward (their caches), so
    # two threads running passes of one model would mix each other's. Each pass
    # records its thread; a pass from another thread meanwhile, or a backward
    # from a thread whose forward is not the one in the caches, is refused.

    def _clear_threads(self) -> None:
        self._pass_thread: int | None = None  # the thread running a pass now
        self._pass_depth = 0                  # nested passes of that thread (a hook may run one)
        self._forward_thread: int | None = None  # the thread whose forward the caches hold

    def __getstate__(self) -> dict[str, Any]:
        """What a copy or a pickle holds: everything but the thread records and
        the last pass (as for each layer), so that ``copy.deepcopy(model)``,
        say for another thread, works at any time and starts with no pass."""
        state = dict(self.__dict__)
        state.update(_pass_thread=None, _pass_depth=0, _forward_thread=None, _reached=None, _fused={}, _folds={})
        return state

    @contextlib.contextmanager
    def _pass(self, kind: str) -> Iterator[None]:
        me = threading.get_ident()
        with _THREADS:
            if self._pass_thread not in (None, me):
                raise RuntimeError(
                    f"this model is in the middle of a pass in another thread, and its layers hold that pass's "
                    f"intermediate results: give each thread its own copy (copy.deepcopy(model)) or run its "
                    f"{kind} passes under a lock"
                )
            if kind == "backward" and self._forward_thread not in (None, me):
                raise RuntimeError(
                    "the last forward pass of this model ran in another thread, so its layers hold that "
                    "thread's intermediate results: run forward and backward in the same thread, or give "
                    "each thread its own copy (copy.deepcopy(model))"
                )
            self._pass_thread, self._pass_depth = me, self._pass_depth + 1
        try:
            yield
            if kind == "forward":
                self._forward_thread = me
        finally:
            with _THREADS:
                self._pass_depth -= 1
                if self._pass_depth == 0:
                    self._pass_thread = None

    # -- structure ------------------------------------------------------------
    def named_layers(self) -> list[tuple[str, Layer]]:
        """[(name, layer), ...] in order."""
        return list(zip(self._names, self._layers))

    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (ValueError naming the layers if there is none)."""
        return self._layers[self._position(name)]

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[Layer]:
        """The layers, in order (``named_layers()`` gives their names too)."""
        return iter(self._layers)

    def __contains__(self, item: object) -> bool:
        """``"conv1" in model``: a layer of that name; ``layer in model``: that very layer object."""
        if isinstance(item, str):
            return item in self._index
        return any(layer is item for layer in self._layers)

    def _position(self, name: str) -> int:
        if not isinstance(name, str):
            raise TypeError(f"layer name must be a str, got {name!r}")
        try:
            return self._index[name]
        except KeyError:
            raise ValueError(f"no layer named {name!r}; the layers are {', '.join(self._names)}") from None

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the parameters (None if the model has none)."""
        for layer in self._layers:
            if layer.dtype is not None:
                return layer.dtype
        return None

    # -- modes ------------------------------------------------------------------
    def train(self, mode: bool = True) -> Self:
        """Put every layer in training mode (``mode=False``: evaluation mode); returns the model."""
        self._training = bool(mode)
        for layer in self._layers:
            layer.train(mode)
        return self

    def eval(self) -> Self:
        """Put every layer in evaluation mode (running statistics, no dropout): ``train(False)``."""
        return self.train(False)

    @property
    def training(self) -> bool:
        """Whether the model was last put in training mode (``train()``) rather than ``eval()``."""
        return self._training

    # -- passes -----------------------------------------------------------------
    def _run_layer(self, name: str, layer: Layer, method: Callable[[np.ndarray], np.ndarray],
                   x: np.ndarray) -> np.ndarray:
        with _blame(name, layer):
            y = method(x)
        for hook in list(self._forward_hooks.values()):
            hook(name, layer, y)
        return y

    def _has_forward_hooks(self) -> bool:
        return bool(self._forward_hooks)

    def forward(self, x: np.ndarray, until: str | None = None) -> np.ndarray:
        """Output of layer ``until`` (inclusive; default the last layer) for
        input x, keeping what ``backward`` needs; ``model(x)`` is the same call.

        A loss computed on the very array returned here can backpropagate
        itself through this model, ``loss_fn(model(x), y).backward()``, as
        long as the model runs no other forward pass before it does.
        """
        with self._pass("forward"):
            return self._forward_pass(x, until)

    __call__ = forward

    @overload
    def backward(self, grad: np.ndarray, start: str | None = None, input_grad: Literal[True] = True,
                 param_grads: bool = True) -> np.ndarray: ...

    @overload
    def backward(self, grad: np.ndarray, start: str | None = None, input_grad: bool = True,
                 param_grads: bool = True) -> np.ndarray | None: ...

    def backward(self, grad: np.ndarray, start: str | None = None, input_grad: bool = True,
                 param_grads: bool = True) -> np.ndarray | None:
        """Backpropagate ``grad``, the gradient w.r.t. the output of layer ``start``
        (default the last layer), through the layers of the last forward pass.

        Parameter gradients are added into ``gradients()``. Returns the
        gradient w.r.t. the model input; with ``input_grad=False`` (training)
        it returns None and stops as soon as every parameter gradient is known,
        so the first convolution skips its input gradient. With
        ``param_grads=False`` (attacks, saliency, image optimization) no
        parameter gradient is computed or added, which saves the convolutions'
        weight-gradient products. The layers' backward hooks run, then the
        model's, after each layer.
        """
        if not input_grad and not param_grads:
            raise ValueError("backward with input_grad=False and param_grads=False has nothing to compute")
        with self._pass("backward"):
            return self._backward_pass(grad, start, input_grad, param_grads)

    # -- raw images in, predictions out -------------------------------------------
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Raw images (N, C, H, W) turned into this model's input, with the
        normalization it carries in ``meta['normalization']`` (the trainer
        stores it; see ``fastconv.data.Normalize``), in the model's dtype.

        Raw means one of two things, told apart by the dtype:

        * uint8: pixel values 0 to 255, the format of every data set in
          ``fastconv.data``; the result is bit for bit what the trainer fed
          the model (``Normalize.from_model(model)(images)``);
        * float32 or float64: pixel values in [0, 1] (``images / 255``);
          anything outside that range is a ValueError, which is what an
          already normalized batch or a float 0-255 one usually shows.

        A model without a normalization gets pixels / 255 from uint8 images
        and float images unchanged (converted to its dtype). Any other dtype
        is a TypeError.
        """
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy.ndarray, got {type(images).__name__}")
        normalize = Normalize.from_model(self)
        if images.dtype == np.uint8:
            return normalize(images)
        if images.dtype not in _checks.FLOAT_DTYPES:
            raise TypeError(f"raw images must be uint8 (0 to 255) or float32/float64 (0 to 1), "
                            f"got dtype {images.dtype}")
        if images.size and not (images.min() >= 0 and images.max() <= 1):  # also False for NaN
            raise ValueError(
                f"float images must hold pixel values in [0, 1], got values from {images.min()} to {images.max()}; "
                "pass uint8 images as they are, not divided, and not already normalized"
            )
        # The same normalization for pixels in [0, 1]: a pixel p is the uint8 value 255 * p.
        return Normalize(normalize.mean, normalize.std, normalize.scale / 255.0, normalize.dtype)(images)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Evaluation-mode output for x, computed ``batch_size`` samples at a time.

        A float array is the model's input, as for ``forward``: already
        normalized, not divided by 255. A uint8 array holds raw images
        (0 to 255) and goes through ``preprocess`` first, batch by batch, so
        ``model.predict(images)`` applies the model's own normalization.
        ``classify`` takes raw images of either kind and gives class indices.

        Keeps no cache (so ``backward`` still refers to the last ``forward``)
        and leaves every layer in the mode it was in.
        """
        raw = isinstance(x, np.ndarray) and x.dtype == np.uint8
        if not raw:
            _checks.float_array(x, "input")
        return self._infer(x, batch_size, self.preprocess if raw else None)

    def classify(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class indices (N,) of raw images: ``preprocess``, then the
        evaluation-mode output's argmax over its axis 1, ``batch_size``
        images at a time. ``images`` are uint8 (0 to 255) or floats in [0, 1],
        as ``preprocess`` says; the names, when the model has them, are
        ``model.meta['classes']``."""
        if not isinstance(images, np.ndarray):
            raise TypeError(f"images must be a numpy.ndarray, got {type(images).__name__}")
        return self._infer(images, batch_size, self.preprocess).argmax(axis=1)

    def _infer(self, x: np.ndarray, batch_size: int,
               prepare: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
        """Evaluation-mode output of x, each batch first through ``prepare`` if given."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if x.ndim == 0:
            raise ValueError(f"input must have a batch dimension, got shape {x.shape}")
        _checks.nonempty_batch(x, "input")
        modes = [layer.training for layer in self._layers]
        for layer in self._layers:
            layer.eval()
        try:
            # In evaluation mode now, so the batch norms the plan folds use their running statistics.
            steps = fuse.plan(self, self.__dict__.setdefault("_folds", {}))
            outputs = []
            for begin in range(0, x.shape[0], batch_size):
                out = x[begin:begin + batch_size]
                if prepare is not None:
                    out = prepare(out)
                outputs.append(self._infer_batch(out, steps))
        finally:
            for layer, mode in zip(self._layers, modes):
                layer.train(mode)
        return np.concatenate(outputs)

    # -- hooks ------------------------------------------------------------------------
    def register_forward_hook(self, fn: Callable[[str, Layer, np.ndarray], object]) -> HookHandle:
        """Call ``fn(name, layer, output)`` after every layer of every forward pass
        (``predict`` included, once per batch); the return value is ignored.
        Returns a HookHandle."""
        return _register(self._forward_hooks, fn)

    def register_backward_hook(self, fn: Callable[[str, Layer, np.ndarray | None, np.ndarray], object]) -> HookHandle:
        """Call ``fn(name, layer, grad_input, grad_output)`` after every layer of
        every ``backward``, grad_output being the gradient w.r.t. the layer's
        output and grad_input the one it passes on (None where backward needs
        no input gradient: the first layer with ``input_grad=False``); the
        return value is ignored (a layer's own ``register_backward_hook`` can
        replace grad_input). Returns a HookHandle."""
        return _register(self._backward_hooks, fn)

    # -- description --------------------------------------------------------------
    def num_parameters(self) -> int:
        """The number of trainable values (the sizes of all parameters added up)."""
        return sum(p.size for layer in self._layers for p in layer.params.values())

    def output_shapes(self, input_shape: Sequence[int], until: str | None = None) -> dict[str, tuple[int, ...]]:
        """{layer name: output shape} for an input of shape ``input_shape``
        (batch included), computed from the layers' configurations alone, in
        the order the layers run; with ``until``, only the layers a pass up to
        that one runs. A shape a layer cannot take is a ValueError naming the layer."""
        try:
            shape = tuple(int(v) for v in input_shape)
        except (TypeError, ValueError):
            raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
        return {name: output for name, _, output in self._output_shapes(shape, until)}

    def summary(self, input_shape: Sequence[int]) -> str:
        """A table of each layer's output shape and parameter count for an
        input of shape ``input_shape`` (batch included), with the total."""
        try:
            shape = tuple(int(v) for v in input_shape)
        except (TypeError, ValueError):
            raise TypeError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
        rows = [("input", str(shape), "")]
        for name, layer, output_shape in self._output_shapes(shape, None):
            count = sum(p.size for p in layer.params.values())
            rows.append((self._describe(name, layer), str(output_shape), f"{count:,}"))
        header = ("Layer (type)", "Output shape", "Param #")
        widths = [max(len(r[i]) for r in rows + [header]) + 2 for i in range(3)]
        rule = "=" * sum(widths)

        def fmt(row: tuple[str, str, str]) -> str:
            return row[0].ljust(widths[0]) + row[1].ljust(widths[1]) + row[2].rjust(widths[2])

        buffers = sum(b.size for layer in self._layers for b in layer.buffers.values())
        lines = [fmt(header), rule] + [fmt(r) for r in rows] + [
            rule,
            f"Total parameters: {self.num_parameters():,}",
            f"Buffers (not trained): {buffers:,}",
            f"dtype: {self.dtype}",
        ]
        return "\n".join(lines)

    # -- parameters and state ---------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, np.ndarray]]:
        """[(key, array), ...] of the trainable parameters, keys as in state_dict."""
        return [(f"{name}.{k}", p) for name, layer in self.named_layers() for k, p in layer.params.items()]

    def parameters(self) -> list[Parameter]:
        """The trainable parameters as :class:`Parameter` objects (each reaches its
        array and its gradient), in the order of named_parameters(): what an
        optimizer takes, ``SGD(model.parameters(), lr=0.1)``, or a part of it
        (``[p for p in model.parameters() if p.name.startswith("fc")]``)."""
        return [Parameter(f"{name}.{k}", layer, k) for name, layer in self.named_layers() for k in layer.params]

    def gradients(self) -> dict[str, np.ndarray]:
        """{key: gradient} with the keys of named_parameters(), filled by backward."""
        return {f"{name}.{k}": g for name, layer in self.named_layers() for k, g in layer.grads.items()}

    def zero_grad(self) -> None:
        """Set every parameter gradient to zero: backward adds into them, as PyTorch's does."""
        for layer in self._layers:
            layer.zero_grad()

    def _state_arrays(self) -> dict[str, np.ndarray]:
        state = {}
        for name, layer in self.named_layers():
            for k, p in layer.params.items():
                state[f"{name}.{k}"] = p
            for k, b in layer.buffers.items():
                state[f"{name}.{k}"] = b
        return state

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers, ``layername.param``, in layer order."""
        return {k: v.copy() for k, v in self._state_arrays().items()}

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike],
                        strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy values into the parameters and buffers (converted to the model's dtype).

        With strict=True the keys must match exactly. Shapes must always match.
        Nothing is changed unless every check passes. Returns (missing, unexpected) keys.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        targets = self._state_arrays()
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict.keys() if k not in targets]
        if strict and missing:
            raise ValueError(f"state_dict is missing key {missing[0]!r} ({len(missing)} missing in all)")
        if strict and unexpected:
            raise ValueError(f"state_dict has unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
        values = {}
        for key, target in targets.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{key!r}] has dtype {value.dtype}, expected a real number type")
            if value.shape != target.shape:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {value.shape}, the model expects {target.shape}"
                )
            values[key] = value
        for key, value in values.items():
            targets[key][...] = value
        return missing, unexpected

    # -- files ----------------------------------------------------------------------
    # -- what each kind of model defines ----------------------------------------------
    def _describe(self, name: str, layer: Layer) -> str:
        """The first column of ``summary``'s row for a layer."""
        return f"{name} ({type(layer).__name__})"

    def _forward_pass(self, x: np.ndarray, until: str | None) -> np.ndarray:
        raise NotImplementedError

    def _backward_pass(self, grad: np.ndarray, start: str | None, input_grad: bool,
                       param_grads: bool) -> np.ndarray | None:
        raise NotImplementedError

    def _infer_batch(self, x: np.ndarray, steps: fuse.InferencePlan | None = None) -> np.ndarray:
        """Evaluation-mode output of one batch, keeping nothing for backward;
        ``steps``: the fused groups to run (None: every layer alone)."""
        raise NotImplementedError

    def _fusable_groups(self) -> list[fuse.Group]:
        """The groups ``fastconv.nn.fuse`` may run in an inference pass now."""
        raise NotImplementedError

    def _output_shapes(self, input_shape: tuple[int, ...],
                       until: str | None) -> list[tuple[str, Layer, tuple[int, ...]]]:
        """[(name, layer, output shape)] for an input of ``input_shape``, in
        order, of the layers a pass up to ``until`` (default: all) runs."""
        raise NotImplementedError

    def _layer_passes(self, until: str | None) -> tuple[int, ...]:
        """How many forward passes each layer a pass up to ``until`` runs has run, in order."""
        raise NotImplementedError

    def astype(self, dtype: DTypeLike) -> Model:
        """A copy of the model with parameters and buffers in float32 or float64.

        Names, modes and meta are copied; hooks are not.
        """
        raise NotImplementedError

    def architecture(self) -> dict[str, Any]:
        """The JSON-able description ``save()`` writes."""
        raise NotImplementedError

    # -- files ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write the model to ``path`` (.npz) atomically: a temporary file in the
        same directory, then os.replace. Returns the path."""
        path = os.fspath(path)
        for name, layer in self.named_layers():
            if type(layer).__name__ not in LAYER_TYPES:
                raise TypeError(f"layer {name!r} is a {type(layer).__name__}, which load() cannot rebuild")
        entries: dict[str, Any] = {  # arrays (Any: numpy's stub would read a key as savez's allow_pickle)
            "architecture": np.array(json.dumps(self.architecture())),
            "meta": np.array(json.dumps(self.meta, default=_json_default)),
        }
        entries.update(self._state_arrays())
        atomic_write(path, lambda f: np.savez(f, **entries))
        return path


class Sequential(Model):
    """Layers applied in order: ``Sequential(layer, layer, ...)`` or
    ``Sequential([(name, layer), ...])`` (a list may also mix plain layers in).

    Unnamed layers are named from their type and rank: conv1, relu1, bn1,
    pool1, flatten1, fc1, dropout1, ... Names must be unique and contain no '.'.
    """

    _reached: int | None  # index of the last layer the last forward ran through

    def __init__(self,
                 *layers: Layer | tuple[str, Layer] | list[Layer] | list[tuple[str, Layer]]
                 | list[Layer | tuple[str, Layer]] | dict[str, Layer]) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, dict)):
            items: list[object] = list(layers[0].items()) if isinstance(layers[0], dict) else list(layers[0])
        else:
            items = list(layers)
        if not items:
            raise ValueError("Sequential needs at least one layer")
        named: list[tuple[str | None, Layer]] = []
        for item in items:
            if isinstance(item, Layer):
                named.append((None, item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Layer):
                name = item[0]
                if not isinstance(name, str) or not name or "." in name:
                    raise ValueError(f"layer names must be non-empty strings without '.', got {name!r}")
                named.append(item)
            else:
                raise TypeError(f"expected a Layer or a (name, Layer) pair, got {item!r}")
        used: list[str] | set[str]  # a list of the names given, then a set of all names
        used = [name for name, _ in named if name is not None]
        duplicates = sorted({name for name in used if used.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate layer name {duplicates[0]!r}")
        seen_layers = set()
        for _, layer in named:
            if id(layer) in seen_layers:
                raise ValueError(f"the same {type(layer).__name__} object appears twice; create one per position")
            seen_layers.add(id(layer))
        counters: dict[str, int] = {}
        used = set(used)
        names: list[str] = []
        chain: list[Layer] = []
        for name, layer in named:
            if name is None:
                prefix = type(layer).name_prefix
                while True:
                    counters[prefix] = counters.get(prefix, 0) + 1
                    name = f"{prefix}{counters[prefix]}"
                    if name not in used:
                        break
                used.add(name)
            names.append(name)
            chain.append(layer)
        self._setup(names, chain)

    @overload
    def __getitem__(self, index: int | str) -> Layer: ...

    @overload
    def __getitem__(self, index: slice) -> Sequential: ...

    def __getitem__(self, index: int | str | slice) -> Layer | Sequential:
        """``model[i]`` and ``model["conv1"]``: a layer (IndexError, KeyError if
        there is none); ``model[a:b]``: a Sequential of those layers, see below.

        A slice shares its layers with this model, as a prefix in PyTorch
        does: training one trains the other. Each keeps its own record of its
        last forward pass, but the layers hold one cache, so a forward pass of
        one replaces what the other's next backward would use (the other's
        ``loss.backward()`` then refuses). The slice gets a copy of ``meta``
        without what no longer applies: ``normalization`` and
        ``preprocessing`` unless it starts at the first layer, ``classes``
        unless it ends at the last. Its step must be 1 and it must select at
        least one layer (ValueError).
        """
        if isinstance(index, str):
            if index not in self._index:
                raise KeyError(f"no layer named {index!r}; the layers are {', '.join(self._names)}")
            return self._layers[self._index[index]]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self._layers))
            if step != 1:
                raise ValueError(f"a slice of a Sequential takes consecutive layers; got step {index.step}")
            if start >= stop:
                raise ValueError(f"model[{index.start}:{index.stop}] selects no layers of the {len(self)}")
            part = Sequential(list(zip(self._names[start:stop], self._layers[start:stop])))
            part._training = self._training
            dropped = ({"normalization", "preprocessing"} if start > 0 else set()) | (
                {"classes"} if stop < len(self._layers) else set())
            part.meta = copy.deepcopy({key: value for key, value in self.meta.items() if key not in dropped})
            return part
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(self._layers) <= index < len(self._layers):
                raise IndexError(f"layer index {index} is out of range for a model of {len(self._layers)} layers")
            return self._layers[index]
        raise TypeError(f"a Sequential is indexed by a layer's position, name or a slice, got {index!r}")

    def __repr__(self) -> str:
        lines = [f"  ({name}): {layer!r}" for name, layer in self.named_layers()]
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def _layer_passes(self, until: str | None) -> tuple[int, ...]:
        """How many forward passes each layer up to ``until`` (default all) has run."""
        stop = len(self._layers) if until is None else self._position(until) + 1
        return tuple(layer._passes for layer in self._layers[:stop])

    def _output_shapes(self, input_shape: tuple[int, ...],
                       until: str | None) -> list[tuple[str, Layer, tuple[int, ...]]]:
        stop = len(self._layers) if until is None else self._position(until) + 1
        rows = []
        shape = input_shape
        for name, layer in self.named_layers()[:stop]:
            with _blame(name, layer):
                shape = layer.output_shape(shape)
            rows.append((name, layer, shape))
        return rows

    def _infer_batch(self, x: np.ndarray, steps: fuse.InferencePlan | None = None) -> np.ndarray:
        i = 0
        while i < len(self._layers):
            if steps is not None and i in steps.groups:
                x = steps.run(i, x)
                i = steps.groups[i].members[-1] + 1
                continue
            name, layer = self._names[i], self._layers[i]
            x = self._run_layer(name, layer, layer.infer, x)
            i += 1
        return x

    def _fusable_groups(self) -> list[fuse.Group]:
        last = len(self._layers) - 1
        return fuse.chain_groups(self._names, self._layers, lambda i: i + 1 if i < last else None)

    def _forward_pass(self, x: np.ndarray, until: str | None) -> np.ndarray:
        stop = len(self._layers) - 1 if until is None else self._position(until)
        self._reached = None
        # The passes of fusion.plan(self, until), without a record for each
        # layer that runs alone.
        watched = bool(self._forward_hooks)
        fused: dict[int, fusion.Pass] = {}
        i = 0
        while i <= stop:
            step = None if watched else fusion._fused_pass(self._names, self._layers, i, stop)
            if step is None:
                x = self._run_layer(self._names[i], self._layers[i], self._layers[i].forward, x)
                i += 1
            else:
                x = step.forward(x)
                fused[step.stop - 1] = step
                i = step.stop
        self._fused = fused
        self._reached = stop
        self._forward_count += 1
        _keep_output(self, x, until)
        return x

    def _backward_pass(self, grad: np.ndarray, start: str | None, input_grad: bool,
                       param_grads: bool) -> np.ndarray | None:
        if self._reached is None:
            raise RuntimeError("backward called before forward")
        first = len(self._layers) - 1 if start is None else self._position(start)
        if first > self._reached:
            raise RuntimeError(
                f"backward from layer {self._names[first]!r} needs a forward pass through it; "
                f"the last forward stopped at {self._names[self._reached]!r}"
            )
        if input_grad:
            last = 0
        else:
            with_params = [i for i, layer in enumerate(self._layers[:first + 1]) if layer.params]
            if not with_params:
                return None
            last = with_params[0]
        hooks = list(self._backward_hooks.values())
        i = first
        while i >= last:
            step = self._fused.get(i)
            if step is not None and step.start >= last and not hooks and step.backward_fusable():
                grad = step.backward(grad, param_grads=param_grads)
                i = step.start - 1
                continue
            name, layer = self._names[i], self._layers[i]
            with _blame(name, layer):
                grad_input = layer.backward(grad, need_dx=input_grad or i > last, param_grads=param_grads)
            for hook in hooks:
                hook(name, layer, grad_input, grad)
            # None only from the last layer (input_grad=False), where the loop ends.
            grad = cast(np.ndarray, grad_input)
            i -= 1
        return grad if input_grad else None

    def astype(self, dtype: DTypeLike) -> Sequential:
        """A copy of the model with parameters and buffers in float32 or float64.

        Names, modes and meta are copied; hooks are not.
        """
        dtype = _float_dtype(dtype)
        clone = Sequential([(name, layer.astype(dtype)) for name, layer in self.named_layers()])
        clone._training = self._training
        clone.inference_fusion = self.inference_fusion
        clone.meta = copy.deepcopy(self.meta)
        return clone

    def architecture(self) -> dict[str, Any]:
        """The JSON-able description save() writes: mode and each layer's name, class and config."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "training": self._training,
            "layers": [
                {"name": name, "class": type(layer).__name__, "config": layer.config()}
                for name, layer in self.named_layers()
            ],
        }


def _layer_from(entry: Mapping[str, Any]) -> Layer:
    """The layer an architecture entry (its class and config) describes."""
    cls = LAYER_TYPES.get(entry["class"])
    if cls is None:
        raise ValueError(f"unknown layer class {entry['class']!r}")
    return cls(**entry["config"])


def _build_sequential(architecture: Mapping[str, Any]) -> Sequential:
    return Sequential([(entry["name"], _layer_from(entry)) for entry in architecture["layers"]])


# How load() rebuilds each kind of model from its architecture entry: format tag
# -> (format version, builder). Other model kinds add theirs where they are defined.
BUILDERS: dict[str, tuple[int, Callable[[Mapping[str, Any]], Model]]] = {
    FORMAT: (FORMAT_VERSION, _build_sequential),
}


def _build(architecture: object) -> Model:
    kind = architecture.get("format") if isinstance(architecture, dict) else None
    if kind not in BUILDERS:
        raise ValueError("its architecture entry is not a fastconv model")
    assert isinstance(architecture, dict)
    version, builder = BUILDERS[kind]
    if architecture.get("version") != version:
        raise ValueError(f"format version {architecture.get('version')!r} is not supported "
                         f"(this fastconv reads version {version})")
    model = builder(architecture)
    model.train(bool(architecture["training"]))
    return model


def save(model: fastconv.Model, path: str | os.PathLike) -> str:
    """Write ``model`` to ``path`` (.npz) for ``fastconv.load``: ``model.save(path)``
    as a function, as ``torch.save(model, path)`` is one. Returns the path.

    The architecture, the weights, the buffers and ``model.meta`` (its
    normalization and class names included) are saved, atomically.
    """
    if not isinstance(model, Model):
        raise TypeError(f"save writes a fastconv model (Sequential or Graph), got {type(model).__name__}; "
                        "weights alone go through fastconv.save_weights")
    return model.save(path)


def load(path: str | os.PathLike) -> Model:
    """Rebuild a model written by ``fastconv.save(model, path)`` or ``model.save(path)``.

    A missing file raises FileNotFoundError; a truncated or corrupt file, or
    one that is not a fastconv model, raises ValueError naming the file.
    """
    path = os.fspath(path)
    with open_npz(path, "fastconv model") as archive:
        names = set(archive.files)
        if "architecture" not in names:
            raise ValueError("it has no 'architecture' entry")
        architecture = json.loads(archive["architecture"].item())
        meta = json.loads(archive["meta"].item()) if "meta" in names else {}
        state = {k: archive[k] for k in archive.files if k not in _RESERVED_ENTRIES}
        model = _build(architecture)
        model.meta = meta
        model.load_state_dict(state)
    return model
