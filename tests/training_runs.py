"""What the crash, full-disk and concurrency tests share: training runs of
``fastconv train`` in child processes, an instrumented launcher that logs and
interrupts the atomic writes of those children, the checks of a run folder
against an uninterrupted reference run, and the figures the tests report at the
end of pytest's output.

The runs train mnist2 on 32 images of the bundled MNIST sample, three epochs of
batches of 8, so that a run is short and resumes bit for bit for a given thread
count.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import fastconv
from fastconv.train.rundir import CONFIG
from fastconv.train.trainer import (
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    HISTORY_COLUMNS,
    LAST_CHECKPOINT,
    load_checkpoint,
)

RUN = ["--dataset", "mnist-sample", "--limit", "32", "--epochs", "3", "--batch-size", "8",
       "--val-fraction", "0.25"]
TRAINER_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, FINAL_MODEL, BEST_MODEL, "history.json", "history.csv")
TIMING = ("seconds", "images_per_second")

# Runs the command line with every atomic write instrumented. atomic_write
# (fastconv/_files.py) calls tempfile.mkstemp, os.fdopen, os.replace and
# os.unlink through their modules, so replacing those four functions here
# reaches every write the library makes, whoever imported atomic_write.
#
# FASTCONV_TEST_WRITE_LOG=PATH  appends "begin NAME N", "end NAME N BYTES" (the
#     rename follows), "abort NAME N BYTES" (a failed write) and "kill NAME N
#     WHERE BYTES" lines to PATH, N counting the writes onto NAME.
# FASTCONV_KILL_BEFORE_RENAME=PATTERN:NTH  SIGKILL just before the rename that
#     ends the NTH write onto a file whose name matches PATTERN (fnmatch; "*"
#     counts every write), i.e. with the new content whole under its temporary
#     name. PATTERN:NTH:CALLS kills earlier: half way through the CALLS-th
#     write() call into the file, or before the rename if it makes fewer.
# FASTCONV_TEST_PLANT=checkpoint-in-place  plants a fault: checkpoints are
#     written straight to their path, without a temporary file and a rename.
# FASTCONV_TEST_FILE_SIZE_LIMIT=BYTES  no file grows past BYTES (RLIMIT_FSIZE,
#     SIGXFSZ ignored): a write past it fails with EFBIG, as on a full disk.
# FASTCONV_TEST_CPUS=0,1  runs the process, and the threads it starts, on those CPUs.
# Set here rather than in a preexec_fn, which is not safe in a process with threads.
KILL_BEFORE_RENAME = r"""
import fnmatch, io, os, signal, sys, tempfile

if os.environ.get("FASTCONV_TEST_FILE_SIZE_LIMIT"):
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(os.environ["FASTCONV_TEST_FILE_SIZE_LIMIT"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if os.environ.get("FASTCONV_TEST_CPUS"):
    os.sched_setaffinity(0, {int(cpu) for cpu in os.environ["FASTCONV_TEST_CPUS"].split(",")})

log_path = os.environ.get("FASTCONV_TEST_WRITE_LOG")
log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log_path else None
target = os.environ.get("FASTCONV_KILL_BEFORE_RENAME", "").split(":")
pattern = target[0] or None
nth = int(target[1]) if len(target) > 1 else 0
calls = int(target[2]) if len(target) > 2 else None
counts, matched, by_fd, by_tmp = {}, [0], {}, {}


def log(*words):
    if log_fd is not None:
        os.write(log_fd, (" ".join(str(w) for w in words) + "\n").encode())


class Write:
    def __init__(self, name):
        self.name, self.nth = name, counts.get(name, 0) + 1
        counts[name] = self.nth
        self.bytes, self.calls, self.doomed = 0, 0, False
        if pattern is not None and fnmatch.fnmatchcase(name, pattern):
            matched[0] += 1
            self.doomed = matched[0] == nth
        log("begin", name, self.nth)

    def die(self, where):
        log("kill", self.name, self.nth, where, self.bytes)
        os.kill(os.getpid(), signal.SIGKILL)

    def end(self):
        if self.doomed:
            self.die("before-rename")
        log("end", self.name, self.nth, self.bytes)


class CountingWriter(io.BufferedWriter):
    def write(self, data):
        write = self.tracked
        write.calls += 1
        if write.doomed and write.calls == calls:
            view = memoryview(data).cast("B")
            write.bytes += super().write(view[:len(view) // 2])
            self.flush()
            write.die("inside")
        written = super().write(data)
        write.bytes += written
        return written


def tracked_file(fd, write):
    f = CountingWriter(io.FileIO(fd, "wb"))
    f.tracked = write
    return f


real_mkstemp, real_fdopen, real_replace, real_unlink = tempfile.mkstemp, os.fdopen, os.replace, os.unlink


def mkstemp(suffix=None, prefix=None, dir=None, text=False):
    fd, tmp = real_mkstemp(suffix, prefix, dir, text)
    if prefix and prefix.startswith(".") and suffix == ".tmp":
        by_fd[fd] = by_tmp[tmp] = Write(prefix[1:-1])
    return fd, tmp


def fdopen(fd, *args, **kwargs):
    write = by_fd.pop(fd, None)
    return real_fdopen(fd, *args, **kwargs) if write is None else tracked_file(fd, write)


def replace(src, dst, *args, **kwargs):
    # "end" before the rename: a kill between the two leaves a temporary file
    # that the log does not claim, never a claimed one that is gone.
    write = by_tmp.pop(os.fspath(src), None)
    if write is not None:
        write.end()
    return real_replace(src, dst, *args, **kwargs)


def unlink(path, *args, **kwargs):
    write = by_tmp.pop(os.fspath(path), None)
    if write is not None:
        log("abort", write.name, write.nth, write.bytes)
    return real_unlink(path, *args, **kwargs)


tempfile.mkstemp, os.fdopen, os.replace, os.unlink = mkstemp, fdopen, replace, unlink

if os.environ.get("FASTCONV_TEST_PLANT") == "checkpoint-in-place":
    from pathlib import Path

    import fastconv.train.trainer

    def write_in_place(path, write_to):
        path = Path(path)
        write = Write(path.name)
        with tracked_file(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), write) as f:
            write_to(f)
        write.end()
        return path

    fastconv.train.trainer.atomic_write = write_in_place

from fastconv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(**extra):
    """The test's environment for a child process, importing this fastconv.

    Children run in the test's temporary folder: ``python -m`` and ``-c`` put
    the working directory first on sys.path, and from the repository root
    that is the source tree, not the installed package."""
    env = dict(os.environ, MPLBACKEND="Agg", **{k: str(v) for k, v in extra.items()})
    package_root = str(Path(fastconv.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def run_options(threads=1, dataset=None):
    """The options of a reference run: RUN on `threads` threads, or on a folder data set."""
    options = list(RUN)
    if dataset is not None:
        options[options.index("--dataset") + 1] = dataset
        del options[options.index("--limit"):options.index("--limit") + 2]
    return options + ["--threads", str(threads)]


INSTRUMENTED = ("-c", KILL_BEFORE_RENAME)


def train_command(run_dir, resume, launcher=("-m", "fastconv.cli"), options=None):
    if resume:
        arguments = ["--out", str(run_dir), "--resume"]
    else:
        arguments = (options if options is not None else run_options()) + ["--out", str(run_dir)]
    return [sys.executable, *launcher, "train", *arguments]


def train(run_dir, resume=False, options=None, env=None):
    done = subprocess.run(train_command(run_dir, resume, options=options), env=env or environment(),
                          capture_output=True, text=True, timeout=600, cwd=run_dir.parent)
    assert done.returncode == 0, done.stderr
    return done


def started(run_dir):
    """Whether a run was started in run_dir (its config.json is written): then
    --resume continues it, from the beginning if it has no checkpoint yet."""
    return (run_dir / CONFIG).exists()


def finish(run_dir, options=None, env=None):
    """Complete an interrupted run as a user does: --resume once it has written
    its configuration (from its last checkpoint, or from the beginning when it
    was killed before the first), else the same command again. Returns the
    finished process and how it went on: "restarted", "resuming at epoch N" or
    "already trained for N epochs"."""
    resume = started(run_dir)
    done = train(run_dir, resume=resume, options=options, env=env)
    if not resume or "has no checkpoint yet" in done.stdout:
        return done, "restarted"
    said = [line for line in done.stdout.splitlines() if line.startswith(("resuming at", "already trained"))]
    assert said, done.stdout
    return done, said[0].split(":")[0]


def killed_run(run_dir, target, options=None, env=None, resume=False):
    """Run (or resume) a training into run_dir, SIGKILLed at `target` (see
    KILL_BEFORE_RENAME); returns the writes the child logged."""
    log = run_dir.parent / f"{run_dir.name}-writes.log"
    log.unlink(missing_ok=True)
    env = dict(env or environment(), FASTCONV_KILL_BEFORE_RENAME=target, FASTCONV_TEST_WRITE_LOG=str(log))
    killed = subprocess.run(train_command(run_dir, resume, launcher=INSTRUMENTED, options=options),
                            env=env, capture_output=True, text=True, timeout=600, cwd=run_dir.parent)
    assert killed.returncode == -signal.SIGKILL, f"not killed (status {killed.returncode}): {killed.stderr}"
    return Writes(log)


class Writes:
    """The writes a child logged (FASTCONV_TEST_WRITE_LOG): which were complete,
    which one a kill interrupted."""

    def __init__(self, path):
        self.lines = path.read_text().splitlines() if path.exists() else []
        self.open, self.completed, self.kill = {}, [], None
        for line in self.lines:
            word, name, nth, *rest = line.split()
            if word == "begin":
                self.open[name, int(nth)] = True
            elif word == "end":
                self.open.pop((name, int(nth)), None)
                self.completed.append(name)
            elif word == "abort":
                self.open.pop((name, int(nth)), None)
            elif word == "kill":
                self.kill = (name, int(nth), rest[0], int(rest[1]))

    def interrupted(self):
        """(name, nth) of the write under way when the process died, or None."""
        return list(self.open)[-1] if self.open else None

    def where(self):
        """Where the process died, in words."""
        if self.kill is not None:
            name, nth, where, written = self.kill
            how = "half way through a write() call" if where == "inside" else "just before the rename"
            return f"during write {nth} of {name}, {how}, {written:,} bytes written"
        if self.interrupted() is not None:
            name, nth = self.interrupted()
            return f"during write {nth} of {name}"
        if self.completed:
            return f"between writes, {len(self.completed)} done, the last of {self.completed[-1]}"
        return "before the first write"


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


def damaged_files(run_dir, epochs=3):
    """The files of a run folder that are not whole, with why: checkpoints and
    models must load, JSON and CSV parse, figures decode. Temporary files
    (hidden, .tmp) are what a kill interrupts and are not checked."""
    from PIL import Image

    problems = []
    for path in sorted(run_dir.iterdir()):
        try:
            if path.name.startswith("."):
                assert path.name.endswith(".tmp"), "a hidden file that is not a temporary one"
            elif path.name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                state = load_checkpoint(path)
                assert 0 <= state["epoch"] <= epochs and len(state["history"]) == state["epoch"], "wrong epoch"
            elif path.suffix == ".npz":
                fastconv.load(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".csv":
                with open(path, newline="") as f:
                    assert next(csv.reader(f)) == HISTORY_COLUMNS, "wrong columns"
            elif path.suffix == ".png":
                with Image.open(path) as image:
                    image.verify()
            else:
                raise AssertionError("unexpected file")
        except Exception as error:  # noqa: BLE001 - every reason is reported
            problems.append(f"{path.name}: {type(error).__name__}: {error}")
    return problems


def assert_whole(run_dir):
    """Every file a run keeps is complete (see damaged_files)."""
    problems = damaged_files(run_dir)
    assert not problems, "damaged files in the run folder:\n" + "\n".join(problems)


def stale_temporaries(run_dir):
    """Temporary files of the run's own files, which no finished run should leave."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def assert_same_run(run_dir, reference_dir):
    """The finished run has the final and best models and the history of the
    uninterrupted one, bit for bit, and no temporary file is left."""
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
    stale = stale_temporaries(run_dir)
    assert not stale, stale


# ---------------------------------------------------------------- reference runs

_REFERENCES = {}


def reference_run(tmp_path_factory, threads=1, dataset=None, env=None):
    """(run folder, seconds) of an uninterrupted run with these options, trained
    once per test session and shared by the modules that compare with it (`env`
    is the first caller's: it must not change what is trained)."""
    key = (threads, dataset)
    if key not in _REFERENCES:
        run_dir = tmp_path_factory.mktemp(f"reference-{threads}-threads") / "run"
        started = time.perf_counter()
        train(run_dir, options=run_options(threads, dataset), env=env)
        _REFERENCES[key] = run_dir, time.perf_counter() - started
    return _REFERENCES[key]


def image_folder(tmp_path_factory):
    """A folder data set of 28x28 grey digits, 0s and 1s of the MNIST sample,
    20 of each (created once per session)."""
    if "folder" not in _REFERENCES:
        from PIL import Image

        from fastconv.data import load_dataset

        root = tmp_path_factory.mktemp("images") / "digits"
        sample = load_dataset("mnist-sample")
        for digit in (0, 1):
            (root / str(digit)).mkdir(parents=True)
            for i, index in enumerate(np.flatnonzero(sample.y_train == digit)[:20]):
                Image.fromarray(sample.x_train[index, 0]).save(root / str(digit) / f"{i:02d}.png")
        _REFERENCES["folder"] = root
    return _REFERENCES["folder"]


# ---------------------------------------------------------------- figures for the log


class _Figures:
    """Collects the figures the tests measure and prints them at the end of
    pytest's output (captured output is shown only for failing tests)."""

    name = "fastconv-reliability-figures"

    def __init__(self):
        self.sections = {}

    def pytest_terminal_summary(self, terminalreporter):
        for section, lines in self.sections.items():
            terminalreporter.write_sep("-", section)
            for line in lines:
                terminalreporter.write_line(line)


def report(request, section, line):
    """Print a figure (seen with -s) and list it, under `section`, in pytest's summary."""
    print(line)
    manager = request.config.pluginmanager
    figures = manager.get_plugin(_Figures.name)
    if figures is None:
        figures = _Figures()
        manager.register(figures, _Figures.name)
    figures.sections.setdefault(section, []).append(f"{request.node.name}: {line}")
