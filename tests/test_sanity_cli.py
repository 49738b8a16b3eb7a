"""fastconv viz sanity, as a user runs it on a trained model: the table it prints
holds what fastconv.analysis.attribution.metrics computes for the same images,
the gradient passes the randomization test and beats a random map, bad
arguments get one clear line, and a graph model works as a chain does."""
import numpy as np
import pytest

from fastconv import Graph, cli
from fastconv.analysis import attribution as fa
from fastconv.analysis.attribution import metrics
from fastconv.analysis.report import page as R
from fastconv.cli import limited
from fastconv.data import Normalize, load_dataset
from fastconv.models import mnist2
from fastconv.nn import Add
from fastconv.nn import layers as L

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COUNT = 8
HEADER = "| method | rank correlation, top layer random | all layers random | deletion AUC | insertion AUC |"


def _save_run(folder, model, data, normalize):
    model.meta.update({"model": "mine", "dataset": "mnist-sample", "classes": list(data.classes),
                       "input_shape": list(data.input_shape), "normalization": normalize.to_meta()})
    model.save(folder / "model.npz")
    return folder


def _train(fit_briefly, model):
    data = load_dataset("mnist-sample")
    keep = limited(len(data.y_train), 2000)
    normalize = Normalize.fit(data.x_train[keep])
    return fit_briefly(model, normalize(data.x_train[keep]), data.y_train[keep], steps=40, lr=2e-3), data, normalize


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fit_briefly):
    """A run folder with mnist2 trained briefly on the bundled MNIST sample."""
    model, data, normalize = _train(fit_briefly, mnist2(seed=0))
    return _save_run(tmp_path_factory.mktemp("run"), model, data, normalize)


def small_graph():
    """A residual network on 28x28 grey images: convolution, batch norm, a skip connection."""
    rng = np.random.default_rng(0)
    g = Graph()
    h = g.add("conv1", L.Conv2d(1, 8, 3, padding=1, seed=rng), g.input)
    h = g.add("relu1", L.ReLU(), g.add("bn1", L.BatchNorm2d(8), h))
    h = g.add("pool1", L.MaxPool2d(2), h)
    t = g.add("block.conv", L.Conv2d(8, 8, 3, padding=1, seed=rng), h)
    t = g.add("block.bn", L.BatchNorm2d(8), t)
    h = g.add("block.relu", L.ReLU(), g.add("block.add", Add(), t, h))
    g.add("fc", L.Linear(8, 10, seed=rng), g.add("gap", L.GlobalAvgPool2d(), h))
    return g


@pytest.fixture(scope="module")
def graph_run(tmp_path_factory, fit_briefly):
    model, data, normalize = _train(fit_briefly, small_graph())
    return _save_run(tmp_path_factory.mktemp("graph"), model, data, normalize)


def _table(printed):
    """{method: [top-layer correlation, all-layers correlation, deletion AUC, insertion AUC]} of the printed table."""
    lines = printed.strip().splitlines()
    start = lines.index(HEADER)
    assert lines[start + 1] == "|---|---|---|---|---|"
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [None if c == "-" else float(c) for c in cells[1:]]
    return rows


def _first_images(run_dir, count):
    import fastconv

    model = fastconv.load(run_dir / "model.npz")
    data = load_dataset("mnist-sample")
    x = Normalize.from_meta(model.meta["normalization"])(data.x_test[:count])
    return model, x, data.y_test[:count].tolist()


def test_the_table_is_what_the_metrics_compute_and_the_gradient_passes(run_dir, tmp_path, capsys):
    out = tmp_path / "sanity.png"
    status = cli.main(["viz", "sanity", str(run_dir), "--methods", "gradient", "guided-backprop",
                       "input-x-gradient", "--count", str(COUNT), "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    table = _table(printed)
    assert list(table) == ["gradient", "guided-backprop", "input-x-gradient", "random"]

    # The oracle: metrics called directly on the first COUNT test images, for their labels.
    model, x, targets = _first_images(run_dir, COUNT)
    builders = {"gradient": fa.Gradient, "guided-backprop": fa.GuidedBackprop, "input-x-gradient": fa.InputXGradient}
    for name, build in builders.items():
        check = metrics.cascading_randomization(model, build, x, targets, seed=0)
        maps = build(model).attribute(x, targets)
        areas = [metrics.perturbation_curve(model, x, targets, maps, mode).auc.mean()
                 for mode in ("deletion", "insertion")]
        # Printed with two and three decimals.
        np.testing.assert_allclose(table[name][:2], [check.mean[0], check.mean[-1]], atol=0.005, err_msg=name)
        np.testing.assert_allclose(table[name][2:], areas, atol=0.0005, err_msg=name)
    noise = np.random.default_rng(0).normal(size=x.shape).astype(x.dtype)
    assert table["random"][:2] == [None, None]
    np.testing.assert_allclose(table["random"][2:], [
        metrics.perturbation_curve(model, x, targets, noise, "deletion").auc.mean(),
        metrics.perturbation_curve(model, x, targets, noise, "insertion").auc.mean()], atol=0.0005)

    gradient, guided, random = table["gradient"], table["guided-backprop"], table["random"]
    # Adebayo et al.: the gradient's rank order goes as the layers go random, more so
    # with all of them than with the top one; guided backprop keeps much more of it.
    assert gradient[1] < gradient[0] < 0.9
    assert guided[0] > gradient[0] + 0.2
    # On a trained model the gradient's order removes the evidence faster than noise
    # does (deletion: lower is better) and restores it faster (insertion).
    assert random[2] >= gradient[2] + 0.1
    assert gradient[3] > random[3]


@pytest.mark.parametrize("options, words", [
    (["--count", "0"], ["argument --count", "'0'"]),
    (["--methods", "gradient", "nope"], ["argument --methods", "'nope'"]),
])
def test_a_bad_argument_is_one_line_naming_it(run_dir, tmp_path, capsys, options, words):
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as stop:
        cli.main(["viz", "sanity", str(run_dir), "--out", str(out), *options])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("fastconv viz sanity: error: ")
    for word in words:
        assert word in error, error
    assert not out.exists()


def test_a_count_past_the_split_is_one_line_naming_it(run_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    size = len(load_dataset("mnist-sample").y_test)
    assert cli.main(["viz", "sanity", str(run_dir), "--out", str(out), "--count", str(size + 1)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"fastconv viz: error: --count {size + 1} is out of range for the test split of {size} images"
    assert not out.exists()


def test_a_graph_model_gets_the_table_and_the_report_section(graph_run, tmp_path, capsys):
    out = tmp_path / "graph.png"
    assert cli.main(["viz", "sanity", str(graph_run), "--methods", "gradient", "gradcam", "--count", "6",
                     "--out", str(out)]) == 0
    table = _table(capsys.readouterr().out)
    assert list(table) == ["gradient", "gradcam", "random"]
    model, x, targets = _first_images(graph_run, 6)
    check = metrics.cascading_randomization(model, fa.Gradient, x, targets, seed=0)
    assert check.layers == ["fc", "block.bn", "block.conv", "bn1", "conv1"]
    np.testing.assert_allclose(table["gradient"][:2], [check.mean[0], check.mean[-1]], atol=0.005)

    report = R.build_report(graph_run, settings=R.QUICK, sections=["sanity"], progress=False)
    assert report.failures == [] and report.skipped == []
    assert "On 8 test images" in report.html
    assert "the 5 layers with parameters (fc first)" in report.html
