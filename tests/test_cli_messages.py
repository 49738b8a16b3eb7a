"""Every command's answer to a mistake, as a table: the command line, the words
its one-line error must hold and its exit status; and, for each, that no
traceback, no "[Errno N]", no pickle advice reaches the user and that nothing
was written or replaced."""
import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import fastconv
from fastconv import cli

# What a run that is not finished, a model file without a run, and not-a-run
# look like to each command that opens a trained model.
MODEL_COMMANDS = [
    ["evaluate", "{path}"],
    ["report", "{path}", "--out", "{tmp}/page.html"],
    ["viz", "filters", "{path}", "--out", "{tmp}/f.png"],
    ["attack", "{path}", "--method", "fgsm", "--eps", "0.1", "--out", "{tmp}/a.png"],
    ["robustness", "{path}", "--out", "{tmp}/r.png"],
]

CASES = [
    # A mistake on the command line: the line that matters and where help is.
    (["train", "--epochs", "x", "--out", "{tmp}/r"], ["expected a positive integer, got 'x'",
                                                      "(try 'fastconv train --help')"]),
    (["trian"], ["invalid choice: 'trian'", "(try 'fastconv --help')"]),
    (["viz"], ["required: TOOL", "(try 'fastconv viz --help')"]),
    (["train", "--dataset", "mnist-sample"], ["required: --out"]),
    (["cache", "wipe"], ["invalid choice: 'wipe'"]),
    # Folders and files in the wrong place.
    (["train", "--dataset", "mnist-sample", "--out", "{file}"], ["{file} is a file, where a folder is needed"]),
    (["demo", "--out", "{file}"], ["{file} is a file, where a folder is needed"]),
    (["train", "--dataset", "mnist-sample", "--out", "{file}/run"],
     ["cannot create the folder {file}/run: {file} is a file"]),
    (["viz", "filters", "{run}", "--out", "{tmp}/missing/deeper/x.png"], ["the folder {tmp}/missing does not exist"]),
    (["train", "--out", "{tmp}/empty", "--resume"], ["{tmp}/empty is not a fastconv run folder"]),
    # Data the model cannot take, and data that cannot be read.
    (["evaluate", "{run}", "--dataset", "folder:{rgb}"], ["takes 28x28 grey images in 10 classes",
                                                        "28x28 colour images in 2 classes"]),
    (["viz", "occlusion", "{run}", "--dataset", "folder:{rgb}", "--out", "{tmp}/o.png"], ["takes 28x28 grey"]),
    (["attack", "{run}", "--method", "fgsm", "--eps", "0.1", "--dataset", "folder:{rgb}", "--out", "{tmp}/a.png"],
     ["takes 28x28 grey"]),
    (["report", "{run}", "--dataset", "folder:{rgb}", "--out", "{tmp}/p.html"], ["takes 28x28 grey"]),
    (["train", "--dataset", "folder:{broken}", "--out", "{tmp}/r"], ["not-an-image.jpg", "--skip-bad-images"]),
    (["train", "--dataset", "folder:{tmp}/fake.tar.gz", "--out", "{tmp}/r"], ["fake.tar.gz"]),
    (["train", "--dataset", "mnist", "--data-dir", "{truncated}", "--out", "{tmp}/r"], ["truncated"]),
    (["evaluate", "{run}", "--dataset", "no-such-set"], ["unknown data set 'no-such-set'"]),
    # Numbers out of range.
    (["attack", "{run}", "--method", "fgsm", "--eps", "nan", "--out", "{tmp}/a.png"], ["'nan'"]),
    (["viz", "dream", "{run}", "--size", "100000", "--out", "{tmp}/d.png"], ["'100000'"]),
    (["viz", "class-model", "{run}", "--size", "0", "--out", "{tmp}/c.png"], ["'0'"]),
    (["imagenet", "predict", "{tmp}/nowhere.jpg", "--weights", "{tmp}/w.pth"], ["no weights file at {tmp}/w.pth"]),
    (["viz", "dream", "{run}", "--image", "{huge}", "--out", "{tmp}/d.png"],
     ["an image is too large to open", "300000000 pixels"]),
    (["imagenet", "predict", "{tmp}/nowhere.jpg", "--weights", "{garbage}"], ["garbage.npz"]),
]
for command in MODEL_COMMANDS:
    CASES += [
        ([a.replace("{path}", "{tmp}/nowhere") for a in command], ["no run folder or model file at {tmp}/nowhere"]),
        ([a.replace("{path}", "{tmp}/empty") for a in command],
         ["{tmp}/empty holds no model.npz: it is not a finished fastconv run folder"]),
        ([a.replace("{path}", "{garbage}") for a in command], ["{garbage} is not a readable fastconv model"]),
    ]


def snapshot(folder):
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """A trained run, and the wrong things a user may point the commands at."""
    root = tmp_path_factory.mktemp("places")
    run = root / "run"
    assert cli.main(["train", "--dataset", "mnist-sample", "--limit", "64", "--epochs", "1", "--threads", "1",
                     "--out", str(run)]) == 0
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a folder")
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not a zip archive at all")
    (root / "fake.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    Image.new("L", (100_000, 3_000)).save(root / "huge.png")  # 300 million pixels, a few hundred KB
    rng = np.random.default_rng(0)
    for folder, corrupt in ((root / "rgb", False), (root / "broken", True)):
        for label in ("a", "b"):
            (folder / label).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / label / f"{i}.png")
        if corrupt:
            (folder / "a" / "not-an-image.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    truncated = root / "truncated" / "mnist"
    truncated.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        shutil.copy(fastconv.data.SAMPLE_DIR / f"{name}.gz", truncated / f"{name}.gz")
    images = truncated / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])
    return {"root": root, "run": run, "file": root / "notes.txt", "garbage": root / "garbage.npz",
            "rgb": root / "rgb", "broken": root / "broken", "truncated": root / "truncated",
            "huge": root / "huge.png"}


def fill(text, places, tmp):
    return text.format(tmp=tmp, **{k: v for k, v in places.items() if k != "root"})


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_a_mistake_gets_one_line_and_changes_nothing(places, tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "user-cache"))
    monkeypatch.chdir(tmp_path)
    tmp = places["root"]
    argv = [fill(a, places, tmp) for a in argv]
    before = snapshot(tmp)
    threads = fastconv.get_num_threads()
    try:
        status = cli.main(argv)
    except SystemExit as stop:   # argparse's own mistakes
        status = stop.code
    finally:
        fastconv.set_num_threads(threads)
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if not line.startswith("downloading ")]
    assert status == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("fastconv"), err
    for word in words:
        assert fill(word, places, tmp) in lines[0], lines[0]
    for leak in ("Traceback", "[Errno", "allow_pickle", "x has", "Conv2d expects"):
        assert leak not in err, err
    assert snapshot(tmp) == before, "a refused command wrote or replaced something"
    assert not os.path.exists(tmp / "missing")
