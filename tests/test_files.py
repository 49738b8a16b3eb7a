"""Reading .npz files: every way a model, checkpoint or weights file can be
damaged or foreign gives one ValueError naming the file, never NumPy's advice
to load it with allow_pickle=True."""
import io
import json
import pickle

import numpy as np
import pytest

import fastconv
from fastconv._files import open_npz, write_json
from fastconv.models.weights import read_weights
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential
from fastconv.train import CheckpointError, load_checkpoint, save_checkpoint


def _model():
    return Sequential([L.Flatten(), L.Linear(4, 3, seed=0)])


def _archive(**entries):
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    return buffer.getvalue()


def _pickled_archive():
    # np.savez stores an object array as a pickle inside the zip; one under each
    # name a model, a checkpoint or a weights reader looks at.
    evil = np.array([{"evil": True}], dtype=object)
    return _archive(architecture=evil, checkpoint=evil, **{"fc.weight": evil})


def _saved_model(tmp_path):
    path = tmp_path / "good.npz"
    _model().save(path)
    return path.read_bytes()


def _saved_checkpoint(tmp_path):
    path = tmp_path / "good-checkpoint.npz"
    save_checkpoint(path, {"epoch": 1, "weights": np.arange(6.0)})
    return path.read_bytes()


BAD_FILES = {
    "garbage": lambda tmp: b"this is not a model at all" * 40,
    "empty": lambda tmp: b"",
    "truncated": lambda tmp: _saved_model(tmp)[:300],
    "truncated-checkpoint": lambda tmp: _saved_checkpoint(tmp)[:-200],
    "pickle": lambda tmp: pickle.dumps({"weights": [1, 2, 3]}),
    "pickle-in-npz": lambda tmp: _pickled_archive(),
    "single-array": lambda tmp: _npy_bytes(),
    "foreign": lambda tmp: _archive(x=np.zeros(3), y=np.ones(2)),
}


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.arange(5))
    return buffer.getvalue()


def _one_line(error, path, what):
    message = str(error)
    assert "\n" not in message, message
    assert message.startswith(f"{path} is not a readable {what}: "), message
    assert "allow_pickle" not in message and "pickle.load" not in message, message
    return message


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_model_file_gives_one_line(tmp_path, kind):
    path = tmp_path / "model.npz"
    path.write_bytes(BAD_FILES[kind](tmp_path))
    with pytest.raises(ValueError) as info:
        fastconv.load(path)
    message = _one_line(info.value, path, "fastconv model")
    if kind == "foreign":
        assert "no 'architecture' entry" in message
    if kind.startswith("pickle"):
        assert "pickled Python objects" in message or "not an .npz archive" in message
    if kind.startswith("truncated"):
        assert "damaged or truncated" in message


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_checkpoint_gives_one_line(tmp_path, kind):
    path = tmp_path / "checkpoint-last.npz"
    path.write_bytes(BAD_FILES[kind](tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = _one_line(info.value, path, "fastconv checkpoint")
    if kind == "pickle-in-npz":
        assert "pickled Python objects" in message
    if kind in ("foreign", "truncated"):
        assert "no 'checkpoint' entry" in message or "damaged or truncated" in message


@pytest.mark.parametrize("kind", sorted(set(BAD_FILES) - {"foreign"}))
def test_a_bad_weights_file_gives_one_line(tmp_path, kind):
    # Any archive of named arrays is a weights file, so "foreign" is not bad here.
    path = tmp_path / "weights.npz"
    path.write_bytes(BAD_FILES[kind](tmp_path))
    with pytest.raises(ValueError) as info:
        read_weights(path)
    message = _one_line(info.value, path, ".npz weights file")
    if kind == "pickle-in-npz":
        assert "pickled Python objects" in message


def test_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastconv.load(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        with open_npz(tmp_path / "missing.npz"):
            pass


def test_a_missing_entry_is_named(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(_archive(x=np.zeros(2)))
    with pytest.raises(ValueError, match=r"a\.npz is not a readable thing: it has no 'y' entry"):
        with open_npz(path, "thing") as archive:
            archive["y"]
    with open_npz(path, "thing") as archive:
        np.testing.assert_array_equal(archive["x"], np.zeros(2))


def test_the_command_line_says_it_in_one_line(tmp_path, capsys):
    from fastconv.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.npz").write_bytes(_pickled_archive())
    assert main(["viz", "filters", str(run), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "allow_pickle" not in err, err
    assert f"{run / 'model.npz'} is not a readable fastconv model" in err


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
