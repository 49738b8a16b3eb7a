"""Data-parallel training and evaluation over MPI (fastconv.train.distributed).

The oracle is one process: N ranks must give its weights, its evaluation and
its checkpoints. The multi-rank tests run real ``mpiexec -n 2`` jobs
(tests/mpi_worker.py and the command line); they need the ``mpi`` extra.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.train import distributed
from fastconv.train.distributed import Communicator, SyncBatchNorm2d, shard

WORKER = Path(__file__).with_name("mpi_worker.py")


def _mpiexec() -> str:
    pytest.importorskip("mpi4py")
    found = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        pytest.skip("no mpiexec: pip install '.[mpi]'")
    return found


# `python -m` and `python -c` put the working directory first on sys.path; run
# from a checkout, that would import its source folder, whose kernels a
# non-editable install leaves uncompiled, instead of the installed package.
OUTSIDE = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    return env


def mpirun(ranks: int, *command: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks command`` (a Python file or a fastconv command line)."""
    args = [_mpiexec(), "--oversubscribe", "-n", str(ranks), *command]
    done = subprocess.run(args, cwd=OUTSIDE, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def fastconv_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastconv.cli", *args]


class _Rank(Communicator):
    """A communicator that only knows its rank and size (for shard)."""

    def __init__(self, rank: int, size: int) -> None:
        super().__init__()
        self.rank, self.size = rank, size


# ------------------------------------------------------------------ without MPI


def test_no_launcher_means_one_process_and_no_mpi4py():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    code = ("import sys; from fastconv.train.distributed import world; c = world(); "
            "print(c.size, c.rank, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "0", "False"]


def test_launcher_without_mpi4py_says_how_to_install():
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2"}
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from fastconv.train.distributed import world, DistributedError\n"
            "try:\n    world()\nexcept DistributedError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, env=env, capture_output=True, text=True, check=True)
    assert "OMPI_COMM_WORLD_SIZE=2" in out.stdout and 'pip install "fastconv[mpi]"' in out.stdout


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("count", [0, 1, 2, 7, 32, 33])
def test_shards_are_disjoint_and_complete(size, count):
    parts = [shard(count, _Rank(rank, size), start=10) for rank in range(size)]
    items = [i for part in parts for i in range(part.start, part.stop)]
    assert items == list(range(10, 10 + count))  # in order, each once
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batchnorm_alone_is_batchnorm(dtype):
    # One rank: the sums over ranks are its own, so forward, backward and the
    # running statistics must be BatchNorm2d's (the oracle, its compiled kernel).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5, 6)).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    bn = fastconv.nn.BatchNorm2d(3, dtype=dtype)
    bn.params["weight"][...] = rng.normal(size=3)
    reference = fastconv.nn.BatchNorm2d(3, dtype=dtype)
    reference.params["weight"][...] = bn.params["weight"]
    sync = SyncBatchNorm2d(bn, Communicator())
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(sync.forward(x), reference.forward(x), rtol=tol, atol=tol)
    np.testing.assert_allclose(sync.backward(dy), reference.backward(dy), rtol=tol * 10, atol=tol * 10)
    for key in ("weight", "bias"):
        np.testing.assert_allclose(bn.grads[key], reference.grads[key], rtol=tol, atol=tol)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(bn.buffers[key], reference.buffers[key], rtol=tol, atol=tol)
    assert type(sync).__name__ == "BatchNorm2d"  # its files load as a plain BatchNorm2d


def test_sync_batchnorm_model_shares_parameters_and_works_on_graphs():
    from fastconv.models import resnet20

    model = resnet20(seed=0)
    synced = distributed.sync_batchnorm(model, Communicator())
    bns = [layer for _, layer in model.named_layers() if type(layer) is fastconv.nn.BatchNorm2d]
    syncs = distributed.sync_layers(synced)
    assert len(syncs) == len(bns) > 0
    assert all(s.params["weight"] is b.params["weight"] for s, b in zip(syncs, bns))
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(synced.forward(x), model.forward(x), rtol=1e-4, atol=1e-4)
    assert synced.architecture() == model.architecture()


# ------------------------------------------------------------------ two ranks


def _train(tmp_path, ranks, model, batch):
    out = tmp_path / f"{model}-{ranks}.npz"
    if ranks == 1:
        env = _env()
        subprocess.run([sys.executable, str(WORKER), "train", str(out), model, str(batch)], cwd=OUTSIDE, env=env,
                       check=True, timeout=600)
    else:
        mpirun(ranks, sys.executable, str(WORKER), "train", str(out), model, str(batch))
    return np.load(out)


def _assert_same_weights(one, two, tol):
    assert set(one.files) == set(two.files)
    # The training accuracy counts predictions: a logit's last bit may turn one.
    for key in set(one.files) - {"accuracy"}:
        scale = max(1.0, float(np.abs(one[key]).max()))
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=tol * scale, err_msg=key)


def test_two_ranks_train_as_one_process_mnist2(tmp_path):
    # 20 steps of a global batch of 15: shards of 8 and 7 images, so the
    # weighting by each rank's share of the batch is checked too.
    one, two = _train(tmp_path, 1, "mnist2", 15), _train(tmp_path, 2, "mnist2", 15)
    _assert_same_weights(one, two, 1e-5)
    start = fastconv.models.mnist2(seed=0)
    assert not np.allclose(start["conv1"].params["weight"], one["conv1.weight"])  # it did train


@pytest.mark.slow
def test_two_ranks_with_sync_bn_train_as_one_process_cifar6(tmp_path):
    one, two = _train(tmp_path, 1, "cifar6", 32), _train(tmp_path, 2, "cifar6-sync", 32)
    _assert_same_weights(one, two, 1e-4)
    # Per-rank statistics (the default) are another computation: documented, and visible.
    per_rank = _train(tmp_path, 2, "cifar6", 32)
    assert abs(float(per_rank["loss"]) - float(one["loss"])) > 1e-3


def test_shards_over_two_real_ranks(tmp_path):
    out = tmp_path / "shards.json"
    mpirun(2, sys.executable, str(WORKER), "shards", str(out), "33")
    assert json.loads(out.read_text()) == {"size": 2, "parts": [[0, 17], [17, 33]]}


def test_bad_data_on_one_rank_raises_on_every_rank(tmp_path):
    out = tmp_path / "failed"
    mpirun(2, sys.executable, str(WORKER), "bad-batch", str(out), timeout=300)
    for rank in (0, 1):
        failed, message = (tmp_path / f"failed.rank{rank}").read_text().split("\n", 1)
        assert failed == "1"
        assert "rank 1 of 2 failed" in message and "image 17 is unreadable" in message


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run trained in one process on 96 images of the bundled sample."""
    run = tmp_path_factory.mktemp("run") / "run"
    subprocess.run(fastconv_cli("train", "--dataset", "mnist-sample", "--model", "mnist2", "--limit", "96",
                                "--epochs", "1", "--batch-size", "32", "--threads", "1", "--out", str(run)),
                   cwd=OUTSIDE, env=_env(), check=True, capture_output=True, timeout=600)
    return run


def test_distributed_evaluate_equals_one_process(small_run, tmp_path):
    one = subprocess.run(fastconv_cli("evaluate", str(small_run), "--split", "test"), cwd=OUTSIDE, env=_env(),
                         capture_output=True, text=True, check=True, timeout=600)
    single = json.loads((small_run / "eval.json").read_text())
    (small_run / "eval.json").unlink()
    two = mpirun(2, *fastconv_cli("evaluate", str(small_run), "--split", "test"))
    distributed_report = json.loads((small_run / "eval.json").read_text())
    assert distributed_report == single  # loss, accuracy, per-class accuracy, confusion matrix
    assert two.stdout.count("accuracy: ") == 1 and one.stdout.splitlines()[-1] == two.stdout.splitlines()[-1]


def _rank_pid(job: str, rank: int) -> int | None:
    """The pid of rank ``rank`` of the job whose environment holds FASTCONV_TEST_JOB=job."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ and \
                f"FASTCONV_TEST_JOB={job}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_kill_9_of_one_rank_stops_the_job_and_resumes_on_another_rank_count(tmp_path):
    run = tmp_path / "run"
    args = [_mpiexec(), "--oversubscribe", "-n", "2",
            *fastconv_cli("train", "--dataset", "mnist-sample", "--model", "mnist2", "--limit", "512",
                          "--batch-size", "32", "--epochs", "3", "--threads", "1", "--out", str(run))]
    # A marker in the job's environment finds its ranks among the processes.
    env = {**_env(), "FASTCONV_TEST_JOB": uuid.uuid4().hex}
    launcher = subprocess.Popen(args, cwd=OUTSIDE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (run / "checkpoint-last.npz").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint"
            time.sleep(0.5)
        victim = None
        while victim is None and time.monotonic() < deadline:
            victim = _rank_pid(env["FASTCONV_TEST_JOB"], 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)  # the others stop within a bounded time
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode != 0
    assert "rank 1" in output, output
    from fastconv.train import load_checkpoint

    state = load_checkpoint(run / "checkpoint-last.npz")  # whole, and readable
    assert state["epoch"] >= 1 and state["ranks"] == 2
    resumed = subprocess.run(fastconv_cli("train", "--out", str(run), "--resume"), cwd=OUTSIDE, env=_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "written by 2 rank(s), now 1" in resumed.stdout
    assert [r["epoch"] for r in json.loads((run / "history.json").read_text())] == [1, 2, 3]


# ------------------------------------------------------------------ analysis passes over ranks


def test_top_k_order_puts_larger_values_first_and_ties_to_the_smaller_index():
    values = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    indices = np.array([5, 9, 2, 7, 4])
    assert distributed.top_k_order(values, indices, 3).tolist() == [2, 4, 1]
    assert distributed.top_k_order(values, indices, 10).tolist() == [2, 4, 1, 3, 0]


def test_map_shards_alone_runs_once_on_everything_and_raises_the_error_itself():
    assert distributed.map_shards(7, Communicator(), lambda part: (part.start, part.stop)) == [(slice(0, 7), (0, 7))]
    assert distributed.map_shards(0, Communicator(), lambda part: 1 / 0) == []  # nothing to do: not called

    def fails(part):
        raise ValueError("unit 99 is out of range")

    with pytest.raises(ValueError, match="unit 99"):
        distributed.map_shards(3, Communicator(), fails)


def test_robustness_reports_of_parts_merge_into_the_report_of_the_whole():
    # The oracle is robustness_curve on all the images at once; the parts are
    # of unequal size and one of them has no image the attacks break.
    from fastconv.analysis.attacks.robustness import robustness_curve
    from fastconv.cli.sharded import merge_robustness

    fastconv.set_num_threads(1)
    model = fastconv.models.mnist2(seed=0)
    x = load_mnist_pixels(23)
    y = model.predict(x).argmax(axis=1)
    y[:4] = (y[:4] + 1) % 10  # some images wrong from the start
    args = (["fgsm", "deepfool"], [0.0, 0.02, 0.3], [0.0, 0.5, 8.0])
    whole = robustness_curve(model, x, y, *args)
    parts = [robustness_curve(model, x[part], y[part], *args) for part in (slice(0, 2), slice(2, 13), slice(13, 23))]
    merged = merge_robustness(parts)
    assert merged["images"] == whole["images"] == 23 and merged["clean_accuracy"] == whole["clean_accuracy"]
    assert whole["curves"]["fgsm"]["accuracy"][-1] < whole["clean_accuracy"]  # the attacks do break images
    for label, curve in whole["curves"].items():
        got = merged["curves"][label]
        assert {k: got[k] for k in ("attack", "norm", "minimal", "eps", "accuracy", "success_rate")} == \
            {k: curve[k] for k in ("attack", "norm", "minimal", "eps", "accuracy", "success_rate")}
        for norm in ("mean_l2", "mean_linf"):
            assert [v is None for v in got[norm]] == [v is None for v in curve[norm]]
            np.testing.assert_allclose([v for v in got[norm] if v is not None],
                                       [v for v in curve[norm] if v is not None], rtol=1e-12)


def load_mnist_pixels(count):
    from fastconv.data import load_dataset

    return load_dataset("mnist-sample").x_test[:count].astype(np.float32) / np.float32(255)


def _analysis(tmp_path, ranks, model):
    out = tmp_path / f"analysis-{model}-{ranks}.npz"
    if ranks == 1:
        subprocess.run([sys.executable, str(WORKER), "analysis", str(out), model], cwd=OUTSIDE, env=_env(), check=True,
                       timeout=600)
    else:
        mpirun(ranks, sys.executable, str(WORKER), "analysis", str(out), model)
    return np.load(out)


@pytest.mark.parametrize("model", ["mnist2", "resnet20"])
def test_analysis_passes_over_two_ranks_equal_one_process(tmp_path, model):
    # One process runs the analysis tools themselves (the oracle); two ranks
    # split the images and merge on rank 0.
    one, two = _analysis(tmp_path, 1, model), _analysis(tmp_path, 2, model)
    assert set(one.files) == set(two.files)
    for key in one.files:
        if key.startswith("occlusion") and one[key].dtype.kind == "f":
            np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=1e-15, err_msg=key)
        elif key != "robustness":
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)  # top images: indices and values
    # Every image is in the set twice, the copies on the other rank: each value is tied across the ranks.
    top = one["top0.indices"]
    assert int(one["count"]) % 2 == 1 and len(top) == 9
    assert len(set(np.round(one["top0.values"], 12))) < len(top)  # ties were there to break
    assert one["occlusion.probability"].shape[0] == 5 and one["occlusion1.probability"].shape[0] == 1
    # rank 1 divided by zero: both ranks raised the same error, naming it
    for rank in (0, 1):
        failed, message = (tmp_path / f"analysis-{model}-2.npz.rank{rank}").read_text().split("\n", 1)
        assert failed == "1" and "rank 1 of 2 failed" in message and "ZeroDivisionError" in message
    if model == "mnist2":
        single, split = json.loads(str(one["robustness"])), json.loads(str(two["robustness"]))
        assert split["clean_accuracy"] == single["clean_accuracy"] > 0
        for label, curve in single["curves"].items():
            assert split["curves"][label]["accuracy"] == curve["accuracy"], label
            assert split["curves"][label]["success_rate"] == curve["success_rate"], label
            assert min(curve["accuracy"]) < single["clean_accuracy"]  # the attacks broke some images


def test_an_attack_that_needs_all_the_images_is_not_split():
    from fastconv.cli import sharded

    model = fastconv.models.mnist2(seed=0)
    x = load_mnist_pixels(4)
    with pytest.raises(ValueError, match="universal makes one perturbation from all the images"):
        sharded.robustness_curve(_Rank(0, 2), model, x, np.zeros(4, dtype=int), ["fgsm", "universal"], [0.1], None)


def _json_without_times(path):
    report = json.loads(Path(path).read_text())
    for run in report["runs"].values():
        for curve in run["curves"].values():
            curve.pop("seconds")
            for norm in ("mean_l2", "mean_linf"):
                curve[norm] = [None if v is None else round(v, 9) for v in curve[norm]]
    return report


def test_distributed_robustness_command_equals_one_process(small_run, tmp_path):
    args = ["robustness", str(small_run), "--methods", "fgsm", "deepfool", "pgd", "--steps", "2",
            "--eps-list", "0", "0.1", "0.3", "--l2-eps-list", "0", "1", "3", "--limit", "21"]
    one = subprocess.run(fastconv_cli(*args, "--threads", "1", "--out", str(tmp_path / "one.png")), cwd=OUTSIDE,
                         env=_env(), check=True, capture_output=True, text=True, timeout=600)
    two = mpirun(2, *fastconv_cli(*args, "--out", str(tmp_path / "two.png")))
    single, split = _json_without_times(tmp_path / "one.json"), _json_without_times(tmp_path / "two.json")
    # pgd's random starts are drawn for a batch: split, they are other draws (documented, and said).
    for report in (single, split):
        (run,) = report["runs"].values()
        assert run["curves"].pop("pgd")["eps"] == [0, 0.1, 0.3]
    assert split == single  # accuracies and success rates exactly, mean norms to rounding
    assert "note: split among 2 ranks, the curves of pgd are not the same numbers" in two.stdout
    assert "note:" not in one.stdout
    assert two.stdout.count("wrote ") == 1 and "on 2 MPI ranks" in two.stdout
    assert (tmp_path / "two.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("tool", [["top-images", "--limit", "41", "--k", "6", "--unit", "3"],
                                  ["occlusion", "--index", "0", "1", "2", "--patch", "10", "--stride", "6"]])
def test_distributed_viz_draws_the_one_process_figure_once(small_run, tmp_path, tool):
    from matplotlib.image import imread

    subprocess.run(fastconv_cli("viz", tool[0], str(small_run), *tool[1:], "--out", str(tmp_path / "one.png")),
                   cwd=OUTSIDE, env=_env(), check=True, capture_output=True, timeout=600)
    two = mpirun(2, *fastconv_cli("viz", tool[0], str(small_run), *tool[1:], "--out", str(tmp_path / "two.png")))
    assert two.stdout.count("wrote ") == 1
    np.testing.assert_array_equal(imread(tmp_path / "two.png"), imread(tmp_path / "one.png"))


def test_more_threads_than_the_cores_a_process_may_use_are_said(monkeypatch, capsys):
    """A launcher that binds a process to one core (Open MPI does, for one
    or two ranks) makes two threads take turns: the default then takes one,
    and an explicit larger count is kept but warned about."""
    from fastconv.cli.train import set_threads

    before = fastconv.get_num_threads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    try:
        assert set_threads(None) == 1
        assert capsys.readouterr().err == ""
        assert set_threads(2) == 2
        err = capsys.readouterr().err
        assert "2 threads" in err and "1 core" in err and "--bind-to none" in err
    finally:
        fastconv.set_num_threads(before)
