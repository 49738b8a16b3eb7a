"""Layers: forward/backward pairs over NCHW arrays, with PyTorch's names and defaults.

Every layer follows one contract:

* ``forward(x) -> y`` keeps in a cache exactly what ``backward`` needs: one
  small named record per layer kind (``_ConvCache``, ``_BatchNormTrainCache``,
  ...), stored by ``_remember``; ``backward(dy) -> dx`` returns the gradient
  w.r.t. the input of the last forward and *adds* the parameter gradients into
  ``grads`` (same keys as ``params``), as PyTorch accumulates into ``.grad``:
  call ``zero_grad()`` between steps. ``backward`` before any ``forward`` is a
  RuntimeError; a gradient of another shape or dtype than the last output is
  a ValueError or TypeError.
* ``params`` and ``buffers`` are float32 by default (``dtype=`` chooses
  float64); an input of the other float dtype is a TypeError, never a silent cast.
* ``training`` selects batch statistics (BatchNorm2d) and dropping (Dropout).
* The convolution, pooling, batch-norm and ReLU kernels come from
  ``fastconv.backend.current()`` at forward time; backward uses the backend
  that ran the forward.

Hooks observe a layer's passes or change its backward rule without touching
its methods; each ``register_*`` returns a :class:`HookHandle` whose
``remove()`` takes the hook away:

* ``register_forward_hook(fn)``: ``fn(layer, input, output)`` after every
  ``forward`` and ``infer``; the return value is ignored.
* ``register_backward_pre_hook(fn)``: ``fn(layer, grad_output)`` before the
  backward pass, once the gradient has passed the checks above; a returned
  array replaces grad_output (None keeps it), parameter gradients included.
* ``register_backward_hook(fn)``: ``fn(layer, grad_input, grad_output)`` after
  the backward pass (grad_input None when ``need_dx`` is False); a returned
  array replaces grad_input (None keeps it).

Hooks run in the order they were registered. A replacement must have the
shape and dtype of what it replaces. ``Sequential`` runs some adjacent layers
as one pass (``fastconv.nn.fusion``), never layers with hooks.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from typing import TYPE_CHECKING, NamedTuple, overload

import numpy as np

from fastconv import _checks, backend
from fastconv.nn import init

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import ModuleType
    from typing import Any, Literal

    from numpy.typing import DTypeLike
    from typing_extensions import Self

__all__ = [
    "HookHandle", "Layer", "Conv2d", "ReLU", "ReLU6", "LeakyReLU", "BatchNorm2d", "MaxPool2d", "AvgPool2d",
    "GlobalAvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Linear", "Dropout", "LogSoftmax", "LAYER_TYPES",
]


_hook_keys = itertools.count()


class HookHandle:
    """Returned by every ``register_*_hook``; ``remove()`` unregisters the hook.

    Also a context manager that removes the hook on exit.
    """

    def __init__(self, hooks: dict[int, Any], key: int) -> None:
        self._hooks = hooks
        self._key = key

    def remove(self) -> None:
        """Unregister the hook; removing it again does nothing."""
        self._hooks.pop(self._key, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def _register(hooks: dict[int, Any], fn: Callable[..., object]) -> HookHandle:
    if not callable(fn):
        raise TypeError(f"hook must be callable, got {fn!r}")
    key = next(_hook_keys)
    hooks[key] = fn
    return HookHandle(hooks, key)


@contextlib.contextmanager
def _blame(name: str, layer: Layer) -> Iterator[None]:
    """Prefix a TypeError/ValueError raised inside a layer with the layer's name."""
    try:
        yield
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise
        raise type(error)(f"layer {name!r} ({type(layer).__name__}): {error}") from error


class _PassIO(NamedTuple):
    """Shapes and dtype of a layer's last forward pass, which backward checks against."""
    input_shape: tuple
    dtype: np.dtype
    output_shape: tuple


def _float_dtype(dtype: DTypeLike) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _checks.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _window(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    pair = _checks.pair(value, name)
    if min(pair) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return pair


class Layer:
    """Base class: parameters, gradients, buffers, mode and the forward/backward plumbing.

    Subclasses implement ``_forward(x) -> (y, cache)``, ``_backward(dy, cache,
    need_dx, param_grads) -> dx`` and ``output_shape``; the base class
    validates inputs and gradients, keeps the cache and runs the hooks.
    """

    name_prefix = "layer"
    input_ndim: int | None = None  # None: any number of dimensions

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._cache: Any = None  # the subclass's record of the last forward
        self._last_io: _PassIO | None = None  # _PassIO of the last forward
        self._passes = 0  # forward passes remembered, so a model can tell its own pass from a later one
        self._forward_hooks: dict[int, Callable[[Layer, np.ndarray, np.ndarray], object]] = {}
        self._backward_pre_hooks: dict[int, Callable[[Layer, np.ndarray], np.ndarray | None]] = {}
        self._backward_hooks: dict[int, Callable[[Layer, np.ndarray | None, np.ndarray], np.ndarray | None]] = {}

    # -- parameters ---------------------------------------------------------
    def _add_param(self, name: str, array: np.ndarray) -> None:
        self.params[name] = array
        self.grads[name] = np.zeros_like(array)

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the parameters, None for a layer without any."""
        for array in self.params.values():
            return array.dtype
        return None

    def zero_grad(self) -> None:
        """Set every gradient in ``grads`` to zero, in place (backward adds into them)."""
        for g in self.grads.values():
            g.fill(0)

    def _add_grads(self, dweight: np.ndarray, dbias: np.ndarray | None) -> None:
        """Add one backward pass's weight and bias gradients (dbias None: none);
        a frozen parameter's gradient stays as it is."""
        frozen = self.frozen
        if "weight" not in frozen:
            self.grads["weight"] += dweight
        if dbias is not None and "bias" not in frozen:
            self.grads["bias"] += dbias

    # -- freezing -------------------------------------------------------------
    @property
    def frozen(self) -> frozenset[str]:
        """Names of the parameters that training leaves as they are (``requires_grad_``)."""
        return frozenset(self.__dict__.get("_frozen", ()))

    def requires_grad_(self, requires_grad: bool = True, params: str | Iterable[str] | None = None) -> Self:
        """Freeze (``requires_grad=False``) or unfreeze parameters, as PyTorch's
        ``requires_grad_``; ``params`` names some of them (a name or a list;
        None: all). Returns the layer.

        Backward adds no gradient into a frozen parameter (it stays zero
        after ``zero_grad``), skips the parameter gradients of a layer whose
        parameters are all frozen, and optimizers leave frozen parameters
        alone: no update, no weight decay, no momentum. A batch norm with a
        fixed scale and a trained shift is ``bn.requires_grad_(False, "weight")``.
        Freezing belongs to the training set-up, not the model: ``save`` does
        not record it.
        """
        if not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"requires_grad must be a bool, got {requires_grad!r}")
        names = list(self.params) if params is None else [params] if isinstance(params, str) else list(params)
        for name in names:
            if name not in self.params:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; it has {sorted(self.params)}")
        frozen = set(self.frozen)
        frozen = frozen - set(names) if requires_grad else frozen | set(names)
        self._frozen = frozen
        return self

    def _trains_params(self) -> bool:
        """Whether any parameter of this layer is trained (none frozen, or some left)."""
        return bool(set(self.params) - self.frozen)

    def train(self, mode: bool = True) -> Self:
        """Switch to training mode (``mode=False``: evaluation mode); returns the layer."""
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        """Switch to evaluation mode: ``train(False)``; returns the layer."""
        return self.train(False)

    def __getstate__(self) -> dict[str, Any]:
        """What a copy or a pickle holds: everything but the last forward's
        record (it refers to the kernel module, and belongs to that pass), so
        ``copy.deepcopy`` works at any time and the copy starts with no pass."""
        state = dict(self.__dict__)
        state.update(_cache=None, _last_io=None)
        return state

    def astype(self, dtype: DTypeLike) -> Self:
        """A copy of the layer with parameters and buffers converted to float32 or float64.

        The copy has zero gradients, no cache and no hooks; everything else
        (mode, configuration, a Dropout's random generator state) is copied.
        """
        dtype = _float_dtype(dtype)
        transient = ("params", "grads", "buffers", "_cache", "_last_io",
                     "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
        clone = object.__new__(type(self))
        clone.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k not in transient}))
        clone.params = {k: v.astype(dtype) for k, v in self.params.items()}
        clone.grads = {k: np.zeros_like(v) for k, v in clone.params.items()}
        clone.buffers = {k: v.astype(dtype) for k, v in self.buffers.items()}
        clone._cache = None
        clone._last_io = None
        clone._forward_hooks, clone._backward_pre_hooks, clone._backward_hooks = {}, {}, {}
        return clone

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict: ``type(layer)(**layer.config())`` rebuilds it."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    # -- shapes -------------------------------------------------------------
    def _check_ndim(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        input_shape = tuple(int(v) for v in input_shape)
        if self.input_ndim is not None and len(input_shape) != self.input_ndim:
            raise ValueError(
                f"{type(self).__name__} expects a {self.input_ndim}-D input, got shape {input_shape}"
            )
        return input_shape

    def _check_channels(self, input_shape: tuple[int, ...], expected: int, what: str = "channels") -> None:
        if len(input_shape) < 2 or input_shape[1] != expected:
            got = input_shape[1] if len(input_shape) >= 2 else None
            raise ValueError(
                f"{type(self).__name__} expects input with {expected} {what}, got {got} "
                f"(input shape {input_shape})"
            )

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of the output for an input of shape ``input_shape`` (batch included)."""
        return self._check_ndim(input_shape)

    # -- forward / backward ---------------------------------------------------
    def _check_input(self, x: np.ndarray) -> None:
        _checks.float_array(x, "input")
        dtype = self.dtype
        if dtype is not None and x.dtype != dtype:
            raise TypeError(
                f"input dtype {x.dtype} does not match the dtype of {type(self).__name__}'s "
                f"parameters {dtype}; convert one of them (model.astype)"
            )
        self.output_shape(x.shape)
        _checks.nonempty_batch(x, "input")

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Forward pass without keeping the cache (inference); returns y."""
        self._check_input(x)
        y = self._infer(x)
        if self._forward_hooks:
            self._run_forward_hooks(x, y)
        return y

    def _infer(self, x: np.ndarray) -> np.ndarray:
        """The output alone, for ``infer``: ``_forward``'s, unless a layer has a
        cheaper pass when nothing is kept for backward."""
        return self._forward(x)[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Output y for input x, keeping what ``backward`` needs; ``layer(x)`` is the same call."""
        self._check_input(x)
        y, cache = self._forward(x)
        self._remember(cache, x, y.shape)
        if self._forward_hooks:
            self._run_forward_hooks(x, y)
        return y

    __call__ = forward

    def _remember(self, cache: object, x: np.ndarray, output_shape: tuple[int, ...]) -> None:
        """Keep ``cache``, this layer's record of a forward pass from x to an
        output of ``output_shape``, for the next backward.

        ``forward`` calls it, and so do the passes that run this layer fused
        with its neighbours (``fastconv.nn.fusion``): each layer stores its
        own record, whoever ran the kernel.
        """
        self._cache = cache
        self._last_io = _PassIO(x.shape, x.dtype, output_shape)
        self._passes += 1

    @overload
    def backward(self, dy: np.ndarray, need_dx: Literal[True] = True, param_grads: bool = True) -> np.ndarray: ...

    @overload
    def backward(self, dy: np.ndarray, need_dx: bool, param_grads: bool = True) -> np.ndarray | None: ...

    def backward(self, dy: np.ndarray, need_dx: bool = True, param_grads: bool = True) -> np.ndarray | None:
        """Gradient w.r.t. the last forward's input (None when need_dx is False).

        Parameter gradients are added into ``grads``; with ``param_grads=False``
        they are neither computed nor added (tools that only want the input
        gradient: attacks, saliency, image optimization), nor are they for
        a layer whose parameters are all frozen (``requires_grad_``). Backward pre-hooks
        may replace dy and backward hooks the result (see the module's
        docstring); dy is checked before either runs.
        """
        self._check_gradient(dy)
        if self._backward_pre_hooks:
            dy = self._run_backward_pre_hooks(dy)
        param_grads = param_grads and self._trains_params()
        dx = self._backward(dy, self._cache, need_dx, param_grads) if need_dx or param_grads else None
        if self._backward_hooks:
            dx = self._run_backward_hooks(dx, dy, need_dx)
        return dx

    def _check_gradient(self, dy: np.ndarray) -> None:
        if self._last_io is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        _checks.float_array(dy, "gradient")
        if dy.dtype != self._last_io.dtype:
            raise TypeError(
                f"gradient dtype {dy.dtype} does not match the forward pass's dtype {self._last_io.dtype}"
            )
        if dy.shape != self._last_io.output_shape:
            raise ValueError(
                f"gradient has shape {dy.shape}, expected the output shape "
                f"{self._last_io.output_shape} of the last forward"
            )

    # -- hooks ----------------------------------------------------------------
    def register_forward_hook(self, fn: Callable[[Layer, np.ndarray, np.ndarray], object]) -> HookHandle:
        """Call ``fn(layer, input, output)`` after every ``forward`` and ``infer``
        of this layer; the return value is ignored. Returns a HookHandle."""
        return _register(self._forward_hooks, fn)

    def register_backward_pre_hook(self, fn: Callable[[Layer, np.ndarray], np.ndarray | None]) -> HookHandle:
        """Call ``fn(layer, grad_output)`` before every backward pass of this
        layer; an array it returns replaces grad_output (None keeps it), for
        the input gradient and the parameter gradients alike. Returns a HookHandle."""
        return _register(self._backward_pre_hooks, fn)

    def register_backward_hook(self,
                               fn: Callable[[Layer, np.ndarray | None, np.ndarray], np.ndarray | None]) -> HookHandle:
        """Call ``fn(layer, grad_input, grad_output)`` after every backward pass
        of this layer, grad_output being the gradient the pass used (after
        any pre-hook); an array it returns replaces grad_input (None keeps it;
        with ``need_dx=False`` grad_input is None and stays None). Returns a
        HookHandle."""
        return _register(self._backward_hooks, fn)

    def _has_forward_hooks(self) -> bool:
        return bool(self._forward_hooks)

    def _has_backward_hooks(self) -> bool:
        """Whether a hook watches or changes this layer's backward pass."""
        return bool(self._backward_pre_hooks or self._backward_hooks)

    def _run_forward_hooks(self, x: np.ndarray, y: np.ndarray) -> None:
        for hook in list(self._forward_hooks.values()):
            hook(self, x, y)

    def _run_backward_pre_hooks(self, dy: np.ndarray) -> np.ndarray:
        assert self._last_io is not None  # backward has checked there was a forward
        for hook in list(self._backward_pre_hooks.values()):
            replacement = hook(self, dy)
            if replacement is not None:
                self._check_replacement(replacement, "a backward pre-hook", "grad_output",
                                        self._last_io.output_shape)
                dy = replacement
        return dy

    def _run_backward_hooks(self, dx: np.ndarray | None, dy: np.ndarray, need_dx: bool) -> np.ndarray | None:
        assert self._last_io is not None  # backward has checked there was a forward
        for hook in list(self._backward_hooks.values()):
            replacement = hook(self, dx, dy)
            if replacement is not None and need_dx:
                self._check_replacement(replacement, "a backward hook", "grad_input",
                                        self._last_io.input_shape)
                dx = replacement
        return dx

    def _check_replacement(self, array: object, source: str, what: str, shape: tuple[int, ...]) -> None:
        assert self._last_io is not None  # only backward's hooks call it
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{source} of {type(self).__name__} returned {type(array).__name__} "
                            f"for {what}; expected a numpy.ndarray or None")
        if array.dtype != self._last_io.dtype:
            raise TypeError(f"{source} of {type(self).__name__} returned {what} of dtype {array.dtype}; "
                            f"the forward pass's dtype is {self._last_io.dtype}")
        if array.shape != shape:
            raise ValueError(f"{source} of {type(self).__name__} returned {what} of shape {array.shape}; "
                             f"expected {shape}")

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _backward(self, dy: np.ndarray, cache: Any, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        raise NotImplementedError


class _ConvCache(NamedTuple):
    kernels: ModuleType  # the backend module that ran the forward
    kernel_cache: object  # what its conv2d_backward needs


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in PyTorch).

    x (N, C, H, W) -> y (N, F, OH, OW), OH = 1 + (H + 2*PH - KH) // SH.
    weight (F, C/groups, KH, KW), bias (F,). ``groups`` splits the channels
    and the filters into that many consecutive groups, each group of filters
    seeing its group of channels only, as in PyTorch: groups must divide C and
    F, and groups = C is the depthwise convolution (MobileNet's), which runs
    on a direct kernel of its own. Default initialization is PyTorch's:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in =
    C/groups*KH*KW. ``seed``: int, numpy Generator or None.
    """

    name_prefix = "conv"
    input_ndim = 4

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0, bias: bool = True,
                 dtype: DTypeLike = np.float32, seed: np.random.Generator | int | None = None,
                 groups: int = 1) -> None:
        super().__init__()
        self.in_channels = _checks.positive_int(in_channels, "in_channels")
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        self.groups = _checks.conv_groups(groups, self.in_channels, self.out_channels)
        self.kernel_size = _window(kernel_size, "kernel_size", 1)
        self.stride = _window(stride, "stride", 1)
        self.padding = _window(padding, "padding", 0)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        dtype = _float_dtype(dtype)
        rng = init.as_generator(seed)
        weight = np.empty((self.out_channels, self.in_channels // self.groups) + self.kernel_size, dtype=dtype)
        init.kaiming_uniform_(weight, rng, a=math.sqrt(5))
        self._add_param("weight", weight)
        if bias:
            bound = 1.0 / math.sqrt(init.fans(weight)[0])
            self._add_param("bias", init.uniform_(np.empty(self.out_channels, dtype=dtype), rng, -bound, bound))

    def config(self) -> dict[str, Any]:
        assert self.dtype is not None  # the weight's dtype
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride),
            "padding": list(self.padding), "bias": "bias" in self.params, "dtype": self.dtype.name,
            "groups": self.groups,
        }

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        self._check_channels(shape, self.in_channels)
        *_, oh, ow = _checks.window_geometry(shape, self.kernel_size, self.stride, self.padding)
        return (shape[0], self.out_channels, oh, ow)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _ConvCache]:
        kernels = backend.current()
        y, kernel_cache = kernels.conv2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding, self.groups
        )
        return y, _ConvCache(kernels, kernel_cache)

    def _backward(self, dy: np.ndarray, cache: _ConvCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        dx, dweight, dbias = cache.kernels.conv2d_backward(dy, cache.kernel_cache, need_dx=need_dx,
                                                           need_params=param_grads)
        if param_grads:
            self._add_grads(dweight, dbias)
        return dx


class _ReLUCache(NamedTuple):
    kernels: ModuleType
    # Positive exactly where the input was: the output, or the input itself
    # when the pass ran fused into the next layer's kernel.
    gate: np.ndarray


class ReLU(Layer):
    """max(x, 0), any shape."""

    name_prefix = "relu"

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _ReLUCache]:
        kernels = backend.current()
        y = kernels.relu_forward(x)
        return y, _ReLUCache(kernels, y)

    def _forward_fused(self, kernels: ModuleType, x: np.ndarray) -> None:
        """Record a forward pass over x whose output the next layer's kernel
        computes itself (``fastconv.nn.fusion``); no output is made.

        ``backward`` then masks with x, positive where relu(x) is, and gives
        what it would after ``forward(x)``.
        """
        self._check_input(x)
        self._remember(_ReLUCache(kernels, x), x, x.shape)

    def _backward(self, dy: np.ndarray, cache: _ReLUCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return cache.kernels.relu_backward(dy, cache.gate) if need_dx else None


class ReLU6(Layer):
    """min(max(x, 0), 6), any shape: MobileNetV2's activation. The gradient
    passes where 0 < x < 6, as in PyTorch."""

    name_prefix = "relu6_"  # relu6_1, relu6_2: the count apart from the 6

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _ReLUCache]:
        kernels = backend.current()
        y = kernels.relu6_forward(x)
        return y, _ReLUCache(kernels, y)

    def _backward(self, dy: np.ndarray, cache: _ReLUCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return cache.kernels.relu6_backward(dy, cache.gate) if need_dx else None


class _LeakyReLUCache(NamedTuple):
    positive: np.ndarray  # bool, where the input was positive


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x; any shape."""

    name_prefix = "lrelu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.floating)):
            raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
        if not math.isfinite(negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _LeakyReLUCache]:
        positive = x > 0
        y = np.where(positive, x, x * x.dtype.type(self.negative_slope))
        return y, _LeakyReLUCache(positive)

    def _backward(self, dy: np.ndarray, cache: _LeakyReLUCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        return np.where(cache.positive, dy, dy * dy.dtype.type(self.negative_slope))


class _BatchNormTrainCache(NamedTuple):
    kernels: ModuleType
    kernel_cache: object
    relu_fused: bool  # the kernel normalized max(x, 0), the ReLU before fused in


class _BatchNormEvalCache(NamedTuple):
    mean: np.ndarray  # the running statistics the pass used, as constants
    inv_std: np.ndarray
    x: np.ndarray


class BatchNorm2d(Layer):
    """Per-channel batch normalization of x (N, C, H, W), PyTorch semantics.

    Training: normalize with the batch mean and biased variance, then update
    running_mean = (1 - momentum) * running_mean + momentum * mean and
    running_var likewise with the unbiased variance (times m / (m - 1),
    m = N*H*W). Evaluation: normalize with the running statistics; backward
    then treats them as constants.
    """

    name_prefix = "bn"
    input_ndim = 4

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype: DTypeLike = np.float32) -> None:
        super().__init__()
        self.num_features = _checks.positive_int(num_features, "num_features")
        self.eps = _checks.real_number(eps, "eps", 0.0, math.inf, low_open=True)
        self.momentum = _checks.real_number(momentum, "momentum", 0.0, 1.0)
        dtype = _float_dtype(dtype)
        self._add_param("weight", np.ones(self.num_features, dtype=dtype))
        self._add_param("bias", np.zeros(self.num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)

    def config(self) -> dict[str, Any]:
        assert self.dtype is not None  # the weight's dtype
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "dtype": self.dtype.name}

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        self._check_channels(shape, self.num_features)
        return shape

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _BatchNormTrainCache | _BatchNormEvalCache]:
        kernels = backend.current()
        weight, bias = self.params["weight"], self.params["bias"]
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        if not self.training:
            y = kernels.batchnorm2d_forward_eval(x, weight, bias, running_mean, running_var, self.eps)
            inv_std = 1.0 / np.sqrt(running_var + running_var.dtype.type(self.eps))
            return y, _BatchNormEvalCache(running_mean.copy(), inv_std, x)
        return self._forward_train(kernels, x, relu_input=False)

    def _forward_train(self, kernels: ModuleType, x: np.ndarray,
                       relu_input: bool) -> tuple[np.ndarray, _BatchNormTrainCache]:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise ValueError(
                f"BatchNorm2d in training mode needs more than 1 value per channel, got input shape {x.shape}"
            )
        y, mean, var, kernel_cache = kernels.batchnorm2d_forward_train(
            x, self.params["weight"], self.params["bias"], self.eps, relu_input=relu_input)
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        m = self.momentum
        running_mean[...] = (1.0 - m) * running_mean + m * mean
        running_var[...] = (1.0 - m) * running_var + m * var * (count / (count - 1))
        return y, _BatchNormTrainCache(kernels, kernel_cache, relu_input)

    def _forward_relu_input(self, kernels: ModuleType, x: np.ndarray) -> np.ndarray:
        """This layer's training forward on relu(x), the ReLU's pass fused in
        (``fastconv.nn.fusion``); returns y.

        The record it keeps serves both backward passes: ``backward`` returns
        the gradient with respect to relu(x), as after ``forward(relu(x))``,
        and ``_backward_through_relu`` the one with respect to x.
        """
        self._check_input(x)
        if not self.training:
            raise RuntimeError("BatchNorm2d runs a ReLU's pass fused in only in training mode")
        y, cache = self._forward_train(kernels, x, relu_input=True)
        self._remember(cache, x, y.shape)
        return y

    def _ran_relu_fused(self) -> bool:
        """Whether the last forward was ``_forward_relu_input``."""
        cache = self._cache
        return isinstance(cache, _BatchNormTrainCache) and cache.relu_fused

    def _backward_through_relu(self, dy: np.ndarray, param_grads: bool = True) -> np.ndarray:
        """The gradient with respect to x of the last ``_forward_relu_input(x)``:
        this layer's backward and the fused ReLU's as one pass."""
        self._check_gradient(dy)
        if not self._ran_relu_fused():
            raise RuntimeError("BatchNorm2d's last forward did not run a ReLU's pass fused in")
        cache = self._cache
        dx, dweight, dbias = cache.kernels.batchnorm2d_backward(dy, cache.kernel_cache, through_relu=True)
        if param_grads:
            self._add_grads(dweight, dbias)
        return dx

    def _backward(self, dy: np.ndarray, cache: _BatchNormTrainCache | _BatchNormEvalCache, need_dx: bool,
                  param_grads: bool) -> np.ndarray | None:
        if isinstance(cache, _BatchNormTrainCache):
            # The kernel's dx needs dweight and dbias, so they are always made.
            dx, dweight, dbias = cache.kernels.batchnorm2d_backward(dy, cache.kernel_cache)
        else:
            inv_std = cache.inv_std
            dx = dy * (self.params["weight"] * inv_std).reshape(1, -1, 1, 1) if need_dx else None
            if param_grads:
                xhat = (cache.x - cache.mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)
                dweight = np.einsum("nchw,nchw->c", dy, xhat)
                dbias = dy.sum(axis=(0, 2, 3))
        if param_grads:
            self._add_grads(dweight, dbias)
        return dx if need_dx else None


class _Pool2d(Layer):
    input_ndim = 4
    name_prefix = "pool"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0) -> None:
        super().__init__()
        self.kernel_size = _window(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _window(stride, "stride", 1)
        self.padding = _window(padding, "padding", 0)
        if 2 * self.padding[0] > self.kernel_size[0] or 2 * self.padding[1] > self.kernel_size[1]:
            raise ValueError(
                f"padding {self.padding} must be at most half the pooling window {self.kernel_size}"
            )

    def config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        *_, oh, ow = _checks.window_geometry(
            shape, self.kernel_size, self.stride, self.padding, what="pooling window"
        )
        return shape[:2] + (oh, ow)


class _MaxPoolCache(NamedTuple):
    kernels: ModuleType
    argmax: np.ndarray
    x_shape: tuple


class MaxPool2d(_Pool2d):
    """Max over KH x KW windows (padding counts as -inf); ties go to the first maximum."""

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _MaxPoolCache]:
        kernels = backend.current()
        y, argmax = kernels.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y, _MaxPoolCache(kernels, argmax, x.shape)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        # The same values without the argmax, which only backward reads.
        return backend.current().epilogue_maxpool(x, self.kernel_size, self.stride, self.padding)

    def _backward(self, dy: np.ndarray, cache: _MaxPoolCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return cache.kernels.maxpool2d_backward(dy, cache.argmax, cache.x_shape) if need_dx else None


class _AvgPoolCache(NamedTuple):
    kernels: ModuleType
    x_shape: tuple


class AvgPool2d(_Pool2d):
    """Mean over KH x KW windows, zero padding counted in the divisor (PyTorch's default)."""

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _AvgPoolCache]:
        kernels = backend.current()
        y = kernels.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y, _AvgPoolCache(kernels, x.shape)

    def _backward(self, dy: np.ndarray, cache: _AvgPoolCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        return cache.kernels.avgpool2d_backward(dy, cache.x_shape, self.kernel_size, self.stride, self.padding)


class _GlobalAvgPoolCache(NamedTuple):
    x_shape: tuple


class GlobalAvgPool2d(Layer):
    """Mean over each whole plane: x (N, C, H, W) -> y (N, C)."""

    name_prefix = "gap"
    input_ndim = 4

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return self._check_ndim(input_shape)[:2]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _GlobalAvgPoolCache]:
        return x.mean(axis=(2, 3), dtype=x.dtype), _GlobalAvgPoolCache(x.shape)

    def _backward(self, dy: np.ndarray, cache: _GlobalAvgPoolCache, need_dx: bool,
                  param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        x_shape = cache.x_shape
        dx = np.empty(x_shape, dtype=dy.dtype)
        dx[...] = (dy / dy.dtype.type(x_shape[2] * x_shape[3]))[:, :, None, None]
        return dx


class _FlattenCache(NamedTuple):
    x_shape: tuple


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    name_prefix = "flatten"

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        if len(shape) < 2:
            raise ValueError(f"Flatten expects an input of at least 2 dimensions, got shape {shape}")
        return (shape[0], math.prod(shape[1:]))

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _FlattenCache]:
        return x.reshape(x.shape[0], -1), _FlattenCache(x.shape)

    def _backward(self, dy: np.ndarray, cache: _FlattenCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return dy.reshape(cache.x_shape) if need_dx else None


class _LinearCache(NamedTuple):
    kernels: ModuleType
    kernel_cache: object


class Linear(Layer):
    """y = x @ weight.T + bias: x (N, in_features) -> y (N, out_features).

    weight (out_features, in_features), bias (out_features,), initialized as
    PyTorch does: U(-1/sqrt(in_features), 1/sqrt(in_features)).
    """

    name_prefix = "fc"
    input_ndim = 2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DTypeLike = np.float32,
                 seed: np.random.Generator | int | None = None) -> None:
        super().__init__()
        self.in_features = _checks.positive_int(in_features, "in_features")
        self.out_features = _checks.positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        dtype = _float_dtype(dtype)
        rng = init.as_generator(seed)
        weight = np.empty((self.out_features, self.in_features), dtype=dtype)
        init.kaiming_uniform_(weight, rng, a=math.sqrt(5))
        self._add_param("weight", weight)
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            self._add_param("bias", init.uniform_(np.empty(self.out_features, dtype=dtype), rng, -bound, bound))

    def config(self) -> dict[str, Any]:
        assert self.dtype is not None  # the weight's dtype
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": "bias" in self.params, "dtype": self.dtype.name}

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        self._check_channels(shape, self.in_features, what="features")
        return (shape[0], self.out_features)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _LinearCache]:
        kernels = backend.current()
        y, kernel_cache = kernels.linear_forward(x, self.params["weight"], self.params.get("bias"))
        return y, _LinearCache(kernels, kernel_cache)

    def _backward(self, dy: np.ndarray, cache: _LinearCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        dx, dweight, dbias = cache.kernels.linear_backward(dy, cache.kernel_cache, need_dx=need_dx,
                                                           need_params=param_grads)
        if param_grads:
            self._add_grads(dweight, dbias)
        return dx


class _DropoutCache(NamedTuple):
    mask: np.ndarray | None  # None in evaluation (identity); else 0 or 1 / (1 - p) per element


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and
    scale the others by 1 / (1 - p); identity in evaluation.

    ``seed`` (int, numpy Generator or None) seeds the masks' generator.
    """

    name_prefix = "dropout"

    def __init__(self, p: float = 0.5, seed: np.random.Generator | int | None = None) -> None:
        super().__init__()
        self.p = _checks.real_number(p, "p", 0.0, 1.0)
        self.rng = init.as_generator(seed)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _DropoutCache]:
        if not self.training:
            return x, _DropoutCache(None)
        if self.p == 1.0:
            mask = np.zeros(x.shape, dtype=x.dtype)
        else:
            keep = self.rng.random(x.shape, dtype=x.dtype) >= x.dtype.type(self.p)
            mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * mask, _DropoutCache(mask)

    def _backward(self, dy: np.ndarray, cache: _DropoutCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        return dy if cache.mask is None else dy * cache.mask


class _LogSoftmaxCache(NamedTuple):
    y: np.ndarray  # the output, log-probabilities


class LogSoftmax(Layer):
    """log(softmax(x)) along axis 1, computed stably: x - max - log(sum(exp(x - max)))."""

    name_prefix = "logsoftmax"

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        if len(shape) < 2:
            raise ValueError(f"LogSoftmax expects an input of at least 2 dimensions, got shape {shape}")
        return shape

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _LogSoftmaxCache]:
        shifted = x - x.max(axis=1, keepdims=True)
        y = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return y, _LogSoftmaxCache(y)

    def _backward(self, dy: np.ndarray, cache: _LogSoftmaxCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        return dy - np.exp(cache.y) * dy.sum(axis=1, keepdims=True)


def _adaptive_size(value: int | Sequence[int | None] | None) -> tuple[int | None, ...]:
    """An int or an (h, w) pair whose entries are positive ints or None -> (h, w)."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2:
        raise TypeError(f"output_size must be an int or a pair of ints (or None), got {value!r}")
    for v in pair:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"output_size must be an int or a pair of ints (or None), got {value!r}")
        if v < 1:
            raise ValueError(f"output_size must be positive, got {value!r}")
    return tuple(None if v is None else int(v) for v in pair)


def _averaging_matrix(out_size: int, in_size: int, dtype: DTypeLike) -> np.ndarray:
    """(out_size, in_size) matrix whose row i averages inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1."""
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    stop = -((-(i + 1) * in_size) // out_size)
    columns = np.arange(in_size)
    inside = (columns >= start[:, None]) & (columns < stop[:, None])
    return (inside / (stop - start)[:, None]).astype(dtype)


class _AdaptiveAvgPoolCache(NamedTuple):
    # The averaging matrices, both None when the output size is the input's.
    rows: np.ndarray | None
    cols: np.ndarray | None


class AdaptiveAvgPool2d(Layer):
    """Mean over the cells that split each plane into ``output_size``, as PyTorch does.

    x (N, C, H, W) -> y (N, C, OH, OW). Output row i averages input rows
    floor(i*H/OH) .. ceil((i+1)*H/OH) - 1, columns likewise: when OH does not
    divide H the windows overlap and differ in size, and an input smaller than
    the output repeats its rows. ``output_size`` is an int or an (OH, OW) pair;
    None in the pair keeps that dimension of the input.

    The mean over a window is separable, so the layer is two small matmuls
    with averaging matrices, y = A_h @ x @ A_w.T, and backward their
    transposes: no loop over windows.
    """

    name_prefix = "avgpool"
    input_ndim = 4

    def __init__(self, output_size: int | Sequence[int | None] | None) -> None:
        super().__init__()
        self.output_size = _adaptive_size(output_size)

    def config(self) -> dict[str, Any]:
        return {"output_size": list(self.output_size)}

    def _target(self, input_shape: Sequence[int]) -> tuple[int, int]:
        h, w = input_shape[2], input_shape[3]
        oh, ow = self.output_size
        return (h if oh is None else oh), (w if ow is None else ow)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self._check_ndim(input_shape)
        return shape[:2] + self._target(shape)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _AdaptiveAvgPoolCache]:
        (oh, ow), (h, w) = self._target(x.shape), x.shape[2:]
        if (oh, ow) == (h, w):
            return x, _AdaptiveAvgPoolCache(None, None)
        rows = _averaging_matrix(oh, h, x.dtype)
        cols = _averaging_matrix(ow, w, x.dtype)
        return np.matmul(np.matmul(rows, x), cols.T), _AdaptiveAvgPoolCache(rows, cols)

    def _backward(self, dy: np.ndarray, cache: _AdaptiveAvgPoolCache, need_dx: bool,
                  param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        if cache.rows is None:
            return dy
        assert cache.cols is not None  # both matrices or neither
        return np.matmul(np.matmul(cache.rows.T, dy), cache.cols)


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2d, ReLU, ReLU6, LeakyReLU, BatchNorm2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d,
                AdaptiveAvgPool2d, Flatten, Linear, Dropout, LogSoftmax)
}



# ---------------------------------------------------------------------------
# GELU, global max-pooling and a constant scale: the layers of the airbench
# network (fastconv.models.airbench94) beyond the seeds' ones.

__all__ += ["GELU", "GlobalMaxPool2d", "Scale"]


class _GELUCache(NamedTuple):
    kernels: ModuleType
    x: np.ndarray  # the input, whose value the gradient needs


class GELU(Layer):
    """x * Phi(x), Phi the standard normal distribution function; any shape.

    The exact (erf) form, ``torch.nn.GELU()``'s default. The kernels come
    from the backend; backward needs the input, which the pass keeps.
    """

    name_prefix = "gelu"

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _GELUCache]:
        kernels = backend.current()
        return kernels.gelu_forward(x), _GELUCache(kernels, x)

    def _backward(self, dy: np.ndarray, cache: _GELUCache, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return cache.kernels.gelu_backward(dy, cache.x) if need_dx else None


class _GlobalMaxPoolCache(NamedTuple):
    kernels: ModuleType
    argmax: np.ndarray
    x_shape: tuple


class GlobalMaxPool2d(Layer):
    """Max over each whole plane: x (N, C, H, W) -> y (N, C), as
    ``AdaptiveMaxPool2d(1)`` then ``Flatten`` in PyTorch.

    The max-pooling kernels with one window the size of the plane; ties go
    to the first maximum in row-major order, a NaN in a plane is its maximum.
    """

    name_prefix = "gmp"
    input_ndim = 4

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return self._check_ndim(input_shape)[:2]

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, _GlobalMaxPoolCache]:
        kernels = backend.current()
        plane = x.shape[2:]
        y, argmax = kernels.maxpool2d_forward(x, plane, plane, 0)
        return y.reshape(x.shape[:2]), _GlobalMaxPoolCache(kernels, argmax, x.shape)

    def _backward(self, dy: np.ndarray, cache: _GlobalMaxPoolCache, need_dx: bool,
                  param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        return cache.kernels.maxpool2d_backward(dy.reshape(dy.shape + (1, 1)), cache.argmax, cache.x_shape)


class Scale(Layer):
    """y = factor * x, any shape: a fixed multiplier, such as the one the
    airbench network puts after its classifier so that the logits start
    small without shrinking the classifier's weights (and their steps)."""

    name_prefix = "scale"

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = _checks.real_number(factor, "factor", -math.inf)
        if not math.isfinite(self.factor):
            raise ValueError(f"factor must be finite, got {factor!r}")

    def config(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return x * x.dtype.type(self.factor), None

    def _backward(self, dy: np.ndarray, cache: None, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return dy * dy.dtype.type(self.factor) if need_dx else None


LAYER_TYPES.update({cls.__name__: cls for cls in (GELU, GlobalMaxPool2d, Scale)})
