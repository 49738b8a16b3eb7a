"""Crash safety: a training run killed with SIGKILL at any moment leaves whole
files behind, its last complete checkpoint loads, and ``--resume`` finishes the
run with the weights and history of a run that was never interrupted;
truncated or corrupt checkpoints, models and data files are refused with one
line naming the file.

The runs are ``python -m fastconv.cli train`` on 32 images of the bundled MNIST
sample, one thread, three epochs of batches of 8, so that resuming is
deterministic bit for bit (``tests/training_runs.py``). The kills, where they
landed and the resumes are listed at the end of pytest's output.
"""
import fnmatch
import gzip
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl
from training_runs import (
    INSTRUMENTED,
    Writes,
    assert_same_run,
    assert_whole,
    environment,
    finish,
    image_folder,
    killed_run,
    reference_run,
    report,
    run_options,
    started,
    train_command,
)

import fastconv
from fastconv import cli
from fastconv.data import SAMPLE_DIR
from fastconv.train.trainer import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    LAST_CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

SECTION = "crash safety: kills and resumes"

# Half way through the fifth write() call into the second checkpoint-last.npz:
# the first one (epoch 1) is on disk, so the run resumes.
INSIDE_THE_SECOND_LAST_CHECKPOINT = f"{LAST_CHECKPOINT}:2:5"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run that was never interrupted, and its duration in seconds."""
    return reference_run(tmp_path_factory)


# ---------------------------------------------------------------- kill -9


def check_after_kill(run_dir, writes, pattern):
    """What a kill in the middle of a write must leave: the write it was aimed
    at under way, every file of the run whole, and the interrupted write's
    temporary file beside them."""
    interrupted = writes.interrupted()
    assert interrupted is not None and fnmatch.fnmatchcase(interrupted[0], pattern), \
        f"the kill did not land in a write of {pattern}: {writes.lines[-3:]}"
    assert_whole(run_dir)
    assert any(p.name.startswith(f".{interrupted[0]}.") for p in run_dir.iterdir()), "no temporary file left"


# (kill point, how the next run goes on). The writes of a run, in order:
# config.json, train_samples.png, then each epoch history.json, history.csv,
# checkpoint-best.npz and best_model.npz (epochs 1 and 2 improve),
# checkpoint-last.npz and training_curves.png; last model.npz and the history.
@pytest.mark.parametrize("target, goes_on", [
    # The first best checkpoint: a resumed run used to believe in a best model
    # that the killed one never wrote.
    pytest.param(f"{BEST_CHECKPOINT}:1", "restarted", id="best checkpoint"),
    pytest.param(INSIDE_THE_SECOND_LAST_CHECKPOINT, "resuming at epoch 2", id="inside the last checkpoint"),
    pytest.param(f"{LAST_CHECKPOINT}:2", "resuming at epoch 2", id="last checkpoint", marks=pytest.mark.slow),
    pytest.param(f"{BEST_MODEL}:2", "resuming at epoch 2", id="best model", marks=pytest.mark.slow),
    pytest.param(f"{FINAL_MODEL}:1", "already trained for 3 epochs", id="final model", marks=pytest.mark.slow),
    pytest.param("history.json:3", "resuming at epoch 3", id="history", marks=pytest.mark.slow),
    pytest.param("history.csv:1", "restarted", id="history table", marks=pytest.mark.slow),
    pytest.param("training_curves.png:1", "resuming at epoch 2", id="curves figure", marks=pytest.mark.slow),
    pytest.param("train_samples.png:1", "restarted", id="samples figure", marks=pytest.mark.slow),
    pytest.param("config.json:1", "restarted", id="configuration", marks=pytest.mark.slow),
])
def test_kill_during_a_file_write_then_resume(tmp_path, reference, request, target, goes_on):
    run_dir = tmp_path / "run"
    writes = killed_run(run_dir, target)
    check_after_kill(run_dir, writes, target.split(":")[0])
    _, went_on = finish(run_dir)
    assert went_on == goes_on
    assert_same_run(run_dir, reference[0])
    report(request, SECTION, f"killed {writes.where()}; {went_on}; identical to the uninterrupted run")


@pytest.mark.slow
def test_kill_during_the_data_cache_write_then_restart(tmp_path, tmp_path_factory, request):
    """A folder data set's decoded cache (in $FASTCONV_DATA) is written before the
    run folder exists; a kill there leaves no cache, and the next run decodes
    again, caches, and trains what an uninterrupted run trains."""
    options = run_options(dataset=f"folder:{image_folder(tmp_path_factory)}")
    reference_dir, _ = reference_run(tmp_path_factory, dataset=options[1],
                                     env=environment(FASTCONV_DATA=tmp_path_factory.mktemp("reference-data")))
    env = environment(FASTCONV_DATA=tmp_path / "data")
    cache_dir = tmp_path / "data" / "folder-cache"
    run_dir = tmp_path / "run"
    writes = killed_run(run_dir, "digits-*.npz:1", options=options, env=env)
    assert writes.interrupted() is not None and writes.interrupted()[0].startswith("digits-"), writes.lines
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")] == []
    assert any(p.name.startswith(".digits-") for p in cache_dir.iterdir()), "no temporary file left"
    _, went_on = finish(run_dir, options=options, env=env)
    assert went_on == "restarted"
    assert_same_run(run_dir, reference_dir)
    caches = sorted(cache_dir.iterdir())
    assert [p.suffix for p in caches] == [".npz"], f"the cache folder holds {[p.name for p in caches]}"
    with np.load(caches[0]) as cache:
        assert cache["x"].shape == (40, 1, 28, 28)
    report(request, SECTION, f"killed {writes.where()}; {went_on}; identical to the uninterrupted run")


def test_the_kill_check_catches_checkpoints_written_in_place(tmp_path, request):
    """The temporary file and the rename are what keeps a checkpoint whole: with a
    planted fault, checkpoints written straight to their path, the very kill of
    the quick kill test leaves a half-written checkpoint-last.npz, which its
    check finds, and the run cannot be resumed."""
    run_dir = tmp_path / "run"
    writes = killed_run(run_dir, INSIDE_THE_SECOND_LAST_CHECKPOINT,
                        env=environment(FASTCONV_TEST_PLANT="checkpoint-in-place"))
    with pytest.raises(AssertionError, match=f"{LAST_CHECKPOINT}: CheckpointError") as found:
        check_after_kill(run_dir, writes, LAST_CHECKPOINT)
    resumed = subprocess.run(train_command(run_dir, resume=True), env=environment(), capture_output=True,
                             text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 2 and str(run_dir / LAST_CHECKPOINT) in resumed.stderr, resumed.stderr
    damage = [line for line in str(found.value).splitlines() if line.startswith(LAST_CHECKPOINT)]
    report(request, SECTION, f"planted in-place checkpoint writes, killed {writes.where()}: "
                             f"the check found {damage[0]}")


def temporaries(run_dir):
    return {p.name for p in run_dir.glob(".*.tmp")} if run_dir.exists() else set()


def kill_repeatedly(tmp_path, reference_dir, seed, kills, longest_delay):
    """Start or resume a run and SIGKILL it, `kills` times, checking after each
    kill that every file left is whole; a run that ends before its kill must
    equal the reference, and the next one starts afresh. Every other kill
    comes after a random delay; the others are the instrumented writer's, half
    way through a random write() call of a random write of the process (the
    first to the sixteenth), or just before its rename. The random delays go up
    to `longest_delay`, and to the length of the last whole run when it is
    shorter: the machine's speed changes as other jobs come and go. Returns a
    line per kill, the number that interrupted a file write, and the runs
    finished."""
    rng = np.random.default_rng(seed)
    landed, kills_done, during_a_write, finished, attempt = [], 0, 0, 0, 0
    run_dir = tmp_path / "run0"
    while kills_done < kills:
        attempt += 1
        log = tmp_path / f"writes-{attempt}.log"
        env = environment(FASTCONV_TEST_WRITE_LOG=log)
        by_the_writer = kills_done % 2 == 1
        if by_the_writer:
            env["FASTCONV_KILL_BEFORE_RENAME"] = f"*:{rng.integers(1, 17)}:{rng.integers(1, 13)}"
            timeout, how = 600, "by the writer"
        else:
            timeout = float(rng.uniform(0.3, longest_delay))
            how = f"after {timeout:.2f} s"
        resume = started(run_dir)
        before = temporaries(run_dir)
        began = time.perf_counter()
        process = subprocess.Popen(train_command(run_dir, resume, launcher=INSTRUMENTED),
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            _, err = process.communicate()
        if process.returncode == 0:
            if not resume:
                longest_delay = min(longest_delay, max(time.perf_counter() - began, 1.0))
            assert_same_run(run_dir, reference_dir)
            landed.append(f"run {finished + 1} ended before its kill ({how}), identical to the uninterrupted one")
            finished += 1
            run_dir = tmp_path / f"run{finished}"
            continue
        assert process.returncode == -signal.SIGKILL, err.decode()
        writes = Writes(log)
        interrupted = writes.interrupted()
        if by_the_writer:
            assert writes.kill is not None and interrupted is not None, writes.lines[-3:]
        if interrupted is not None:
            during_a_write += 1
            assert any(name.startswith(f".{interrupted[0]}.") for name in temporaries(run_dir) - before), \
                f"killed {writes.where()}, but no new temporary file: {sorted(temporaries(run_dir))}"
        if run_dir.exists():
            assert_whole(run_dir)
        kills_done += 1
        landed.append(f"kill {kills_done} ({'resumed' if resume else 'fresh'} run, {how}): {writes.where()}")
    _, went_on = finish(run_dir)
    assert_same_run(run_dir, reference_dir)
    landed.append(f"then {went_on}")
    return landed, during_a_write, finished + 1


@pytest.mark.parametrize("kills", [pytest.param(2, id="2 kills"),
                                   pytest.param(25, id="25 kills", marks=pytest.mark.slow)])
def test_kill_at_random_moments_then_resume(tmp_path, reference, request, kills):
    reference_dir, duration = reference
    seed = int(os.environ.get("FASTCONV_CRASH_SEED", "0"))
    landed, during_a_write, runs = kill_repeatedly(tmp_path, reference_dir, seed, kills, duration)
    for line in landed:
        report(request, SECTION, line)
    report(request, SECTION, f"{kills} kills (seed {seed}), {during_a_write} of them during a file write; "
                             f"{runs} run{'s' if runs > 1 else ''} finished, each identical to the uninterrupted one")
    # Every other kill is the writer's: at least one lands in a write, whatever the machine's speed.
    assert during_a_write >= 1


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
