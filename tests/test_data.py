"""Data sets: IDX, CIFAR-10 batches and image folders written here in their exact
formats, the real MNIST / Fashion-MNIST / CIFAR-10 copies when present, downloads
against a local HTTP server, and the preparation helpers."""
import gzip
import hashlib
import http.server
import os
import pickle
import struct
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastconv.data import Augment, DataError, Normalize, held_out_split, load_dataset, read_idx, stratified_split
from fastconv.data import datasets as data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_MNIST = SHARED / "mnist"
REAL_CIFAR_JPEG = SHARED / "cifar10" / "cifar10-train-jpeg.tar.gz"
FASHION = Path("/usr/share/datasets/fashion-mnist")

needs_mnist = pytest.mark.skipif(not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                                 reason=f"the real MNIST is not at {REAL_MNIST}")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST is not installed at {FASHION} "
                                          f"(apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own user data folder, never the real ~/.cache."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("FASTCONV_DATA", str(cache))
    return cache


# ---------------------------------------------------------------- writers


def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    return (struct.pack(">HBB", 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.astype(array.dtype.newbyteorder(">")).tobytes())


def write_idx(path, array, compress):
    payload = idx_bytes(array)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_mnist_like(folder, n_train=40, n_test=12, compress=True, seed=0, side=28):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, stem in data.IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if compress else "")), arrays[key], compress)
    return arrays


def py2_pickle(batch):
    """A CIFAR batch pickled as the published files are: Python 2, protocol 2, str = bytes.

    Python 3's pickler cannot write Python 2 strings, so the opcodes are
    emitted here directly (SHORT_BINSTRING/BINSTRING for the keys, the
    dtype code and the raw pixel data).
    """
    def string(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)

    def integer(i):
        return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)

    def array(a):
        out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b")
        out += b"\x87R"
        out += b"(" + integer(1) + b"".join(integer(d) for d in a.shape) + {1: b"\x85", 2: b"\x86"}[a.ndim]
        out += b"cnumpy\ndtype\n" + string(b"u1") + b"\x89\x88\x87R"
        out += b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        out += b"\x89" + string(a.tobytes()) + b"tb"
        return out

    out = b"\x80\x02}("
    for key, value in batch.items():
        out += string(key)
        if isinstance(value, np.ndarray):
            out += array(value)
        elif isinstance(value, bytes):
            out += string(value)
        else:
            out += b"](" + b"".join(integer(v) if isinstance(v, int) else string(v) for v in value) + b"e"
    return out + b"u."


def cifar_batches(per_batch=6, seed=0):
    rng = np.random.default_rng(seed)
    batches = {}
    for name in data.CIFAR_TRAIN_BATCHES + ["test_batch"]:
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
    meta = {b"num_cases_per_batch": [per_batch], b"label_names": [c.encode() for c in data.CIFAR10_CLASSES],
            b"num_vis": [3072]}
    return batches, meta


def write_cifar_folder(root, batches, meta, encode=py2_pickle):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(encode(batch))
    (folder / "batches.meta").write_bytes(encode(meta))
    return folder


def tar_folder(folder, archive, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=5, size=(12, 10), mode="L", fmt="PNG", seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            array = rng.integers(0, 256, shape, dtype=np.uint8)
            name = root / c / f"{i:03d}.{fmt.lower()}"
            Image.fromarray(array, mode=mode).save(name, format=fmt)
            pixels[name] = array
    return pixels


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_every_type(tmp_path, compress):
    rng = np.random.default_rng(1)
    cases = [
        (rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), 0x08),
        (rng.integers(-128, 128, (7,), dtype=np.int8), 0x09),
        (rng.integers(-30000, 30000, (2, 3), dtype=np.int16), 0x0B),
        (rng.integers(-2**31, 2**31, (4,), dtype=np.int32), 0x0C),
        (rng.standard_normal((2, 2)).astype(np.float32), 0x0D),
        (rng.standard_normal((3,)), 0x0E),
    ]
    for i, (array, code) in enumerate(cases):
        path = tmp_path / f"a{i}.idx"
        payload = idx_bytes(array, code)
        path.write_bytes(gzip.compress(payload) if compress else payload)
        got = read_idx(path)
        assert got.dtype == array.dtype.newbyteorder("=") and got.dtype.isnative
        np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_loads_as_nchw(tmp_path, compress):
    arrays = write_mnist_like(tmp_path / "m", compress=compress)
    ds = data.load_idx_dataset(tmp_path / "m")
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.shape == (12,)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.classes == [str(d) for d in range(10)]


def test_idx_files_under_the_dotted_names_unzipping_leaves(tmp_path):
    arrays = write_mnist_like(tmp_path / "m", compress=False)
    for stem in data.IDX_FILES.values():
        (tmp_path / "m" / stem).rename(tmp_path / "m" / stem.replace("-idx", ".idx"))
    ds = data.load_idx_dataset(tmp_path / "m")
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["test_images"])


def corrupt_cases():
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    return {
        "truncated payload": (good[:-100], "truncated"),
        "truncated header": (good[:10], "truncated"),
        "bad magic": (b"\x12\x34" + good[2:], "not an IDX file"),
        "unknown type code": (b"\x00\x00\x07\x03" + good[4:], "not an IDX file"),
        "trailing bytes": (good + b"\x00" * 5, "corrupt"),
        "empty": (b"", "truncated"),
    }


@pytest.mark.parametrize("case", sorted(corrupt_cases()))
@pytest.mark.parametrize("compress", [True, False])
def test_corrupt_idx_names_the_file(tmp_path, case, compress):
    payload, words = corrupt_cases()[case]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(DataError, match=words) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("shape", [(65536,) * 4, (2 ** 21, 2 ** 21, 2 ** 22), (2 ** 32 - 1,) * 3])
def test_idx_dimensions_whose_product_passes_int64_are_refused(tmp_path, shape):
    # 65536**4 = 2**64 wraps to 0 in an int64 product: the length check of a
    # header-only file would pass and reshape would fail without naming the file.
    path = tmp_path / "huge-idx"
    path.write_bytes(struct.pack(">HBB", 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape))
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    expected_size = int(np.prod(shape, dtype=object)) + 4 + 4 * len(shape)
    assert str(path) in str(info.value) and str(expected_size) in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    packed = gzip.compress(idx_bytes(np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28) % 251))
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF  # breaks the deflate stream or the CRC
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_mismatched_or_invalid_mnist_files(tmp_path):
    folder = tmp_path / "m"
    write_mnist_like(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8), True)
    with pytest.raises(DataError, match="39 labels.*40 images"):
        data.load_idx_dataset(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(40, 10, np.uint8), True)
    with pytest.raises(DataError, match="label 10, outside 0..9") as info:
        data.load_idx_dataset(folder)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((40, 2), np.uint8), True)
    with pytest.raises(DataError, match="2-D array, expected 1-D"):
        data.load_idx_dataset(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte.gz"):
        data.load_idx_dataset(folder)


def test_mnist_is_found_in_the_user_folder_and_the_torchvision_layout(tmp_path, private_cache):
    arrays = write_mnist_like(private_cache / "mnist", seed=3)
    ds = load_dataset("mnist")
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    other = tmp_path / "elsewhere"
    arrays = write_mnist_like(other / "FashionMNIST" / "raw", seed=4)
    ds = load_dataset("fashion-mnist", data_dir=other)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10


@needs_mnist
def test_real_mnist():
    ds = load_dataset("mnist", data_dir=SHARED)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    # The published class frequencies of MNIST.
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Digits are drawn on a black background with a white stroke.
    assert ds.x_train[:, :, 0, :].mean() < 1 and ds.x_train.max() == 255


@needs_mnist
def test_bundled_sample_is_the_head_of_real_mnist():
    sample = load_dataset("mnist-sample")
    real = load_dataset("mnist", data_dir=SHARED)
    assert sample.x_train.shape == (10000, 1, 28, 28) and sample.x_test.shape == (2000, 1, 28, 28)
    np.testing.assert_array_equal(sample.x_train, real.x_train[:10000])
    np.testing.assert_array_equal(sample.y_train, real.y_train[:10000])
    np.testing.assert_array_equal(sample.x_test, real.x_test[:2000])
    np.testing.assert_array_equal(sample.y_test, real.y_test[:2000])


def test_bundled_sample_is_shipped_and_small():
    sample = load_dataset("mnist-sample")
    assert len(sample.y_train) == 10000 and len(sample.y_test) == 2000
    assert set(np.unique(sample.y_train)) == set(range(10))
    size = sum(p.stat().st_size for p in data.SAMPLE_DIR.glob("*.gz"))
    assert size < 2.5e6


def test_sample_builder_cuts_the_head_and_is_reproducible(tmp_path):
    import subprocess
    import sys

    source = tmp_path / "source"
    arrays = write_mnist_like(source, n_train=10005, n_test=2001, compress=False, seed=9)
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_mnist_sample.py"
    out = tmp_path / "sample"
    subprocess.run([sys.executable, str(tool), "--source", str(source), "--out", str(out)],
                   check=True, capture_output=True)
    ds = data.load_idx_dataset(out)
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train_images"][:10000])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"][:2000])
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    subprocess.run([sys.executable, str(tool), "--source", str(source), "--out", str(out)],
                   check=True, capture_output=True)
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}, "the builder must be reproducible"


@needs_fashion
def test_real_fashion_mnist_from_the_debian_package():
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(FASHION)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.classes[9] == "Ankle boot"


# ---------------------------------------------------------------- CIFAR-10


def expected_cifar(batches):
    x = np.concatenate([batches[n][b"data"] for n in data.CIFAR_TRAIN_BATCHES])
    y = np.concatenate([batches[n][b"labels"] for n in data.CIFAR_TRAIN_BATCHES])
    return x, y


@pytest.mark.parametrize("encoding", ["python2", "python3"])
def test_cifar_from_the_batches_folder(tmp_path, encoding):
    batches, meta = cifar_batches()
    encode = py2_pickle if encoding == "python2" else partial(pickle.dumps, protocol=2)
    write_cifar_folder(tmp_path, batches, meta, encode)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    x, y = expected_cifar(batches)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_train.dtype == np.uint8
    # The rows hold the red plane, then green, then blue, each row-major.
    n, c, h, w = 7, 2, 5, 9
    assert ds.x_train[n, c, h, w] == x[n, c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(ds.x_train.reshape(30, -1), x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    assert ds.classes == data.CIFAR10_CLASSES


def test_cifar_from_the_archive_itself(tmp_path):
    batches, meta = cifar_batches(seed=2)
    folder = write_cifar_folder(tmp_path / "src", batches, meta)
    (tmp_path / "data").mkdir()
    archive = tar_folder(folder, tmp_path / "data" / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    before = sorted(p.name for p in archive.parent.iterdir())
    ds = load_dataset("cifar10", data_dir=tmp_path / "data")
    x, y = expected_cifar(batches)
    np.testing.assert_array_equal(ds.x_train.reshape(30, -1), x)
    np.testing.assert_array_equal(ds.x_test.reshape(6, -1), batches["test_batch"][b"data"])
    assert sorted(p.name for p in archive.parent.iterdir()) == before, "reading the archive writes nothing"


def test_cifar_truncated_archive_and_bad_batches_name_the_file(tmp_path):
    batches, meta = cifar_batches()
    folder = write_cifar_folder(tmp_path / "src", batches, meta)
    archive = tar_folder(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    cut = tmp_path / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt archive") as info:
        data.load_cifar10(cut)
    assert str(cut) in str(info.value)

    bad = {**batches["data_batch_3"], b"data": np.zeros((6, 3000), np.uint8)}
    (folder / "data_batch_3").write_bytes(py2_pickle(bad))
    with pytest.raises(DataError, match=r"data_batch_3.*\(6, 3000\)"):
        data.load_cifar10(folder)
    (folder / "data_batch_3").write_bytes(py2_pickle(batches["data_batch_3"])[:-40])
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR-10 batch"):
        data.load_cifar10(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="has no test_batch"):
        data.load_cifar10(folder)


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    batches, meta = cifar_batches()
    folder = write_cifar_folder(tmp_path, batches, meta)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        data.load_cifar10(folder)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- image folders


def test_image_folder_png_exact_and_jpeg_close(tmp_path):
    pngs = write_image_folder(tmp_path / "grey", mode="L", fmt="PNG")
    x, y, classes = data.load_image_folder(tmp_path / "grey", cache_dir=tmp_path / "cache")
    assert classes == ["cat", "dog", "owl"] and x.shape == (15, 1, 10, 12) and x.dtype == np.uint8
    assert y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    for i, (_, array) in enumerate(sorted(pngs.items())):
        np.testing.assert_array_equal(x[i, 0], array)

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "rgb" / c).mkdir(parents=True)
        for i in range(3):
            smooth = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
            Image.fromarray(smooth).save(tmp_path / "rgb" / c / f"{i}.jpg", quality=95)
    x, y, classes = data.load_image_folder(tmp_path / "rgb", cache_dir=tmp_path / "cache")
    assert x.shape == (6, 3, 32, 32)
    decoded = np.asarray(Image.open(tmp_path / "rgb" / "b" / "2.jpg").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(x[5], decoded)


def test_image_folder_mixing_grey_and_colour_gives_rgb(tmp_path):
    grey = write_image_folder(tmp_path, classes=("g",), per_class=2, mode="L")
    write_image_folder(tmp_path, classes=("h",), per_class=2, mode="RGB", seed=1)
    x, _, _ = data.load_image_folder(tmp_path, cache_dir=tmp_path / "cache")
    assert x.shape == (4, 3, 10, 12)
    first = grey[tmp_path / "g" / "000.png"]
    for c in range(3):
        np.testing.assert_array_equal(x[0, c], first)


def test_image_folder_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "f")
    cache = tmp_path / "cache"
    x1, y1, _ = data.load_image_folder(tmp_path / "f", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(scanned):
        raise AssertionError("decoded again although the folder did not change")

    monkeypatch.setattr(data, "_decode_images", no_decoding)
    x2, y2, _ = data.load_image_folder(tmp_path / "f", cache_dir=cache)
    np.testing.assert_array_equal(x1, x2)
    monkeypatch.undo()
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "user-cache"))

    changed = tmp_path / "f" / "dog" / "001.png"
    Image.fromarray(np.full((10, 12), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))
    x3, _, _ = data.load_image_folder(tmp_path / "f", cache_dir=cache)
    assert (x3[6, 0] == 7).all()
    assert len(list(cache.glob("*.npz"))) == 2


def garble_first_compression_method(path):
    """Give the first member of a zip archive an unknown compression method, as a
    damaged byte would: zipfile then raises NotImplementedError, not BadZipFile."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    raw[at + 10:at + 12] = struct.pack("<H", 99)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncated", "compression method", "not a zip"])
def test_a_damaged_folder_cache_is_rebuilt(tmp_path, damage):
    pngs = write_image_folder(tmp_path / "f")
    cache = tmp_path / "cache"
    data.load_image_folder(tmp_path / "f", cache_dir=cache)
    (cached,) = cache.glob("*.npz")
    if damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:200])
    elif damage == "compression method":
        garble_first_compression_method(cached)
    else:
        cached.write_bytes(b"PK\x03\x04 not a zip")
    x, _, _ = data.load_image_folder(tmp_path / "f", cache_dir=cache)
    for i, (_, array) in enumerate(sorted(pngs.items())):
        np.testing.assert_array_equal(x[i, 0], array)
    assert sorted(p.name for p in cache.iterdir()) == [cached.name], "rebuilt in place, no temporary left"
    with np.load(cached) as rebuilt:
        np.testing.assert_array_equal(rebuilt["x"], x)


@pytest.mark.parametrize("problem", ["text file", "empty class", "corrupt image", "other size", "no classes"])
def test_image_folder_errors_name_the_culprit(tmp_path, problem):
    root = tmp_path / "f"
    write_image_folder(root)
    if problem == "text file":
        culprit = root / "dog" / "notes.txt"
        culprit.write_text("not an image")
    elif problem == "empty class":
        culprit = root / "zebra"
        culprit.mkdir()
    elif problem == "corrupt image":
        culprit = root / "owl" / "002.png"
        culprit.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif problem == "other size":
        culprit = root / "owl" / "004.png"
        Image.fromarray(np.zeros((11, 12), np.uint8)).save(culprit)
    else:
        root = culprit = tmp_path / "flat"
        root.mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "lonely.png")
    with pytest.raises(DataError) as info:
        data.load_image_folder(root, cache_dir=tmp_path / "cache")
    assert str(culprit) in str(info.value)


def test_hidden_files_are_ignored(tmp_path):
    write_image_folder(tmp_path / "f", per_class=2)
    (tmp_path / "f" / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / "f" / ".git").mkdir()
    x, _, classes = data.load_image_folder(tmp_path / "f", cache_dir=tmp_path / "cache")
    assert len(x) == 6 and classes == ["cat", "dog", "owl"]


def test_folder_dataset_from_an_archive_holds_out_each_class(tmp_path, private_cache):
    source = tmp_path / "src"
    pixels = write_image_folder(source / "pets" / "train", per_class=10, mode="RGB", fmt="PNG")
    (tmp_path / "shared").mkdir()
    archive = tar_folder(source / "pets", tmp_path / "shared" / "pets.tar.gz", "pets")
    # Read-only, as the shared data is: the loader must extract into its cache.
    os.chmod(tmp_path / "shared", 0o555)
    try:
        ds = load_dataset(f"folder:{archive}")
    finally:
        os.chmod(tmp_path / "shared", 0o755)
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["pets.tar.gz"]
    assert ds.classes == ["cat", "dog", "owl"]
    assert ds.x_train.shape == (27, 3, 10, 12) and ds.x_test.shape == (3, 3, 10, 12)
    assert ds.y_test.tolist() == [0, 1, 2]
    # The held-out image of each class is its last file.
    last_cat = pixels[source / "pets" / "train" / "cat" / "009.png"]
    np.testing.assert_array_equal(ds.x_test[0].transpose(1, 2, 0), last_cat)
    assert (private_cache / "extracted").is_dir() and list((private_cache / "folder-cache").glob("*.npz"))
    again = load_dataset(f"folder:{archive}")
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "one" / "only").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one" / "only" / f"{i}.png")
    (tmp_path / "one" / "other").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one" / "other" / "0.png")
    with pytest.raises(DataError, match="other has one image"):
        load_dataset(f"folder:{tmp_path / 'one'}")
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 50)
    with pytest.raises(DataError, match=str(bad)):
        load_dataset(f"folder:{bad}")


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR_JPEG.is_file(), reason=f"the CIFAR-10 JPEG copy is not at {REAL_CIFAR_JPEG}")
def test_real_cifar10_jpeg_folder():
    ds = load_dataset(f"folder:{REAL_CIFAR_JPEG}")
    assert ds.classes == data.CIFAR10_CLASSES
    assert ds.x_train.shape == (45000, 3, 32, 32) and ds.x_test.shape == (5000, 3, 32, 32)
    assert np.bincount(ds.y_test).tolist() == [500] * 10
    import time
    start = time.perf_counter()
    again = load_dataset(f"folder:{REAL_CIFAR_JPEG}")
    assert time.perf_counter() - start < 15
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set 'imagenet'.*mnist-sample"):
        load_dataset("imagenet")


# ---------------------------------------------------------------- downloads


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def test_download_verifies_the_checksum(tmp_path, server):
    url, root = server
    payload = os.urandom(200_000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "got" / "blob.bin"
    assert data.download(url + "blob.bin", dest, sha256(payload)) == dest
    assert dest.read_bytes() == payload

    other = tmp_path / "got" / "wrong.bin"
    with pytest.raises(DataError, match="SHA-256") as info:
        data.download(url + "blob.bin", other, sha256(b"something else"))
    assert url + "blob.bin" in str(info.value)
    assert not other.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"], "no partial file is left behind"

    with pytest.raises(DataError, match="HTTP 404"):
        data.download(url + "missing.bin", tmp_path / "got" / "missing.bin", sha256(b""))


def test_load_dataset_downloads_missing_files(tmp_path, server, monkeypatch):
    url, root = server
    arrays = write_mnist_like(root / "good")
    write_mnist_like(root / "bad", seed=1)
    checksums = {p.name: sha256(p.read_bytes()) for p in (root / "good").iterdir()}
    # The first mirror serves other bytes: the loader must reject them and use the second.
    monkeypatch.setitem(data.REMOTES, "mnist", data.Remote([url + "bad/", url + "good/"], checksums))
    ds = load_dataset("mnist", data_dir=tmp_path / "data")
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train_images"])
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(checksums)


def test_offline_and_missing_says_where_to_put_the_files(tmp_path, monkeypatch, private_cache):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setitem(data.REMOTES, "mnist",
                        data.Remote([f"http://127.0.0.1:{closed_port}/"], data.REMOTES["mnist"].sha256))
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(private_cache / "mnist") in message
    assert "could not download" in message
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", download=False)


# ---------------------------------------------------------------- preparation


def test_held_out_split_takes_each_class_tail_and_interleaves_the_classes():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5)
    kept, held = held_out_split(labels, 0.2)
    assert held.tolist() == [8, 26, 34, 9, 27, 28, 29]
    assert kept.tolist() == sorted(set(range(35)) - set(held.tolist()))
    # A leading slice has every class, which a class-ordered folder would not.
    assert sorted(labels[held[:3]].tolist()) == [0, 1, 2]


def test_stratified_split_properties():
    labels = np.repeat(np.arange(5), [10, 20, 30, 7, 1])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.bincount(labels[val], minlength=5).tolist() == [2, 4, 6, 1, 0]
    again = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val)
    assert stratified_split(labels, 0.0)[1].size == 0
    with pytest.raises(ValueError, match="1.5"):
        stratified_split(labels, 1.5)


def test_normalize_statistics_and_undo():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 6, 5), dtype=np.uint8)
    x[:, 1] //= 4
    norm = Normalize.fit(x, chunk=7)
    as_float = x.astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean, as_float.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, as_float.std(axis=(0, 2, 3)), rtol=1e-9)
    z = norm(x)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(norm.undo(z.astype(np.float64)), x, atol=1e-3)
    assert norm(x, dtype=np.float64).dtype == np.float64
    restored = Normalize.from_meta(norm.to_meta())
    np.testing.assert_array_equal(restored(x), z)
    with pytest.raises(ValueError, match="channels"):
        norm(x[:, :1])
    constant = Normalize.fit(np.full((3, 1, 2, 2), 9, np.uint8))
    assert np.isfinite(constant(np.full((1, 1, 2, 2), 9, np.uint8))).all()


def test_augment_gives_shifted_and_mirrored_crops():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (64, 3, 8, 7), dtype=np.uint8)
    out = Augment(padding=2, flip=True)(x, np.random.default_rng(5))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if np.array_equal(out[i], (padded[i, :, dy:dy + 8, dx:dx + 7])[..., ::-1 if f else 1])]
        assert matches, f"image {i} is not a crop of the padded input"
        seen.update(matches)
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10
    again = Augment(padding=2, flip=True)(x, np.random.default_rng(5))
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(Augment(padding=0, flip=False)(x, rng), x)
    with pytest.raises(ValueError, match="-1"):
        Augment(padding=-1)


def test_user_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "a"))
    assert data.user_data_dir() == tmp_path / "a"
    monkeypatch.delenv("FASTCONV_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.user_data_dir() == tmp_path / "xdg" / "fastconv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.user_data_dir() == Path.home() / ".cache" / "fastconv"
    assert Path("/usr/share/datasets/fashion-mnist") in data.search_dirs("fashion-mnist", tmp_path)
