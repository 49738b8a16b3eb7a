"""Files: every file fastconv writes goes through :func:`atomic_write`, so a
crash or a kill never leaves a half-written model, checkpoint, history or
figure; every ``.npz`` it reads goes through :func:`open_npz`, so a damaged
or foreign file gives one line naming it."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, BinaryIO

    from numpy.lib.npyio import NpzFile

__all__ = ["atomic_write", "write_json", "open_npz", "make_parent", "check_replaceable"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call write(binary_file) on a temporary file beside path, flush it to disk,
    then rename it over path. Returns path as a Path."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        # Name the file the user asked for, not the temporary one beside it.
        raise type(error)(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno is not None:
            # A full disk (or a file-size limit) fails a write with "No space
            # left on device" ("File too large") alone: name the file, which
            # is left as it was.
            named = type(error)(f"cannot write {path}: {error.strerror or error}")
            named.errno = error.errno
            raise named from None
        raise
    return path


def make_parent(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` goes into, if it is missing, but only that
    last level: a mistyped ``--out /nonexistent/dir/x.png`` should be an
    error, not a new tree at the root of the filesystem. Returns path as a Path."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
        if not parent.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: the folder {parent.parent} does not exist")
        parent.mkdir(exist_ok=True)
    return path


def check_replaceable(path: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """Refuse to write over an existing file that is not of the kind being
    written (``--out README.md`` for a figure): it is the user's, not ours.
    Returns path as a Path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file name ending in {suffixes[0]}")
    if path.exists() and path.suffix.lower() not in suffixes:
        raise FileExistsError(f"{path} exists and is not a {suffixes[0]} file; not replacing it "
                              f"(give a name ending in {suffixes[0]})")
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write data as indented JSON (with a final newline) to path atomically; returns path as a Path."""
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# zipfile reports some damage as NotImplementedError (a garbled compression
# method or version) or RuntimeError (a garbled flag that reads as encryption);
# NumPy as ValueError (a garbled array header) and EOFError (a short array).
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)
_FOREIGN = (ValueError, TypeError, KeyError, AttributeError)


def _reason(error: BaseException) -> str:
    """Why an archive could not be read, in words that never advise unpickling."""
    text = " ".join(str(error).split())
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else ""
        if isinstance(key, str) and key.endswith(" is not a file in the archive"):
            key = key[:-len(" is not a file in the archive")]
        return f"it has no {key!r} entry"
    if "pickle" in text:
        # NumPy's message here advises allow_pickle=True, which would run code from the file.
        return "it holds pickled Python objects, which fastconv never loads"
    if isinstance(error, _DAMAGE):
        return f"it is damaged or truncated ({text or type(error).__name__})"
    return text or type(error).__name__


@contextlib.contextmanager
def open_npz(path: str | os.PathLike, what: str = "fastconv model",
             error: type[ValueError] = ValueError) -> Iterator[NpzFile]:
    """``with open_npz(path) as archive:`` reads an ``.npz`` archive (NumPy's
    NpzFile) without ever unpickling.

    A missing file raises FileNotFoundError. A file that is damaged (truncated,
    garbled), is not an ``.npz`` archive, holds pickled objects, or lacks an
    entry the ``with`` block reads -- any ValueError, KeyError, TypeError,
    AttributeError, EOFError, OSError, zipfile or zlib error raised inside the
    block -- raises one ``error`` (a ValueError subclass): "PATH is not a
    readable WHAT: why".
    """
    import numpy as np

    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            head = f.read(6)
            f.seek(0)
            if not head:
                raise _NotAnArchive("it is empty")
            if head.startswith(b"\x93NUMPY"):
                raise _NotAnArchive("it holds a single array, not an .npz archive")
            if not head.startswith(b"PK"):
                # NumPy would try to unpickle it and advise allow_pickle=True.
                raise _NotAnArchive("it is not an .npz archive")
            with np.load(f, allow_pickle=False) as archive:
                yield archive
        except _NotAnArchive as reason:
            raise error(f"{path} is not a readable {what}: {reason}") from None
        except _DAMAGE + _FOREIGN as problem:
            raise error(f"{path} is not a readable {what}: {_reason(problem)}") from None


class _NotAnArchive(Exception):
    pass
