"""Atomic file writes: every file fastconv writes goes through here, so a crash
or a kill never leaves a half-written model, checkpoint, history or figure."""
import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path, write):
    """Call write(binary_file) on a temporary file beside path, flush it to disk,
    then rename it over path. Returns path as a Path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
