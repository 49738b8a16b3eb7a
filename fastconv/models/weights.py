"""Trained weights in and out of a model: PyTorch state_dicts, safetensors, .npz and Keras HDF5.

:func:`load_weights` copies a weights file into a model built with the same
architecture (``fastconv.models.vgg16()`` for VGG-16 weights):

* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: a PyTorch ``state_dict`` (or a
  checkpoint dict holding one) as ``torch.save`` writes it since PyTorch 1.6,
  read by :func:`fastconv.models.torchfile.read_torch` without PyTorch; it
  unpickles tensors, dicts, lists, strings and numbers only, never running
  code from the file.
* ``.safetensors``: read by :func:`fastconv.models.torchfile.read_safetensors`,
  no dependency. The format is an 8-byte little-endian header length, a JSON
  header mapping each tensor's name to its dtype, shape and [begin, end) byte
  offsets, then the raw little-endian bytes.
* ``.npz``: NumPy archives of named arrays, including the files
  :func:`save_weights` and ``Sequential.save`` write.
* ``.h5`` / ``.hdf5``: Keras weights (``model.save_weights`` or a whole saved
  model), read with h5py. Keras keeps convolution kernels as (KH, KW, in,
  out) and dense kernels as (in, out), and flattens maps in (H, W, C) order;
  the import transposes them to PyTorch's layout and reorders the rows of the
  first dense layer after a Flatten from HWC to CHW.

The file's layers are matched to the model's layers that hold weights
(Conv2d, BatchNorm2d, Linear) in order, and each tensor's shape is checked:
tensor names only group tensors into layers, so a file from torchvision,
timm, Keras or a hand-written module fits as long as it has the same layers
in the same order. The first mismatch is reported with the layer's name and
both shapes. Files whose order is not the layer order (safetensors sorts its
entries by name) are tried in numeric name order (``features.2`` before
``features.10``) with their top-level modules in every order; a file whose
names are exactly the model's own is loaded by name.

A :class:`~fastconv.nn.graph.Graph` model (ResNet, MobileNetV2) has no
single layer order, so its tensors are matched by name only: its node names
are torchvision's module names, and the first key of the file the model lacks
(with ``strict``), the first shape that differs, or the first key the model
needs that the file lacks is a ValueError naming it. ``num_batches_tracked``
entries are skipped.

Networks trained with Caffe-style preprocessing (Keras's VGG16) read BGR
images; their first convolution is turned around to RGB on import, so that
every model takes RGB input, and ``model.meta`` records the preprocessing
(see :mod:`fastconv.models.imagenet`).

:func:`save_weights` writes a model's ``state_dict`` to ``.npz`` or
``.safetensors`` with its preprocessing in the file's metadata.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv._files import atomic_write, open_npz
from fastconv.models import imagenet
from fastconv.models.torchfile import _MAX_HEADER, read_safetensors, read_torch, write_safetensors
from fastconv.nn.graph import Graph
from fastconv.nn.layers import AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from numpy.typing import ArrayLike

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv
    from fastconv.nn.layers import Layer

__all__ = [
    "load_weights", "save_weights", "read_weights", "WeightsFile", "read_safetensors", "write_safetensors", "FORMATS",
]

FORMATS = {
    ".pth": "pytorch", ".pt": "pytorch", ".bin": "pytorch", ".ckpt": "pytorch",
    ".safetensors": "safetensors", ".npz": "npz", ".h5": "keras", ".hdf5": "keras",
}
_FORMAT_HELP = "a PyTorch state_dict (.pth, .pt), .safetensors, .npz or Keras weights (.h5)"
_SKIPPED_ROLES = ("num_batches_tracked",)
_FASTCONV_MODEL_ENTRIES = ("architecture", "meta")
_METADATA_ENTRY = "__metadata__"
_MAX_PREFIX_ORDERS = 5  # top-level modules whose orders are all tried: 5! = 120 orders

# Keras weight names: 'block1_conv1/kernel:0' (Keras 2) or 'block1_conv1_W_1:0' (Keras 1).
_KERAS_ROLES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                "moving_mean": "running_mean", "moving_variance": "running_var", "W": "weight", "b": "bias"}
_KERAS_ROLES_BY_COUNT = {1: ("weight",), 2: ("weight", "bias"), 4: ("weight", "bias", "running_mean", "running_var")}


# --------------------------------------------------------------------------- reading any format


@dataclasses.dataclass
class _Group:
    """One layer of the file: its name there and {role: (file key, array)}."""

    name: str
    tensors: dict[str, tuple[str, np.ndarray]]


@dataclasses.dataclass
class WeightsFile:
    """What :func:`read_weights` found: the tensors by their names in the file,
    grouped into layers in the file's order, the layout ('pytorch' or 'keras')
    and the file's metadata."""

    source: str
    layout: str
    tensors: dict[str, np.ndarray]
    groups: list[_Group]
    metadata: dict[str, Any]


def _format_of(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension in FORMATS:
        return FORMATS[extension]
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if magic.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            names = []
        return "pytorch" if any(name.endswith("data.pkl") for name in names) else "npz"
    if magic.startswith(b"\x80"):
        return "pytorch"
    if len(magic) == 8 and int.from_bytes(magic, "little") < _MAX_HEADER:
        return "safetensors"
    raise ValueError(f"cannot tell the format of {path}: expected {_FORMAT_HELP}")


def _state_dict_in(obj: Any) -> Mapping[Any, np.ndarray] | None:
    """The {name: array} inside what read_torch returned, or None."""
    seen = set()
    while isinstance(obj, Mapping) and id(obj) not in seen:  # a dict may hold itself: stop there
        if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            return obj
        seen.add(id(obj))
        obj = next((obj[key] for key in ("state_dict", "model_state_dict", "model", "net", "weights")
                    if isinstance(obj.get(key), Mapping)), None)
    return None


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if not value.dtype.is_floating_point or value.dtype.itemsize >= 4:
            return value.numpy()
        return value.float().numpy()  # float16 and bfloat16
    return np.asarray(value)


def _read_pytorch(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    obj = read_torch(path)
    tensors = _state_dict_in(obj)
    if tensors is None:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return {str(key): value for key, value in tensors.items()}, {}


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with open_npz(path, ".npz weights file") as archive:
        names = archive.files
        metadata = {}
        if _METADATA_ENTRY in names:
            metadata = json.loads(archive[_METADATA_ENTRY].item())
        elif "meta" in names and "architecture" in names:
            metadata = json.loads(archive["meta"].item())
        skipped = (_METADATA_ENTRY,) + (_FASTCONV_MODEL_ENTRIES if "architecture" in names else ())
        tensors = {name: archive[name] for name in names if name not in skipped}
    return tensors, metadata if isinstance(metadata, dict) else {}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _keras_roles(layer_name: str, weight_names: Sequence[str]) -> tuple[str, ...]:
    roles = []
    for name in weight_names:
        stem = re.sub(r"(_\d+)?:\d+$", "", name.split("/")[-1])
        if stem.startswith(layer_name + "_"):
            stem = stem[len(layer_name) + 1:]
        roles.append(_KERAS_ROLES.get(stem))
    if None in roles or len(set(roles)) != len(roles):
        # Unknown names: Keras stores a layer's weights in a fixed order.
        return _KERAS_ROLES_BY_COUNT.get(len(weight_names), tuple(weight_names))
    return tuple(roles)  # type: ignore[arg-type]  # no None left: tested just above


def _read_keras(path: str) -> list[_Group]:
    try:
        import h5py
    except ImportError:
        raise RuntimeError(f"reading the Keras weights {path} needs h5py (pip install h5py)") from None
    groups = []
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ValueError(f"{path} is an HDF5 file but not Keras weights: it has no 'layer_names' "
                                 "attribute (files saved in Keras 3's .weights.h5 layout are not supported)")
            for layer_name in map(_text, root.attrs["layer_names"]):
                group = root[layer_name]
                weight_names = [_text(name) for name in group.attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                roles = _keras_roles(layer_name, weight_names)
                groups.append(_Group(layer_name, {
                    role: (f"{layer_name}/{name}", np.array(group[name])) for role, name in zip(roles, weight_names)
                }))
    except (OSError, KeyError) as error:
        raise ValueError(f"{path} is not a readable Keras HDF5 file (truncated or corrupt?): {error}") from None
    return groups


def _split_key(key: str) -> tuple[str, str]:
    group, _, role = key.rpartition(".")
    return (group, role) if group else (key, key)


def _group(keys_and_arrays: Iterable[tuple[str, np.ndarray]]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for key, array in keys_and_arrays:
        name, role = _split_key(key)
        if role in _SKIPPED_ROLES:
            continue
        groups.setdefault(name, _Group(name, {})).tensors[role] = (key, array)
    return list(groups.values())


def read_weights(source: str | os.PathLike | Mapping[str, ArrayLike]) -> WeightsFile:
    """Read a weights file (or take a mapping of arrays) without a model: a
    :class:`WeightsFile` with the tensors as NumPy arrays under their names in
    the file, grouped into layers."""
    if isinstance(source, Mapping):
        tensors = {str(key): _to_numpy(value) for key, value in source.items()}
        return WeightsFile("the given state_dict", "pytorch", tensors, _group(tensors.items()), {})
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    kind = _format_of(path)
    if kind == "keras":
        groups = _read_keras(path)
        tensors = {key: array for group in groups for key, array in group.tensors.values()}
        return WeightsFile(path, "keras", tensors, groups, {})
    if kind == "pytorch":
        tensors, metadata = _read_pytorch(path)
    elif kind == "npz":
        tensors, metadata = _read_npz(path)
    else:
        tensors, metadata = read_safetensors(path)
    return WeightsFile(path, "pytorch", tensors, _group(tensors.items()), metadata)


# --------------------------------------------------------------------------- matching layers


def _natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def _orders(weights: WeightsFile) -> Iterator[list[_Group]]:
    """Candidate layer orders of the file's groups, the file's own first (safetensors
    writers usually sort by name, so that one may be wrong)."""
    yield weights.groups
    if weights.layout == "keras":
        return
    natural = sorted(weights.groups, key=lambda group: _natural_key(group.name))
    prefixes = list(dict.fromkeys(group.name.split(".")[0] for group in natural))
    if len(prefixes) > _MAX_PREFIX_ORDERS:
        yield natural
        return
    for order in itertools.permutations(prefixes):
        rank = {prefix: i for i, prefix in enumerate(order)}
        yield sorted(natural, key=lambda group: rank[group.name.split(".")[0]])


class _Mismatch(Exception):
    def __init__(self, matched: int, message: str) -> None:
        super().__init__(message)
        self.matched = matched


def _flatten_input(model: fastconv.Model, position: int, in_features: int) -> tuple[int, ...] | None:
    """(C, H, W) of the maps flattened for the Linear at ``position``, or None when
    no Flatten comes before it (parameter-free layers may sit between)."""
    pairs = model.named_layers()
    flatten = next((i for i in range(position - 1, -1, -1)
                    if isinstance(pairs[i][1], Flatten) or pairs[i][1].params), None)
    if flatten is None or not isinstance(pairs[flatten][1], Flatten):
        return None
    channels, size, size_open = None, None, True
    for _, layer in reversed(pairs[:flatten]):
        if isinstance(layer, Conv2d):
            channels = layer.out_channels
            break
        if isinstance(layer, BatchNorm2d):
            channels = layer.num_features
            break
        if size_open and isinstance(layer, (AdaptiveAvgPool2d, MaxPool2d, AvgPool2d)):
            if isinstance(layer, AdaptiveAvgPool2d) and None not in layer.output_size:
                size = layer.output_size
            size_open = False
    if channels is None:
        return None
    if size is None and model.meta.get("input_shape"):
        shape = (1,) + tuple(model.meta["input_shape"])
        for _, layer in pairs[:flatten]:
            shape = layer.output_shape(shape)
        size = shape[2:]
    if size is None:
        side = math.isqrt(in_features // channels)
        if side * side * channels != in_features:
            raise ValueError(
                f"cannot tell the height and width of the {channels}-channel maps that {pairs[position][0]!r} "
                f"reads ({in_features} features); set model.meta['input_shape'] = [C, H, W]"
            )
        size = (side, side)
    return (channels,) + tuple(int(v) for v in size if v is not None)


def _keras_to_torch(model: fastconv.Model, position: int, layer: Layer, role: str,
                    array: np.ndarray) -> np.ndarray:
    if isinstance(layer, Conv2d) and role == "weight" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if isinstance(layer, Linear) and role == "weight" and array.ndim == 2:
        maps = _flatten_input(model, position, layer.in_features)
        if maps is not None and array.shape[0] == math.prod(maps):
            c, h, w = maps
            # Keras flattened (H, W, C) maps: row (h*W + w)*C + c feeds our feature c*H*W + h*W + w.
            array = array[np.arange(c * h * w).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)]
        return array.T
    return array


def _targets(model: fastconv.Model) -> list[tuple[int, str, Layer]]:
    """[(position, name, layer)] of the layers that hold parameters or buffers."""
    return [(i, name, layer) for i, (name, layer) in enumerate(model.named_layers()) if layer.params or layer.buffers]


def _slots(layer: Layer) -> dict[str, np.ndarray]:
    """{role: array} of a layer's parameters and buffers, in state_dict order."""
    return {**layer.params, **layer.buffers}


def _describe(layer: Layer) -> str:
    return type(layer).__name__


def _plan(model: fastconv.Model, weights: WeightsFile, groups: Sequence[_Group],
          strict: bool) -> dict[str, np.ndarray]:
    """{state_dict key: array} pairing the model's layers with ``groups`` in order; _Mismatch otherwise."""
    targets = _targets(model)
    values = {}
    for matched, (position, name, layer) in enumerate(targets):
        if matched >= len(groups):
            raise _Mismatch(matched, (
                f"the file ends before layer {name!r} ({_describe(layer)}): it holds weights for {len(groups)} "
                f"layers, the model has {len(targets)} (a truncated file, or weights of a smaller network "
                f"such as one without its classifier head?)"))
        group = groups[matched]
        slots = _slots(layer)
        expected = list(slots)
        if set(group.tensors) != set(expected):
            raise _Mismatch(matched, (
                f"layer {name!r} ({_describe(layer)}) takes {', '.join(expected)}, but the file's layer "
                f"{group.name!r} at the same place holds {', '.join(group.tensors)} "
                f"(weights of another architecture?)"))
        for role in expected:
            key, array = group.tensors[role]
            if array.dtype.kind not in "fiu":
                raise _Mismatch(matched, f"the file's {key!r} has dtype {array.dtype}, not numbers")
            converted = _keras_to_torch(model, position, layer, role, array) if weights.layout == "keras" else array
            target = slots[role]
            if converted.shape != target.shape:
                layout = f" (shape {array.shape} in Keras's layout)" if converted.shape != array.shape else ""
                raise _Mismatch(matched, (
                    f"layer {name!r} ({_describe(layer)}) expects {role} of shape {target.shape}, but the file's "
                    f"{key!r} has shape {converted.shape}{layout} (weights of another architecture?)"))
            values[f"{name}.{role}"] = converted
    if strict and len(groups) > len(targets):
        extra = groups[len(targets)]
        raise _Mismatch(len(targets), (
            f"the file holds weights for {len(groups)} layers, the model for {len(targets)}: the file's layer "
            f"{extra.name!r} has nowhere to go after the model's last layer {targets[-1][1]!r} "
            f"(load with strict=False to ignore the file's extra layers, e.g. a head the model lacks)"))
    return values


def _by_name(model: fastconv.Model, weights: WeightsFile, strict: bool) -> dict[str, np.ndarray] | None:
    """{key: array} when the file names its tensors as the model does, else None."""
    if weights.layout != "pytorch":
        return None
    names = {key for key in weights.tensors if _split_key(key)[1] not in _SKIPPED_ROLES}
    wanted = {f"{name}.{role}" for _, name, layer in _targets(model) for role in _slots(layer)}
    if not wanted <= names or (strict and names != wanted):
        return None
    return {key: weights.tensors[key] for key in wanted}


def _graph_values(model: fastconv.Model, weights: WeightsFile, strict: bool) -> dict[str, np.ndarray]:
    """{key: array} for a graph, whose tensors are matched by name only: a
    graph has no single layer order to pair a file's layers with."""
    if weights.layout != "pytorch":
        raise ValueError(f"{weights.source} is a {weights.layout} file; a Graph model loads weights by name, "
                         "from a PyTorch-layout state dict")
    wanted = {f"{name}.{role}": array for _, name, layer in _targets(model) for role, array in _slots(layer).items()}
    for key, array in weights.tensors.items():
        if _split_key(key)[1] in _SKIPPED_ROLES:
            continue
        if key not in wanted:
            if strict:
                raise ValueError(f"{weights.source} has {key!r}, which the model does not have "
                                 "(load with strict=False to ignore the file's extra tensors)")
            continue
        if array.shape != wanted[key].shape:
            raise ValueError(f"{weights.source} has {key!r} of shape {array.shape}; the model's is {wanted[key].shape}")
    missing = [key for key in wanted if key not in weights.tensors]
    if missing:
        raise ValueError(f"{weights.source} has no {missing[0]!r} ({len(missing)} of the model's tensors missing)")
    return {key: weights.tensors[key] for key in wanted}


def _mapped_values(model: fastconv.Model, weights: WeightsFile, strict: bool) -> dict[str, np.ndarray]:
    if isinstance(model, Graph):
        return _graph_values(model, weights, strict)
    values = _by_name(model, weights, strict)
    if values is not None:
        return values
    best = None
    for groups in _orders(weights):
        try:
            return _plan(model, weights, groups, strict)
        except _Mismatch as mismatch:
            if best is None or mismatch.matched > best.matched:
                best = mismatch
    raise ValueError(f"{weights.source} does not fit the model: {best}")


def _preprocessing(weights: WeightsFile, preprocessing: str | None) -> str | None:
    if preprocessing is not None:
        if preprocessing not in imagenet.PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {imagenet.PREPROCESSING} or None, got {preprocessing!r}")
        return preprocessing
    if weights.metadata.get("format") == "fastconv" or "normalization" in weights.metadata:
        return weights.metadata.get("preprocessing")
    return "caffe" if weights.layout == "keras" else "torch"


def load_weights(model: fastconv.Model, source: str | os.PathLike | Mapping[str, ArrayLike], strict: bool = True,
                 preprocessing: str | None = None, bgr: bool | None = None) -> fastconv.Model:
    """Copy the weights in ``source`` (a file path, or a mapping name -> array or
    tensor) into ``model``; returns the model.

    The file's layers are paired with the model's layers that hold weights, in
    order, and every shape must match (see the module's docstring for the
    formats and layouts). ``strict=False`` lets the file hold more layers after
    the model's last one (a classifier head for a model built without it).
    Nothing is changed unless everything fits; otherwise ValueError names the
    first layer that does not, with both shapes.

    ``preprocessing``: 'torch' or 'caffe', what the weights expect (default:
    what the file records, 'caffe' for Keras files, else 'torch'); stored in
    ``model.meta`` with the matching ``normalization``, and, when the model
    ends in 1000 outputs, the ImageNet class names. ``bgr``: whether the file's
    first convolution reads BGR (default: for Keras files with Caffe
    preprocessing); it is then turned around to read RGB.
    """
    weights = read_weights(source)
    values = _mapped_values(model, weights, strict)
    mode = _preprocessing(weights, preprocessing)
    if bgr is None:
        channels = weights.metadata.get("input_channels")
        bgr = channels == "BGR" if channels else (weights.layout == "keras" and mode == "caffe")
    if bgr:
        first = next((name for name, layer in model.named_layers() if isinstance(layer, Conv2d)), None)
        if first is None or values[f"{first}.weight"].shape[1] != 3:
            raise ValueError(f"bgr=True needs a first convolution with 3 input channels; the model's is {first!r}")
        values[f"{first}.weight"] = values[f"{first}.weight"][:, ::-1]
    model.load_state_dict(values)
    if mode is not None:
        model.meta["preprocessing"] = mode
        model.meta["normalization"] = imagenet.normalization(mode)
    last = [layer for _, layer in model.named_layers() if layer.params][-1:]
    if last and isinstance(last[0], Linear) and last[0].out_features == imagenet.NUM_CLASSES:
        model.meta["classes"] = imagenet.class_names()
    model.meta["weights"] = weights.source
    return model


# --------------------------------------------------------------------------- writing


def save_weights(model: fastconv.Model, path: str | os.PathLike) -> str:
    """Write the model's state_dict to ``path``: .npz or .safetensors, by extension,
    atomically, with the preprocessing from ``model.meta`` in the file's metadata.
    The tensors are named as in ``model.state_dict()``; returns the path."""
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    metadata = {"format": "fastconv", "input_channels": "RGB"}
    if model.meta.get("preprocessing"):
        metadata["preprocessing"] = str(model.meta["preprocessing"])
    state = model.state_dict()
    if extension == ".safetensors":
        write_safetensors(path, state, metadata)
    elif extension == ".npz":
        # Any: numpy's stub would read a key as savez's allow_pickle flag.
        entries: dict[str, Any] = dict(state)
        entries[_METADATA_ENTRY] = np.array(json.dumps(metadata))
        atomic_write(path, lambda f: np.savez(f, **entries))
    else:
        raise ValueError(f"save_weights writes .npz or .safetensors, got {path}")
    return path
