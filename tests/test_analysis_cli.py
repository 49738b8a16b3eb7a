"""The ``viz`` sub-commands of fastconv.cli.viz on a saved run folder."""
import argparse

import numpy as np
import pytest

from fastconv.cli import UsageError
from fastconv.cli.viz import TOOLS, add_viz_parser
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")


def make_parser():
    parser = argparse.ArgumentParser(prog="fastconv")
    commands = parser.add_subparsers(dest="command", required=True)
    add_viz_parser(commands)
    return parser


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with an (untrained) MNIST-shaped model and the metadata the trainer writes."""
    rng = np.random.default_rng(0)
    model = Sequential([
        L.Conv2d(1, 4, 3, padding=1, seed=rng), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(4, 8, 3, padding=1, seed=rng), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(8 * 7 * 7, 16, seed=rng), L.ReLU(), L.Linear(16, 10, seed=rng),
    ])
    model.meta.update({
        "normalization": {"mean": [0.1307], "std": [0.3081], "scale": 255.0},
        "classes": [f"digit {i}" for i in range(10)],
        "dataset": "mnist-sample",
        "input_shape": [1, 28, 28],
    })
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "model.npz")
    return folder


def test_every_level_has_help(capsys):
    parser = make_parser()
    for argv in [["viz", "--help"]] + [["viz", tool, "--help"] for tool in TOOLS]:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert "usage:" in text
        if len(argv) == 3:
            assert "--out" in text and "RUN_DIR" in text
    args = parser.parse_args(["viz", "filters", "x", "--out", "y"])
    assert callable(args.func) and args.viz_tool == "filters"


COMMANDS = {
    "filters": ["--layer", "conv2", "--channels", "0", "3"],
    "activations": ["--layer", "conv2", "--index", "3"],
    "top-images": ["--layer", "conv2", "--unit", "2", "--k", "6", "--limit", "120"],
    "clusters": ["--clusters", "3", "--per-cluster", "5", "--limit", "90"],
    "embedding": ["--method", "pca", "--limit", "90"],
    "embedding-grid": ["--method", "pca", "--limit", "90", "--grid", "6x8"],
    "occlusion": ["--index", "0", "1", "--patch", "10", "--stride", "6"],
    "attribution": ["--index", "0", "1", "--methods", "saliency", "guided-backprop", "gradcam",
                    "integrated-gradients", "smoothgrad", "--steps", "4", "--samples", "3"],
    "segment": ["--index", "2"],
    "erf": ["--limit", "8"],
    "class-model": ["--classes", "1", "2", "--steps", "3", "--jitter", "1", "--clip-norm", "10"],
    "feature-vis": ["--per-layer", "2", "--steps", "3", "--parametrization", "fourier", "--decorrelate",
                    "--limit", "20", "--scale", "0.9", "1.1", "--rotate", "5"],
    "to-class": ["--target", "3", "--index", "2", "--max-steps", "3"],
    "invert": ["--layers", "relu1", "fc1", "--steps", "3", "--index", "1"],
    "dream": ["--image", "present", "--size", "40", "--steps", "2", "--octaves", "2"],
    "style": ["--size", "24", "--style-size", "20", "--steps", "3", "--random-weights", "1"],
    "style-texture": ["--texture", "--size", "20", "--steps", "3", "--method", "adam", "--statistics", "mean_var"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_tool_writes_a_png(run_dir, tmp_path, capsys, name):
    if name == "segment":
        pytest.importorskip("cv2", reason="OpenCV is not installed (pip install fastconv[segment])")
    tool = name.replace("-grid", "").replace("-texture", "")
    out = tmp_path / f"{name}.png"
    args = make_parser().parse_args(["viz", tool, str(run_dir), "--out", str(out)] + COMMANDS[name])
    assert args.func(args) == 0
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out


def test_user_errors_name_the_bad_value(run_dir, tmp_path):
    parser = make_parser()
    out = str(tmp_path / "x.png")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00" * 10)
    cases = [
        (["viz", "activations", str(run_dir), "--out", out, "--layer", "conv9"], "'conv9'"),
        (["viz", "activations", str(run_dir), "--out", out, "--index", "5000"], "--index 5000"),
        (["viz", "occlusion", str(run_dir), "--out", out, "--patch", "40"], r"patch \(40, 40\)"),
        (["viz", "top-images", str(run_dir), "--out", out, "--unit", "99"], "unit 99"),
        (["viz", "top-images", str(run_dir), "--out", out, "--unit", "1", "2"], "--unit.*got 1 2"),
        (["viz", "filters", str(tmp_path / "nowhere"), "--out", out], "nowhere"),
        (["viz", "activations", str(run_dir), "--out", out, "--dataset", "no-such-set"], "no-such-set"),
        (["viz", "class-model", str(run_dir), "--out", out, "--classes", "11"], "class 11"),
        (["viz", "feature-vis", str(run_dir), "--out", out, "--layers", "conv5"], "'conv5'"),
        (["viz", "to-class", str(run_dir), "--out", out, "--target", "10"], "class 10"),
        (["viz", "dream", str(run_dir), "--out", out, "--image", str(junk)], "junk.jpg"),
        (["viz", "style", str(run_dir), "--out", out, "--style", str(tmp_path / "none.png")], "none.png"),
    ]
    for argv, message in cases:
        args = parser.parse_args(argv)
        with pytest.raises(UsageError, match=message):
            args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["viz", "embedding", str(run_dir), "--out", out, "--grid", "6by8"])


def test_a_viz_error_exits_2_naming_the_command(run_dir, tmp_path, capsys):
    # The same status and prefix as every other command's mistakes.
    from fastconv.cli import main

    out = str(tmp_path / "x.png")
    assert main(["viz", "top-images", str(run_dir), "--out", out, "--unit", "99"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fastconv viz: error: ") and "unit 99" in error
    assert main(["viz", "filters", str(tmp_path / "nowhere"), "--out", out]) == 2
    assert "fastconv viz: error: no run folder or model file at" in capsys.readouterr().err


# Each case: the command, its options with one bad number last, and the text the error must quote.
BAD_NUMBERS = [
    (["viz", "filters", "--max-filters", "0"], "'0'"),
    (["viz", "activations", "--max-maps", "-3"], "'-3'"),
    (["viz", "top-images", "--k", "0"], "'0'"),
    (["viz", "top-images", "--limit", "-5"], "'-5'"),
    (["viz", "clusters", "--clusters", "2.5"], "'2.5'"),
    (["viz", "clusters", "--seed", "-1"], "'-1'"),
    (["viz", "occlusion", "--patch", "0"], "'0'"),
    (["viz", "occlusion", "--fill", "300"], "'300'"),
    (["viz", "attribution", "--samples", "-2"], "'-2'"),
    (["viz", "segment", "--foreground", "1.5"], "'1.5'"),
    (["viz", "class-model", "--lr", "0"], "'0'"),
    (["viz", "class-model", "--blur-every", "-1"], "'-1'"),
    (["viz", "class-model", "--clip-norm", "100"], "'100'"),
    (["viz", "class-model", "--l2-decay", "1"], "'1'"),
    (["viz", "feature-vis", "--rotate", "-10"], "'-10'"),
    (["viz", "to-class", "--target", "1", "--threshold", "1"], "'1'"),
    (["viz", "dream", "--octaves", "0"], "'0'"),
    (["viz", "invert", "--tv-weight", "-3"], "'-3'"),
    (["viz", "style", "--style-weight", "nan"], "'nan'"),
    (["viz", "dream", "--octave-scale", "1"], "'1'"),
    (["attack", "--method", "pgd", "--eps", "0.1", "--seed", "-1"], "'-1'"),
    (["attack", "--method", "bim", "--eps", "0.1", "--alpha", "0"], "'0'"),
    (["attack", "--method", "fgsm", "--eps", "-0.1"], "'-0.1'"),
    (["attack", "--method", "iterative", "--confidence", "1.5"], "'1.5'"),
    (["robustness", "--limit", "0"], "'0'"),
    (["robustness", "--steps", "three"], "'three'"),
    (["robustness", "--eps-list", "0", "0.1", "inf"], "'inf'"),
    (["robustness", "--threads", "-2"], "'-2'"),
]


@pytest.mark.parametrize("arguments, quoted", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_a_bad_number_is_refused_before_anything_runs(run_dir, tmp_path, capsys, arguments, quoted):
    from fastconv.cli import main

    words = next(i for i, a in enumerate(arguments) if a.startswith("--"))
    command, options = arguments[:words], arguments[words:]
    with pytest.raises(SystemExit) as exit_:
        main([*command, str(run_dir), "--out", str(tmp_path / "x.png"), *options])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    option = next(a for a in reversed(options) if a.startswith("--"))
    assert f"argument {option}" in error and quoted in error
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("parse, good, bad", [
    ("non_negative_int", {"0": 0, "7": 7}, ["-1", "1.5", "x"]),
    ("unit_interval", {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["-0.1", "1.01", "nan"]),
    ("percentile", {"0": 0.0, "99.5": 99.5}, ["100", "-1", "nan"]),
    ("pixel_value", {"0": 0.0, "255": 255.0}, ["256", "-1", "inf"]),
    ("above_one", {"1.4": 1.4, "2": 2.0}, ["1", "0.5", "-3", "inf", "nan"]),
])
def test_argument_types(parse, good, bad):
    from fastconv.cli import argtypes as _argtypes

    function = getattr(_argtypes, parse)
    for text, value in good.items():
        assert function(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            function(text)
