"""Threads and processes: a run on two threads, killed and resumed, ends bit for
bit where an uninterrupted two-thread run ends (the checkpoint records the
thread count and the resumed run keeps it), and two ``fastconv train``
processes started together on the same cores each end where a run alone
ends: the same seed gives the same weights whatever else the machine runs.
"""
import os
import subprocess
import time

import numpy as np
import pytest
from training_runs import (
    INSTRUMENTED,
    assert_same_run,
    environment,
    finish,
    image_folder,
    killed_run,
    reference_run,
    report,
    run_options,
    train_command,
)

import fastconv
from fastconv.train.trainer import FINAL_MODEL, LAST_CHECKPOINT, load_checkpoint

SECTION = "threads and processes"


def test_a_two_thread_run_resumes_bit_for_bit(tmp_path, tmp_path_factory, request):
    two_threads, _ = reference_run(tmp_path_factory, threads=2)
    one_thread, _ = reference_run(tmp_path_factory, threads=1)
    # The test means something only if the second thread changes the sums
    # (a convolution's weight gradient is summed per thread, then the partials).
    ours, theirs = fastconv.load(two_threads / FINAL_MODEL).state_dict(), fastconv.load(one_thread / FINAL_MODEL)
    differ = max(float(np.abs(ours[k] - v).max()) for k, v in theirs.state_dict().items())
    assert differ > 0, "two threads train exactly what one thread trains: the second thread is never used"

    run_dir = tmp_path / "run"
    writes = killed_run(run_dir, f"{LAST_CHECKPOINT}:2:5", options=run_options(threads=2))
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["threads"] == 2
    done, went_on = finish(run_dir)
    assert went_on == "resuming at epoch 2"
    assert ", 2 threads" in done.stdout.splitlines()[0], done.stdout
    assert "note:" not in done.stdout, done.stdout
    assert_same_run(run_dir, two_threads)
    report(request, SECTION, f"2 threads: killed {writes.where()}; {went_on}; identical to the uninterrupted "
                             f"2-thread run (which differs from the 1-thread run by up to {differ:.1e})")


def start_training(run_dir, options, env=None, cpus=None):
    """A `fastconv train` process, on the given CPUs if any."""
    env = dict(env or environment())
    if cpus is not None:
        env["FASTCONV_TEST_CPUS"] = ",".join(str(cpu) for cpu in sorted(cpus))
    return subprocess.Popen(train_command(run_dir, resume=False, launcher=INSTRUMENTED, options=options), env=env,
                            cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_all(processes):
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err


def assert_overlapped(run_dirs):
    """Each run started (wrote its configuration) before the other finished (wrote its model)."""
    started = [(run_dir / "config.json").stat().st_mtime_ns for run_dir in run_dirs]
    ended = [(run_dir / FINAL_MODEL).stat().st_mtime_ns for run_dir in run_dirs]
    assert max(started) < min(ended), "the two trainings did not run at the same time"
    return (min(ended) - max(started)) / 1e9


@pytest.mark.parametrize("threads, on_one_core", [
    pytest.param(1, True, id="1 thread each, one core"),
    pytest.param(2, False, id="2 threads each, every core", marks=pytest.mark.slow),
])
def test_two_processes_training_at_once_each_end_as_alone(tmp_path, tmp_path_factory, request, threads,
                                                          on_one_core):
    reference_dir, alone = reference_run(tmp_path_factory, threads=threads)
    cpus = {min(os.sched_getaffinity(0))} if on_one_core else os.sched_getaffinity(0)
    run_dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    started = time.perf_counter()
    processes = []
    for run_dir in run_dirs:
        run_dir.parent.mkdir()
        processes.append(start_training(run_dir, run_options(threads), cpus=cpus))
    wait_for_all(processes)
    together = time.perf_counter() - started
    overlap = assert_overlapped(run_dirs)
    for run_dir in run_dirs:
        assert_same_run(run_dir, reference_dir)
    report(request, SECTION, f"two processes of {threads} thread{'s' if threads > 1 else ''} on CPUs "
                             f"{sorted(cpus)}: {together:.1f} s together ({alone:.1f} s alone), trainings "
                             f"overlapping for {overlap:.1f} s; both identical to the run alone")


@pytest.mark.slow
def test_two_processes_decoding_the_same_folder_share_its_cache(tmp_path, tmp_path_factory, request):
    """Two runs on one folder data set with a cold cache, started together: each
    decodes the folder and writes the same cache file; both train what a run
    alone trains, and one whole cache file is left, no temporary one."""
    options = run_options(dataset=f"folder:{image_folder(tmp_path_factory)}")
    reference_dir, _ = reference_run(tmp_path_factory, dataset=options[1],
                                     env=environment(FASTCONV_DATA=tmp_path_factory.mktemp("reference-data")))
    env = environment(FASTCONV_DATA=tmp_path / "data")
    run_dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    processes = []
    for run_dir in run_dirs:
        run_dir.parent.mkdir()
        processes.append(start_training(run_dir, options, env=env))
    wait_for_all(processes)
    overlap = assert_overlapped(run_dirs)
    for run_dir in run_dirs:
        assert_same_run(run_dir, reference_dir)
    caches = sorted((tmp_path / "data" / "folder-cache").iterdir())
    assert [p.suffix for p in caches] == [".npz"], [p.name for p in caches]
    with np.load(caches[0]) as cache:
        assert cache["x"].shape == (40, 1, 28, 28)
    # A third run reads that cache and trains the same.
    third = tmp_path / "c" / "run"
    third.parent.mkdir()
    finish(third, options=options, env=env)
    assert_same_run(third, reference_dir)
    report(request, SECTION, f"two processes on one folder data set, cold cache: trainings overlapping for "
                             f"{overlap:.1f} s, both identical to the run alone, one cache file left, and a "
                             f"third run from that cache identical too")


# ---------------------------------------------------------------- one model, several threads


def _small_model():
    from fastconv.models import mnist2

    return mnist2(seed=0)


def test_threads_sharing_one_model_get_a_clear_error_not_mixed_results():
    """Two threads running passes of one model at once: the second is refused
    with a sentence saying what to do, and the first pass's results are the
    ones a single thread computes."""
    import threading

    model = _small_model()
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    alone = model.forward(x).copy()
    entered, release = threading.Event(), threading.Event()
    hold = model.layer("conv1").register_forward_hook(lambda layer, inputs, output: (entered.set(),
                                                                                     release.wait(30)))
    results, errors = {}, {}

    def first():
        results["first"] = model.forward(x).copy()

    def second():
        entered.wait(30)
        try:
            model.forward(x)
        except RuntimeError as error:
            errors["second"] = str(error)
        finally:
            release.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    hold.remove()
    assert "in the middle of a pass in another thread" in errors["second"]
    assert "copy.deepcopy(model)" in errors["second"]
    np.testing.assert_array_equal(results["first"], alone)


def test_a_backward_needs_the_forward_of_its_own_thread():
    import threading

    model = _small_model()
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    thread = threading.Thread(target=model.forward, args=(x,))
    thread.start()
    thread.join(60)
    with pytest.raises(RuntimeError, match="last forward pass of this model ran in another thread"):
        model.backward(np.ones((4, 10), np.float32))
    model.forward(x)
    model.backward(np.ones((4, 10), np.float32))  # forward and backward in one thread: fine


def test_copies_work_in_threads_of_their_own():
    import copy
    import threading

    model = _small_model()
    rng = np.random.default_rng(2)
    batches = [rng.random((8, 1, 28, 28), dtype=np.float32) for _ in range(4)]
    want = [model.forward(b).copy() for b in batches]
    got = [None] * len(batches)

    def work(i):
        mine = copy.deepcopy(model)
        out = mine.forward(batches[i])
        mine.backward(np.ones_like(out))
        got[i] = out

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def test_a_copy_taken_after_a_forward_starts_with_no_pass():
    import copy

    model = _small_model()
    x = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
    model.forward(x)
    clone = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        clone.backward(np.ones((2, 10), np.float32))
    model.backward(np.ones((2, 10), np.float32))  # the original keeps its pass
    np.testing.assert_array_equal(clone.forward(x), model.forward(x))
