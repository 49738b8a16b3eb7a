"""The training loop on a tiny model and data set: learning, files, determinism,
interrupts and resume, and the refusal of checkpoints that belong elsewhere."""
import csv
import json
import os
import shutil
import signal

import numpy as np
import pytest

import fastconv
from fastconv.data import Augment, Normalize
from fastconv.nn import model as fc_model
from fastconv.nn.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU
from fastconv.nn.losses import CrossEntropyLoss
from fastconv.nn.model import Sequential
from fastconv.optim import SGD, Adam, OneCycleLR, StepLR
from fastconv.train import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    LAST_CHECKPOINT,
    CheckpointError,
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    confusion_matrix,
    evaluate,
    load_checkpoint,
    save_checkpoint,
)
from fastconv.train import trainer as fc_train

CLASSES = 3


def toy_data(n=120, seed=0):
    """8x8 grey images: class k has a bright 3x3 blob in region k, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.uint8)
    for i, k in enumerate(y):
        r, c = [(0, 0), (0, 4), (4, 2)][k] + rng.integers(0, 2, 2)
        x[i, 0, r:r + 3, c:c + 3] = rng.integers(180, 256, (3, 3))
    return x, y


def toy_model(seed=0, batchnorm=False, dropout=False):
    rng = np.random.default_rng(seed)
    layers = [Conv2d(1, 4, 3, padding=1, seed=rng), ReLU()]
    if batchnorm:
        layers.append(BatchNorm2d(4))
    layers += [MaxPool2d(2), Flatten()]
    if dropout:
        layers.append(Dropout(0.2, seed=rng))
    layers.append(Linear(4 * 4 * 4, CLASSES, seed=rng))
    return Sequential(layers)


def make_trainer(run_dir=None, setup="sgd", seed=0, callbacks=(), epochs=4, **options):
    model = toy_model(seed, batchnorm=setup == "adam", dropout=setup == "adam")
    if setup == "sgd":
        opt = SGD(model, lr=0.05, momentum=0.9)
        sched = StepLR(opt, step_size=2, gamma=0.5)
    else:
        opt = Adam(model, lr=0.01)
        sched = OneCycleLR(opt, max_lr=0.02, total_steps=epochs * 8)
    x, _ = toy_data()
    options.setdefault("augment", Augment(padding=1, flip=True) if setup == "adam" else None)
    options.setdefault("batch_size", 12)
    options.setdefault("progress", False)
    return Trainer(model, opt, schedule=sched, seed=seed, normalize=Normalize.fit(x[:96]),
                   run_dir=run_dir, log=None, callbacks=callbacks, **options)


def fit(trainer, epochs=4, resume=False):
    x, y = toy_data()
    return trainer.fit(x[:96], y[:96], epochs, x[96:], y[96:], resume=resume)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def without_timing(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in history]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


class StopAt:
    """Asks the trainer to stop after a given batch of a given epoch (0-based epoch)."""

    def __init__(self, epoch, batch, how="request"):
        self.epoch, self.batch, self.how = epoch, batch, how

    def on_batch_end(self, trainer, epoch, batch, loss):
        if (epoch, batch) == (self.epoch, self.batch):
            if self.how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                trainer.request_stop()


# ---------------------------------------------------------------- learning and files


def test_loss_decreases_and_files_are_written(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    history = fit(trainer, epochs=6)
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    # StepLR(step_size=2, gamma=0.5), stepped once per epoch.
    assert [r["lr"] for r in history] == pytest.approx([0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])

    run = tmp_path / "run"
    assert json.loads((run / "history.json").read_text()) == history
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx([r["val_loss"] for r in history])

    final = fastconv.nn.model.load(run / FINAL_MODEL)
    assert_same_weights(final.state_dict(), trainer.model.state_dict())
    assert final.meta["normalization"] == trainer.normalize.to_meta()

    last = load_checkpoint(run / LAST_CHECKPOINT)
    assert last["epoch"] == 6 and last["batch"] == 0 and last["history"] == history
    assert_same_weights(last["model"], trainer.model.state_dict())
    best_epoch = max(history, key=lambda r: r["val_accuracy"])["epoch"]
    best = load_checkpoint(run / BEST_CHECKPOINT)
    assert best["epoch"] == best_epoch == trainer.best["epoch"]
    assert_same_weights(fastconv.nn.model.load(run / BEST_MODEL).state_dict(), best["model"])
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_training_is_deterministic_for_a_seed():
    runs = []
    for seed in (0, 0, 1):
        trainer = make_trainer(setup="adam", seed=seed)
        fit(trainer)
        runs.append(weights(trainer.model))
    assert_same_weights(runs[0], runs[1])
    assert not np.array_equal(runs[0]["fc1.weight"], runs[2]["fc1.weight"])


# ---------------------------------------------------------------- interrupts and resume


@pytest.mark.parametrize("setup", ["sgd", "adam"])
@pytest.mark.parametrize("stop", [(1, 3), (2, 8)], ids=["mid-epoch", "epoch-end"])
def test_resume_after_a_stop_matches_an_uninterrupted_run(tmp_path, setup, stop):
    reference = make_trainer(tmp_path / "ref", setup)
    fit(reference)

    first = make_trainer(tmp_path / "run", setup, callbacks=[StopAt(*stop)])
    with pytest.raises(TrainingInterrupted) as info:
        fit(first)
    assert info.value.checkpoint == tmp_path / "run" / LAST_CHECKPOINT
    saved = load_checkpoint(info.value.checkpoint)
    done_epochs, batch = (stop[0], stop[1]) if stop[1] < 8 else (stop[0] + 1, 0)
    assert (saved["epoch"], saved["batch"]) == (done_epochs, batch)

    second = make_trainer(tmp_path / "run", setup, seed=0)
    history = fit(second, resume=True)
    assert_same_weights(weights(second.model), weights(reference.model))
    assert without_timing(history) == without_timing(reference.history)
    on_disk = json.loads((tmp_path / "run" / "history.json").read_text())
    assert without_timing(on_disk) == without_timing(reference.history)


def test_ctrl_c_is_deferred_to_the_end_of_the_batch(tmp_path):
    reference = make_trainer(tmp_path / "ref")
    fit(reference)
    trainer = make_trainer(tmp_path / "run", callbacks=[StopAt(2, 4, how="signal")])
    # What the trainer puts back: Python's handler, or SIG_IGN in a process
    # started in the background by a shell.
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted, match="after batch 4 of epoch 3"):
        fit(trainer)
    assert {signum: signal.getsignal(signum) for signum in before} == before
    resumed = make_trainer(tmp_path / "run")
    fit(resumed, resume=True)
    assert_same_weights(weights(resumed.model), weights(reference.model))


def test_resume_from_a_checkpoint_left_by_a_killed_process(tmp_path):
    """kill -9 right after epoch 2's checkpoint: only the files on disk survive."""
    class KeepCopy:
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 2:
                shutil.copytree(trainer.run_dir, tmp_path / "killed")

    reference = make_trainer(tmp_path / "ref", "adam", callbacks=[KeepCopy()])
    fit(reference)
    resumed = make_trainer(tmp_path / "killed", "adam")
    fit(resumed, resume=True)
    assert_same_weights(weights(resumed.model), weights(reference.model))


def test_resume_when_already_finished_does_nothing(tmp_path):
    trainer = make_trainer(tmp_path / "run")
    fit(trainer, epochs=2)
    again = make_trainer(tmp_path / "run")
    lines = []
    again.log = lines.append
    fit(again, epochs=2, resume=True)
    assert_same_weights(weights(again.model), weights(trainer.model))
    assert any("nothing to do" in line for line in lines)


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run")
    fit(trainer, epochs=1)
    before = (tmp_path / "run" / LAST_CHECKPOINT).read_bytes()

    def dies_half_way(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(fc_train.np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "run" / LAST_CHECKPOINT, trainer.state())
    assert (tmp_path / "run" / LAST_CHECKPOINT).read_bytes() == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- refusals


def test_checkpoints_from_elsewhere_are_refused(tmp_path):
    fit(make_trainer(tmp_path / "run"), epochs=1)

    with pytest.raises(CheckpointError, match="already holds a training run"):
        fit(make_trainer(tmp_path / "run"), epochs=1)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        fit(make_trainer(tmp_path / "empty"), resume=True)
    with pytest.raises(CheckpointError, match="batch_size=12, not 13"):
        fit(make_trainer(tmp_path / "run", batch_size=13), resume=True)

    other = Sequential([Conv2d(1, 2, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Linear(32, CLASSES)])
    wrong = Trainer(other, SGD(other, lr=0.05, momentum=0.9), schedule=None, batch_size=12,
                    run_dir=tmp_path / "run", log=None)
    with pytest.raises(CheckpointError, match="another architecture|does not fit"):
        fit(wrong, resume=True)

    path = tmp_path / "run" / LAST_CHECKPOINT
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=str(path)):
        fit(make_trainer(tmp_path / "run"), resume=True)
    overwritten = make_trainer(tmp_path / "run", overwrite=True)
    assert len(fit(overwritten, epochs=1)) == 1


def test_a_diverging_loss_stops_training():
    class NaNLoss(CrossEntropyLoss):
        def __call__(self, logits, labels):
            super().__call__(logits, labels)
            return float("nan")

    trainer = make_trainer(loss=NaNLoss())
    with pytest.raises(TrainingDiverged, match="nan at epoch 1, batch 1"):
        fit(trainer)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size.*0"):
        make_trainer(batch_size=0)
    with pytest.raises(ValueError, match="schedule_interval.*'hourly'"):
        make_trainer(schedule_interval="hourly")
    x, y = toy_data()
    trainer = make_trainer()
    with pytest.raises(ValueError, match="labels have shape"):
        trainer.fit(x, y[:-1], 1)
    with pytest.raises(ValueError, match="epochs.*0"):
        trainer.fit(x, y, 0)


# ---------------------------------------------------------------- evaluation and progress


def test_evaluate_and_confusion_matrix_match_direct_computation():
    x, y = toy_data()
    model = toy_model()
    norm = Normalize.fit(x)
    result = evaluate(model, x, y, norm, batch_size=7)
    logits = model.predict(norm(x))
    np.testing.assert_allclose(result["logits"], logits, rtol=1e-6, atol=1e-6)
    assert result["loss"] == pytest.approx(CrossEntropyLoss()(logits, y), rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    cm = confusion_matrix(y, result["predictions"], CLASSES)
    expected = np.zeros((CLASSES, CLASSES), int)
    for t, p in zip(y, result["predictions"]):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)


def test_progress_bar_only_on_a_terminal(capfd, tmp_path):
    trainer = make_trainer(progress=None)
    fit(trainer, epochs=1)
    assert capfd.readouterr().err == ""
    trainer = make_trainer(progress=True)
    fit(trainer, epochs=1)
    err = capfd.readouterr().err
    assert "epoch 1/1" in err and "/8" in err


def test_checkpoint_round_trips_nested_values(tmp_path):
    state = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "nested": {"t": (1, 2.5, None), 3: [np.int64(7), np.float32(0.25), True, "x"]},
        "big": 2 ** 100,
        "empty": np.zeros((0, 4)),
    }
    save_checkpoint(tmp_path / "c.npz", state)
    back = load_checkpoint(tmp_path / "c.npz")
    np.testing.assert_array_equal(back["a"], state["a"])
    assert back["a"].dtype == np.float32
    assert back["nested"] == {"t": (1, 2.5, None), 3: [7, 0.25, True, "x"]}
    assert back["big"] == 2 ** 100 and back["empty"].shape == (0, 4)
    (tmp_path / "model.npz").write_bytes(b"")
    fc_model.Sequential([Linear(2, 2)]).save(tmp_path / "model.npz")
    with pytest.raises(CheckpointError, match="no 'checkpoint' entry"):
        load_checkpoint(tmp_path / "model.npz")
