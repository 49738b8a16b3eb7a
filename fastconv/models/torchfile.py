"""Tensor files read without the frameworks that wrote them: PyTorch's ``torch.save`` archives and safetensors.

:func:`read_torch` reads what ``torch.save`` writes (by default since PyTorch
1.6): a zip archive holding ``<root>/data.pkl``, a pickle of the saved object
in which every tensor refers to a storage, and ``<root>/data/<key>``, each
storage's raw bytes, with ``<root>/byteorder`` naming their byte order. The
pickle is run by a small interpreter of its own, not by :mod:`pickle`: it
knows the pickle instructions that build data (numbers, strings, bytes,
tuples, lists, dicts, sets) and calls nothing but an allow-list of the
functions a state dict names, each of them written here and checking its
arguments:

* ``torch._utils._rebuild_tensor_v2`` (and ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``): a tensor, as a NumPy array copied out
  of its storage with the tensor's size, stride and offset;
* ``collections.OrderedDict``, and the few built-ins that pickle protocol 2
  writes as calls (``set``, ``bytearray``, ``complex``, ``_codecs.encode``
  for bytes);
* the storage types ``torch.FloatStorage``, ``DoubleStorage``,
  ``HalfStorage``, ``BFloat16Storage``, ``LongStorage``, ``IntStorage``,
  ``ShortStorage``, ``CharStorage``, ``ByteStorage`` and ``BoolStorage``,
  inside torch's persistent references ``('storage', type, key, location,
  numel)``.

Any other global (``os.system``, a pickled ``nn.Module``) is refused with a
ValueError naming it, before anything is called. Every size is checked
against the bytes the file holds before memory is allocated for it: a
storage must fill its zip entry exactly, a tensor must lie inside its
storage, an entry inside the file; and the arrays built from one file may
take at most a few times its size, so that tensors repeating or broadcasting
one storage cannot exhaust memory. Zip entry names are only keys here, never
paths on disk. Legacy (pre-1.6) files and TorchScript archives are
recognized and refused with the PyTorch command that converts them.

:func:`read_safetensors` and :func:`write_safetensors` are the safetensors
format: an 8-byte little-endian header length, a JSON header mapping each
tensor's name to its dtype, shape and [begin, end) byte offsets in the data
(and ``__metadata__`` to a dict of strings), then the raw little-endian bytes.

bfloat16 tensors of either format are read as float32 (its top half); every
other dtype as itself, in native byte order.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickletools
import reprlib
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from fastconv._files import atomic_write

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from numpy.typing import ArrayLike

__all__ = ["read_torch", "read_safetensors", "write_safetensors"]

# Element types by their safetensors names; torch's storage types map onto them. Raw
# little-endian layouts: BF16 is read as the 16-bit pattern it is, BOOL as bytes.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"), "BF16": np.dtype("<u2"),
}


def _to_native(raw: np.ndarray, code: str) -> np.ndarray:
    """The array of element type ``code`` read as raw bytes, in native byte order."""
    # (In place and by astype: an operator on a 0-d array gives a NumPy scalar, not an array.)
    if code == "BF16":
        # bfloat16 is the top half of a float32.
        bits = raw.astype(np.uint32)
        bits <<= 16
        return bits.view(np.float32)
    if code == "BOOL":
        # A byte other than 0 or 1 read as a NumPy bool would compare unlike both True and False.
        return raw.view(np.uint8).astype(bool)
    return raw.astype(raw.dtype.newbyteorder("="), copy=False)


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlevel = 3


def _a(value: object) -> str:
    """'a str', 'an int': the type of value, for a message."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _count(value: object) -> bool:
    """Whether value is a non-negative int (and not a bool)."""
    return type(value) is int and value >= 0


# --------------------------------------------------------------------------- torch.save archives

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save before PyTorch 1.6 began its file with this number, pickled.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# A zip entry's local header: signature, 22 bytes of versions, flags, method, time,
# CRC and sizes (the central directory's are used), then the name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s22xHH")
# The storage types a state dict names, by their element types.
_STORAGES = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}
# The arrays read from a file may take this many times its size (plus the slack below):
# bfloat16 doubles in size as float32, and a tensor may be saved once and referenced
# under several names (tied weights, a checkpoint holding its model twice) or be a
# view that is copied out of a storage that is also read whole.
_EXPANSION = 8
_SLACK = 64 * 1024 * 1024
# NumPy 1.x's limit on the number of dimensions.
_MAX_DIMS = 32
# What zipfile raises for a damaged archive, besides BadZipFile.
_ZIP_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error,
               NotImplementedError, RuntimeError, IndexError, KeyError, OverflowError)
# Values allowed as dict keys and set elements: hashing them cannot recurse.
_SCALARS = (str, bytes, int, float, complex, bool, type(None))


class _Global:
    """A global the pickle named and the allow-list holds: a storage type
    (``code`` its element type) or a function (``build`` its checked twin)."""

    __slots__ = ("name", "code", "build")

    def __init__(self, name: str, code: str | None = None,
                 build: Callable[[_TorchReader, tuple], Any] | None = None) -> None:
        self.name, self.code, self.build = name, code, build


class _Storage:
    """A storage of the archive: its key, element type and elements (native byte order)."""

    __slots__ = ("key", "code", "numel", "array", "handed_out")

    def __init__(self, key: str, code: str, numel: int, array: np.ndarray) -> None:
        self.key, self.code, self.numel, self.array = key, code, numel, array
        self.handed_out = False


def read_torch(path: str | os.PathLike) -> Any:
    """The object a ``torch.save`` file holds, as ``torch.load(path, weights_only=True)``
    gives it, with every tensor a NumPy array of its own (bfloat16 as float32).

    Reads state dicts and checkpoint dicts of tensors, numbers, strings, bytes,
    lists, tuples, dicts and sets, without PyTorch. Anything else the file
    names (a pickled module, a function) raises ValueError naming it, as does a
    truncated or corrupt file, a legacy (pre-1.6) file or a TorchScript archive.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _check_kind(path, f.read(512))
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                entries = {info.filename: info for info in archive.infolist()}
        except _ZIP_DAMAGE as error:
            raise ValueError(f"{path} is not a readable PyTorch file (truncated or corrupt?): "
                             f"{_words(error)}") from None
        try:
            return _TorchReader(path, f, size, entries).read()
        except _FileError as error:
            raise ValueError(str(error)) from None


class _FileError(ValueError):
    """A message that names the file already: the interpreter passes it on unchanged."""


def _words(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _check_kind(path: str, head: bytes) -> None:
    """Refuse, with what it is, a file that is not a torch.save zip archive."""
    if not head:
        raise ValueError(f"{path} is not a PyTorch file: it is empty")
    if head.startswith(_ZIP_MAGIC):
        return
    if _LEGACY_MAGIC in head[:32] or head[257:262] == b"ustar":
        raise ValueError(f"{path} is in PyTorch's legacy format (torch.save before PyTorch 1.6), which fastconv "
                         "does not read: convert it once with PyTorch 1.6 or newer: "
                         "torch.save(torch.load('old.pth'), 'new.pth')")
    if head.startswith(b"\x80"):
        raise ValueError(f"{path} is not a PyTorch file: it is a bare pickle, not the zip archive torch.save "
                         "writes, and fastconv does not unpickle it")
    raise ValueError(f"{path} is not a PyTorch file: it is not a zip archive, the format torch.save writes")


class _TorchReader:
    """One torch.save archive being read: its entries, storages and memory budget."""

    def __init__(self, path: str, f: io.BufferedReader, size: int, entries: dict[str, zipfile.ZipInfo]) -> None:
        self.path, self.f, self.size, self.entries = path, f, size, entries
        self.storages: dict[str, _Storage] = {}
        self.budget = _EXPANSION * size + _SLACK
        self.spent = 0
        roots = [name[:-len("/data.pkl")] for name in entries if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(roots) != 1:
            found = "no" if not roots else f"{len(roots)}"
            raise _FileError(f"{path} is not a PyTorch file: it is a zip archive with {found} '<root>/data.pkl' "
                             "entries, where torch.save writes one")
        self.root = roots[0]
        if f"{self.root}/constants.pkl" in entries or any(name.startswith(f"{self.root}/code/") for name in entries):
            raise _FileError(f"{path} is a TorchScript archive (torch.jit.save), not a torch.save file: convert it "
                             "with PyTorch: torch.save(torch.jit.load('model.pt').state_dict(), 'model.pth')")
        self.byteorder: Literal["<", ">"] = "<"
        if f"{self.root}/byteorder" in entries:
            mark = bytes(self._bytes(f"{self.root}/byteorder", limit=16))
            if mark not in (b"little", b"big"):
                raise _FileError(f"{path} is corrupt: its byteorder entry says {_short.repr(mark)}, "
                                 "not 'little' or 'big'")
            self.byteorder = "<" if mark == b"little" else ">"

    def fail(self, why: str) -> _FileError:
        return _FileError(f"{self.path} is not a readable PyTorch file (truncated or corrupt?): {why}")

    # ---- the zip entries

    def _entry(self, name: str) -> tuple[zipfile.ZipInfo, int]:
        """The entry called name and where its data begins, checked to lie inside the file."""
        info = self.entries.get(name)
        if info is None:
            raise self.fail(f"it has no entry {name!r}")
        if info.flag_bits & 0x1:
            raise _FileError(f"{self.path}: its entry {name!r} is encrypted, which torch.save never does")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _FileError(f"{self.path}: its entry {name!r} is compressed (zip method {info.compress_type}); "
                             "torch.save stores entries uncompressed, and fastconv reads only those")
        if info.compress_size != info.file_size:
            raise self.fail(f"its entry {name!r} is stored uncompressed but gives two sizes, "
                            f"{info.compress_size} and {info.file_size} bytes")
        if not 0 <= info.header_offset <= self.size - _LOCAL_HEADER.size:
            raise self.fail(f"its entry {name!r} begins at byte {info.header_offset}, outside the file")
        self.f.seek(info.header_offset)
        signature, name_size, extra_size = _LOCAL_HEADER.unpack(self.f.read(_LOCAL_HEADER.size))
        if signature != _ZIP_MAGIC:
            raise self.fail(f"its entry {name!r} is not where the archive's directory puts it")
        start = info.header_offset + _LOCAL_HEADER.size + name_size + extra_size
        if start + info.file_size > self.size:
            raise self.fail(f"its entry {name!r} ends at byte {start + info.file_size}, "
                            f"past the end of the file ({self.size} bytes)")
        return info, start

    def _read_into(self, name: str, info: zipfile.ZipInfo, start: int, buffer: memoryview) -> None:
        self.f.seek(start)
        if buffer.nbytes and self.f.readinto(buffer) != buffer.nbytes:
            raise self.fail(f"its entry {name!r} is cut short")
        # torch.save(..., with set_crc32_options(False)) records no CRC (a zero).
        if info.CRC and zlib.crc32(buffer) != info.CRC:
            raise self.fail(f"its entry {name!r} fails its CRC check")

    def _bytes(self, name: str, limit: int | None = None) -> bytearray:
        info, start = self._entry(name)
        if limit is not None and info.file_size > limit:
            raise self.fail(f"its entry {name!r} is {info.file_size} bytes long, where torch.save writes "
                            f"at most {limit}")
        data = bytearray(info.file_size)
        self._read_into(name, info, start, memoryview(data))
        return data

    def _spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self.budget:
            raise _FileError(f"{self.path} would expand to more than {self.budget} bytes of arrays, {_EXPANSION} "
                             f"times the file's {self.size} bytes: fastconv stops there (tensors that repeat or "
                             "broadcast the same storage without end: a forged file?)")

    # ---- storages and tensors

    def storage(self, pid: object) -> _Storage:
        """The storage a persistent reference ('storage', type, key, location, numel) names."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
            raise self.fail(f"its pickle holds a persistent reference {_short.repr(pid)}, not one torch.save "
                            "writes ('storage', type, key, location, numel)")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _Global) or kind.code is None:
            name = kind.name if isinstance(kind, _Global) else type(kind).__name__
            raise self.fail(f"its pickle gives a storage the type {name}")
        if not isinstance(key, str) or not isinstance(location, (str, bytes)) or not _count(numel):
            raise self.fail(f"its pickle gives a storage the key {_short.repr(key)}, location "
                            f"{_short.repr(location)} and size {_short.repr(numel)}")
        known = self.storages.get(key)
        if known is not None:
            if (known.code, known.numel) != (kind.code, numel):
                raise self.fail(f"its pickle gives storage {key!r} two types or sizes: {known.numel} "
                                f"{known.code} and {numel} {kind.code} elements")
            return known
        name = f"{self.root}/data/{key}"
        info, start = self._entry(name)
        raw_dtype = _DTYPES[kind.code].newbyteorder(self.byteorder)
        nbytes = numel * raw_dtype.itemsize
        if nbytes != info.file_size:
            raise self.fail(f"storage {key!r} holds {numel} {kind.code} elements ({nbytes} bytes) by its pickle, "
                            f"but its entry {name!r} has {info.file_size} bytes")
        self._spend(nbytes * (2 if kind.code == "BF16" else 1))
        raw = np.empty(numel, raw_dtype)
        # numpy's stubs give ndarray the buffer protocol for Python 3.12+ only; mypy checks as 3.11.
        self._read_into(name, info, start, memoryview(raw.view(np.uint8)))  # type: ignore[arg-type]
        storage = _Storage(key, kind.code, numel, _to_native(raw, kind.code))
        self.storages[key] = storage
        return storage

    def tensor(self, storage: object, offset: Any, size: Any, stride: Any) -> np.ndarray:
        """The tensor with this size and stride at element ``offset`` of the storage, as an
        array of its own."""
        if not isinstance(storage, _Storage):
            raise self.fail(f"its pickle rebuilds a tensor from {_a(storage)}, not a storage")
        if (not _count(offset) or not isinstance(size, tuple) or not isinstance(stride, tuple)
                or len(size) != len(stride) or len(size) > _MAX_DIMS
                or not all(_count(n) for n in size) or not all(_count(s) for s in stride)):
            raise self.fail(f"its pickle gives a tensor of storage {storage.key!r} the offset "
                            f"{_short.repr(offset)}, size {_short.repr(size)} and stride {_short.repr(stride)}")
        array = storage.array
        if math.prod(size) == 0:
            if offset > storage.numel:
                raise self.fail(f"its pickle puts an empty tensor at element {offset} of storage "
                                f"{storage.key!r}, which has {storage.numel}")
            return np.empty(size, array.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise self.fail(f"its pickle gives a tensor of size {size} and stride {stride} at element {offset} "
                            f"of storage {storage.key!r}: it reaches element {last}, the storage has "
                            f"{storage.numel}")
        if offset == 0 and math.prod(size) == storage.numel and _c_order(size, stride) and not storage.handed_out:
            # The tensor is its whole storage: it takes the storage's memory instead of a copy.
            storage.handed_out = True
            return array.reshape(size)
        self._spend(math.prod(size) * array.itemsize)
        # A dimension of size 1 never steps: its stride (which may be anything) is not used.
        strides = tuple(s * array.itemsize if n > 1 else 0 for n, s in zip(size, stride))
        return np.lib.stride_tricks.as_strided(array[offset:], shape=size, strides=strides).copy()

    # ---- the whole file

    def read(self) -> Any:
        pickle = self._bytes(f"{self.root}/data.pkl")
        result = _Unpickler(self).run(bytes(pickle))
        self._check_result(result)
        return result

    def _check_result(self, result: object) -> None:
        """Refuse a storage or a global that the pickle left outside a tensor or a call."""
        todo, seen = [result], set()
        while todo:
            value = todo.pop()
            if isinstance(value, (_Storage, _Global)):
                what = f"storage {value.key!r}" if isinstance(value, _Storage) else value.name
                raise _FileError(f"{self.path} holds {what} by itself, not in a tensor: fastconv reads tensors, "
                                 "dicts, lists, strings and numbers only")
            if isinstance(value, (list, tuple, dict)) and id(value) not in seen:
                seen.add(id(value))
                todo.extend(value.values() if isinstance(value, dict) else value)


def _c_order(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    step = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n != 1 and s != step:
            return False
        step *= n
    return True


# ---- the allow-list: each global's checked twin


def _rebuild_tensor(reader: _TorchReader, args: tuple) -> np.ndarray:
    if len(args) not in (6, 7):
        raise reader.fail(f"its pickle calls torch._utils._rebuild_tensor_v2 with {len(args)} arguments, not 6 or 7")
    storage, offset, size, stride, requires_grad, hooks = args[:6]
    metadata = args[6] if len(args) == 7 else None
    if not isinstance(requires_grad, bool) or not isinstance(hooks, dict):
        raise reader.fail("its pickle calls torch._utils._rebuild_tensor_v2 with requires_grad "
                          f"{_short.repr(requires_grad)} and backward hooks {_short.repr(hooks)}")
    if metadata is not None and not isinstance(metadata, dict):
        raise reader.fail(f"its pickle gives a tensor the metadata {_short.repr(metadata)}")
    if metadata and any(metadata.values()):
        # The conj and neg bits of a lazily conjugated or negated view.
        raise _FileError(f"{reader.path} holds a tensor with the flags {sorted(map(str, metadata))} "
                         "(a lazily negated or conjugated view), which fastconv does not read: "
                         "save it after .resolve_neg().resolve_conj()")
    return reader.tensor(storage, offset, size, stride)


def _rebuild_parameter(reader: _TorchReader, args: tuple) -> np.ndarray:
    if len(args) != 3 or not isinstance(args[0], np.ndarray) or not isinstance(args[1], bool):
        raise reader.fail(f"its pickle calls torch._utils._rebuild_parameter with {_short.repr(args)}, "
                          "not a tensor, requires_grad and backward hooks")
    return args[0]


def _rebuild_parameter_with_state(reader: _TorchReader, args: tuple) -> np.ndarray:
    # The state is the parameter's Python attributes, which an array cannot hold.
    if len(args) != 4:
        raise reader.fail(f"its pickle calls torch._utils._rebuild_parameter_with_state with {len(args)} "
                          "arguments, not 4")
    return _rebuild_parameter(reader, args[:3])


def _ordered_dict(reader: _TorchReader, args: tuple) -> OrderedDict:
    if args == ():
        return OrderedDict()
    if len(args) == 1 and isinstance(args[0], list) and all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in args[0]):
        return OrderedDict((_key(reader, key), value) for key, value in args[0])
    raise reader.fail(f"its pickle calls collections.OrderedDict with {_short.repr(args)}")


def _set(reader: _TorchReader, args: tuple) -> set:
    if args == ():
        return set()
    if len(args) == 1 and isinstance(args[0], list):
        return {_key(reader, item) for item in args[0]}
    raise reader.fail(f"its pickle calls set with {_short.repr(args)}")


def _latin1(reader: _TorchReader, args: tuple, name: str) -> bytes:
    """The bytes protocol 2 pickles as (text, 'latin1'): each character one byte."""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            pass
    raise reader.fail(f"its pickle calls {name} with {_short.repr(args)}")


def _encode(reader: _TorchReader, args: tuple) -> bytes:
    return _latin1(reader, args, "_codecs.encode")


def _bytearray(reader: _TorchReader, args: tuple) -> bytearray:
    if len(args) <= 1 and all(isinstance(arg, bytes) for arg in args):
        return bytearray(*args)
    return bytearray(_latin1(reader, args, "bytearray"))


def _complex(reader: _TorchReader, args: tuple) -> complex:
    if 1 <= len(args) <= 2 and all(type(arg) in (int, float) for arg in args):
        return complex(*args)
    raise reader.fail(f"its pickle calls complex with {_short.repr(args)}")


_ALLOWED: dict[str, _Global] = {
    "torch._utils._rebuild_tensor_v2": _Global("torch._utils._rebuild_tensor_v2", build=_rebuild_tensor),
    "torch._utils._rebuild_parameter": _Global("torch._utils._rebuild_parameter", build=_rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Global("torch._utils._rebuild_parameter_with_state",
                                                          build=_rebuild_parameter_with_state),
    "collections.OrderedDict": _Global("collections.OrderedDict", build=_ordered_dict),
    "builtins.set": _Global("builtins.set", build=_set),
    "builtins.bytearray": _Global("builtins.bytearray", build=_bytearray),
    "builtins.complex": _Global("builtins.complex", build=_complex),
    "_codecs.encode": _Global("_codecs.encode", build=_encode),
    **{f"torch.{name}": _Global(f"torch.{name}", code=code) for name, code in _STORAGES.items()},
}


def _key(reader: _TorchReader, value: object) -> object:
    """value, if it may be a dict key or set element: hashing a nested tuple recurses
    in C without a depth limit, so only scalars and flat tuples of them are taken."""
    if isinstance(value, _SCALARS) or (isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value)):
        return value
    raise reader.fail(f"its pickle uses {_a(value)} as a dict key or set element")


class _Unpickler:
    """The pickle interpreter: a stack machine over the instructions of
    ``pickletools.genops``, which decodes them without running any."""

    # Instructions that build instances of classes or look objects up by
    # other means than a global: none of them is in a state dict.
    _REFUSED = {"OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4", "PERSID", "NEXT_BUFFER", "READONLY_BUFFER"}
    _CONSTANTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                  "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
                  "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}

    def __init__(self, reader: _TorchReader) -> None:
        self.reader = reader
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    def run(self, data: bytes) -> Any:
        position = 0
        try:
            for opcode, decoded, at in pickletools.genops(io.BytesIO(data)):
                arg: Any = decoded
                position = at or 0
                name = opcode.name
                if name == "STOP":
                    return self._pop()
                if name in self._CONSTANTS:
                    self.stack.append(arg)
                elif name == "BYTEARRAY8":
                    self.stack.append(bytearray(arg))
                elif name == "INST":
                    module, _, attribute = arg.partition(" ")
                    raise self._refuse(f"{module}.{attribute}")
                elif name in self._REFUSED:
                    raise _FileError(f"{self.reader.path} holds objects that the pickle instruction {name} builds, "
                                     "which fastconv does not read: it reads tensors, dicts, lists, strings and "
                                     "numbers only (a whole pickled model? save model.state_dict() instead)")
                else:
                    step = getattr(self, f"_op_{name.lower()}", None)
                    if step is None:
                        raise self.reader.fail(f"its pickle uses the instruction {name}")
                    step(arg)
        except _FileError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError, struct.error) as error:
            # genops raises ValueError for a garbled instruction; the rest come from a
            # garbled sequence of them (a pop from an empty stack, a missing memo entry).
            raise self.reader.fail(f"its pickle is garbled at byte {position} "
                                   f"({type(error).__name__}: {_words(error)})") from None
        raise self.reader.fail("its pickle has no end")

    def _refuse(self, name: str) -> _FileError:
        return _FileError(f"{self.reader.path} holds {_short.repr(name)[1:-1]}, which fastconv does not unpickle: "
                          "it reads tensors, dicts, lists, strings and numbers only (a whole pickled model? save "
                          "model.state_dict() instead)")

    def _pop(self) -> Any:
        if not self.stack:
            raise IndexError("a pop from an empty stack")
        return self.stack.pop()

    def _take(self, count: int) -> list[Any]:
        if len(self.stack) < count:
            raise IndexError(f"{count} items taken from a stack of {len(self.stack)}")
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def _take_mark(self) -> list[Any]:
        if not self.marks:
            raise IndexError("no mark to go back to")
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def _top(self, kind: type, what: str) -> Any:
        if not self.stack:
            raise IndexError(f"{what} an empty stack")
        top = self.stack[-1]
        if not isinstance(top, kind):
            raise self.reader.fail(f"its pickle {what} {_a(top)}")
        return top

    def _op_proto(self, version: int) -> None:
        if not 2 <= version <= 5:
            raise self.reader.fail(f"its pickle is of protocol {version}; torch.save writes 2 to 5")

    def _op_frame(self, _size: int) -> None:
        pass

    def _op_none(self, _arg: None) -> None:
        self.stack.append(None)

    def _op_newtrue(self, _arg: None) -> None:
        self.stack.append(True)

    def _op_newfalse(self, _arg: None) -> None:
        self.stack.append(False)

    def _op_mark(self, _arg: None) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def _op_empty_list(self, _arg: None) -> None:
        self.stack.append([])

    def _op_empty_dict(self, _arg: None) -> None:
        self.stack.append({})

    def _op_empty_tuple(self, _arg: None) -> None:
        self.stack.append(())

    def _op_empty_set(self, _arg: None) -> None:
        self.stack.append(set())

    # self.stack is read after _take_mark, which replaces it.
    def _op_list(self, _arg: None) -> None:
        items = self._take_mark()
        self.stack.append(items)

    def _op_tuple(self, _arg: None) -> None:
        items = self._take_mark()
        self.stack.append(tuple(items))

    def _op_tuple1(self, _arg: None) -> None:
        self.stack.append(tuple(self._take(1)))

    def _op_tuple2(self, _arg: None) -> None:
        self.stack.append(tuple(self._take(2)))

    def _op_tuple3(self, _arg: None) -> None:
        self.stack.append(tuple(self._take(3)))

    def _op_dict(self, _arg: None) -> None:
        items = self._take_mark()
        self.stack.append({})
        self._set_items(items)

    def _op_frozenset(self, _arg: None) -> None:
        items = self._take_mark()
        self.stack.append(frozenset(_key(self.reader, item) for item in items))

    def _op_append(self, _arg: None) -> None:
        value = self._pop()
        self._top(list, "appends to").append(value)

    def _op_appends(self, _arg: None) -> None:
        items = self._take_mark()
        self._top(list, "appends to").extend(items)

    def _op_setitem(self, _arg: None) -> None:
        self._set_items(self._take(2))

    def _op_setitems(self, _arg: None) -> None:
        self._set_items(self._take_mark())

    def _set_items(self, items: list[Any]) -> None:
        if len(items) % 2:
            raise self.reader.fail("its pickle sets a dict item without a value")
        target = self._top(dict, "sets items of")
        for i in range(0, len(items), 2):
            target[_key(self.reader, items[i])] = items[i + 1]

    def _op_additems(self, _arg: None) -> None:
        items = self._take_mark()
        self._top(set, "adds to").update(_key(self.reader, item) for item in items)

    def _op_pop(self, _arg: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._take_mark()

    def _op_pop_mark(self, _arg: None) -> None:
        self._take_mark()

    def _op_dup(self, _arg: None) -> None:
        self.stack.append(self._top(object, "duplicates"))

    def _op_put(self, index: int) -> None:
        self.memo[index] = self._top(object, "memoizes")

    _op_binput = _op_long_binput = _op_put

    def _op_memoize(self, _arg: None) -> None:
        self.memo[len(self.memo)] = self._top(object, "memoizes")

    def _op_get(self, index: int) -> None:
        self.stack.append(self.memo[index])

    _op_binget = _op_long_binget = _op_get

    def _op_global(self, name: str) -> None:
        module, _, attribute = name.partition(" ")
        self._push_global(module, attribute)

    def _op_stack_global(self, _arg: None) -> None:
        module, attribute = self._take(2)
        if not isinstance(module, str) or not isinstance(attribute, str):
            raise self.reader.fail("its pickle names a global by something other than strings")
        self._push_global(module, attribute)

    def _push_global(self, module: str, attribute: str) -> None:
        # Protocol 2 names the built-ins by their Python 2 module.
        name = f"{'builtins' if module == '__builtin__' else module}.{attribute}"
        allowed = _ALLOWED.get(name)
        if allowed is None:
            raise self._refuse(name)
        self.stack.append(allowed)

    def _op_reduce(self, _arg: None) -> None:
        function, args = self._take(2)
        if not isinstance(function, _Global) or function.build is None:
            name = function.name if isinstance(function, _Global) else _a(function)
            raise self.reader.fail(f"its pickle calls {name}")
        if not isinstance(args, tuple):
            raise self.reader.fail(f"its pickle calls {function.name} with {_a(args)} of arguments")
        self.stack.append(function.build(self.reader, args))

    def _op_build(self, _arg: None) -> None:
        state = self._pop()
        # An OrderedDict state_dict carries its modules' versions as an attribute
        # (_metadata), which fastconv does not need: the state is dropped.
        self._top(OrderedDict, "sets the state of")
        if not isinstance(state, (dict, tuple)):
            raise self.reader.fail(f"its pickle sets the state of an OrderedDict to {_a(state)}")

    def _op_binpersid(self, _arg: None) -> None:
        self.stack.append(self.reader.storage(self._pop()))


# --------------------------------------------------------------------------- safetensors

_METADATA = "__metadata__"
_MAX_HEADER = 100 * 1024 * 1024
_SAFETENSORS_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items() if code != "BF16"}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file: {name: ndarray} in the order of
    the data, and the header's ``__metadata__`` dict of strings.

    BF16 tensors come back as float32, every other dtype as itself. A file
    that is truncated or whose header is inconsistent raises ValueError naming it.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: it is {size} bytes long, "
                             "shorter than the 8-byte header length")
        header_size = int.from_bytes(head, "little")
        if header_size > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{path} is not a safetensors file, or is truncated: its first 8 bytes give "
                             f"a header of {header_size} bytes, the file holds {size - 8} after them")
        try:
            header = json.loads(f.read(header_size).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError(f"{path} is not a safetensors file: its header is not JSON") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
        metadata = header.pop(_METADATA, None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"{path} is corrupt: its {_METADATA} is {_short.repr(metadata)}, "
                             "not an object of strings")
        data_size = size - 8 - header_size
        entries = sorted((_safetensors_entry(path, name, info, data_size) for name, info in header.items()),
                         key=lambda entry: entry[3])
        tensors = {}
        end_of_previous = 0
        for name, dtype_code, shape, begin, end in entries:
            if begin < end_of_previous:
                raise ValueError(f"{path} is corrupt: tensor {name!r} overlaps the one before it")
            end_of_previous = end
            f.seek(8 + header_size + begin)
            raw = np.empty(shape, dtype=_DTYPES[dtype_code])
            # numpy's stubs give ndarray the buffer protocol for Python 3.12+ only; mypy checks as 3.11.
            if raw.nbytes and f.readinto(memoryview(raw.reshape(-1)).cast("B")) != raw.nbytes:  # type: ignore[arg-type]
                raise ValueError(f"{path} is truncated: tensor {name!r} is cut short")
            tensors[name] = _to_native(raw, dtype_code)
    return tensors, dict(metadata)


def _safetensors_entry(path: str, name: str, info: Any, data_size: int) -> tuple[str, str, tuple[int, ...], int, int]:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ValueError(f"{path} is not a safetensors file: header entry {name!r} lacks dtype, shape or data_offsets")
    dtype_code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_code, str) or dtype_code not in _DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has dtype {_short.repr(dtype_code)}, which fastconv cannot read "
                         f"(it reads {', '.join(_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > _MAX_DIMS or not all(_count(v) for v in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(_count(v) for v in offsets) or offsets[0] > offsets[1]):
        raise ValueError(f"{path} is corrupt: tensor {name!r} has shape {_short.repr(shape)} "
                         f"and data_offsets {_short.repr(offsets)}")
    begin, end = offsets
    nbytes = math.prod(shape) * _DTYPES[dtype_code].itemsize
    if end - begin != nbytes:
        raise ValueError(f"{path} is corrupt: tensor {name!r} ({dtype_code}, shape {tuple(shape)}) needs "
                         f"{nbytes} bytes but its data_offsets span {end - begin}")
    if end > data_size:
        raise ValueError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the data, "
                         f"the file holds {data_size} bytes of data")
    return name, dtype_code, tuple(shape), begin, end


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, ArrayLike],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write {name: array} to a .safetensors file, atomically, in the given order.

    ``metadata``: a dict of strings stored as the header's ``__metadata__``.
    Arrays may be float16/32/64, (unsigned) integers or bool.
    """
    header: dict[str, Any] = {}
    arrays = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == _METADATA:
            raise ValueError(f"tensor names must be strings other than {_METADATA!r}, got {name!r}")
        array = np.asarray(value)  # not ascontiguousarray, which makes a 0-d array 1-d
        array = array if array.flags.c_contiguous else array.copy(order="C")
        code = _SAFETENSORS_CODES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold here")
        array = array.astype(_DTYPES[code], copy=False)
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError(f"safetensors metadata must map strings to strings, got {metadata!r}")
        header[_METADATA] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned, as the reference writer does

    def write(f: IO[bytes]) -> None:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for array in arrays:
            # numpy's stubs give ndarray the buffer protocol for Python 3.12+ only; mypy checks as 3.11.
            f.write(memoryview(array.reshape(-1)).cast("B"))  # type: ignore[arg-type]

    return atomic_write(os.fspath(path), write)
