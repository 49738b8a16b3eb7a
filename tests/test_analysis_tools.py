"""Occlusion, top images, receptive fields, activations, filters, codes,
segmentation and figures of fastconv.analysis, on a small net trained on
the bundled MNIST sample and on an untrained RGB net."""
import itertools
import sys

import numpy as np
import pytest
from matplotlib.text import Text

import fastconv.analysis as fa
from fastconv.analysis.visualize import figures
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

MNIST_NORMALIZATION = {"mean": [0.1307], "std": [0.3081], "scale": 255.0}


pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")


@pytest.fixture(scope="module")
def rgb_model():
    rng = np.random.default_rng(7)
    model = Sequential([
        L.Conv2d(3, 4, 3, padding=1, seed=rng), L.ReLU(), L.BatchNorm2d(4), L.MaxPool2d(2),
        L.Conv2d(4, 6, 3, padding=1, seed=rng), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(6 * 4 * 4, 5, seed=rng),
    ]).eval()
    model.meta["classes"] = ["a", "b", "c", "d", "e"]
    return model


def rgb_images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)


# -- occlusion -------------------------------------------------------------------

def test_occluding_the_digit_lowers_the_true_class_more_than_the_border(digit_model, mnist):
    normalize = fa.Normalizer.from_model(digit_model)
    raw = mnist.x_test[:40]
    x = normalize(raw)
    correct = np.flatnonzero(digit_model.predict(x).argmax(axis=1) == mnist.y_test[:40])[:12]
    black = normalize.pixel_value(0, 1)
    maps = fa.occlusion_maps(digit_model, x[correct], mnist.y_test[correct].tolist(), patch=14, stride=2, fill=black)
    assert maps.probability.shape == (len(correct), 8, 8)
    on_digit, on_border = [], []
    for i, index in enumerate(correct):
        ink = np.array([[raw[index, 0, 2 * j:2 * j + 14, 2 * k:2 * k + 14].sum() for k in range(8)]
                        for j in range(8)], dtype=np.float64)
        on_digit.append(maps.probability[i][np.unravel_index(ink.argmax(), ink.shape)])
        on_border.append(maps.probability[i][np.unravel_index(ink.argmin(), ink.shape)])
    on_digit, on_border = np.array(on_digit), np.array(on_border)
    assert np.mean(on_digit < on_border) >= 0.8
    assert np.mean(on_border) - np.mean(on_digit) > 0.3


def test_occlusion_maps_equal_occluding_by_hand(digit_model, mnist):
    x = fa.Normalizer.from_model(digit_model)(mnist.x_test[:2])
    maps = fa.occlusion_maps(digit_model, x, None, patch=(6, 9), stride=(5, 4), fill=-0.5, batch_size=7)
    assert maps.probability.shape == (2, 5, 5)
    np.testing.assert_array_equal(maps.target, digit_model.predict(x).argmax(axis=1))
    for i, j, k in [(0, 0, 0), (1, 2, 3), (0, 4, 4), (1, 3, 1)]:
        occluded = x[i:i + 1].copy()
        occluded[:, :, 5 * j:5 * j + 6, 4 * k:4 * k + 9] = -0.5
        logits = digit_model.predict(occluded)[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert maps.probability[i, j, k] == pytest.approx(probs[maps.target[i]], rel=1e-6)
        assert maps.top_class[i, j, k] == probs.argmax()
        assert maps.top_probability[i, j, k] == pytest.approx(probs.max(), rel=1e-6)
    pixels = maps.pixel_map(x.shape)
    assert pixels.shape == (2, 28, 28)
    assert pixels[0, 0, 0] == pytest.approx(maps.probability[0, 0, 0])


def test_occlusion_rejects_bad_geometry_and_targets(digit_model, mnist):
    x = fa.Normalizer.from_model(digit_model)(mnist.x_test[:1])
    with pytest.raises(ValueError, match=r"patch \(30, 30\) is larger than the image \(28, 28\)"):
        fa.occlusion_maps(digit_model, x, patch=30)
    with pytest.raises(ValueError, match="target 10 is out of range"):
        fa.occlusion_maps(digit_model, x, 10)
    with pytest.raises(ValueError, match=r"fill has 3 values"):
        fa.occlusion_maps(digit_model, x, 1, fill=[0, 0, 0])
    with pytest.raises(ValueError, match="stride"):
        fa.Occlusion(digit_model).attribute(x, 1, stride=0)


# -- top images and receptive fields ------------------------------------------------

@pytest.mark.parametrize("layer, unit", [("conv2", 5), ("relu1", (3, 10, 12)), ("fc1", 7)])
def test_top_images_are_the_k_largest_activations(digit_model, mnist, layer, unit):
    data = mnist.x_test[:300]
    top = fa.top_images(digit_model, data, layer, unit, k=9, batch_size=37)
    out = digit_model.forward(fa.Normalizer.from_model(digit_model)(data), until=layer)
    if isinstance(unit, tuple):
        scores = out[(slice(None),) + unit]
    elif out.ndim == 4:
        scores = out[:, unit].reshape(len(data), -1).max(axis=1)
    else:
        scores = out[:, unit]
    expected = np.lexsort((np.arange(len(data)), -scores.astype(np.float64)))[:9]
    np.testing.assert_array_equal(top.indices, expected)
    np.testing.assert_allclose(top.values, scores[expected], rtol=1e-6)
    assert top.count == 300
    for rank, index in enumerate(top.indices):
        t, l, b, r = top.boxes[rank]
        np.testing.assert_array_equal(top.crops[rank], data[index][:, t:b, l:r])
        if out.ndim == 4 and not isinstance(unit, tuple):
            i, j = top.positions[rank]
            assert out[index, unit, i, j] == pytest.approx(top.values[rank], rel=1e-6)


def test_receptive_field_box_holds_everything_the_unit_sees(digit_model, mnist):
    """Pixels outside the theoretical box cannot change the unit; pixels inside can."""
    normalize = fa.Normalizer.from_model(digit_model)
    x = normalize(mnist.x_test[:1]).astype(np.float32)
    geo = fa.geometry(digit_model, "conv2")
    # 3x3 (pad 1), 2x2 pool, 3x3 (pad 1): 3 + 1 + 2 * 2 = 8 pixels wide, starting 1 + 2 * 1 before
    assert geo.size == (8, 8) and geo.jump == (2, 2) and geo.start == (-3, -3)
    i, j = 3, 4
    top, left, bottom, right = geo.box(i, j, (28, 28))
    assert (top, left, bottom, right) == (3, 5, 11, 13)
    before = digit_model.forward(x, until="conv2")[0, :, i, j]
    outside = x.copy()
    outside_mask = np.ones((28, 28), bool)
    outside_mask[top:bottom, left:right] = False
    outside[0, 0][outside_mask] = 3.0
    np.testing.assert_array_equal(digit_model.forward(outside, until="conv2")[0, :, i, j], before)
    inside = x.copy()
    inside[0, 0, top:bottom, left:right] = 3.0
    assert not np.allclose(digit_model.forward(inside, until="conv2")[0, :, i, j], before)
    assert fa.geometry(digit_model, "fc1").size is None


def test_effective_receptive_field_lies_within_the_theoretical_one(digit_model, mnist):
    x = fa.Normalizer.from_model(digit_model)(mnist.x_test[:16])
    fields = fa.effective_receptive_field(digit_model, x, batch_size=5)
    assert [f.layer for f in fields] == ["conv1", "pool1", "conv2", "pool2"]
    assert [f.theoretical for f in fields] == [(3, 3), (4, 4), (8, 8), (10, 10)]
    for field in fields:
        t, l, b, r = field.box
        outside = np.ones(field.map.shape, bool)
        outside[t:b, l:r] = False
        assert field.map.max() == pytest.approx(1.0)
        assert np.all(field.map[outside] == 0)
        assert 1 <= field.effective <= np.sqrt((b - t) * (r - l)) + 1e-9
    nonzero = [np.count_nonzero(f.map) for f in fields]
    assert nonzero == sorted(nonzero) and nonzero[-1] > nonzero[0]
    with pytest.raises(ValueError, match="'fc1'"):
        fa.effective_receptive_field(digit_model, x, layers=["fc1"])


# -- activations and filters -------------------------------------------------------

def test_activations_before_and_after_relu(digit_model, mnist):
    x = fa.Normalizer.from_model(digit_model)(mnist.x_test[:1])
    acts = fa.activations(digit_model, x[0], "conv1")
    np.testing.assert_allclose(acts.before, digit_model.forward(x, until="conv1")[0], rtol=1e-6)
    assert acts.after_layer == "relu1"
    np.testing.assert_allclose(acts.after, np.maximum(acts.before, 0), rtol=1e-6)
    assert acts.before.min() < 0 <= acts.after.min()
    assert acts.prediction == int(digit_model.predict(x).argmax())
    assert acts.probabilities.sum() == pytest.approx(1.0)
    from_relu = fa.activations(digit_model, x, "relu2")
    assert (from_relu.layer, from_relu.after_layer) == ("conv2", "relu2")
    pooled = fa.activations(digit_model, x, "pool1")
    assert pooled.after is None
    with pytest.raises(ValueError, match="one image"):
        fa.activations(digit_model, np.concatenate([x, x]), "conv1")
    with pytest.raises(ValueError, match="'conv7'"):
        fa.activations(digit_model, x, "conv7")


def test_filter_tiles(digit_model, rgb_model):
    weights = fa.filters(digit_model)
    np.testing.assert_array_equal(weights, digit_model.layer("conv1").params["weight"])
    tiles = fa.filter_tiles(weights)
    assert tiles.shape == (8, 3, 3)
    np.testing.assert_allclose(tiles.min(axis=(1, 2)), 0)
    np.testing.assert_allclose(tiles.max(axis=(1, 2)), 1)
    rgb = fa.filter_tiles(fa.filters(rgb_model, "conv1"))
    assert rgb.shape == (4, 3, 3, 3)
    # Scaling per filter keeps the order of each filter's weights.
    w = rgb_model.layer("conv1").params["weight"][2].transpose(1, 2, 0)
    np.testing.assert_array_equal(np.argsort(rgb[2], axis=None), np.argsort(w, axis=None))
    with pytest.raises(ValueError, match="8"):
        fa.filter_tiles(fa.filters(digit_model, "conv2"))
    with pytest.raises(ValueError, match="'relu1' is a ReLU"):
        fa.filters(digit_model, "relu1")


# -- codes and embeddings ------------------------------------------------------------

def test_codes_clusters_and_embeddings(digit_model, mnist):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed")
    data, labels = mnist.x_test[:240], mnist.y_test[:240]
    codes = fa.layer_features(digit_model, data, "flatten1", batch_size=100)
    assert codes.shape == (240, 784)
    expected = digit_model.forward(fa.Normalizer.from_model(digit_model)(data[:3]), until="flatten1")
    np.testing.assert_allclose(codes[:3], expected, rtol=1e-6)
    groups = fa.cluster(codes, n_clusters=6, seed=0)
    distances = np.linalg.norm(codes[:, None] - groups.centers[None], axis=2)
    np.testing.assert_array_equal(groups.labels, distances.argmin(axis=1))
    for c, members in enumerate(groups.members):
        assert np.all(groups.labels[members] == c)
        assert np.all(np.diff(distances[members, c]) >= 0)
    pca = fa.embed(codes, method="pca")
    centered = codes - codes.mean(axis=0)
    top_direction = np.linalg.svd(centered, full_matrices=False)[2][0]
    assert abs(np.corrcoef(pca[:, 0], centered @ top_direction)[0, 1]) == pytest.approx(1.0, abs=1e-6)
    tsne = fa.embed(codes, method="tsne", seed=0, perplexity=20)
    assert tsne.shape == (240, 2)
    neighbours = np.argsort(np.linalg.norm(tsne[:, None] - tsne[None], axis=2), axis=1)[:, 1:6]
    agreement = np.mean([np.bincount(labels[n], minlength=10).argmax() == labels[i] for i, n in enumerate(neighbours)])
    assert agreement > 0.7
    with pytest.raises(ValueError, match="'umap'"):
        fa.embed(codes, method="umap")


def test_snap_to_grid_is_an_optimal_one_to_one_assignment():
    rng = np.random.default_rng(0)
    points = rng.uniform(size=(6, 2))
    grid = fa.snap_to_grid(points, 2, 3)
    assert sorted(grid.ravel().tolist()) == list(range(6))
    unit = (points - points.min(axis=0)) / (points.max(axis=0) - points.min(axis=0))
    cells = np.array([[(c + 0.5) / 3, 1 - (r + 0.5) / 2] for r in range(2) for c in range(3)])

    def cost(order):
        return sum(np.linalg.norm(cells[k] - unit[p]) for k, p in enumerate(order))

    best = min(cost(order) for order in itertools.permutations(range(6)))
    assert cost(grid.ravel()) == pytest.approx(best)
    sparse = fa.snap_to_grid(points[:4], 3, 3)
    assert np.count_nonzero(sparse == -1) == 5
    assert sorted(sparse[sparse >= 0].tolist()) == [0, 1, 2, 3]


# -- segmentation -------------------------------------------------------------------

def test_grabcut_segments_the_salient_object():
    pytest.importorskip("cv2", reason="OpenCV is not installed (pip install fastconv[segment])")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (3, 40, 40), dtype=np.uint8)
    image[0, 12:28, 10:30] = 220
    image[1, 12:28, 10:30] = rng.integers(150, 200, (16, 20))
    truth = np.zeros((40, 40), bool)
    truth[12:28, 10:30] = True
    yy, xx = np.mgrid[:40, :40]
    saliency = np.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 60.0) + rng.uniform(0, 0.02, (40, 40))
    mask = fa.grabcut_from_saliency(image, saliency)
    iou = np.sum(mask & truth) / np.sum(mask | truth)
    assert iou > 0.8
    with pytest.raises(ValueError, match=r"\(20, 20\)"):
        fa.grabcut_from_saliency(image, saliency[:20, :20])


def test_grabcut_without_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"pip install fastconv\[segment\].*opencv-python-headless"):
        fa.grabcut_from_saliency(np.zeros((1, 8, 8), np.uint8), np.zeros((8, 8)))


# -- RGB models --------------------------------------------------------------------

def test_tools_on_an_rgb_model(rgb_model):
    raw = rgb_images(40)
    x = fa.Normalizer.from_model(rgb_model)(raw)
    assert x.dtype == np.float32 and x.shape == (40, 3, 16, 16)
    top = fa.top_images(rgb_model, raw, "conv2", 1, k=4, batch_size=16)
    scores = rgb_model.forward(x, until="conv2")[:, 1].reshape(40, -1).max(axis=1)
    np.testing.assert_array_equal(top.indices, np.argsort(-scores, kind="stable")[:4])
    assert top.crops[0].shape[0] == 3
    maps = fa.occlusion_maps(rgb_model, x[:2], [0, 4], patch=8, stride=4, fill=[0.0, 0.1, 0.2])
    assert maps.probability.shape == (2, 3, 3)
    attributions = fa.GuidedBackprop(rgb_model).attribute(x[:2], [0, 4])
    assert attributions.shape == x[:2].shape
    assert fa.channel_max(attributions).shape == (2, 16, 16)
    acts = fa.activations(rgb_model, x[0], "conv1")
    assert acts.after_layer == "relu1" and acts.before.shape == (4, 16, 16)
    fields = fa.effective_receptive_field(rgb_model, x[:4])
    assert [f.theoretical for f in fields] == [(3, 3), (4, 4), (8, 8), (10, 10)]
    with pytest.raises(ValueError, match=r"1 channels .* expects 3"):
        fa.Saliency(rgb_model).attribute(x[:, :1].copy(), 0)


# -- figures -----------------------------------------------------------------------

def _texts(fig):
    return " ".join(t.get_text() for t in fig.findobj(Text))


def _colorbars(fig):
    return sum(ax.get_label() == "<colorbar>" for ax in fig.axes)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_have_titles_class_names_and_colour_bars(digit_model, rgb_model, mnist, tmp_path):
    normalize = fa.Normalizer.from_model(digit_model)
    raw, labels = mnist.x_test[:60], mnist.y_test[:60]
    x = normalize(raw)
    classes = [f"digit-{c}" for c in mnist.classes]

    maps = fa.occlusion_maps(digit_model, x[:2], labels[:2].tolist(), fill=normalize.pixel_value(0, 1))
    fig = figures.plot_occlusion(maps, raw[:2], classes=classes, path=tmp_path / "occlusion.png")
    assert _is_png(tmp_path / "occlusion.png")
    assert f"digit-{labels[0]}" in _texts(fig) and _colorbars(fig) >= 4

    acts = fa.activations(digit_model, x[0], "conv1")
    fig = figures.plot_activations(acts, raw[0], classes=classes, path=tmp_path / "acts.png")
    assert "signed: grey is 0" in _texts(fig) and "relu1" in _texts(fig) and _colorbars(fig) == 2
    assert f"digit-{acts.prediction}" in _texts(fig)

    results = {"saliency": fa.Saliency(digit_model).attribute(x[:2], labels[:2].tolist()),
               "gradient": fa.Gradient(digit_model).attribute(x[:2], labels[:2].tolist())}
    fig = figures.plot_attributions(raw[:2], results, targets=labels[:2], classes=classes, signed={"gradient"},
                                    path=tmp_path / "attr.png")
    assert _colorbars(fig) == 4 and f"digit-{labels[1]}" in _texts(fig)

    top = fa.top_images(digit_model, raw, "conv2", 0, k=5)
    fig = figures.plot_top_images(top, raw, labels=labels, classes=classes)
    assert f"digit-{labels[top.indices[0]]}" in _texts(fig)
    fields = fa.effective_receptive_field(digit_model, x[:4])
    fig = figures.plot_receptive_fields(fields)
    assert "theoretical 8x8" in _texts(fig) and _colorbars(fig) == 1
    fig = figures.plot_filters(digit_model)
    assert "conv1" in _texts(fig) and _colorbars(fig) == 1
    fig = figures.plot_filters(digit_model, "conv2", channels=[0, 5])
    assert "input channel 5" in _texts(fig)
    # conv1 of a grey-scale model has one input channel: asking for another is
    # an error, not a picture of channel 0.
    with pytest.raises(ValueError, match="input channel 2 is out of range for layer 'conv1' with 1 input"):
        figures.plot_filters(digit_model, channels=[2])
    fig = figures.plot_filters(rgb_model)
    assert "RGB filters" in _texts(fig)
    points = np.random.default_rng(0).normal(size=(60, 2))
    fig = figures.plot_embedding(points, labels, classes=classes)
    assert "digit-3" in _texts(fig)
    figures.plot_embedding_grid(fa.snap_to_grid(points, 5, 6), raw)
    groups = fa.Clusters(labels=np.arange(60) % 3, centers=np.zeros((3, 2)),
                         members=[np.arange(c, 60, 3) for c in range(3)])
    fig = figures.plot_clusters(groups, raw, per_cluster=4, labels=labels, classes=classes)
    assert "cluster 2" in _texts(fig)
    mask = np.zeros((28, 28), bool)
    mask[5:20, 5:20] = True
    fig = figures.plot_segmentation(raw[0], np.random.default_rng(0).uniform(size=(28, 28)), mask)
    assert _colorbars(fig) == 1
    for name in ("occlusion", "acts", "attr"):
        assert _is_png(tmp_path / f"{name}.png"), name
    assert not list(tmp_path.glob(".fastconv-*")), "temporary files left behind"


def test_default_code_layer_is_what_the_classifier_reads():
    from fastconv.analysis.visualize import default_code_layer

    two_linear = Sequential([L.Flatten(), L.Linear(4, 3, seed=0), L.ReLU(), L.Linear(3, 2, seed=0)])
    assert default_code_layer(two_linear) == "relu1"
    assert default_code_layer(Sequential([L.Linear(4, 3, seed=0)])) == "fc1"
    no_linear = Sequential([L.Conv2d(1, 2, 3, seed=0), L.ReLU(), L.Flatten()])
    assert default_code_layer(no_linear) == "relu1"
