"""Nothing a user made is replaced without being asked: ``fastconv train`` and
``fastconv demo`` refuse a folder that holds a run or a model unless --force,
and the demo's default folder moves aside to a new name instead."""
import hashlib

import pytest

import fastconv
from fastconv import cli
from fastconv.train.rundir import RUN_FILES

QUICK = ["--dataset", "mnist-sample", "--limit", "120", "--batch-size", "32", "--threads", "1", "--epochs", "1"]
DEMO = ["--limit", "120", "--epochs", "1", "--threads", "1", "--no-report"]


@pytest.fixture(autouse=True)
def private_cache_and_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "user-cache"))
    threads = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(threads)


def run_main(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def snapshot(folder):
    """Every file under folder with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(status, err, *words):
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", *QUICK, "--out", str(run)]) == 0
    return run


def copy_of(folder, tmp_path):
    import shutil

    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def interrupted(folder):
    """A run stopped before it finished: its final and best models are not written yet."""
    for name in ("model.npz", "best_model.npz"):
        (folder / name).unlink()
    return folder


def users_model(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    fastconv.models.mnist2(seed=3).save(folder / "model.npz")
    (folder / "notes.txt").write_text("my own notes")
    return folder


@pytest.mark.parametrize("command", ["train", "demo"])
@pytest.mark.parametrize("holding, words", [
    ("finished run", ["a finished training run", "--force", "--resume"]),
    ("interrupted run", ["an interrupted training run", "--resume", "--force"]),
    ("user's model", ["a model (model.npz)", "--force"]),
])
def test_a_folder_holding_work_is_refused_and_left_as_it_was(tmp_path, capsys, finished_run, command,
                                                             holding, words):
    if holding == "user's model":
        folder = users_model(tmp_path)
    else:
        folder = copy_of(finished_run, tmp_path)
        if holding == "interrupted run":
            interrupted(folder)
    before = snapshot(folder)
    options = QUICK if command == "train" else DEMO
    status, _, err = run_main(capsys, command, *options, "--out", folder)
    assert_refused(status, err, str(folder), *words)
    assert snapshot(folder) == before


@pytest.mark.parametrize("command", ["train", "demo"])
def test_force_replaces_only_the_files_of_a_run(tmp_path, capsys, finished_run, command):
    folder = copy_of(finished_run, tmp_path)
    (folder / "notes.txt").write_text("my own notes")
    (folder / "eval.json").write_text('{"accuracy": 0.0}')   # from an evaluation of the old model
    old_model = (folder / "model.npz").read_bytes()
    options = QUICK if command == "train" else DEMO
    status, _, err = run_main(capsys, command, *options, "--seed" if command == "train" else "--epochs",
                              "5" if command == "train" else "1", "--out", folder, "--force")
    assert status == 0, err
    assert (folder / "notes.txt").read_text() == "my own notes"
    assert (folder / "model.npz").read_bytes() != old_model
    if command == "train":
        assert not (folder / "eval.json").exists(), "a stale evaluation of the replaced model is not kept"


def test_demo_moves_aside_from_an_earlier_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, "demo", *DEMO)[0] == 0
    first = snapshot(tmp_path / "fastconv-demo")
    status, out, err = run_main(capsys, "demo", *DEMO)
    assert status == 0, err
    assert "fastconv-demo holds an earlier demo" in out and "fastconv-demo-2" in out
    assert snapshot(tmp_path / "fastconv-demo") == first
    assert (tmp_path / "fastconv-demo-2" / "model.npz").is_file()


def test_train_on_an_unrelated_folder_keeps_its_files(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.txt").write_text("not a run")
    assert run_main(capsys, "train", *QUICK, "--out", folder)[0] == 0
    assert (folder / "holiday.txt").read_text() == "not a run"


def test_force_and_resume_together_are_refused(tmp_path, capsys, finished_run):
    status, _, err = run_main(capsys, "train", "--out", finished_run, "--resume", "--force")
    assert_refused(status, err, "--force", "--resume")


def test_the_trainer_refuses_a_folder_holding_a_model(tmp_path):
    from fastconv.train import Trainer
    from fastconv.train.trainer import CheckpointError

    folder = users_model(tmp_path)
    model = fastconv.models.mnist2(seed=0)
    trainer = Trainer(model, fastconv.optim.Adam(model), run_dir=folder, log=None, progress=False)
    x = (fastconv.data.load_dataset("mnist-sample").x_train[:32]).astype("float32") / 255
    y = fastconv.data.load_dataset("mnist-sample").y_train[:32]
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="already holds a model"):
        trainer.fit(x, y, 1)
    assert snapshot(folder) == before


def test_every_file_a_run_writes_is_protected(finished_run):
    written = {p.name for p in finished_run.iterdir()}
    assert written <= set(RUN_FILES), written - set(RUN_FILES)


def test_resume_before_the_first_checkpoint_starts_the_run_again(tmp_path, capsys, finished_run):
    folder = copy_of(finished_run, tmp_path)
    for name in ("checkpoint-last.npz", "model.npz"):
        (folder / name).unlink()
    status, out, err = run_main(capsys, "train", *QUICK, "--out", folder)
    assert_refused(status, err, "--resume", "--force")
    status, out, err = run_main(capsys, "train", "--out", folder, "--resume")
    assert status == 0, err
    assert "has no checkpoint yet: starting it again from the beginning" in out
    reference = fastconv.load(finished_run / "model.npz").state_dict()
    again = fastconv.load(folder / "model.npz").state_dict()
    assert all((reference[k] == again[k]).all() for k in reference), "the same options give the same run"


def test_a_damaged_last_checkpoint_offers_the_best_one(tmp_path, capsys):
    options = ["--dataset", "mnist-sample", "--limit", "120", "--batch-size", "32", "--threads", "1",
               "--epochs", "3", "--seed", "4"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert run_main(capsys, "train", *options, "--out", reference)[0] == 0
    assert run_main(capsys, "train", *options, "--epochs", "2", "--out", run)[0] == 0
    last = run / "checkpoint-last.npz"
    damaged = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(damaged)

    status, _, err = run_main(capsys, "train", "--out", run, "--resume", "--epochs", "3")
    assert_refused(status, err, str(last), "checkpoint-best.npz (after epoch", "--resume --from best")
    status, _, err = run_main(capsys, "train", "--out", run, "--from", "best")
    assert_refused(status, err, "--resume")

    status, out, err = run_main(capsys, "train", "--out", run, "--resume", "--from", "best", "--epochs", "3")
    assert status == 0, err
    assert "resuming from checkpoint-best.npz" in out
    assert (run / "checkpoint-last.set-aside.npz").read_bytes() == damaged, "the damaged file is kept, not lost"
    want = fastconv.load(reference / "model.npz").state_dict()
    got = fastconv.load(run / "model.npz").state_dict()
    for key in want:
        assert (want[key] == got[key]).all(), f"{key} differs from the uninterrupted run"
