"""Evaluation-mode fusion: a convolution and the layers after it as one pass
in ``predict`` and ``classify``.

The inference passes of a model (``predict``, ``classify``, and so
``fastconv bench``'s inference) keep nothing for backward, so a convolution
there can take over the layers that follow it, found by :func:`plan`:

* a ``BatchNorm2d`` right after the convolution is *folded* into it: with
  s = weight / sqrt(running_var + eps), the convolution runs with the
  weights ``W * s`` (per output channel) and the bias
  ``(b - running_mean) * s + bn.bias``, which gives the same output to float
  rounding;
* a ``ReLU`` after that (or right after the convolution) and a
  ``BatchNorm2d`` after the ReLU (``cifar6``'s conv-ReLU-BN, where the batch
  norm cannot be folded into the weights) run in the convolution's output
  pass, ``conv2d_epilogue``: the ReLU, then the batch norm's per-channel
  ``y * s + t``, in place on the convolution's output, with no array for
  each layer;
* a ``MaxPool2d`` after those (or right after the convolution) joins that
  pass, ``epilogue_maxpool``: the convolution's output is read once and
  written pooled, without the argmax an unfused max-pool keeps for backward.

The folded weights are a derived copy: the layers' own parameters are never
changed, and ``forward`` and ``backward`` (in either mode, and so training
and every analysis tool that backpropagates) run the layers one by one. The
fold is recomputed at the start of every inference call, into arrays the
model keeps between calls, so a parameter changed in place (by an optimizer
step, ``load_state_dict`` or by hand) is always seen, whatever the mode was
in between.

Nothing that is watched is fused. A forward hook on the model or on any
layer turns fusion off for the whole call: the hooked layer's input comes
from the layers before it, and a fused pass rounds differently, so only an
unfused model gives a hook exactly the arrays it sees unfused. A layer with
a backward hook or pre-hook is left out of the groups as well.
``model.inference_fusion = False`` turns the fusion off for a model. In a
``Graph``, a group runs only where each layer's single input is the one
before it and no other node (nor the model's output) reads what passes
between them. Layer types are matched exactly: a subclass may change a
pass, and ``ReLU6`` is not a ``ReLU``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fastconv import backend
from fastconv.nn.layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU, _blame

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import fastconv
    from fastconv.nn.layers import Layer

__all__ = ["Group", "InferencePlan", "plan", "chain_groups"]


def _hooked(layer: Layer) -> bool:
    return layer._has_forward_hooks() or layer._has_backward_hooks()


def _bn_fits(bn: Layer, conv: Conv2d) -> bool:
    """Whether ``bn`` is an evaluation-mode BatchNorm2d that the unfused pass
    would run without an error on the convolution's output."""
    return (type(bn) is BatchNorm2d and not bn.training and bn.num_features == conv.out_channels
            and bn.dtype == conv.dtype)


def _bn_affine(bn: BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with bn(y) = y * s + t per channel, in the batch norm's dtype, as
    ``batchnorm2d_forward_eval`` computes them."""
    weight, bias = bn.params["weight"], bn.params["bias"]
    mean, var = bn.buffers["running_mean"], bn.buffers["running_var"]
    scale = weight / np.sqrt(var + var.dtype.type(bn.eps))
    return scale, bias - mean * scale


class Group(NamedTuple):
    """A convolution and the layers it takes over in an inference pass.

    ``members`` are the node indices (in the model's order) and ``names``
    their names; ``folded`` is the batch norm folded into the weights,
    ``relu`` whether a ReLU follows, ``affine`` the batch norm after it,
    applied in the output pass, and ``pool`` the max-pool that ends it.
    """

    members: tuple[int, ...]
    names: tuple[str, ...]
    conv: Conv2d
    folded: BatchNorm2d | None
    relu: bool
    affine: BatchNorm2d | None
    pool: MaxPool2d | None

    def weights(self, store: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray | None]:
        """The convolution's weight and bias for this pass: its own, or the
        folded ones, computed now into arrays kept in ``store``."""
        conv = self.conv
        weight, bias = conv.params["weight"], conv.params.get("bias")
        if self.folded is None:
            return weight, bias
        scale, shift = _bn_affine(self.folded)
        kept = store.get(self.names[0])
        if kept is None or kept[0].shape != weight.shape or kept[0].dtype != weight.dtype:
            kept = store[self.names[0]] = (np.empty_like(weight), np.empty_like(scale))
        new_weight, new_bias = kept
        np.multiply(weight, scale.reshape(-1, 1, 1, 1), out=new_weight)
        if bias is None:
            np.copyto(new_bias, shift)
        else:
            np.multiply(bias, scale, out=new_bias)
            new_bias += shift
        return new_weight, new_bias

    def run(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The group's output for x, with the weights ``weights`` gave."""
        conv = self.conv
        kernels = backend.current()
        with _blame(self.names[0], conv):
            conv._check_input(x)
            y, _ = kernels.conv2d_forward(x, weight, bias, conv.stride, conv.padding, conv.groups)
        scale, shift = _bn_affine(self.affine) if self.affine is not None else (None, None)
        if self.pool is not None:
            pool = self.pool
            with _blame(self.names[-1], pool):
                pool._check_input(y)
                return kernels.epilogue_maxpool(y, pool.kernel_size, pool.stride, pool.padding,
                                                self.relu, scale, shift)
        if self.relu or self.affine is not None:
            kernels.conv2d_epilogue(y, self.relu, scale, shift)
        return y


class InferencePlan:
    """The groups of one inference call: ``groups`` by the index of their
    convolution, ``skipped`` the indices the groups run, and the weights of
    each group, computed once for the call."""

    def __init__(self, groups: Sequence[Group], store: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.groups = {group.members[0]: group for group in groups}
        self.skipped = frozenset(i for group in groups for i in group.members[1:])
        self._weights = {group.members[0]: group.weights(store) for group in groups}

    def run(self, start: int, x: np.ndarray) -> np.ndarray:
        """Run the group whose convolution is node ``start`` on x."""
        return self.groups[start].run(x, *self._weights[start])

    def __len__(self) -> int:
        return len(self.groups)


def _take(kind: str, members: list[int], conv: Conv2d, layers: Sequence[Layer],
          next_of: Callable[[int], int | None], taken: set[int]) -> Layer | None:
    """The layer after ``members[-1]`` if it is of ``kind`` ("relu", "bn" or
    "pool") and free to join the group (appended to ``members``), else None."""
    j = next_of(members[-1])
    if j is None or j in taken or _hooked(layers[j]):
        return None
    candidate = layers[j]
    if kind == "relu":
        fits = type(candidate) is ReLU
    elif kind == "pool":
        fits = type(candidate) is MaxPool2d
    else:
        fits = _bn_fits(candidate, conv)
    if not fits:
        return None
    members.append(j)
    return candidate


def chain_groups(names: Sequence[str], layers: Sequence[Layer],
                 next_of: Callable[[int], int | None]) -> list[Group]:
    """The groups of a model whose node i feeds node ``next_of(i)`` alone
    (None: its output goes elsewhere too, or nowhere a group may take it)."""
    groups = []
    taken: set[int] = set()
    for i, layer in enumerate(layers):
        if i in taken or type(layer) is not Conv2d or _hooked(layer):
            continue
        conv = layer
        members = [i]
        folded = _take("bn", members, conv, layers, next_of, taken)
        relu = _take("relu", members, conv, layers, next_of, taken) is not None
        affine = _take("bn", members, conv, layers, next_of, taken) if relu else None
        pool = _take("pool", members, conv, layers, next_of, taken)
        if len(members) == 1:
            continue
        taken.update(members)
        groups.append(Group(tuple(members), tuple(names[k] for k in members), conv,
                            folded, relu, affine, pool))  # type: ignore[arg-type]
    return groups


def plan(model: fastconv.Model, store: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
         ) -> InferencePlan | None:
    """The fused groups an inference call of ``model`` would run now, with
    their weights computed (into ``store``, or fresh arrays), or None when
    nothing is fused: the option is off, the model or one of its layers has a
    forward hook, or no group matches."""
    if (not getattr(model, "inference_fusion", True) or model._has_forward_hooks()
            or any(layer._has_forward_hooks() for layer in model)):
        return None
    groups = model._fusable_groups()
    if not groups:
        return None
    return InferencePlan(groups, {} if store is None else store)
