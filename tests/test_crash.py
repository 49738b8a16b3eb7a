"""Crash safety: a training run killed with SIGKILL at any moment leaves whole
files behind, its last complete checkpoint loads, and ``--resume`` finishes the
run with the weights and history of a run that was never interrupted;
truncated or corrupt checkpoints, models and data files are refused with one
line naming the file.

The runs are ``python -m fastconv.cli train`` on 32 images of the bundled MNIST
sample, one thread, three epochs of batches of 8, so that resuming is
deterministic bit for bit.
"""
import csv
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

import fastconv
from fastconv import cli
from fastconv.data import SAMPLE_DIR
from fastconv.train.rundir import CONFIG
from fastconv.train.trainer import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    HISTORY_COLUMNS,
    LAST_CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

RUN = ["--dataset", "mnist-sample", "--limit", "32", "--epochs", "3", "--batch-size", "8",
       "--val-fraction", "0.25", "--threads", "1"]
TRAINER_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, FINAL_MODEL, BEST_MODEL, "history.json", "history.csv")
TIMING = ("seconds", "images_per_second")

# Runs the command line after replacing os.replace, through which every atomic
# write renames its finished temporary file: the process kills itself at the
# nth rename onto the named file, i.e. in the middle of writing it.
KILL_BEFORE_RENAME = """
import os, signal, sys
target, nth = os.environ["FASTCONV_KILL_BEFORE_RENAME"].rsplit(":", 1)
seen, rename = [0], os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == target:
        seen[0] += 1
        if seen[0] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.replace = replace
from fastconv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(**extra):
    """The test's environment for a child process, importing this fastconv.

    Children run in the test's temporary folder: ``python -m`` and ``-c`` put
    the working directory first on sys.path, and from the repository root
    that is the source tree, not the installed package."""
    env = dict(os.environ, MPLBACKEND="Agg", **extra)
    package_root = str(Path(fastconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def train_command(run_dir, resume, launcher=("-m", "fastconv.cli")):
    options = ["--out", str(run_dir), "--resume"] if resume else RUN + ["--out", str(run_dir)]
    return [sys.executable, *launcher, "train", *options]


def train(run_dir, resume=False):
    done = subprocess.run(train_command(run_dir, resume), env=environment(), capture_output=True,
                          text=True, timeout=600, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr
    return done


def started(run_dir):
    """Whether a run was started in run_dir (its config.json is written): then
    --resume continues it, from the beginning if it has no checkpoint yet."""
    return (run_dir / CONFIG).exists()


def finish(run_dir):
    """Complete an interrupted run: --resume, which starts it again when it was
    killed before its first checkpoint; a plain start when it never wrote its
    configuration."""
    return train(run_dir, resume=started(run_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run that was never interrupted, and its duration in seconds."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    started = time.perf_counter()
    train(run_dir)
    return run_dir, time.perf_counter() - started


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def assert_whole(run_dir):
    """Every file a run keeps is complete: checkpoints and models load, JSON and CSV parse,
    figures decode. Temporary files (hidden, .tmp) are what a kill interrupts."""
    from PIL import Image

    for path in run_dir.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".tmp"), path
        elif path.name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
            state = load_checkpoint(path)
            assert 0 <= state["epoch"] <= 3 and len(state["history"]) == state["epoch"]
        elif path.suffix == ".npz":
            fastconv.load(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            with open(path, newline="") as f:
                assert next(csv.reader(f)) == HISTORY_COLUMNS
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        else:
            raise AssertionError(f"unexpected file {path}")


def assert_same_run(run_dir, reference_dir):
    """The finished run has the final and best models and the history of the
    uninterrupted one, bit for bit, and no temporary file of the trainer's is left."""
    assert_whole(run_dir)
    for name in (FINAL_MODEL, BEST_MODEL):
        ours, theirs = fastconv.load(run_dir / name).state_dict(), fastconv.load(reference_dir / name).state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name} {key}")
    history = json.loads((run_dir / "history.json").read_text())
    assert without_timing(history) == without_timing(json.loads((reference_dir / "history.json").read_text()))
    best = load_checkpoint(run_dir / BEST_CHECKPOINT)
    assert best["epoch"] == load_checkpoint(reference_dir / BEST_CHECKPOINT)["epoch"]
    best_model = fastconv.load(run_dir / BEST_MODEL).state_dict()
    for key, value in best["model"].items():
        np.testing.assert_array_equal(best_model[key], value, err_msg=f"best model and best checkpoint: {key}")
    stale = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and
             any(p.name.startswith(f".{name}.") for name in TRAINER_FILES)]
    assert not stale, stale


# ---------------------------------------------------------------- kill -9


@pytest.mark.parametrize("target", [
    # The first best checkpoint: a resumed run used to believe in a best model
    # that the killed one never wrote.
    f"{BEST_CHECKPOINT}:1",
    pytest.param(f"{LAST_CHECKPOINT}:2", marks=pytest.mark.slow),
    pytest.param(f"{FINAL_MODEL}:1", marks=pytest.mark.slow),
    pytest.param("history.json:3", marks=pytest.mark.slow),
])
def test_kill_during_a_file_write_then_resume(tmp_path, reference, target):
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        train_command(run_dir, resume=False, launcher=("-c", KILL_BEFORE_RENAME)),
        env=environment(FASTCONV_KILL_BEFORE_RENAME=target), capture_output=True, text=True, timeout=600,
        cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    name = target.split(":")[0]
    assert any(p.name.startswith(f".{name}.") for p in run_dir.iterdir()), "killed before the write began"
    assert_whole(run_dir)
    finish(run_dir)
    assert_same_run(run_dir, reference[0])


def temporaries(run_dir):
    return {p.name for p in run_dir.glob(".*.tmp")} if run_dir.exists() else set()


def kill_repeatedly(tmp_path, reference_dir, seed, kills, longest_delay):
    """Start or resume a run and SIGKILL it after a random delay, `kills` times,
    checking after each kill that every file left is whole; a run that ends
    before its kill must equal the reference, and the next one starts afresh.
    Returns the delays of the kills, how many of them interrupted a file write
    (left a temporary file that was not there before) and the runs finished."""
    rng = np.random.default_rng(seed)
    delays, during_a_write, finished = [], 0, 0
    run_dir = tmp_path / "run0"
    while len(delays) < kills:
        before = temporaries(run_dir)
        process = subprocess.Popen(train_command(run_dir, started(run_dir)),
                                   env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   cwd=tmp_path)
        delay = float(rng.uniform(0.3, longest_delay))
        try:
            _, err = process.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            delays.append(round(delay, 2))
            during_a_write += bool(temporaries(run_dir) - before)
            if run_dir.exists():
                assert_whole(run_dir)
            continue
        assert process.returncode == 0, err.decode()
        assert_same_run(run_dir, reference_dir)
        finished += 1
        run_dir = tmp_path / f"run{finished}"
    finish(run_dir)
    assert_same_run(run_dir, reference_dir)
    return delays, during_a_write, finished + 1


@pytest.mark.parametrize("kills", [pytest.param(2, id="2 kills"),
                                   pytest.param(25, id="25 kills", marks=pytest.mark.slow)])
def test_kill_at_random_moments_then_resume(tmp_path, reference, kills):
    reference_dir, duration = reference
    seed = int(os.environ.get("FASTCONV_CRASH_SEED", "0"))
    delays, during_a_write, runs = kill_repeatedly(tmp_path, reference_dir, seed, kills, duration)
    print(f"{len(delays)} kills after {delays} s, {during_a_write} of them during a file write; "
          f"{runs} runs finished, each identical to the uninterrupted one")


# ---------------------------------------------------------------- damaged files


@pytest.fixture
def keep_thread_settings():
    """The command line run in this process sets the thread counts: restore them."""
    before = fastconv.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=None):
        yield
    fastconv._runtime._kernels().set_openmp_threads(before)


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return status, err


def garble_compression_method(path):
    """Set the compression method of the archive's first member to an unknown one,
    as a flipped byte would: zipfile then raises NotImplementedError."""
    raw = bytearray(path.read_bytes())
    at = raw.rfind(b"PK\x01\x02")
    while at > 0 and raw.rfind(b"PK\x01\x02", 0, at) >= 0:
        at = raw.rfind(b"PK\x01\x02", 0, at)
    raw[at + 10:at + 12] = struct.pack("<H", 99)
    path.write_bytes(bytes(raw))


def damaged(path, how):
    size = path.stat().st_size
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:size // 2])
    elif how == "last byte missing":
        path.write_bytes(path.read_bytes()[:-1])
    elif how == "bytes flipped":
        raw = bytearray(path.read_bytes())
        for at in np.random.default_rng(3).integers(0, size, 16):
            raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif how == "compression method":
        garble_compression_method(path)
    elif how == "not a zip":
        path.write_text("not a checkpoint\n")


DAMAGE = ["empty", "truncated", "last byte missing", "bytes flipped", "compression method", "not a zip"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_checkpoint_is_refused_naming_it(tmp_path, reference, capsys, keep_thread_settings, how):
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    damaged(run_dir / LAST_CHECKPOINT, how)
    status, err = run_cli(capsys, "train", "--out", run_dir, "--resume")
    assert status == 2
    assert str(run_dir / LAST_CHECKPOINT) in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_is_refused_naming_it(tmp_path, reference, capsys, how):
    # Includes damage that zipfile reports as NotImplementedError or RuntimeError.
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    damaged(run_dir / FINAL_MODEL, how)
    status, err = run_cli(capsys, "evaluate", run_dir)
    assert status == 2
    assert str(run_dir / FINAL_MODEL) in err and len(err.splitlines()) == 1, err


def idx_header_overflowing_int64():
    """An IDX header of four dimensions of 65536 and no data: their product is
    2**64, which an int64 product wraps to 0."""
    return struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", *[65536] * 4)


@pytest.mark.parametrize("how", ["empty", "truncated", "bytes flipped", "gzip trailer", "size overflow"])
def test_damaged_data_file_is_refused_naming_it(tmp_path, capsys, keep_thread_settings, how):
    data_dir = tmp_path / "data" / "mnist"
    shutil.copytree(SAMPLE_DIR, data_dir, ignore=shutil.ignore_patterns("*.md"))
    path = data_dir / "t10k-labels-idx1-ubyte.gz"
    if how == "gzip trailer":
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF  # the CRC of the uncompressed data
        path.write_bytes(bytes(raw))
    elif how == "size overflow":
        path.write_bytes(gzip.compress(idx_header_overflowing_int64()))
    else:
        damaged(path, how)
    status, err = run_cli(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path / "data",
                          "--out", tmp_path / "run", "--threads", "1")
    assert status == 2
    assert str(path) in err and len(err.splitlines()) == 1, err


# ---------------------------------------------------------------- random damage


def corruptions(raw, count, seed):
    """Damaged copies of raw: truncations anywhere, and one to four flipped bits."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        damaged_bytes = bytearray(raw)
        if k % 3 == 0:
            damaged_bytes = damaged_bytes[:int(rng.integers(0, len(raw)))]
        else:
            for _ in range(int(rng.integers(1, 5))):
                damaged_bytes[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
        yield bytes(damaged_bytes)


def assert_refused_or_intact(path, raw, load, error, compare, count):
    """Each damaged copy of a file either loads to what the intact file holds (the
    damage fell where nothing reads) or raises `error` naming the file."""
    intact = load(path)
    unexpected = []
    for damaged_bytes in corruptions(raw, count, seed=count):
        path.write_bytes(damaged_bytes)
        try:
            compare(load(path), intact)
        except error as exc:
            if str(path) not in str(exc):
                unexpected.append(f"{type(exc).__name__} without the file name: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other exception is the finding
            unexpected.append(f"{type(exc).__name__}: {exc}")
    assert not unexpected, "\n".join(sorted(set(unexpected)))


def same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def same_model(a, b):
    same_state(a.state_dict(), b.state_dict())


SMALL_STATE = {"epoch": 2, "weights": np.arange(40, dtype=np.float32).reshape(5, 8),
               "history": [{"loss": 0.5}], "rng": {"state": 7}}


@pytest.mark.parametrize("count", [pytest.param(300, id="300"),
                                   pytest.param(5000, id="5000", marks=pytest.mark.slow)])
def test_randomly_damaged_checkpoint_is_refused_or_intact(tmp_path, count):
    path = save_checkpoint(tmp_path / "checkpoint.npz", SMALL_STATE)
    assert_refused_or_intact(path, path.read_bytes(), load_checkpoint, CheckpointError, same_state, count)


@pytest.mark.parametrize("count", [pytest.param(300, id="300"),
                                   pytest.param(5000, id="5000", marks=pytest.mark.slow)])
def test_randomly_damaged_model_is_refused_or_intact(tmp_path, count):
    model = fastconv.Sequential([fastconv.nn.layers.Conv2d(1, 2, 3, seed=0), fastconv.nn.layers.Flatten()])
    path = Path(model.save(tmp_path / "model.npz"))
    assert_refused_or_intact(path, path.read_bytes(), fastconv.load, ValueError, same_model, count)


@pytest.mark.parametrize("compress", [True, False])
def test_randomly_damaged_idx_file_is_refused_or_intact(tmp_path, compress):
    from fastconv.data import DataError, read_idx

    images = np.random.default_rng(4).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", *images.shape) + images.tobytes()
    raw = gzip.compress(raw) if compress else raw
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(raw)

    def same(got, intact):
        # gzip's checksum catches any damage to the pixels; a raw file has none,
        # so there only the header (type, dimensions, length) can be checked.
        if compress:
            np.testing.assert_array_equal(got, intact)
        else:
            assert got.shape == intact.shape

    assert_refused_or_intact(path, raw, read_idx, DataError, same, 300)
