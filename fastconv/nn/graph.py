"""Graph: a model whose layers branch and merge (ResNet's skip connections,
Inception's concatenations), with everything a Sequential offers.

A graph is built node by node: each node is a named layer applied to the
outputs of earlier nodes, or to the model's input (named ``"input"``)::

    g = Graph()
    x = g.input                                   # "input"
    h = g.add("conv1", Conv2d(16, 16, 3, padding=1), x)
    h = g.add("relu1", ReLU(), h)
    h = g.add("add", Add(), h, x)                 # the skip connection
    g.add("fc", Linear(16 * 8 * 8, 10), g.add("flatten", Flatten(), h))

``add`` returns the node's name; with no input given a node takes the
previous node's output, so a chain reads as one. The model's output is the
last node added unless ``g.output = name`` says otherwise. Nodes may be
named with dots (``"layer1.0.conv1"``), so a state dict carries PyTorch's
names.

The nodes run in the order they were added, which is always an order where
every node comes after its inputs. ``forward(x, until=name)`` runs only the
nodes ``name`` depends on and frees each intermediate output once its last
consumer has run; ``backward(grad, start=name)`` runs them back, adding up
the gradients of a node whose output several nodes consume.

Merging layers take several inputs: :class:`Add` (element-wise sum, shapes
equal) and :class:`Concat` (along the channels). Their ``forward`` takes a
list of arrays and their ``backward`` returns a list of gradients, one per
input; a model's backward hook receives that list as ``grad_input``, and a
layer's backward hook may return a replacement list. :class:`Identity`
passes its input on.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fastconv import _checks
from fastconv.nn import fuse
from fastconv.nn.layers import LAYER_TYPES, Layer, _blame, _float_dtype, _PassIO
from fastconv.nn.model import BUILDERS, Model, _keep_output, _layer_from

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from numpy.typing import DTypeLike

__all__ = ["Graph", "Add", "Concat", "Identity", "PadShortcut", "Merge", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastconv.Graph"
FORMAT_VERSION = 1
INPUT = "input"


class Identity(Layer):
    """y = x: a named place in a graph (the output of a block, say) that hooks and tools can reach."""

    name_prefix = "identity"

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        return x, None

    def _backward(self, dy: np.ndarray, cache: None, need_dx: bool, param_grads: bool) -> np.ndarray | None:
        return dy if need_dx else None


class PadShortcut(Layer):
    """The parameter-free shortcut of He et al.'s CIFAR ResNets ("option A"):
    every ``stride``-th pixel of each plane, then zero channels appended up to
    ``out_channels``. x (N, C, H, W) -> y (N, out_channels, ceil(H/s), ceil(W/s)).
    """

    name_prefix = "shortcut"
    input_ndim = 4

    def __init__(self, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.out_channels = _checks.positive_int(out_channels, "out_channels")
        self.stride = _checks.positive_int(stride, "stride")

    def config(self) -> dict[str, Any]:
        return {"out_channels": self.out_channels, "stride": self.stride}

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        n, c, h, w = self._check_ndim(input_shape)
        if c > self.out_channels:
            raise ValueError(f"PadShortcut pads {c} channels up to out_channels={self.out_channels}, which is fewer")
        s = self.stride
        return (n, self.out_channels, -(-h // s), -(-w // s))

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        y = np.zeros(self.output_shape(x.shape), dtype=x.dtype)
        y[:, :x.shape[1]] = x[:, :, ::self.stride, ::self.stride]
        return y, x.shape

    def _backward(self, dy: np.ndarray, cache: tuple[int, ...], need_dx: bool,
                  param_grads: bool) -> np.ndarray | None:
        if not need_dx:
            return None
        dx = np.zeros(cache, dtype=dy.dtype)
        dx[:, :, ::self.stride, ::self.stride] = dy[:, :cache[1]]
        return dx


class Merge(Layer):
    """A layer of several inputs: ``forward([x1, x2, ...]) -> y`` and
    ``backward(dy) -> [dx1, dx2, ...]``.

    The checks and hooks of :class:`Layer` apply per input: a forward hook
    gets the list of inputs, a backward hook the list of input gradients
    (and may return a replacement list of the same shapes).
    """

    min_inputs = 2

    def _check_inputs(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if isinstance(xs, np.ndarray) or not isinstance(xs, (list, tuple)):
            raise TypeError(f"{type(self).__name__} takes a list of arrays, got {type(xs).__name__}")
        xs = list(xs)
        if len(xs) < self.min_inputs:
            raise ValueError(f"{type(self).__name__} takes at least {self.min_inputs} inputs, got {len(xs)}")
        for x in xs:
            _checks.float_array(x, "input")
            _checks.nonempty_batch(x, "input")
        if len({x.dtype for x in xs}) > 1:
            raise TypeError(f"{type(self).__name__} inputs have different dtypes: "
                            f"{', '.join(str(x.dtype) for x in xs)}")
        self.output_shape([x.shape for x in xs])
        return xs

    def output_shape(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        """Shape of the output for inputs of the shapes in ``input_shape`` (a list of shapes)."""
        raise NotImplementedError

    # The base class checks one input; a merge checks each of its list.
    def _check_input(self, x: np.ndarray) -> None:
        raise TypeError(f"{type(self).__name__} takes a list of arrays")

    def infer(self, xs: Sequence[np.ndarray]) -> np.ndarray:  # type: ignore[override]
        """Output for the inputs ``xs`` without keeping anything for backward."""
        xs = self._check_inputs(xs)
        y = self._merge(xs)[0]
        if self._forward_hooks:
            self._run_forward_hooks(xs, y)  # type: ignore[arg-type]
        return y

    def forward(self, xs: Sequence[np.ndarray]) -> np.ndarray:  # type: ignore[override]
        """Output for the inputs ``xs``, keeping what ``backward`` needs."""
        xs = self._check_inputs(xs)
        y, cache = self._merge(xs)
        self._cache = cache
        self._last_io = _PassIO(tuple(x.shape for x in xs), xs[0].dtype, y.shape)
        self._passes += 1
        if self._forward_hooks:
            self._run_forward_hooks(xs, y)  # type: ignore[arg-type]
        return y

    __call__ = forward  # type: ignore[assignment]

    def backward(self, dy: np.ndarray, need_dx: bool = True,  # type: ignore[override]
                 param_grads: bool = True) -> list[np.ndarray] | None:
        """The gradients w.r.t. each input of the last forward (None when need_dx is False)."""
        self._check_gradient(dy)
        if self._backward_pre_hooks:
            dy = self._run_backward_pre_hooks(dy)
        if not need_dx:
            dxs = None
        else:
            dxs = self._split(dy, self._cache)
        if self._backward_hooks:
            dxs = self._run_merge_backward_hooks(dxs, dy)
        return dxs

    def _run_merge_backward_hooks(self, dxs: list[np.ndarray] | None, dy: np.ndarray) -> list[np.ndarray] | None:
        assert self._last_io is not None
        shapes = self._last_io.input_shape
        for hook in list(self._backward_hooks.values()):
            replacement = hook(self, dxs, dy)  # type: ignore[arg-type]
            if replacement is not None and dxs is not None:
                if not isinstance(replacement, (list, tuple)) or len(replacement) != len(shapes):
                    raise TypeError(f"a backward hook of {type(self).__name__} returned {type(replacement).__name__}"
                                    f" for grad_input; expected a list of {len(shapes)} arrays or None")
                for array, shape in zip(replacement, shapes):
                    self._check_replacement(array, "a backward hook", "grad_input", shape)
                dxs = list(replacement)
        return dxs

    def _merge(self, xs: list[np.ndarray]) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    def _split(self, dy: np.ndarray, cache: Any) -> list[np.ndarray]:
        raise NotImplementedError


class Add(Merge):
    """y = x1 + x2 + ...: inputs of one shape (no broadcasting), as a residual connection adds."""

    name_prefix = "add"

    def output_shape(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        shapes = [tuple(int(v) for v in shape) for shape in input_shape]
        if any(shape != shapes[0] for shape in shapes):
            raise ValueError(f"Add needs inputs of one shape, got {', '.join(str(s) for s in shapes)}")
        return shapes[0]

    def _merge(self, xs: list[np.ndarray]) -> tuple[np.ndarray, int]:
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, len(xs)

    def _split(self, dy: np.ndarray, cache: int) -> list[np.ndarray]:
        # Every input receives dy itself: the graph adds gradients into new
        # arrays, never into one it was given, so sharing it is safe.
        return [dy] * cache


class Concat(Merge):
    """Inputs joined along the channel axis (axis 1): (N, C1, ...), (N, C2, ...) -> (N, C1 + C2, ...)."""

    name_prefix = "concat"
    min_inputs = 1

    def output_shape(self, input_shape: Sequence[Any]) -> tuple[int, ...]:
        shapes = [tuple(int(v) for v in shape) for shape in input_shape]
        first = shapes[0]
        if len(first) < 2 or any(len(s) != len(first) or s[0] != first[0] or s[2:] != first[2:] for s in shapes):
            raise ValueError("Concat needs inputs that differ only in their channels (axis 1), got "
                             + ", ".join(str(s) for s in shapes))
        return (first[0], sum(s[1] for s in shapes)) + first[2:]

    def _merge(self, xs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(xs, axis=1), [x.shape[1] for x in xs]

    def _split(self, dy: np.ndarray, cache: list[int]) -> list[np.ndarray]:
        bounds = np.cumsum(cache)[:-1]
        return [np.ascontiguousarray(part) for part in np.split(dy, bounds, axis=1)]


LAYER_TYPES.update({cls.__name__: cls for cls in (Identity, PadShortcut, Add, Concat)})


class _Plan(NamedTuple):
    """What a pass up to one node runs: positions in node order, and how many
    of those nodes read each node's output (to free it after its last reader)."""
    order: tuple[int, ...]
    readers: dict[str, int]


def _check_node_name(name: object) -> str:
    if not isinstance(name, str) or not name or name == INPUT or any(not part for part in name.split(".")):
        raise ValueError(f"node names must be non-empty strings other than {INPUT!r}, without empty "
                         f"'.'-separated parts, got {name!r}")
    return name


class Graph(Model):
    """Layers wired as a directed acyclic graph of named nodes; see the module's docstring.

    ``Graph()`` is empty: add nodes with :meth:`add`. Every method of
    :class:`Sequential` that does not depend on a chain works the same way:
    passes up to or from a node, hooks, modes, ``summary``, ``state_dict``
    (keys ``node.param``), ``save``/``load``, ``astype``, ``predict``.
    """

    _reached: frozenset[str] | None  # the nodes the last forward ran (None: none since the last change)

    def __init__(self) -> None:
        self._setup([], [])
        self._inputs: dict[str, tuple[str, ...]] = {}
        self._output: str | None = None  # None: the last node added
        self._plans: dict[str, _Plan] = {}
        self._reached_until: str | None = None

    # -- building -------------------------------------------------------------
    @property
    def input(self) -> str:
        """The name of the model's input, to pass to :meth:`add`: ``"input"``."""
        return INPUT

    def add(self, name: str | None, layer: Layer, *inputs: str) -> str:
        """Add a node ``name`` applying ``layer`` to the outputs of ``inputs``
        (node names, or ``g.input``); returns ``name``.

        With no ``inputs`` the node reads the last node added (the model's
        input for the first). ``name=None`` names it from the layer's type
        and rank (conv1, add2, ...). A merging layer (Add, Concat) takes
        several inputs, any other layer one.
        """
        if not isinstance(layer, Layer):
            raise TypeError(f"expected a Layer for node {name!r}, got {type(layer).__name__}")
        if any(layer is known for known in self._layers):
            raise ValueError(f"the same {type(layer).__name__} object is already a node; create one per node")
        if name is None:
            prefix, rank = type(layer).name_prefix, 1
            while f"{prefix}{rank}" in self._index:
                rank += 1
            name = f"{prefix}{rank}"
        name = _check_node_name(name)
        if name in self._index:
            raise ValueError(f"duplicate node name {name!r}")
        if not inputs:
            inputs = (self._names[-1] if self._names else INPUT,)
        for source in inputs:
            if not isinstance(source, str):
                raise TypeError(f"node inputs are node names (str), got {source!r} for node {name!r}")
            if source != INPUT and source not in self._index:
                raise ValueError(f"node {name!r} reads {source!r}, which is not a node (yet); "
                                 f"the nodes are {', '.join([INPUT] + self._names)}")
        if isinstance(layer, Merge):
            if len(inputs) < layer.min_inputs:
                raise ValueError(f"node {name!r} ({type(layer).__name__}) needs at least {layer.min_inputs} "
                                 f"inputs, got {len(inputs)}")
        elif len(inputs) != 1:
            raise ValueError(f"node {name!r} ({type(layer).__name__}) takes one input, got {len(inputs)}")
        self._names.append(name)
        self._layers.append(layer)
        self._index[name] = len(self._names) - 1
        self._inputs[name] = tuple(inputs)
        self._training = all(known.training for known in self._layers)
        self._changed()
        return name

    @property
    def output(self) -> str:
        """The node whose output ``forward(x)`` returns: the last node added unless set."""
        if not self._names:
            raise ValueError("the graph has no nodes yet: add some with Graph.add")
        return self._output if self._output is not None else self._names[-1]

    @output.setter
    def output(self, name: str) -> None:
        self._position(name)
        self._output = name
        self._changed()

    def _changed(self) -> None:
        """Forget the plans and the last pass: the structure they were made for changed."""
        self._plans = {}
        self._reached = None

    def inputs(self, name: str) -> tuple[str, ...]:
        """The names of the nodes (or ``"input"``) that node ``name`` reads."""
        self._position(name)
        return self._inputs[name]

    def consumers(self, name: str) -> list[str]:
        """The nodes that read the output of ``name`` (a node, or ``"input"``), in order."""
        if name != INPUT:
            self._position(name)
        return [node for node in self._names if name in self._inputs[node]]

    def nodes(self) -> list[tuple[str, Layer, tuple[str, ...]]]:
        """[(name, layer, inputs), ...] in the order the nodes run."""
        return [(name, layer, self._inputs[name]) for name, layer in zip(self._names, self._layers)]

    # -- structure ------------------------------------------------------------
    def __getitem__(self, index: int | str) -> Layer:
        """``g["conv1"]`` or ``g[i]``: a node's layer (KeyError, IndexError if there is none)."""
        if isinstance(index, str):
            if index not in self._index:
                raise KeyError(f"no node named {index!r}; the nodes are {', '.join(self._names)}")
            return self._layers[self._index[index]]
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            if not -len(self._layers) <= index < len(self._layers):
                raise IndexError(f"node index {index} is out of range for a graph of {len(self._layers)} nodes")
            return self._layers[index]
        raise TypeError(f"a Graph is indexed by a node's position or name, got {index!r} "
                        "(a part of a graph is a pass: forward(x, until=name))")

    def __repr__(self) -> str:
        lines = [f"  ({name}): {layer!r} <- {', '.join(inputs)}" for name, layer, inputs in self.nodes()]
        return "Graph(\n" + "\n".join(lines) + f"\n  output: {self.output if self._names else None}\n)"

    def _describe(self, name: str, layer: Layer) -> str:
        previous = self._names[self._index[name] - 1] if self._index[name] else INPUT
        inputs = self._inputs[name]
        link = "" if inputs == (previous,) else f" <- {', '.join(inputs)}"
        return f"{name} ({type(layer).__name__}){link}"

    def _plan(self, until: str | None) -> _Plan:
        """The nodes a pass up to ``until`` (default the output) runs, cached."""
        target = self.output if until is None else self._names[self._position(until)]
        plan = self._plans.get(target)
        if plan is None:
            needed = {target}
            for name in reversed(self._names[:self._index[target] + 1]):
                if name in needed:
                    needed.update(self._inputs[name])
            order = tuple(i for i, name in enumerate(self._names) if name in needed)
            readers: dict[str, int] = {}
            for i in order:
                for source in self._inputs[self._names[i]]:
                    readers[source] = readers.get(source, 0) + 1
            plan = self._plans[target] = _Plan(order, readers)
        return plan

    def _layer_passes(self, until: str | None) -> tuple[int, ...]:
        return tuple(self._layers[i]._passes for i in self._plan(until).order)

    # -- passes -----------------------------------------------------------------
    def _run(self, x: np.ndarray, until: str | None, keep: bool,
             steps: fuse.InferencePlan | None = None) -> np.ndarray:
        """Output of node ``until`` (default the output) for input x, through
        each layer's ``forward`` (``keep``) or ``infer``, and the fused
        groups of ``steps``, each stored as the output of its last node."""
        plan = self._plan(until)
        values: dict[str, np.ndarray] = {INPUT: x}
        left = dict(plan.readers)
        name = INPUT
        for i in plan.order:
            if steps is not None and i in steps.skipped:
                continue
            name, layer = self._names[i], self._layers[i]
            sources = self._inputs[name]
            args = [values[source] for source in sources]
            if steps is not None and i in steps.groups:
                name = self._names[steps.groups[i].members[-1]]
                values[name] = steps.run(i, args[0])
                for source in sources:
                    left[source] -= 1
                    if left[source] == 0:
                        del values[source]
                continue
            with _blame(name, layer):
                if isinstance(layer, Merge):
                    y = layer.forward(args) if keep else layer.infer(args)
                else:
                    y = layer.forward(args[0]) if keep else layer.infer(args[0])
            for hook in list(self._forward_hooks.values()):
                hook(name, layer, y)
            values[name] = y
            for source in sources:
                left[source] -= 1
                if left[source] == 0:
                    del values[source]
        return values[self._names[plan.order[-1]]]

    def _forward_pass(self, x: np.ndarray, until: str | None) -> np.ndarray:
        if not self._names:
            raise ValueError("the graph has no nodes yet: add some with Graph.add")
        self._reached = None
        y = self._run(x, until, keep=True)
        self._reached = frozenset(self._names[i] for i in self._plan(until).order)
        self._reached_until = until if until is not None else self.output
        self._forward_count += 1
        _keep_output(self, y, until)
        return y

    def _infer_batch(self, x: np.ndarray, steps: fuse.InferencePlan | None = None) -> np.ndarray:
        return self._run(x, None, keep=False, steps=steps)

    def _fusable_groups(self) -> list[fuse.Group]:
        readers: dict[str, list[int]] = {}
        for i, name in enumerate(self._names):
            for source in self._inputs[name]:
                readers.setdefault(source, []).append(i)
        output = self.output

        def next_of(i: int) -> int | None:
            name = self._names[i]
            after = readers.get(name, [])
            if name == output or len(after) != 1 or self._inputs[self._names[after[0]]] != (name,):
                return None
            return after[0]

        return fuse.chain_groups(self._names, self._layers, next_of)

    def _backward_pass(self, grad: np.ndarray, start: str | None, input_grad: bool,
                       param_grads: bool) -> np.ndarray | None:
        if self._reached is None:
            raise RuntimeError("backward called before forward")
        target = self.output if start is None else self._names[self._position(start)]
        if target not in self._reached:
            raise RuntimeError(f"backward from node {target!r} needs a forward pass through it; "
                               f"the last forward ran up to {self._reached_until!r}")
        plan = self._plan(target)
        # Which outputs a gradient must reach: the input's if asked for, and
        # every node's that leads to a parameter or to the input that needs one.
        flows = {INPUT: input_grad}
        for i in plan.order:
            name, layer = self._names[i], self._layers[i]
            flows[name] = (param_grads and bool(layer.params)) or any(flows[s] for s in self._inputs[name])
        if not flows[target]:
            return None
        hooks = list(self._backward_hooks.values())
        grads: dict[str, np.ndarray] = {target: grad}
        for i in reversed(plan.order):
            name, layer = self._names[i], self._layers[i]
            if not flows[name]:
                continue
            dy = grads.pop(name)
            sources = self._inputs[name]
            wanted = [flows[source] for source in sources]
            with _blame(name, layer):
                if isinstance(layer, Merge):
                    merged = layer.backward(dy, need_dx=any(wanted), param_grads=param_grads)
                    grad_input: object = merged
                    dxs: list[np.ndarray | None] = list(merged) if merged is not None else [None] * len(sources)
                else:
                    dx = layer.backward(dy, need_dx=any(wanted), param_grads=param_grads)
                    grad_input, dxs = dx, [dx]
            for hook in hooks:
                hook(name, layer, grad_input, dy)  # type: ignore[arg-type]
            for source, dx_source, want in zip(sources, dxs, wanted):
                if not want or dx_source is None:
                    continue
                # A node read by several others gets the sum of their gradients,
                # in a new array: an input gradient may be another's dy itself.
                grads[source] = grads[source] + dx_source if source in grads else dx_source
        return grads.get(INPUT) if input_grad else None

    def _output_shapes(self, input_shape: tuple[int, ...],
                       until: str | None) -> list[tuple[str, Layer, tuple[int, ...]]]:
        shapes: dict[str, tuple[int, ...]] = {INPUT: input_shape}
        rows = []
        wanted = None if until is None else set(self._plan(until).order)
        for i, (name, layer, sources) in enumerate(self.nodes()):
            if wanted is not None and i not in wanted:
                continue
            with _blame(name, layer):
                if isinstance(layer, Merge):
                    shape = layer.output_shape([shapes[source] for source in sources])
                else:
                    shape = layer.output_shape(shapes[sources[0]])
            shapes[name] = shape
            rows.append((name, layer, shape))
        return rows

    # -- copies and files -----------------------------------------------------------
    def astype(self, dtype: DTypeLike) -> Graph:
        dtype = _float_dtype(dtype)
        clone = Graph()
        for name, layer, sources in self.nodes():
            clone.add(name, layer.astype(dtype), *sources)
        clone._output = self._output
        clone._training = self._training
        clone.inference_fusion = self.inference_fusion
        clone.meta = copy.deepcopy(self.meta)
        return clone

    def architecture(self) -> dict[str, Any]:
        """The JSON-able description save() writes: mode, output and each node's name, class, config and inputs."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "training": self._training,
            "output": self.output,
            "nodes": [
                {"name": name, "class": type(layer).__name__, "config": layer.config(), "inputs": list(sources)}
                for name, layer, sources in self.nodes()
            ],
        }


def _build_graph(architecture: Mapping[str, Any]) -> Graph:
    graph = Graph()
    for entry in architecture["nodes"]:
        graph.add(entry["name"], _layer_from(entry), *entry["inputs"])
    graph.output = architecture["output"]
    return graph


BUILDERS[FORMAT] = (FORMAT_VERSION, _build_graph)
