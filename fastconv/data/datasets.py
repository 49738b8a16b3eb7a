"""Data sets: MNIST, Fashion-MNIST, CIFAR-10 and image folders, as uint8 NCHW arrays.

One entry point, ``load_dataset(name, data_dir=None)``, returns a ``Dataset``
with ``x_train, y_train, x_test, y_test`` (images uint8 of shape (N, C, H, W),
labels int64) and ``classes`` (the class names). Names:

``mnist``, ``fashion-mnist``
    The four canonical IDX files (gzip'd or not).
``mnist-sample``
    The first 10,000 training and 2,000 test images of MNIST, shipped with
    the package, so that the demo runs offline.
``cifar10``
    The canonical python batches (``cifar-10-batches-py/``), as a folder or
    as the ``cifar-10-python.tar.gz`` archive itself.
``folder:PATH``
    ``PATH/<class>/<image>`` (PNG, JPEG, anything Pillow reads), or a .tar /
    .tar.gz / .tgz of such a tree, which is extracted into the cache folder.
    Decoded arrays are cached as .npz, keyed by the file list, sizes and
    modification times. A folder has no test split: the last
    ``test_fraction`` of each class (in file-name order) is held out.

Where files are looked for: ``data_dir`` when given, otherwise the per-user
cache folder (``$FASTCONV_DATA``, else ``$XDG_CACHE_HOME/fastconv``, else
``~/.cache/fastconv``), then known system locations (Debian's
``dataset-fashion-mnist`` package installs into
``/usr/share/datasets/fashion-mnist``). Missing files are downloaded from the
official mirrors into ``data_dir`` or the cache folder, each checked against
its published SHA-256; without a network the error says where to put them.

Files found on disk are not checksummed (repackaged copies differ in their
gzip wrapper only); they are validated instead: magic numbers, dimensions,
lengths, label ranges.

Preparation for training lives here too: a seeded stratified split
(``stratified_split``), per-channel normalization (``Normalize``) and
batch-vectorized augmentation (``Augment``).
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import math
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from fastconv._files import atomic_write
from fastconv.data.transforms import resize_and_crop

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from numpy.typing import ArrayLike

__all__ = [
    "DataError", "Dataset", "DATASET_NAMES", "load_dataset",
    "read_idx", "load_idx_dataset", "load_cifar10", "load_image_folder", "load_folder_dataset",
    "held_out_split",
    "download", "user_data_dir", "search_dirs",
    "stratified_split", "limited", "short_name", "cache_info", "clear_cache",
]

DATASET_NAMES = ("mnist", "mnist-sample", "fashion-mnist", "cifar10", "folder:PATH")

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Remote:
    """Where a data set's files are published and their SHA-256 there."""

    mirrors: list[str]
    sha256: dict[str, str]


# The checksums are those of the files as the mirrors serve them.
REMOTES = {
    "mnist": Remote(
        mirrors=[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": Remote(
        mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
    "cifar10": Remote(
        mirrors=["https://www.cs.toronto.edu/~kriz/"],
        sha256={"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
    ),
}

SYSTEM_DIRS: dict[str, list[Path]] = {
    "mnist": [],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "cifar10": [],
}

# Sub-folders of a data folder where a data set may sit: ours first, then
# the layout torchvision leaves behind, so an existing download is reused.
SUBDIRS = {
    "mnist": ["mnist", "MNIST/raw", "."],
    "fashion-mnist": ["fashion-mnist", "FashionMNIST/raw", "."],
    "cifar10": ["cifar10", "."],
}

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
FOLDER_CACHE_VERSION = 1


class DataError(RuntimeError):
    """A data set is missing, truncated, corrupt or not what its name says."""


@dataclass
class Dataset:
    """Images as uint8 (N, C, H, W), labels as int64, and the class names."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    test_split: str = "the data set's test split"
    source: str = ""
    skipped: list[Path] = field(default_factory=list)  # unreadable files left out (folder data sets)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """How many classes the labels count (the length of ``classes``)."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {self.x_train.shape}, test {self.x_test.shape}, "
            f"{self.num_classes} classes, from {self.source or '?'})"
        )


# ---------------------------------------------------------------- locations


def user_data_dir() -> Path:
    """The per-user data folder: $FASTCONV_DATA, else $XDG_CACHE_HOME/fastconv, else ~/.cache/fastconv."""
    env = os.environ.get("FASTCONV_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastconv"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the named data set, in order."""
    bases = [Path(data_dir).expanduser()] if data_dir is not None else [user_data_dir()]
    dirs: list[Path] = []
    for base in bases:
        dirs += [(base / sub) for sub in SUBDIRS[name]]
    dirs += SYSTEM_DIRS[name]
    unique = []
    for d in dirs:
        d = Path(os.path.normpath(d))
        if d not in unique:
            unique.append(d)
    return unique


def _download_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    base = Path(data_dir).expanduser() if data_dir is not None else user_data_dir()
    return base / SUBDIRS[name][0]


# ---------------------------------------------------------------- download


def _sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 30, progress: bool | None = None) -> Path:
    """Download url to dest, verifying its SHA-256; return dest.

    The file is written under a temporary name in dest's folder and renamed
    only once its checksum matches, so dest is never a partial or wrong file.
    Raises DataError on a network error or a checksum mismatch.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    digest = hashlib.sha256()

    def receive(out: IO[bytes]) -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                bar = tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B", unit_scale=True, desc=f"downloading {dest.name}",
                    disable=None if progress is None else not progress, leave=False,
                )
                with bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as exc:
            raise DataError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            # "[Errno -2] Name or service not known" -> "name or service not known"
            text = getattr(reason, "strerror", None) or str(reason)
            raise DataError(f"could not download {url}: {text[:1].lower()}{text[1:]}") from None
        actual = digest.hexdigest()
        if actual != sha256:
            raise DataError(
                f"{url} has SHA-256 {actual}, expected {sha256}: the download is corrupt or "
                f"not the published file; it was not kept"
            )

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, receive)
    except OSError as exc:
        raise DataError(f"cannot write the download to {dest.parent}: {exc.strerror or exc}") from None
    return dest


def _fetch(name: str, filenames: Iterable[str], data_dir: str | os.PathLike | None) -> tuple[Path | None, list[str]]:
    """Download the named data set's files into its download folder; return that folder."""
    remote = REMOTES[name]
    target = _download_dir(name, data_dir)
    failures = []
    for filename in filenames:
        if (target / filename).exists():
            continue
        for mirror in remote.mirrors:
            print(f"downloading {mirror + filename} to {target}", file=sys.stderr)
            try:
                download(mirror + filename, target / filename, remote.sha256[filename])
                break
            except DataError as exc:
                failures.append(str(exc))
        else:
            return None, failures
    return target, failures


def _not_found(name: str, looked_in: Iterable[Path], wanted: Iterable[str], failures: Sequence[str],
               data_dir: str | os.PathLike | None) -> DataError:
    target = _download_dir(name, data_dir)
    why = f" Download failed: {failures[-1]}." if failures else ""
    return DataError(
        f"{name} not found (looked in {', '.join(str(d) for d in looked_in)}).{why} "
        f"Put {', '.join(wanted)} in {target} (or pass --data-dir / data_dir=)."
    )


# ---------------------------------------------------------------- IDX files

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


def _read_maybe_compressed(path: str | os.PathLike) -> bytes:
    """The bytes of a file, decompressed when it is gzip'd (detected from its content)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path} is a truncated or corrupt gzip file ({exc})") from None


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip'd or not) into an array of its native shape.

    Checks the magic number (two zero bytes, a type code, the number of
    dimensions), that the length matches the dimensions exactly, and,
    when given, the number of dimensions.
    """
    path = Path(path)
    data = _read_maybe_compressed(path)
    if len(data) < 4:
        raise DataError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path} is not an IDX file: magic number 0x{struct.unpack('>I', data[:4])[0]:08x}"
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path} holds a {ndim}-D array, expected {expect_ndim}-D")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    # Python ints: four 32-bit extents can multiply past 2**63, where an int64
    # product would wrap around (65536**4 wraps to 0) and pass the length check.
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise DataError(
            f"{path} is truncated: {len(data)} bytes, expected {expected} for an array of shape {shape}"
        )
    if len(data) > expected:
        raise DataError(
            f"{path} is corrupt: {len(data)} bytes, expected {expected} for an array of shape {shape}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The path of an IDX file in folder under any of its usual names, or None."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        path = folder / name
        if path.is_file():
            return path
    return None


def _check_labels(labels: np.ndarray, num_classes: int, source: str | os.PathLike) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{source} holds label {int(bad)}, outside 0..{num_classes - 1}")


def _idx_images_and_labels(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} values, expected unsigned bytes")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} has {labels.shape[0]} labels but {images_path} has {images.shape[0]} images"
        )
    labels = labels.astype(np.int64)
    _check_labels(labels, num_classes, labels_path)
    return images[:, None, :, :], labels


def load_idx_dataset(folder: str | os.PathLike, name: str = "mnist", classes: Iterable[str] | None = None) -> Dataset:
    """Load the four canonical IDX files from folder into a Dataset."""
    folder = Path(folder)
    classes = list(classes if classes is not None else MNIST_CLASSES)
    paths: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(folder, stem)
        if path is None:
            raise DataError(f"{folder} has no {stem}.gz (nor {stem})")
        paths[key] = path
    x_train, y_train = _idx_images_and_labels(paths["train_images"], paths["train_labels"], len(classes))
    x_test, y_test = _idx_images_and_labels(paths["test_images"], paths["test_labels"], len(classes))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{paths['train_images']} holds {x_train.shape[2:]} images but "
            f"{paths['test_images']} holds {x_test.shape[2:]}"
        )
    return Dataset(name, x_train, y_train, x_test, y_test, classes, source=str(folder))


def _load_idx_named(name: str, classes: list[str], data_dir: str | os.PathLike | None,
                    download_missing: bool) -> Dataset:
    looked = search_dirs(name, data_dir)
    folder: Path | None
    for folder in looked:
        if all(_find_idx(folder, stem) for stem in IDX_FILES.values()):
            return load_idx_dataset(folder, name, classes)
    wanted = [stem + ".gz" for stem in IDX_FILES.values()]
    failures: list[str] = []
    if download_missing:
        folder, failures = _fetch(name, wanted, data_dir)
        if folder is not None:
            return load_idx_dataset(folder, name, classes)
    raise _not_found(name, looked, wanted, failures, data_dir)


# ---------------------------------------------------------------- CIFAR-10

CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_FILES = CIFAR_TRAIN_BATCHES + ["test_batch", "batches.meta"]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches only: dicts, lists, bytes and NumPy arrays.

    A pickle can run any callable it names; this one refuses every global
    except those that rebuild an ndarray, so a doctored file cannot execute code.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(data: bytes, source: str | os.PathLike) -> dict[str, Any]:
    import io

    try:
        obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # a damaged pickle can raise nearly anything
        raise DataError(f"{source} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{source} is not a CIFAR-10 batch: it holds a {type(obj).__name__}, not a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_batch(data: bytes, source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, source)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{source} is not a CIFAR-10 batch: it has no 'data' or no 'labels' entry")
    images = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{source}: 'data' is {images.dtype} of shape {images.shape}, expected uint8 (N, 3072)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{source}: {labels.shape} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    _check_labels(labels, 10, source)
    return images.reshape(-1, 3, 32, 32), labels


def _cifar_members_from_tar(path: Path) -> dict[str, bytes]:
    """The bytes of the CIFAR-10 files inside the archive, read in one pass."""
    found = {}
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in CIFAR_FILES and base not in found:
                    extracted = archive.extractfile(member)
                    assert extracted is not None  # a regular file always has a file object
                    found[base] = extracted.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise DataError(f"{path} is a truncated or corrupt archive ({exc})") from None
    missing = [name for name in CIFAR_FILES if name not in found]
    if missing:
        raise DataError(f"{path} has no {missing[0]}: not a cifar-10-python archive")
    return found


def load_cifar10(path: str | os.PathLike) -> Dataset:
    """Load CIFAR-10 from a cifar-10-batches-py folder or a cifar-10-python.tar.gz archive."""
    path = Path(path)
    if path.is_dir():
        contents = {}
        for name in CIFAR_FILES:
            member = path / name
            if not member.is_file():
                raise DataError(f"{path} has no {name}: not a cifar-10-batches-py folder")
            contents[name] = member.read_bytes()
        source = lambda name: path / name  # noqa: E731
    else:
        contents = _cifar_members_from_tar(path)
        source = lambda name: f"{name} in {path}"  # noqa: E731
    parts = [_cifar_batch(contents[name], source(name)) for name in CIFAR_TRAIN_BATCHES]
    x_test, y_test = _cifar_batch(contents["test_batch"], source("test_batch"))
    meta = _unpickle(contents["batches.meta"], source("batches.meta"))
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{source('batches.meta')} has no list of 10 label_names")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, classes, source=str(path))


def _find_cifar(folder: Path) -> Path | None:
    for candidate in (folder / "cifar-10-batches-py", folder):
        if (candidate / "data_batch_1").is_file():
            return candidate
    archive = folder / "cifar-10-python.tar.gz"
    return archive if archive.is_file() else None


def _load_cifar_named(data_dir: str | os.PathLike | None, download_missing: bool) -> Dataset:
    looked = search_dirs("cifar10", data_dir)
    folder: Path | None
    for folder in looked:
        found = _find_cifar(folder)
        if found is not None:
            return load_cifar10(found)
    wanted = ["cifar-10-python.tar.gz"]
    failures: list[str] = []
    if download_missing:
        folder, failures = _fetch("cifar10", wanted, data_dir)
        if folder is not None:
            return load_cifar10(folder / wanted[0])
    raise _not_found("cifar10", looked, wanted + ["(or the extracted cifar-10-batches-py/)"], failures, data_dir)


# ---------------------------------------------------------------- image folders


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _scan_folder(root: Path) -> list[tuple[str, list[Path]]]:
    """[(class name, [image paths])] of root/<class>/<image>, sorted by name."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    if not class_dirs:
        raise DataError(f"{root} has no class folders: expected {root}/<class>/<image>")
    scanned = []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.iterdir() if not _is_hidden(p))
        for p in files:
            if p.is_dir():
                raise DataError(f"{p} is a folder inside a class folder: expected {root}/<class>/<image>")
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{p} is not an image file (expected PNG, JPEG, ...)")
        if not files:
            raise DataError(f"class folder {class_dir} is empty")
        scanned.append((class_dir.name, files))
    return scanned


def _folder_key(root: Path, scanned: Iterable[tuple[str, Iterable[Path]]], image_size: int | None,
                skip_bad: bool) -> str:
    digest = hashlib.sha256(f"v{FOLDER_CACHE_VERSION}\t{image_size}\t{skip_bad}\n".encode())
    for class_name, files in scanned:
        for p in files:
            st = p.stat()
            digest.update(f"{class_name}/{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


# How many unreadable files an error names before it says how many more there are.
_LISTED_BAD_FILES = 10


def _decode_images(scanned: Iterable[tuple[str, Iterable[Path]]], image_size: int | None = None,
                   skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """(x uint8 NCHW, y int64, unreadable paths) of the scanned files.

    Every file is tried before an unreadable one stops the load, so that one
    error lists them all; with ``skip_bad`` they are left out instead.
    ``image_size`` brings every image to that square side (shorter side
    resized to it, then the centre cut out); without it the images must
    already share one size.
    """
    from PIL import Image, UnidentifiedImageError

    decoded, labels, bad, grey = [], [], [], True
    first_size = first_path = mismatch = None
    for label, (_, files) in enumerate(scanned):
        for path in files:
            try:
                with Image.open(path) as img:
                    img.load()
                    is_grey = img.mode in ("1", "L", "I;16", "I", "F") and "transparency" not in img.info
                    array = np.asarray(img.convert("L" if is_grey else "RGB"))
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                bad.append(path)
                continue
            if image_size is not None:
                array = resize_and_crop(array, size=image_size, resize=image_size)
            elif first_size is None:
                first_size, first_path = array.shape[:2], path
            elif array.shape[:2] != first_size:
                # Said after the unreadable files, which every file is tried for.
                mismatch = mismatch or DataError(
                    f"{path} is {array.shape[1]}x{array.shape[0]} but {first_path} is "
                    f"{first_size[1]}x{first_size[0]}: the images of a folder data set must all have one size "
                    "(--image-size N resizes each to N x N: shorter side to N, then the centre)"
                )
                continue
            grey &= is_grey
            decoded.append(array)
            labels.append(label)
    if bad and not skip_bad:
        listed = ", ".join(str(p) for p in bad[:_LISTED_BAD_FILES])
        more = f" and {len(bad) - _LISTED_BAD_FILES} more" if len(bad) > _LISTED_BAD_FILES else ""
        raise DataError(f"{len(bad)} file{'s are' if len(bad) > 1 else ' is'} not a readable image: "
                        f"{listed}{more} (--skip-bad-images leaves them out)")
    if mismatch is not None:
        raise mismatch
    if not decoded:
        raise DataError(f"none of the {len(bad)} images could be read")
    if grey:
        x = np.stack(decoded)[:, None, :, :]
    else:
        x = np.stack([a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in decoded])
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, np.asarray(labels, dtype=np.int64), bad


def _atomic_savez(path: str | os.PathLike, **arrays: ArrayLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mypy checks a **dict against savez's keyword allow_pickle too; the keys here are array names.
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]


def _check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image size must be a positive number of pixels, got {image_size!r}")
    return int(image_size)


def load_image_folder(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      image_size: int | None = None,
                      skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode root/<class>/<image> into (x uint8 NCHW, y int64, class names).

    Class labels follow the sorted class folder names; images within a class
    follow sorted file names. Greyscale-only folders give one channel, any
    colour image makes all of them RGB. Hidden files are ignored; any other
    non-image file, an empty class folder or images of different sizes raise
    DataError naming the file; unreadable images are all listed in one
    DataError, or left out with ``skip_bad``. ``image_size`` N brings every
    image to N x N (shorter side resized to N, then the centre cut out). The
    decoded arrays are cached in cache_dir (default: the user data folder,
    see :func:`cache_info`) keyed by the file list, sizes, modification times
    and these options.
    """
    return _load_image_folder(root, cache_dir, image_size, skip_bad)[:3]


def _load_image_folder(root: str | os.PathLike, cache_dir: str | os.PathLike | None, image_size: int | None,
                       skip_bad: bool) -> tuple[np.ndarray, np.ndarray, list[str], list[Path]]:
    """load_image_folder's result and the unreadable files it left out."""
    root = Path(root)
    image_size = _check_image_size(image_size)
    scanned = _scan_folder(root)
    cache_dir = Path(cache_dir) if cache_dir is not None else _folder_cache_dir()
    cache = cache_dir / f"{root.name}-{_folder_key(root, scanned, image_size, skip_bad)}.npz"
    classes = [name for name, _ in scanned]
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                x, y, cached_classes = f["x"], f["y"], [str(c) for c in f["classes"]]
                skipped = [Path(s) for s in f["skipped"]] if "skipped" in f.files else []
            if cached_classes == classes:
                return x, y, classes, skipped
        # zipfile reports some damage as NotImplementedError (a garbled
        # compression method or version) or RuntimeError (a garbled flag that
        # reads as encryption).
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile,
                NotImplementedError, RuntimeError):
            pass  # a damaged cache is simply rebuilt
    x, y, skipped = _decode_images(scanned, image_size, skip_bad)
    # What a process killed while writing this cache left: as large as the cache.
    for stale in cache_dir.glob(f".{cache.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass
    try:
        _atomic_savez(cache, x=x, y=y, classes=np.array(classes), skipped=np.array([str(p) for p in skipped]))
    except OSError:
        pass  # a read-only cache folder only costs speed
    return x, y, classes, skipped


def _folder_cache_dir() -> Path:
    return user_data_dir() / "folder-cache"


def _extracted_dir() -> Path:
    return user_data_dir() / "extracted"


def cache_info() -> list[dict[str, Any]]:
    """Where decoded folder data sets and extracted archives are cached, and how much each holds.

    A list of dicts ``{"what", "path", "files", "bytes"}``; a folder that does
    not exist yet has 0 files. Everything there is rebuilt on demand, so
    :func:`clear_cache` loses no data.
    """
    rows = []
    for what, folder in (("decoded image folders", _folder_cache_dir()), ("extracted archives", _extracted_dir())):
        files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        rows.append({"what": what, "path": folder, "files": len(files),
                     "bytes": sum(p.stat().st_size for p in files)})
    return rows


def clear_cache() -> int:
    """Delete the cached decoded folders and extracted archives; returns the bytes freed.

    Only those two folders of the user data folder are touched: downloaded
    data sets (MNIST, CIFAR-10, ...) beside them stay.
    """
    freed = 0
    for row in cache_info():
        if row["path"].is_dir():
            freed += row["bytes"]
            shutil.rmtree(row["path"])
    return freed


def _extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract a .tar[.gz] once into the cache folder; return the extracted folder."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}\t{st.st_size}\t{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = archive.name.split(".")[0]
    target = cache_dir / f"{stem}-{key}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=cache_dir))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:
                for member in tar.getmembers():
                    name = Path(member.name)
                    if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                        raise DataError(f"{archive} holds an unsafe entry {member.name!r}")
                tar.extractall(tmp)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        raise DataError(f"{archive} is a truncated or corrupt archive ({exc})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _single_child_descent(folder: Path) -> Path:
    """Descend through folders that hold nothing but one sub-folder (archive wrappers)."""
    while True:
        entries = [p for p in folder.iterdir() if not _is_hidden(p)]
        if len(entries) == 1 and entries[0].is_dir():
            sub = [p for p in entries[0].iterdir() if not _is_hidden(p)]
            if sub and all(p.is_dir() for p in sub):
                folder = entries[0]
                continue
        return folder


def _is_archive(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def held_out_split(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): the last ceil(fraction * n_c) items of each class c.

    ``kept`` is in the original order. ``held_out`` goes round the classes: the
    first held-out item of each class, then the second of each, and so on. An
    image folder is read class by class, and the analysis tools take the first
    ``--limit`` test images: in folder order those would all be one class.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {fraction!r}")
    kept, held, rank = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_held = min(len(idx) - 1, int(np.ceil(fraction * len(idx))))
        cut = len(idx) - n_held
        kept.append(idx[:cut])
        held.append(idx[cut:])
        rank.append(np.arange(n_held))
    held_all, rank_all = np.concatenate(held), np.concatenate(rank)
    # Sort by rank within the class, then by class (held is in class order).
    return np.sort(np.concatenate(kept)), held_all[np.argsort(rank_all, kind="stable")]


def load_folder_dataset(path: str | os.PathLike, test_fraction: float = 0.1, image_size: int | None = None,
                        skip_bad_images: bool = False) -> Dataset:
    """A Dataset from an image folder (or a tar archive of one) with a held-out test part.

    The test part is the last ``test_fraction`` of each class; 0 holds
    nothing out (every image trains, and the test split is empty).
    ``image_size`` and ``skip_bad_images`` are :func:`load_image_folder`'s
    ``image_size`` and ``skip_bad``; the images left out are listed in the
    Dataset's ``skipped``.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    # The cache lives in the user folder even when data_dir is given: data_dir
    # may be a read-only shared copy.
    root = path
    if _is_archive(path):
        root = _extract_archive(path, _extracted_dir())
    elif path.is_file():
        raise DataError(f"{path} is neither a folder nor a .tar/.tar.gz archive of one")
    root = _single_child_descent(root)
    x, y, classes, skipped = _load_image_folder(root, _folder_cache_dir(), image_size, skip_bad_images)
    if len(classes) < 2:
        raise DataError(f"{root} has one class folder ({classes[0]}); a classifier needs at least two")
    small = [classes[c] for c in range(len(classes)) if np.count_nonzero(y == c) < 2]
    if small:
        raise DataError(f"class folder {root / small[0]} has one image; each class needs at least two to hold one out")
    if test_fraction == 0:
        return Dataset(f"folder:{path}", x, y, x[:0], y[:0], classes,
                       test_split="none (--test-fraction 0: every image trains)", source=str(root), skipped=skipped)
    kept, held = held_out_split(y, test_fraction)
    return Dataset(
        f"folder:{path}", x[kept], y[kept], x[held], y[held], classes,
        test_split=f"the last {test_fraction:.0%} of each class, held out (classes interleaved)",
        source=str(root), skipped=skipped,
    )


# ---------------------------------------------------------------- entry point


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
                 test_fraction: float = 0.1, image_size: int | None = None, skip_bad_images: bool = False) -> Dataset:
    """Load a data set by name: mnist, mnist-sample, fashion-mnist, cifar10 or folder:PATH.

    Returns a Dataset with uint8 NCHW images and int64 labels. Raises
    DataError (one line, naming the file or folder) when the data is missing,
    truncated or corrupt. ``image_size`` and ``skip_bad_images`` apply to
    ``folder:`` data sets (:func:`load_folder_dataset`).
    """
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    if name.startswith("folder:"):
        return load_folder_dataset(name[len("folder:"):], test_fraction, image_size, skip_bad_images)
    if image_size is not None or skip_bad_images:
        option = "image size" if image_size is not None else "skipping unreadable images"
        raise DataError(f"{option} applies to folder: data sets; {name} has images of one size, all readable")
    if name == "mnist-sample":
        ds = load_idx_dataset(SAMPLE_DIR, "mnist-sample", MNIST_CLASSES)
        ds.test_split = "the first 2,000 images of the MNIST test split"
        return ds
    if name == "mnist":
        return _load_idx_named("mnist", MNIST_CLASSES, data_dir, download)
    if name == "fashion-mnist":
        return _load_idx_named("fashion-mnist", FASHION_CLASSES, data_dir, download)
    if name == "cifar10":
        return _load_cifar_named(data_dir, download)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")


# ---------------------------------------------------------------- preparation


def stratified_split(labels: ArrayLike, fraction: float,
                     seed: np.random.Generator | int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with round(fraction * n_c) items of each class c in val.

    The items of each class are shuffled with numpy.random.default_rng(seed),
    so the split depends on the seed and the labels only. Both index arrays
    are sorted.
    """
    labels = np.asarray(labels)
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def limited(n: int, limit: int) -> np.ndarray:
    """Indices of the --limit subset: ``limit`` of n items drawn at random (always the same), in order.

    Random rather than the first ones, because a folder data set is sorted by class.
    """
    if limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def short_name(name: str) -> str:
    """A data set's name for figure titles: a folder's base name rather than its whole path."""
    return f"folder {Path(name[len('folder:'):]).name}" if name.startswith("folder:") else name
