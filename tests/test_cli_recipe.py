"""``fastconv train --recipe``: a preset or a recipe file, options over it, the
recipe kept in the run folder through --resume, the held-out part of a folder
set to nothing, and ``fastconv evaluate`` applying the recipe's test-time
augmentation."""
import json

import numpy as np
import pytest
from PIL import Image

from fastconv import cli
from fastconv.train.recipes import RECIPES
from fastconv.train.rundir import RunDir


@pytest.fixture
def pictures(tmp_path, monkeypatch):
    """A folder of 32x32 colour images in three classes, ten each."""
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "pictures"
    for k, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            image = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
            image[8 * k:8 * k + 12, :, k] = 250
            Image.fromarray(image).save(root / name / f"{i:02d}.png")
    return root


SMALL = ["--batch-size", "8", "--threads", "1"]


def train(pictures, out, *extra):
    return cli.main(["train", "--recipe", "airbench94", "--dataset", f"folder:{pictures}", "--epochs", "2",
                     *SMALL, "--out", str(out), *extra])


def test_the_airbench94_recipe_trains_resumes_and_evaluates_with_its_tta(pictures, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(pictures, out, "--val-fraction", "0.2", "--lr", "0.002") == 0
    printed = capsys.readouterr().out
    assert "recipe airbench94" in printed and "sgd lr 0.002" in printed
    assert "validation accuracy with test-time augmentation (flip-translate)" in printed
    run = RunDir(out)
    recipe = run.read_recipe()
    assert recipe["optimizer"]["lr"] == 0.002 and recipe["epochs"] == 2 and recipe["batch_size"] == 8
    config = run.config
    assert config["recipe"] == "airbench94" and config["model"] == "airbench94" and config["tta"] == "flip-translate"
    assert run.model.meta["test_time_augmentation"] == "flip-translate"
    assert cli.main(["evaluate", str(out), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation flip-translate" in printed
    assert printed.strip().splitlines()[-1].startswith("accuracy: ")
    report = json.loads(run.eval_path.read_text())
    assert report["test_time_augmentation"] == "flip-translate" and report["images"] == 3
    assert cli.main(["evaluate", str(out), "--split", "test", "--tta", "none"]) == 0
    assert "test-time augmentation" not in capsys.readouterr().out
    # Resuming with more epochs is refused: the schedule and Lookahead are laid out for two.
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "3"]) == 2
    assert "laid out for --epochs 2" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(out), "--resume", "--lr", "0.1"]) == 2
    assert "was started with --lr 0.002" in capsys.readouterr().err


def test_an_interrupted_recipe_run_resumes_to_the_same_weights(pictures, tmp_path, capsys, monkeypatch):
    from fastconv.train import trainer as fc_train

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train(pictures, straight, "--val-fraction", "0") == 0

    original = fc_train.Trainer._end_epoch

    def stop_after_the_first(self, record):
        original(self, record)
        if self.epoch == 1:
            self.request_stop()

    monkeypatch.setattr(fc_train.Trainer, "_end_epoch", stop_after_the_first)
    assert train(pictures, stopped, "--val-fraction", "0") != 0
    monkeypatch.setattr(fc_train.Trainer, "_end_epoch", original)
    assert cli.main(["train", "--out", str(stopped), "--resume"]) == 0
    capsys.readouterr()
    a, b = RunDir(straight).model.state_dict(), RunDir(stopped).load_model().state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_recipe_file_and_all_images_training(pictures, tmp_path, capsys):
    mine = RECIPES["cifar6"].replace(name="mine", epochs=1, batch_size=8, tta="flip").to_dict()
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(mine))
    out = tmp_path / "run"
    assert cli.main(["train", "--recipe", str(path), "--dataset", f"folder:{pictures}", "--threads", "1",
                     "--val-fraction", "0", "--test-fraction", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "30 training and no validation images" in printed and "test split: none" in printed
    assert RunDir(out).read_recipe()["name"] == "mine"
    assert cli.main(["evaluate", str(out), "--split", "test"]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "airbench95"], "no recipe 'airbench95'"),
    (["--recipe", "airbench94", "--adversarial", "fgsm", "--adv-eps", "0.1"], "does not go with --recipe"),
    (["--label-smoothing", "0.1"], "give it with --recipe"),
    (["--tta", "flip"], "give it with --recipe"),
    (["--schedule", "piecewise"], "give it with --recipe"),
])
def test_recipe_options_are_checked(pictures, tmp_path, capsys, extra, message):
    args = ["train", "--dataset", f"folder:{pictures}", "--out", str(tmp_path / "run"), *extra]
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err
