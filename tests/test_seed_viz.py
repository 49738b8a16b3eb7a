"""The seeds' visualization experiments on the command line: nearest neighbours in a
layer's code space, per-unit projections, Zeiler & Fergus's units, HOG beside the
network's inversion, images from files, and docs/seeds.md's table of experiments."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fastconv.analysis as fa
from fastconv import cli
from fastconv.analysis.attribution import methods as A
from fastconv.analysis.visualize import figures
from fastconv.analysis.visualize.neighbors import nearest_neighbors
from fastconv.analysis.visualize.projections import plot_unit_projections, unit_projections
from fastconv.models import mnist2, resnet20

pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")

DOCS = Path(__file__).resolve().parent.parent / "docs"
MNIST_NORMALIZATION = {"mean": [0.1307], "std": [0.3081], "scale": 255.0}


@pytest.fixture(scope="module")
def trained(mnist, fit_briefly, tmp_path_factory):
    """mnist2 trained briefly on the MNIST sample, saved as a run folder: (model, folder)."""
    model = mnist2(seed=0)
    model.meta.update({"normalization": dict(MNIST_NORMALIZATION), "classes": list(mnist.classes),
                       "dataset": "mnist-sample", "input_shape": [1, 28, 28]})
    normalize = fa.Normalizer.from_model(model)
    fit_briefly(model, normalize(mnist.x_train[:3000]), mnist.y_train[:3000], steps=120, lr=1e-3)
    folder = tmp_path_factory.mktemp("mnist2")
    model.save(folder / "model.npz")
    return model, folder


@pytest.fixture(scope="module")
def graph():
    """An (untrained) resnet20 graph and a few RGB images for it."""
    model = resnet20(seed=0).eval()
    images = np.random.default_rng(3).integers(0, 256, (24, 3, 32, 32), dtype=np.uint8)
    return model, images


def accuracy(model, x, y):
    return float(np.mean(model.predict(x).argmax(axis=1) == y))


def capture(monkeypatch, module, name):
    """Replace a figure function by one that records its arguments; returns the record."""
    calls = []
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


# -- nearest neighbours ----------------------------------------------------------------

def test_neighbours_share_the_query_class_at_least_as_often_as_the_model_is_right(trained, mnist):
    model, _ = trained
    normalize = fa.Normalizer.from_model(model)
    queries, labels = mnist.x_test[:120], mnist.y_test[:120]
    result = nearest_neighbors(model, queries, mnist.x_train, k=5, limit=2000)
    right = accuracy(model, normalize(queries), labels)
    assert right > 0.85, f"the model did not learn (accuracy {right})"
    assert result.layer == fa.default_code_layer(model)
    assert result.label_agreement(labels, mnist.y_train) >= right - 0.02
    # Against brute force on the codes.
    codes = fa.layer_features(model, mnist.x_train[:2000], result.layer)
    query_codes = fa.layer_features(model, queries, result.layer)
    distances = np.sqrt(((query_codes[:, None] - codes[None]) ** 2).sum(axis=2))
    np.testing.assert_allclose(result.distances, np.sort(distances, axis=1)[:, :5], rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(result.distances, axis=1) >= 0)


def test_neighbours_on_a_graph_find_each_database_image_itself(graph):
    model, images = graph
    result = nearest_neighbors(model, images[:5], images, k=3)
    np.testing.assert_array_equal(result.indices[:, 0], np.arange(5))
    np.testing.assert_allclose(result.distances[:, 0], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="k=30"):
        nearest_neighbors(model, images[:5], images, k=30)


def test_viz_neighbors_prints_the_agreement(trained, tmp_path, capsys):
    _, folder = trained
    out = tmp_path / "neighbors.png"
    assert cli.main(["viz", "neighbors", str(folder), "--index", "0", "1", "2", "--k", "4", "--limit", "500",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\d+\.\d% of the neighbours share the query's class", text)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- a unit's projections --------------------------------------------------------------

def outside_box(projection, box):
    top, left, bottom, right = box
    outside = np.ones(projection.shape[-2:], dtype=bool)
    outside[top:bottom, left:right] = False
    return np.abs(projection[:, outside]).max(), np.abs(projection[:, ~outside]).max()


@pytest.mark.parametrize("method", ["deconvnet", "guided-backprop", "gradient"])
def test_a_unit_projection_lies_inside_its_receptive_field(trained, mnist, method):
    model, _ = trained
    results = unit_projections(model, mnist.x_test, "conv2", [0, 5], k=4, method=method, limit=300)
    assert [r.channel for r in results] == [0, 5]
    for r in results:
        geo = fa.geometry(model, "conv2")
        for rank, (i, j) in enumerate(r.top.positions):
            box = geo.box(int(i), int(j), (28, 28))
            np.testing.assert_array_equal(box, r.top.boxes[rank])
            outside, inside = outside_box(r.projections[rank], box)
            assert outside == 0.0 and inside > 0.0
        # The projection is the attribution method's own, of the unit at the maximum.
        i, j = r.top.positions[0]
        x = fa.Normalizer.from_model(model)(mnist.x_test[r.top.indices[:1]])
        oracle = A.METHODS[method](model, "conv2").attribute(x, (r.channel, int(i), int(j)))
        np.testing.assert_allclose(r.projections[0], oracle[0], rtol=1e-5, atol=1e-7)


def test_unit_projections_on_a_graph(graph):
    model, images = graph
    layer = "layer1.0.conv1"
    results = unit_projections(model, images, layer, 3, k=3)
    geo = fa.geometry(model, layer)
    for rank, (i, j) in enumerate(results[0].top.positions):
        outside, inside = outside_box(results[0].projections[rank], geo.box(int(i), int(j), (32, 32)))
        assert outside == 0.0 and inside > 0.0
    with pytest.raises(ValueError, match="'sideways'"):
        unit_projections(model, images, layer, 3, method="sideways")


def test_viz_attribution_unit_projects_one_unit_for_every_gradient_method(trained, mnist, tmp_path, monkeypatch):
    model, folder = trained
    calls = capture(monkeypatch, figures, "plot_attributions")
    methods = ["gradient", "saliency", "deconvnet", "guided-backprop", "smoothgrad", "integrated-gradients"]
    assert cli.main(["viz", "attribution", str(folder), "--index", "0", "1", "--layer", "conv2", "--unit",
                     "3", "7", "6", "--methods", *methods, "--steps", "4", "--samples", "2",
                     "--out", str(tmp_path / "unit.png")]) == 0
    (_, results), _ = calls[0]
    assert len(results) == len(methods)
    box = fa.geometry(model, "conv2").box(7, 6, (28, 28))
    x = fa.Normalizer.from_model(model)(mnist.x_test[:2])
    for name, values in results.items():
        assert name.endswith("conv2 unit (3, 7, 6)")
        for example in values:
            outside, inside = outside_box(example, box)
            assert outside == 0.0 and inside > 0.0, name
    np.testing.assert_allclose(results["deconvnet, conv2 unit (3, 7, 6)"],
                               A.Deconvnet(model, "conv2").attribute(x, (3, 7, 6)), rtol=1e-6)
    args = cli.build_parser().parse_args(["viz", "attribution", str(folder), "--unit", "3", "--methods",
                                          "gradcam", "--out", str(tmp_path / "x.png")])
    with pytest.raises(cli.UsageError, match="gradcam"):
        args.func(args)


def test_viz_unit_projections_writes_the_figure(trained, graph, tmp_path):
    _, folder = trained
    out = tmp_path / "units.png"
    assert cli.main(["viz", "unit-projections", str(folder), "--layers", "conv1", "conv2", "--units", "0", "1",
                     "--k", "4", "--limit", "200", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, images = graph
    results = unit_projections(model, images, "layer2.0.conv1", [0, 1], k=4)
    figure = plot_unit_projections(results, images, path=tmp_path / "graph_units.png")
    assert "layer2.0.conv1 channel 1" in [sub.get_suptitle() for sub in figure.subfigs]


# -- --image FILE ----------------------------------------------------------------------

def test_an_image_file_gives_what_the_same_array_gives_in_python(trained, mnist, tmp_path, monkeypatch):
    model, folder = trained
    raw = mnist.x_test[4:5]
    path = tmp_path / "digit.png"
    Image.fromarray(raw[0, 0]).save(path)
    x = fa.Normalizer.from_model(model)(raw)
    predicted = int(model.predict(x).argmax())

    calls = capture(monkeypatch, figures, "plot_attributions")
    assert cli.main(["viz", "attribution", str(folder), "--image", str(path), "--methods", "saliency",
                     "guided-backprop", "--out", str(tmp_path / "a.png")]) == 0
    (shown, results), kwargs = calls[0]
    np.testing.assert_array_equal(shown, raw)
    assert kwargs["targets"] == [predicted]
    np.testing.assert_array_equal(results["saliency"], A.Saliency(model).attribute(x, [predicted]))
    np.testing.assert_array_equal(results["guided-backprop"], A.GuidedBackprop(model).attribute(x, [predicted]))

    calls = capture(monkeypatch, figures, "plot_occlusion")
    assert cli.main(["viz", "occlusion", str(folder), "--image", str(path), "--patch", "10", "--stride", "6",
                     "--out", str(tmp_path / "o.png")]) == 0
    (maps, shown), _ = calls[0]
    black = fa.Normalizer.from_model(model).pixel_value(0, 1)
    oracle = fa.occlusion_maps(model, x, None, patch=10, stride=6, fill=black)
    np.testing.assert_array_equal(maps.probability, oracle.probability)
    assert maps.target.tolist() == [predicted]


def test_an_image_file_of_another_size_is_scaled_to_the_model_input(trained, tmp_path, monkeypatch):
    _, folder = trained
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    calls = capture(monkeypatch, figures, "plot_attributions")
    assert cli.main(["viz", "attribution", str(folder), "--image", str(path), "--methods", "saliency",
                     "--target", "2", "--out", str(tmp_path / "a.png")]) == 0
    (shown, results), kwargs = calls[0]
    assert shown.shape == (1, 1, 28, 28) and shown.dtype == np.uint8
    assert results["saliency"].shape == (1, 1, 28, 28) and kwargs["targets"] == [2]
    missing = tmp_path / "nowhere.png"
    assert cli.main(["viz", "occlusion", str(folder), "--image", str(missing), "--out", "x.png"]) == 2


def test_segment_takes_an_image_file(trained, mnist, tmp_path, monkeypatch):
    pytest.importorskip("cv2", reason="OpenCV is not installed (pip install fastconv[segment])")
    model, folder = trained
    path = tmp_path / "digit.png"
    Image.fromarray(mnist.x_test[7, 0]).save(path)
    calls = capture(monkeypatch, figures, "plot_segmentation")
    assert cli.main(["viz", "segment", str(folder), "--image", str(path), "--out", str(tmp_path / "s.png")]) == 0
    (image, saliency, mask), kwargs = calls[0]
    x = fa.Normalizer.from_model(model)(mnist.x_test[7:8])
    predicted = int(model.predict(x).argmax())
    np.testing.assert_array_equal(saliency, A.channel_max(A.Saliency(model).attribute(x, [predicted]))[0])
    assert kwargs["title"].startswith("digit.png")


# -- HOG -------------------------------------------------------------------------------

def test_hog_descriptors_are_scikit_images(mnist):
    skimage_feature = pytest.importorskip("skimage.feature", reason="HOG needs scikit-image (fastconv[hog])")
    from fastconv.analysis.visualize.hog import hog_descriptors

    features, glyphs = hog_descriptors(mnist.x_test[:2], cell=7, visualize=True)
    oracle = skimage_feature.hog(mnist.x_test[1, 0] / 255.0, pixels_per_cell=(7, 7), cells_per_block=(2, 2))
    np.testing.assert_allclose(features[1], oracle)
    assert glyphs.shape == (2, 28, 28)
    # Block normalization: a darker copy is another image with the same descriptor.
    # Block normalization: the same digit at half the contrast is another image with
    # (nearly) the same descriptor, nearer to it than any other digit's.
    dark, _ = hog_descriptors(mnist.x_test[:1] / 255.0 * 0.5, cell=7)
    others, _ = hog_descriptors(mnist.x_test[1:60], cell=7)
    assert np.linalg.norm(dark[0] - features[0]) < 0.01 * np.linalg.norm(features[0])
    assert np.linalg.norm(dark[0] - features[0]) < np.linalg.norm(others - features[0], axis=1).min() / 10
    with pytest.raises(ValueError, match="does not fit"):
        hog_descriptors(mnist.x_test[:1], cell=20)


def test_compare_hog_finds_the_nearest_descriptor_and_inverts_the_code(trained, mnist):
    pytest.importorskip("skimage", reason="HOG needs scikit-image (pip install fastconv[hog])")
    from fastconv.analysis.visualize.hog import compare_hog, hog_descriptors

    model, _ = trained
    database = np.concatenate([mnist.x_train[:200], mnist.x_test[:1]])  # the query itself is left out
    result = compare_hog(model, mnist.x_test[:2], database, steps=30)
    features, _ = hog_descriptors(database)
    queries, _ = hog_descriptors(mnist.x_test[:2])
    distances = np.linalg.norm(queries[:, None] - features[None], axis=2)
    distances[0, -1] = np.inf
    np.testing.assert_array_equal(result.nearest, distances.argmin(axis=1))
    np.testing.assert_allclose(result.hog_distance, distances.min(axis=1))
    for inversion in result.inversions:
        assert inversion.layer == "relu3" and inversion.relative_error < 0.5


def test_viz_hog_writes_the_figure(trained, tmp_path):
    pytest.importorskip("skimage", reason="HOG needs scikit-image (pip install fastconv[hog])")
    _, folder = trained
    out = tmp_path / "hog.png"
    assert cli.main(["viz", "hog", str(folder), "--index", "0", "--limit", "100", "--steps", "5",
                     "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- docs/seeds.md ---------------------------------------------------------------------

def seed_rows():
    """(seed, experiment, command, figure) of each row of docs/seeds.md's table."""
    rows = []
    for line in (DOCS / "seeds.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= set("-: ") and cells[0] != "seed":
            rows.append(cells)
    return rows


def _subcommands(parser):
    """{name: parser} of an argparse parser's sub-commands (empty when it has none)."""
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def test_every_seed_experiment_has_a_command_the_parser_knows():
    rows = seed_rows()
    assert len(rows) >= 40
    assert {row[0] for row in rows} == {"000", "001", "002", "003", "004"}
    parser = cli.build_parser()
    for seed, experiment, command, figure in rows:
        commands = re.findall(r"`(fastconv [^`]+)`", command)
        assert commands, f"seed {seed}, {experiment!r}: no command"
        for text in commands:
            words = shlex.split(text)[1:]
            level, path = parser, ["fastconv"]
            for word in words:
                choices = _subcommands(level)
                if not choices:
                    break
                assert word in choices, f"seed {seed}, {experiment!r}: {' '.join(path)} has no {word!r}"
                level, path = choices[word], path + [word]
            if "..." not in words:  # a complete command: its options parse as written
                try:
                    parser.parse_args(words)
                except SystemExit:
                    pytest.fail(f"seed {seed}, {experiment!r}: {text!r} does not parse")
        for image in re.findall(r"\]\(([^)]+\.png)\)", figure):
            assert (DOCS / image).is_file(), f"seed {seed}, {experiment!r}: no figure {image}"


def test_viz_linear_templates_flips_the_softmax_classifier(trained, tmp_path, capsys, monkeypatch):
    _, folder = trained
    out = tmp_path / "templates.png"
    assert cli.main(["viz", "linear-templates", str(folder), "--epochs", "1", "--limit", "2000",
                     "--out", str(out)]) == 0
    match = re.search(r"the softmax classifier: (\d+\.\d)%", capsys.readouterr().out)
    assert match and float(match.group(1)) > 50  # chance is 10%
    from fastconv.analysis.attacks import figures as attack_figures

    calls = capture(monkeypatch, attack_figures, "plot_adversarial")
    assert cli.main(["viz", "linear-templates", str(folder), "--epochs", "1", "--limit", "2000",
                     "--index", "0", "1", "2", "--target", "3", "--eps", "0.5", "--out", str(out)]) == 0
    (softmax, x, adversarial), _ = calls[0]
    assert np.abs(adversarial - x).max() <= 0.5 + 1e-6
    # Adding a class's template raises that class's score: the linear picture.
    before, after = softmax.predict(x)[:, 3], softmax.predict(adversarial)[:, 3]
    assert np.all(after > before)
