"""RunDir: opening run folders and model files, reading their files, finding
a run's data, and writing atomically."""
import json

import numpy as np
import pytest

from fastconv.data import datasets
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential
from fastconv.train import NotARunError, RunDir
from fastconv.train import rundir as R


def _model(dataset="mnist-sample"):
    model = Sequential([L.Flatten(), L.Linear(4, 3, seed=0)])
    if dataset is not None:
        model.meta["dataset"] = dataset
    return model


@pytest.fixture
def run(tmp_path):
    """A finished run folder: a model, its configuration and history."""
    folder = tmp_path / "run"
    folder.mkdir()
    _model().save(folder / R.FINAL_MODEL)
    _model().save(folder / R.BEST_MODEL)
    (folder / R.CONFIG).write_text(json.dumps({"dataset": "mnist-sample", "model": "mnist2", "limit": 50,
                                               "data_dir": str(tmp_path / "data")}))
    (folder / R.HISTORY_JSON).write_text(json.dumps([{"epoch": 1, "train_loss": 0.5}]))
    return folder


def test_open_a_run_folder(run):
    opened = RunDir.open(run)
    assert opened.folder == run and opened.model_path == run / "model.npz" and opened.label == "run"
    assert opened.config["model"] == "mnist2" and opened.require_config()["dataset"] == "mnist-sample"
    assert opened.history == [{"epoch": 1, "train_loss": 0.5}]
    assert opened.model.meta["dataset"] == "mnist-sample" and opened.model is opened.model
    assert opened.model_file("best") == run / "best_model.npz"
    assert opened.load_model("best").meta["dataset"] == "mnist-sample"
    assert opened.checkpoint() == run / "checkpoint-last.npz"
    assert opened.checkpoint("best") == run / "checkpoint-best.npz"
    assert opened.figure("history") == run / "training_curves.png"
    assert opened.eval_path == run / "eval.json" and opened.report_path == run / "report.html"
    with pytest.raises(ValueError, match="'final', 'best'.*'latest'"):
        opened.model_file("latest")
    with pytest.raises(ValueError, match="'samples'.*'curves'"):
        opened.figure("curves")


def test_open_a_model_file(run, tmp_path):
    path = tmp_path / "elsewhere" / "mine.npz"
    path.parent.mkdir()
    _model("cifar10").save(path)
    opened = RunDir.open(path)
    assert opened.folder == path.parent and opened.model_path == path and opened.label == "mine"
    assert opened.config == {} and opened.history is None
    assert opened.dataset_name() == "cifar10"
    # A model file inside a run folder belongs to that run.
    inside = RunDir.open(run / "best_model.npz")
    assert inside.folder == run and inside.config["limit"] == 50 and inside.label == "best_model"


def test_a_missing_path_is_not_a_run(tmp_path):
    with pytest.raises(NotARunError, match=f"^no run folder or model file at {tmp_path / 'missing'}$"):
        RunDir.open(tmp_path / "missing")


def test_a_folder_without_a_model_is_not_a_run(tmp_path):
    with pytest.raises(NotARunError, match="holds no model.npz: it is not a finished fastconv run folder"):
        RunDir.open(tmp_path)
    (tmp_path / R.LAST_CHECKPOINT).write_bytes(b"")
    with pytest.raises(NotARunError, match=f"its training has not finished .resume with: fastconv train "
                                           f"--out {tmp_path} --resume"):
        RunDir.open(tmp_path)


def test_the_best_model_may_be_missing(run):
    (run / R.BEST_MODEL).unlink()
    with pytest.raises(NotARunError, match="holds no best_model.npz"):
        RunDir.open(run).load_model("best")


def test_a_folder_without_config_needs_one_only_where_asked(run):
    (run / R.CONFIG).unlink()
    opened = RunDir.open(run)
    assert opened.config == {}
    with pytest.raises(NotARunError, match=f"^{run} is not a fastconv run folder: it has no config.json$"):
        opened.require_config()


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json is unreadable: "),
    ("[1, 2]", "config.json is not a fastconv run configuration"),
    ('{"epochs": 3}', "config.json is not a fastconv run configuration"),
])
def test_a_corrupt_config_is_a_clear_error(run, text, message):
    (run / R.CONFIG).write_text(text)
    opened = RunDir.open(run)  # nothing reads the configuration yet
    with pytest.raises(NotARunError, match=message) as info:
        opened.require_config()
    assert "\n" not in str(info.value)
    if "epochs" not in text:
        with pytest.raises(NotARunError, match=message):
            _ = opened.config


def test_a_corrupt_history_is_a_clear_error(run):
    (run / R.HISTORY_JSON).write_text("[{")
    with pytest.raises(NotARunError, match="history.json is unreadable"):
        _ = RunDir.open(run).history


def test_the_errors_are_value_errors():
    assert issubclass(NotARunError, ValueError)


# ---------------------------------------------------------------- data


def test_the_data_set_is_the_option_then_the_models_then_the_configs(run):
    (run / R.CONFIG).write_text(json.dumps({"dataset": "fashion-mnist", "model": "mnist2"}))
    opened = RunDir.open(run)
    assert opened.dataset_name("cifar10") == "cifar10"
    assert opened.dataset_name() == "mnist-sample"  # the model's metadata
    _model(dataset=None).save(run / R.FINAL_MODEL)
    assert RunDir.open(run).dataset_name() == "fashion-mnist"  # the configuration
    (run / R.CONFIG).unlink()
    nameless = RunDir.open(run)
    assert nameless.dataset_name() is None
    with pytest.raises(ValueError, match="names no data set; pass --dataset NAME"):
        nameless.load_dataset()


def test_a_run_not_yet_trained_uses_the_configuration_it_is_given(tmp_path):
    fresh = RunDir(tmp_path / "new", config={"dataset": "mnist-sample", "limit": 30})
    assert fresh.dataset_name() == "mnist-sample" and fresh.data_dir() is None
    dataset = fresh.load_dataset()
    assert len(dataset.y_train) == 30 and len(dataset.y_test) == 30
    assert not (tmp_path / "new").exists()


def test_the_data_folder_is_the_option_then_the_configs(run, tmp_path, monkeypatch):
    opened = RunDir.open(run)
    assert opened.data_dir() == str(tmp_path / "data")
    assert opened.data_dir("/elsewhere") == "/elsewhere"
    seen = []
    real = datasets.load_dataset

    def recording(name, data_dir=None, **options):
        seen.append((name, data_dir))
        return real("mnist-sample")

    monkeypatch.setattr(datasets, "load_dataset", recording)
    opened.load_dataset()
    opened.load_dataset("mnist", data_dir="/elsewhere")
    assert seen == [("mnist-sample", str(tmp_path / "data")), ("mnist", "/elsewhere")]
    (run / R.CONFIG).unlink()
    RunDir.open(run).load_dataset()
    assert seen[-1] == ("mnist-sample", None)


def test_the_runs_limit_applies_to_its_own_data_set_only(run):
    opened = RunDir.open(run)
    full = datasets.load_dataset("mnist-sample")
    subset = opened.load_dataset()
    keep = datasets.limited(len(full.y_test), 50)
    assert len(subset.y_train) == 50 and len(subset.y_test) == 50
    np.testing.assert_array_equal(subset.y_test, full.y_test[keep])
    assert len(opened.load_dataset("mnist-sample").y_test) == 50  # named, but still its own
    assert len(opened.load_dataset(subset=False).y_test) == len(full.y_test)
    assert opened.subset_limit() == 50 and opened.subset_limit("mnist-sample") == 50
    assert opened.subset_limit("cifar10") is None


# ---------------------------------------------------------------- writing


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writes_are_atomic(tmp_path):
    fresh = RunDir(tmp_path / "new", config={"dataset": "mnist-sample", "model": "mnist2"})
    path = fresh.write_config({**fresh.config, "threads": 1})
    assert path == tmp_path / "new" / "config.json"
    assert json.loads(path.read_text())["threads"] == 1 and fresh.config["threads"] == 1
    assert RunDir(tmp_path / "new").require_config()["threads"] == 1
    fresh.write_json(R.EVAL, {"accuracy": 0.5})
    assert json.loads(fresh.eval_path.read_text()) == {"accuracy": 0.5}
    history = [{"epoch": 1, "lr": 0.1, "train_loss": 0.5, "val_loss": None}]
    fresh.write_history(history)
    assert json.loads(fresh.history_path().read_text()) == history
    assert fresh.history_path("csv").read_text().splitlines()[1] == "1,0.1,0.5,,,,,"
    assert _leftovers(fresh.folder) == []

    # A write that fails half-way leaves the old file and no temporary one.
    with pytest.raises(TypeError):
        fresh.write_history([{"epoch": object()}])
    assert json.loads(fresh.history_path().read_text()) == history
    assert _leftovers(fresh.folder) == []


def test_stale_temporaries_of_the_trainers_files_are_removed(tmp_path):
    for name in (".model.npz.abc.tmp", ".history.csv.x1.tmp", ".notes.txt.x.tmp", "model.npz"):
        (tmp_path / name).write_bytes(b"")
    RunDir(tmp_path).remove_stale_temporaries()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.x.tmp", "model.npz"]


def test_the_trainer_writes_through_a_run_dir(tmp_path):
    from fastconv.optim import SGD
    from fastconv.train import Trainer

    model = Sequential([L.Flatten(), L.Linear(4, 2, seed=0)])
    x = np.random.default_rng(0).random((8, 1, 2, 2)).astype(np.float32)
    y = np.arange(8) % 2
    run = RunDir(tmp_path / "run")
    trainer = Trainer(model, SGD(model, lr=0.1), batch_size=4, run_dir=run, progress=False, log=None)
    trainer.fit(x, y, 2)
    assert trainer.files is run and trainer.run_dir == tmp_path / "run"
    opened = RunDir.open(tmp_path / "run")
    assert [r["epoch"] for r in opened.history] == [1, 2]
    assert opened.checkpoint().is_file() and opened.checkpoint("best").is_file()
    assert opened.model_file("best").is_file() and _leftovers(opened.folder) == []
