"""The command line on a folder of photos: any size, broken files, the cache."""
import numpy as np
import pytest
from PIL import Image

from fastconv import cli


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            w, h = rng.integers(30, 60, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
        (root / c / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _train(photos, out, *extra):
    return cli.main(["train", "--dataset", f"folder:{photos}", "--model", "cifar6", "--epochs", "1",
                     "--batch-size", "4", "--threads", "1", "--out", str(out), *extra])


def test_broken_files_are_listed_then_skipped_and_sizes_resized(photos, tmp_path, capsys):
    assert _train(photos, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 files are not a readable image" in err[0] and "--skip-bad-images" in err[0]
    assert _train(photos, tmp_path / "run", "--skip-bad-images") == 2
    err = capsys.readouterr().err
    assert "must all have one size" in err and "--image-size" in err
    assert _train(photos, tmp_path / "run", "--skip-bad-images", "--image-size", "32") == 0
    out = capsys.readouterr().out
    assert "2 unreadable images left out" in out
    # The run remembers how its images were prepared: evaluate needs no option.
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("accuracy: ")


def test_a_model_that_does_not_fit_suggests_image_size(photos, tmp_path, capsys):
    assert _train(photos, tmp_path / "run", "--skip-bad-images", "--image-size", "28") == 2
    assert "--image-size 32" in capsys.readouterr().err


def test_cache_info_and_clear(photos, tmp_path, capsys):
    assert cli.main(["cache", "info"]) == 0
    assert "folder-cache (0 files, 0 bytes)" in capsys.readouterr().out
    assert _train(photos, tmp_path / "run", "--skip-bad-images", "--image-size", "32") == 0
    capsys.readouterr()
    assert cli.main(["cache", "info"]) == 0
    assert "folder-cache (1 files" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("freed ")
    cached = tmp_path / "cache" / "folder-cache"
    assert not cached.exists() or not any(cached.iterdir())


@pytest.mark.parametrize("out, message", [
    ("missing/deeper/x.png", "the folder {tmp}/missing does not exist"),
    ("notes.txt", "exists and is not a .png file; not replacing it"),
    ("notes.txt/x.png", "notes.txt is a file, not a folder"),
    (".", "it is a folder"),
])
def test_a_figure_never_lands_where_it_does_not_belong(tmp_path, capsys, out, message):
    from fastconv.models import mnist2

    (tmp_path / "notes.txt").write_text("mine")
    mnist2(seed=0).save(tmp_path / "model.npz")
    target = tmp_path / out
    assert cli.main(["viz", "filters", str(tmp_path / "model.npz"), "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "missing").exists()


def test_a_new_last_folder_is_made(tmp_path, capsys):
    from fastconv.models import mnist2

    mnist2(seed=0).save(tmp_path / "model.npz")
    assert cli.main(["viz", "filters", str(tmp_path / "model.npz"), "--out", str(tmp_path / "new" / "f.png")]) == 0
    assert (tmp_path / "new" / "f.png").is_file()
