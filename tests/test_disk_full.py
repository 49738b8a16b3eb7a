"""A full disk: training that cannot write a file stops with one line naming
that file and a non-zero status, never a traceback; the files written before
stay whole (the last checkpoint still loads and is unchanged), and once there
is space again the run resumes and ends identical to one that never stopped.

A disk cannot be filled without root here, so the child process sets itself a
file size limit instead (RLIMIT_FSIZE, with SIGXFSZ ignored: see
``tests/training_runs.py``): a write past it fails with EFBIG, as a write to a
full disk fails with ENOSPC, half way through the file.
"""
import subprocess

import pytest
from training_runs import (
    INSTRUMENTED,
    assert_same_run,
    environment,
    finish,
    killed_run,
    reference_run,
    report,
    stale_temporaries,
    train_command,
)

from fastconv.train.trainer import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint

SECTION = "full disk"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def train_with_a_full_disk(run_dir, resume, limit):
    return subprocess.run(train_command(run_dir, resume, launcher=INSTRUMENTED), cwd=run_dir.parent,
                          env=environment(FASTCONV_TEST_FILE_SIZE_LIMIT=limit), capture_output=True, text=True,
                          timeout=600)


def assert_one_line_naming(stopped, path):
    assert stopped.returncode != 0, stopped.stdout
    err = stopped.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(path) in err, f"the error does not name {path}: {err}"
    return err


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, reference, request):
    # A run with the checkpoints of epoch 1 on disk (killed before its second
    # last checkpoint) resumes on a disk with room for the history only: the
    # best checkpoint of epoch 2 cannot be written.
    run_dir = tmp_path / "run"
    killed_run(run_dir, f"{LAST_CHECKPOINT}:2")
    kept = {name: (run_dir / name).read_bytes() for name in (LAST_CHECKPOINT, BEST_CHECKPOINT)}
    stopped = train_with_a_full_disk(run_dir, resume=True, limit=2 ** 20)
    err = assert_one_line_naming(stopped, run_dir / BEST_CHECKPOINT)
    assert stopped.returncode == 2
    for name, content in kept.items():
        assert (run_dir / name).read_bytes() == content, f"{name} changed"
    assert load_checkpoint(run_dir / LAST_CHECKPOINT)["epoch"] == 1
    assert stale_temporaries(run_dir) == []
    _, went_on = finish(run_dir)
    assert went_on == "resuming at epoch 2"
    assert_same_run(run_dir, reference[0])
    report(request, SECTION, f"stopped with {err!r}; {went_on} once there was room; identical to the "
                             f"uninterrupted run")


@pytest.mark.slow
@pytest.mark.parametrize("limit, name", [(300, "config.json"), (20_000, "train_samples.png")])
def test_a_full_disk_before_the_first_checkpoint_stops_naming_the_file(tmp_path, reference, request, limit, name):
    run_dir = tmp_path / "run"
    stopped = train_with_a_full_disk(run_dir, resume=False, limit=limit)
    err = assert_one_line_naming(stopped, run_dir / name)
    assert not (run_dir / name).exists() and stale_temporaries(run_dir) == []
    _, went_on = finish(run_dir)
    assert_same_run(run_dir, reference[0])
    report(request, SECTION, f"stopped with {err!r}; {went_on} once there was room; identical to the "
                             f"uninterrupted run")
