"""Build fastconv/sample_data/, the small MNIST sample shipped with the package.

Takes the first 10,000 training and the first 2,000 test images of the real
MNIST, with their labels, from the four canonical IDX files, and writes them
in the same format (gzip'd IDX) so the package reads them with the same
loader. The gzip header carries no timestamp or file name, so the output is
byte-for-byte reproducible.

    python tools/make_mnist_sample.py [--source DIR] [--out DIR]

DIR defaults: ../shared/data/mnist (beside the checkout) and fastconv/sample_data.
"""
import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from fastconv.data import IDX_FILES, read_idx

ROOT = Path(__file__).resolve().parents[1]

TRAIN_COUNT = 10_000
TEST_COUNT = 2_000

README = """\
A small sample of MNIST, bundled so that `fastconv demo` runs offline.

    train-images-idx3-ubyte.gz   the first {train:,} training images (28 x 28, uint8)
    train-labels-idx1-ubyte.gz   their labels
    t10k-images-idx3-ubyte.gz    the first {test:,} test images
    t10k-labels-idx1-ubyte.gz    their labels

Same IDX format as the full data set, cut from the canonical files in their
original order by tools/make_mnist_sample.py.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, made
available under the Creative Commons Attribution-Share Alike 3.0 license.
"""


def idx_bytes(array):
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), the big-endian dims, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_gzip(path, payload):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as f:
            f.write(payload)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "mnist",
                        help="folder holding the four canonical MNIST IDX files")
    parser.add_argument("--out", type=Path, default=ROOT / "fastconv" / "sample_data",
                        help="folder to write the sample into")
    args = parser.parse_args(argv)

    counts = {"train": TRAIN_COUNT, "t10k": TEST_COUNT}
    args.out.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES.values():
        source = args.source / (stem + ".gz")
        if not source.is_file():
            source = args.source / stem
        array = read_idx(source)
        count = counts[stem.split("-")[0]]
        if len(array) < count:
            parser.error(f"{source} holds {len(array)} items, fewer than the {count} the sample takes")
        target = args.out / (stem + ".gz")
        write_gzip(target, idx_bytes(array[:count]))
        print(f"{target}: {count} items of shape {array.shape[1:]}, {target.stat().st_size:,} bytes")
    (args.out / "README.md").write_text(README.format(train=TRAIN_COUNT, test=TEST_COUNT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
