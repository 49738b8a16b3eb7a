"""Fusion: which adjacent layers of a Sequential run as one pass, and how.

``Sequential.forward`` runs a list of passes (:func:`plan`): most run one
layer through its own ``forward`` and ``backward``; a *fused* pass runs
adjacent layers with one kernel, forward and backward, which saves the
arrays between them and the passes over memory that make and read them.
Each kind of fused pass is a :class:`Fusion` rule listed in :data:`FUSIONS`:

* :class:`ReLUBatchNorm`: a ``ReLU`` followed by a ``BatchNorm2d`` in
  training mode. The batch-norm kernels read the ReLU's input and take
  max(x, 0) themselves, forward (``relu_input=True``) and backward
  (``through_relu=True``): the ReLU's output array and its two passes over
  the activation disappear (docs/engine.md has the training-step times
  before and after).

A rule runs the layers through their own protected methods, and each layer
keeps its own record of the pass (``Layer._remember``), so after a fused
forward every layer can still backpropagate alone, as after its own
``forward``: ``backward(start=...)`` from inside a fused pass, hooks
registered between forward and backward, and tools that walk the layers
one by one get the unfused gradients.

Nothing that is watched or changed is fused. A pass is fused only when the
model has no forward hook (it would see every layer's output, the ReLU's
included) and no layer of the pass has a hook: forward, backward or
backward pre-hook, the last being how ``relu_backward_rule`` changes a
ReLU's rule. ``Sequential.backward`` backpropagates a fused forward as one
pass only while that still holds and the model has no backward hook (which
sees every layer's input gradient); otherwise the layers run one at a time.

A later fusion (a convolution and the batch norm after it, say) is one more
:class:`Fusion` here and one more entry in :data:`FUSIONS`; one that takes a
``Conv2d`` must pass its ``groups`` on or not match a grouped one. The rule
above matches exact types, so a ``ReLU6`` (which clamps at 6 as well) is
never run as the ReLU before a batch norm.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast, overload

from fastconv import backend
from fastconv.nn.layers import BatchNorm2d, ReLU, _blame

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Literal

    import numpy as np

    from fastconv.nn.layers import Layer
    from fastconv.nn.model import Sequential

__all__ = ["Fusion", "ReLUBatchNorm", "FUSIONS", "Pass", "plan"]


class Fusion:
    """A rule: ``size`` adjacent layers that one pass can run together.

    Subclasses say which layers they take (``matches``, on structure and
    mode only: hooks are checked by :func:`plan`) and run them
    (``forward``, ``backward``) through the layers' own methods.
    """

    name = "fusion"
    size = 2

    def matches(self, layers: Sequence[Layer]) -> bool:
        """Whether these ``size`` layers, in order, are the kind this rule fuses."""
        raise NotImplementedError

    def forward(self, names: Sequence[str], layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
        """Run the layers on x as one pass; each keeps its record for backward."""
        raise NotImplementedError

    def ran_fused(self, layers: Sequence[Layer]) -> bool:
        """Whether the layers' records are still those of this rule's forward."""
        raise NotImplementedError

    def backward(self, names: Sequence[str], layers: Sequence[Layer], dy: np.ndarray,
                 param_grads: bool = True) -> np.ndarray:
        """The gradient with respect to the first layer's input, as one pass;
        parameter gradients are added unless ``param_grads`` is False."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLUBatchNorm(Fusion):
    """A ReLU, then a BatchNorm2d in training mode, as one batch-norm pass
    over the ReLU's input."""

    name = "relu+batchnorm"
    size = 2

    def matches(self, layers: Sequence[Layer]) -> bool:
        relu, bn = layers
        # Exact types: a subclass may change either pass.
        return type(relu) is ReLU and type(bn) is BatchNorm2d and bn.training

    def forward(self, names: Sequence[str], layers: Sequence[Layer], x: np.ndarray) -> np.ndarray:
        relu, bn = cast("tuple[ReLU, BatchNorm2d]", layers)  # as matches() found them
        kernels = backend.current()
        with _blame(names[0], relu):
            relu._forward_fused(kernels, x)
        with _blame(names[1], bn):
            return bn._forward_relu_input(kernels, x)

    def ran_fused(self, layers: Sequence[Layer]) -> bool:
        return cast(BatchNorm2d, layers[1])._ran_relu_fused()

    def backward(self, names: Sequence[str], layers: Sequence[Layer], dy: np.ndarray,
                 param_grads: bool = True) -> np.ndarray:
        with _blame(names[1], layers[1]):
            return cast(BatchNorm2d, layers[1])._backward_through_relu(dy, param_grads)


FUSIONS = (ReLUBatchNorm(),)


def _hooked(layer: Layer) -> bool:
    return layer._has_forward_hooks() or layer._has_backward_hooks()


class Pass(NamedTuple):
    """One pass of a forward: the layers from index ``start`` on, run by
    ``fusion`` (None: a single layer run by its own methods)."""

    start: int
    names: tuple[str, ...]
    layers: tuple[Layer, ...]
    fusion: Fusion | None = None

    @property
    def stop(self) -> int:
        """Index past the pass's last layer."""
        return self.start + len(self.layers)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the pass's layers on x, each keeping its record for backward; returns the last output."""
        if self.fusion is None:
            with _blame(self.names[0], self.layers[0]):
                return self.layers[0].forward(x)
        return self.fusion.forward(self.names, self.layers, x)

    @overload
    def backward(self, dy: np.ndarray, need_dx: Literal[True] = True, param_grads: bool = True) -> np.ndarray: ...

    @overload
    def backward(self, dy: np.ndarray, need_dx: bool, param_grads: bool = True) -> np.ndarray | None: ...

    def backward(self, dy: np.ndarray, need_dx: bool = True, param_grads: bool = True) -> np.ndarray | None:
        """Backward of the pass's last forward; a fused pass always returns dx."""
        if self.fusion is None:
            with _blame(self.names[0], self.layers[0]):
                return self.layers[0].backward(dy, need_dx=need_dx, param_grads=param_grads)
        return self.fusion.backward(self.names, self.layers, dy, param_grads)

    def backward_fusable(self) -> bool:
        """Whether backward can run this pass's layers as one pass now: they
        ran fused, kept their fused records and no backward hook has come
        since (the model's own backward hooks are for its caller to check)."""
        return (self.fusion is not None
                and not any(layer._has_backward_hooks() for layer in self.layers)
                and self.fusion.ran_fused(self.layers))


def _fused_pass(names: Sequence[str], layers: Sequence[Layer], i: int, stop: int) -> Pass | None:
    """The fused pass that starts at layer i and ends at ``stop`` at the
    latest, or None when layer i runs alone. The model's forward hooks are
    for the caller to check: with one, every layer runs alone."""
    for fusion in FUSIONS:
        end = i + fusion.size
        if end - 1 > stop:
            continue
        group = layers[i:end]
        if fusion.matches(group) and not any(_hooked(layer) for layer in group):
            return Pass(i, tuple(names[i:end]), tuple(group), fusion)
    return None


def plan(model: Sequential, until: str | None = None) -> list[Pass]:
    """The passes ``model.forward(x, until=until)`` would run now, in order:
    a list of :class:`Pass`, whose ``forward`` and ``backward`` run it."""
    named = model.named_layers()
    names = [name for name, _ in named]
    layers = [layer for _, layer in named]
    stop = len(layers) - 1 if until is None else model._position(until)
    watched = model._has_forward_hooks()
    passes = []
    i = 0
    while i <= stop:
        step = None if watched else _fused_pass(names, layers, i, stop)
        if step is None:
            step = Pass(i, (names[i],), (layers[i],), None)
        passes.append(step)
        i = step.stop
    return passes
