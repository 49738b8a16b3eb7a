"""The fastconv command: train, evaluate, demo, info, resume after Ctrl-C and kill -9,
and one-line errors with exit status 2 for bad input."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastconv
from fastconv import cli
from fastconv.data import Normalize, load_dataset, stratified_split
from fastconv.data import datasets as data

PACKAGE_PARENT = str(Path(fastconv.__file__).resolve().parents[1])
# Small runs on the bundled MNIST sample: --limit N keeps N images of each split.
QUICK = ["--dataset", "mnist-sample", "--limit", "240", "--batch-size", "32", "--threads", "1"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "user-cache"))


@pytest.fixture(autouse=True)
def restore_threads():
    """The commands set the thread count of the whole process; put it back for other tests."""
    threads = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(threads)


def run_main(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def spawn(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    return subprocess.Popen([sys.executable, "-m", "fastconv.cli", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_line_error(status, err, *words):
    assert status == 2
    lines = [line for line in err.strip().splitlines() if not line.startswith("downloading ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fastconv ")
    for word in words:
        assert word in lines[0], lines[0]


def weights(path):
    return fastconv.nn.model.load(path).state_dict()


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def is_png(path):
    with Image.open(path) as img:
        return img.format == "PNG" and min(img.size) > 100


# ---------------------------------------------------------------- train and evaluate


def test_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    status, out, err = run_main(capsys, "train", *QUICK, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05",
                                "--momentum", "0.9", "--schedule", "cosine", "--out", run)
    assert status == 0, err
    assert "epoch 2:" in out and f"fastconv evaluate {run}" in out
    for name in ("config.json", "history.json", "history.csv", "checkpoint-last.npz", "checkpoint-best.npz",
                 "model.npz", "best_model.npz"):
        assert (run / name).is_file(), name
    assert is_png(run / "train_samples.png") and is_png(run / "training_curves.png")
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["optimizer"], config["schedule"], config["epochs"]) == ("mnist2", "sgd",
                                                                                             "cosine", 2)
    history = json.loads((run / "history.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.025])  # cosine over 2 epochs

    status, out, err = run_main(capsys, "evaluate", run)
    assert status == 0, err
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"accuracy: \d\.\d{4}", last), last
    report = json.loads((run / "eval.json").read_text())
    assert last == f"accuracy: {report['accuracy']:.4f}"
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == report["images"] == 240
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    per_class = [report["per_class_accuracy"][c] for c in report["classes"]]
    np.testing.assert_allclose(per_class, cm.diagonal() / cm.sum(axis=1))
    assert is_png(run / "confusion_matrix.png") and is_png(run / "predictions.png")

    # The same number, computed here from the saved model and its stored normalization.
    model = fastconv.load(run / "model.npz")
    test = load_dataset("mnist-sample")
    norm = Normalize.from_meta(model.meta["normalization"])
    subset = cli.limited(len(test.y_test), 240)
    logits = model.predict(norm(test.x_test[subset]))
    assert report["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == test.y_test[subset]))
    assert model.meta["classes"] == test.classes

    status, out, _ = run_main(capsys, "evaluate", run, "--split", "val", "--which", "best")
    assert status == 0
    report = json.loads((run / "eval.json").read_text())
    held_out = stratified_split(test.y_train[cli.limited(len(test.y_train), 240)], 0.1, seed=0)[1]
    assert report["split"] == "val" and report["images"] == len(held_out) and report["model_file"] == "best_model.npz"


def test_model_variant_and_init_are_stored_and_rebuilt(tmp_path, capsys):
    run = tmp_path / "run"
    status, _, err = run_main(capsys, "train", *QUICK, "--epochs", "1", "--model", "mnist2-bn", "--init", "torch",
                              "--out", run)
    assert status == 0, err
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["init"]) == ("mnist2-bn", "torch")
    model = fastconv.load(run / "model.npz")
    assert [name for name, _ in model.named_layers() if name.startswith("bn")] == ["bn1", "bn2"]


def test_train_refuses_to_overwrite_and_checks_resume_options(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_main(capsys, "train", *QUICK, "--epochs", "1", "--out", run)[0] == 0
    status, _, err = run_main(capsys, "train", *QUICK, "--epochs", "1", "--out", run)
    assert_one_line_error(status, err, "already holds a finished training run", "--resume", "--force")
    status, _, err = run_main(capsys, "train", "--out", run, "--resume", "--lr", "0.5")
    assert_one_line_error(status, err, "--lr 0.001, not 0.5")
    status, out, err = run_main(capsys, "train", "--out", run, "--resume", "--epochs", "2")
    assert status == 0, err
    assert "resuming at epoch 2" in out and "epoch 2:" in out
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------- interrupts


SIGNALS = {"ctrl-c": signal.SIGINT, "sigterm": signal.SIGTERM, "kill-9": signal.SIGKILL}


@pytest.mark.parametrize("how", list(SIGNALS))
def test_resume_after_an_interrupted_process_matches_an_uninterrupted_run(tmp_path, capsys, how):
    options = ["--dataset", "mnist-sample", "--limit", "48", "--batch-size", "16", "--epochs", "4",
               "--threads", "1", "--optimizer", "adam", "--augment", "--seed", "3"]
    assert run_main(capsys, "train", *options, "--out", tmp_path / "ref")[0] == 0

    run = tmp_path / "run"
    process = spawn("train", *options, "--out", run, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (run / "checkpoint-last.npz").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.02)
    process.send_signal(SIGNALS[how])
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    if how != "kill-9":
        # Both stop after the batch, save a checkpoint and say how to resume.
        assert process.returncode == {"ctrl-c": 130, "sigterm": 143}[how], err
        assert "Traceback" not in err and f"resume with: fastconv train --out {run} --resume" in err
        assert "training interrupted; the state" in err
    else:
        assert process.returncode == -signal.SIGKILL
    assert not (run / "model.npz").exists()

    status, out, err = run_main(capsys, "train", "--out", run, "--resume")
    assert status == 0, err
    assert "resuming at epoch" in out
    assert_same_weights(weights(run / "model.npz"), weights(tmp_path / "ref" / "model.npz"))


# ---------------------------------------------------------------- bad input


def write_png_folder(root, side, classes=("a", "b", "c"), per_class=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys, monkeypatch):
    status, _, err = run_main(capsys, "train", "--dataset", "imagenet", "--out", tmp_path / "r")
    assert_one_line_error(status, err, "unknown data set 'imagenet'")
    status, _, err = run_main(capsys, "train", "--dataset", f"folder:{tmp_path / 'nope'}", "--out", tmp_path / "r")
    assert_one_line_error(status, err, "does not exist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setitem(data.REMOTES, "mnist", data.Remote([closed], data.REMOTES["mnist"].sha256))
    status, _, err = run_main(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path / "d",
                              "--out", tmp_path / "r")
    assert_one_line_error(status, err, "mnist not found", "train-images-idx3-ubyte.gz", str(tmp_path / "d" / "mnist"))
    status, _, err = run_main(capsys, "train", "--dataset", "mnist-sample", "--optimizer", "adam",
                              "--momentum", "0.9", "--out", tmp_path / "r")
    assert_one_line_error(status, err, "--momentum is for --optimizer sgd")
    status, _, err = run_main(capsys, "evaluate", tmp_path / "not-a-run")
    assert_one_line_error(status, err, "no run folder or model file at")

    pets = write_png_folder(tmp_path / "pets", side=32)
    status, _, err = run_main(capsys, "train", "--dataset", f"folder:{pets}", "--model", "mnist2",
                              "--out", tmp_path / "r2")
    assert_one_line_error(status, err, "takes 28x28 images", "--model cifar6")
    status, _, err = run_main(capsys, "train", "--dataset", "mnist-sample", "--out", tmp_path / "r3", "--resume")
    assert_one_line_error(status, err, "has no config.json")


def test_a_checkpoint_or_model_from_elsewhere_is_refused(tmp_path, capsys):
    pets = write_png_folder(tmp_path / "pets", side=32)
    cifar_run, mnist_run = tmp_path / "cifar", tmp_path / "mnist"
    assert run_main(capsys, "train", "--dataset", f"folder:{pets}", "--epochs", "1", "--threads", "1",
                    "--out", cifar_run)[0] == 0
    assert json.loads((cifar_run / "config.json").read_text())["model"] == "cifar6"
    assert run_main(capsys, "train", *QUICK, "--epochs", "1", "--out", mnist_run)[0] == 0

    (mnist_run / "checkpoint-last.npz").write_bytes((cifar_run / "checkpoint-last.npz").read_bytes())
    status, _, err = run_main(capsys, "train", "--out", mnist_run, "--resume", "--epochs", "2")
    assert_one_line_error(status, err, "another architecture")

    status, _, err = run_main(capsys, "evaluate", cifar_run, "--dataset", "mnist-sample")
    assert_one_line_error(status, err, "takes 32x32 colour images")

    model = mnist_run / "model.npz"
    model.write_bytes(model.read_bytes()[:1000])
    status, _, err = run_main(capsys, "evaluate", mnist_run)
    assert_one_line_error(status, err, str(model))


def test_usage_errors_come_from_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--dataset", "mnist", "--epochs", "0", "--out", "x"])
    assert info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["demo"], ["info"]])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main(command + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastconv")
    if command == ["train"]:
        for option in ("--dataset", "--model", "--optimizer", "--schedule", "--augment", "--resume", "--threads"):
            assert option in out


def test_info(capsys):
    status, out, _ = run_main(capsys, "info")
    assert status == 0
    info = fastconv.build_info()
    assert f"openmp: {info['openmp']}" in out and f"backend: {info['backend']}" in out
    assert "conv2d_forward" in out


# ---------------------------------------------------------------- demo


def test_quick_demo_writes_everything(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    for again in ([], ["--force"]):  # a second demo replaces the first only when asked to
        status, out, err = run_main(capsys, "demo", "--out", out_dir, "--epochs", "1", "--limit", "300", "--no-report",
                                    "--threads", "1", *again)
        assert status == 0, err
    assert re.search(r"^accuracy: \d\.\d{4}$", out, re.M)
    assert f"everything is in {out_dir}/" in out
    for name in ("train_samples.png", "training_curves.png", "predictions.png", "confusion_matrix.png"):
        assert is_png(out_dir / name), name
    report = json.loads((out_dir / "eval.json").read_text())
    assert report["images"] == 300 and report["accuracy"] > 0.2  # chance is 0.1
    assert len(json.loads((out_dir / "history.json").read_text())) == 1
    listed = [line.split()[0].rstrip(",") for line in out.split("everything is in")[1].splitlines()[1:]
              if line.startswith("  ")]
    for name in listed:
        assert list(out_dir.glob(name)), f"the demo lists {name}, which it did not write"
    assert {"config.json", "model.npz", "checkpoint-*.npz", "eval.json"} <= set(listed)


def test_limit_takes_a_fixed_subset_across_classes():
    labels = np.repeat(np.arange(10), 100)  # sorted by class, as a folder data set is
    subset = cli.limited(len(labels), 50)
    assert len(subset) == 50 and np.all(np.diff(subset) > 0)
    assert len(np.unique(labels[subset])) >= 8
    np.testing.assert_array_equal(subset, cli.limited(len(labels), 50))
    np.testing.assert_array_equal(cli.limited(30, 50), np.arange(30))
