"""Threads: a run on two threads, killed and resumed, ends bit for bit where an
uninterrupted two-thread run ends (the checkpoint records the thread count and
the resumed run keeps it).
"""
import numpy as np
from training_runs import (
    assert_same_run,
    finish,
    killed_run,
    reference_run,
    report,
    run_options,
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
