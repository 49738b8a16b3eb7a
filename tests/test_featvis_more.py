"""Feature visualization beyond one unit (directions, channel combinations,
diverse batches, the activation atlas) and evolved fooling images, on small
nets: a conv net trained briefly on the bundled MNIST sample, a float64
chain and a float64 graph with a skip connection."""

import numpy as np
import pytest

import fastconv.analysis as fa
from fastconv import cli
from fastconv.analysis.optimize import atlas as AT
from fastconv.analysis.optimize import cppn as CP
from fastconv.analysis.optimize import parametrize as P
from fastconv.nn import layers as L
from fastconv.nn.graph import Add, Graph
from fastconv.nn.model import Sequential

pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")

META = {"normalization": {"mean": [0.1307], "std": [0.3081], "scale": 255.0}, "input_shape": [1, 12, 12]}


def chain(dtype=np.float64):
    rng = np.random.default_rng(5)
    model = Sequential([L.Conv2d(1, 6, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(),
                        L.Conv2d(6, 6, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
                        L.Flatten(), L.Linear(6 * 6 * 6, 3, seed=rng, dtype=dtype)]).eval()
    model.meta.update(META)
    return model


def graph(dtype=np.float64):
    rng = np.random.default_rng(6)
    g = Graph()
    first = g.add("relu1", L.ReLU(), g.add("conv1", L.Conv2d(1, 6, 3, padding=1, seed=rng, dtype=dtype), g.input))
    second = g.add("conv2", L.Conv2d(6, 6, 3, padding=1, seed=rng, dtype=dtype), first)
    merged = g.add("relu2", L.ReLU(), g.add("add", Add(), second, first))
    g.add("fc", L.Linear(6 * 6 * 6, 3, seed=rng, dtype=dtype),
          g.add("flatten", L.Flatten(), g.add("pool", L.MaxPool2d(2), merged)))
    g.eval()
    g.meta.update(META)
    return g


BOTH = [pytest.param(chain, id="sequential"), pytest.param(graph, id="graph")]


def numerical(f, x, count=12, h=1e-6, seed=0):
    rng = np.random.default_rng(seed)
    picks = [tuple(int(rng.integers(0, s)) for s in x.shape) for _ in range(count)]
    out = []
    for index in picks:
        old = x[index]
        x[index] = old + h
        up = f(x)
        x[index] = old - h
        down = f(x)
        x[index] = old
        out.append((up - down) / (2 * h))
    return picks, np.array(out)


# -- the objectives' values and gradients ---------------------------------------------------

@pytest.mark.parametrize("position", [None, (1, 2)])
@pytest.mark.parametrize("cosine_power", [0.0, 1.0, 3.0])
def test_direction_objective_gradient_matches_numerical(position, cosine_power):
    rng = np.random.default_rng(1)
    a, v = rng.normal(size=(3, 5, 4, 3)), rng.normal(size=(3, 5))
    values, gradient = P.direction_objective(a, v, position, cosine_power)
    picks, expected = numerical(lambda x: P.direction_objective(x, v, position, cosine_power)[0].sum(), a)
    np.testing.assert_allclose([gradient[i] for i in picks], expected, rtol=1e-5, atol=1e-8)
    pooled = a[:, :, 1, 2] if position else a.mean(axis=(2, 3))
    dot = (pooled * v).sum(axis=1)
    if cosine_power == 0:
        np.testing.assert_allclose(values, dot)
    cos = dot / np.linalg.norm(pooled, axis=1) / np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(values, dot * np.maximum(cos, 0.1) ** cosine_power, rtol=1e-9)


def test_gram_similarity_value_and_gradient():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 3, 5, 5))
    value, gradient = P.gram_similarity(a)
    flat = a.reshape(4, 3, -1)
    grams = [f @ f.T / 25 for f in flat]
    unit = [g / np.linalg.norm(g) for g in grams]
    expected = sum(np.sum(unit[i] * unit[j]) for i in range(4) for j in range(4) if i != j) / 4
    assert value == pytest.approx(expected, rel=1e-9)
    picks, numeric = numerical(lambda x: P.gram_similarity(x)[0], a)
    np.testing.assert_allclose([gradient[i] for i in picks], numeric, rtol=1e-5, atol=1e-8)
    same, _ = P.gram_similarity(np.repeat(a[:1], 4, axis=0))
    assert same == pytest.approx(3.0)


@pytest.mark.parametrize("build", BOTH)
def test_direction_gradient_through_the_network_matches_numerical(build):
    model = build()
    layer = "relu2" if "relu2" in fa.optimize.methods.C.layer_names(model) else "conv2"
    v = np.random.default_rng(3).normal(size=6)
    space = P.PixelSpace(model)

    def objective(pixels):
        out = model.forward(space.to_input(pixels), until=layer)
        return P.direction_objective(out, v, None, 1.0)[0].sum()

    pixels = np.random.default_rng(4).uniform(0.2, 0.8, (1, 1, 12, 12))
    out = model.forward(space.to_input(pixels), until=layer)
    _, seed = P.direction_objective(out, v, None, 1.0)
    gradient = space.pixel_gradient(model.backward(seed, start=layer, param_grads=False))
    picks, expected = numerical(objective, pixels)
    np.testing.assert_allclose([gradient[i] for i in picks], expected, rtol=1e-4, atol=1e-7)


# -- optimized images -------------------------------------------------------------------------

@pytest.mark.parametrize("build", BOTH)
def test_channel_combination_image_beats_the_data(build, mnist):
    model = build()
    layer = "conv2"
    weights = {1: 1.0, 4: 0.5}
    result = fa.direction_visualization(model, layer, [weights, {2: 1.0, 5: -1.0}], steps=60, lr=0.05)
    assert result.units == [] and result.directions.shape == (2, 6)
    assert np.all(result.values > result.history["objective"][0])
    data = fa.Normalizer.from_model(model)(mnist.x_test[:200, :, 8:20, 8:20])
    out = model.forward(data, until=layer).mean(axis=(2, 3))
    assert result.values[0] > (out @ result.directions[0]).max()
    assert result.values[1] > (out @ result.directions[1]).max()


def test_diverse_images_differ_more_than_independent_ones_and_still_fire(digit_model):
    model = digit_model
    layer, channel, count = "conv2", 3, 4
    independent = fa.feature_visualization(model, layer, [channel] * count, steps=80, seed=0)
    diverse = fa.diverse_visualization(model, layer, channel, count=count, steps=80, seed=0)
    space = P.PixelSpace(model)

    def similarity(images):
        return P.gram_similarity(model.forward(space.to_input(images), until=layer))[0]

    assert similarity(diverse.images) < 0.9 * similarity(independent.images)
    # each diverse image keeps at least half of what the unit reaches alone
    assert np.all(diverse.values >= 0.5 * independent.values.mean())
    assert "similarity" in diverse.history


@pytest.mark.parametrize("build", BOTH)
def test_diversity_weight_is_free_of_the_layer_scale(build):
    # Scaling a convolution's weights and bias scales its output; a scale-free diversity
    # term then yields the same images (Adam's steps do not depend on the gradient's scale).
    def diverse(factor, weight=10.0):
        model = build()
        conv = dict(model.named_layers())["conv2"]
        conv.params["weight"] *= factor
        conv.params["bias"] *= factor
        return fa.diverse_visualization(model, "conv2", 1, count=3, diversity=weight, steps=40, seed=1)

    plain, scaled, alike = diverse(1.0), diverse(100.0), diverse(1.0, weight=1e-9)
    # the term acts: without it the images end more alike
    assert plain.history["similarity"][-1] < 0.9 * alike.history["similarity"][-1]
    assert np.abs(plain.images - alike.images).max() > 0.05
    np.testing.assert_allclose(scaled.values, 100.0 * plain.values, rtol=1e-3)
    np.testing.assert_allclose(scaled.images, plain.images, atol=1e-3)


@pytest.mark.parametrize("build", BOTH)
def test_atlas_cells_and_their_renders(build, mnist):
    model = build()
    data = mnist.x_test[:60, :, 8:20, 8:20]
    result = fa.activation_atlas(model, data, "conv2", grid=3, min_count=4, method="tsne", steps=30, limit=60)
    counts = np.bincount(AT._grid_cells(result.points, 3, 3) @ np.array([3, 1]), minlength=9)
    assert len(result.cells) == np.sum(counts >= 4) and np.all(result.counts >= 4)
    assert result.images.shape == (len(result.cells), 1, 12, 12)
    assert np.all(result.values > result.start_values)
    sampled = AT.layer_activations(model, data, "conv2", positions=3, limit=10)
    assert sampled.shape == (30, 6)


def test_atlas_renders_beat_their_cells_images_and_noise(digit_model, mnist):
    # Each cell's render should drive the cell's mean direction harder than every real image
    # that fell in the cell, and point along it more closely than a noise image does.
    model = digit_model
    data = mnist.x_test[:80]
    result = fa.activation_atlas(model, data, "conv2", grid=3, min_count=4, method="tsne", steps=50, limit=80)
    space = P.PixelSpace(model)
    real = model.forward(fa.Normalizer.from_model(model)(data), until="conv2")
    rendered = model.forward(space.to_input(result.images), until="conv2")
    noise = np.random.default_rng(0).uniform(0.0, 1.0, result.images.shape)
    noisy = model.forward(space.to_input(noise), until="conv2")
    where = AT._grid_cells(result.points, 3, 3) @ np.array([3, 1])
    assert len(result.cells) >= 2
    for k, cell in enumerate(result.cells @ np.array([3, 1])):
        members = real[where == cell]
        direction = np.repeat(result.directions[k:k + 1], len(members), axis=0)
        own_best = P.direction_objective(members, direction, None, 1.0)[0].max()
        value = P.direction_objective(rendered[k:k + 1], result.directions[k:k + 1], None, 1.0)[0][0]
        assert value == pytest.approx(result.values[k], rel=1e-6)
        assert value > own_best
        assert value > P.direction_objective(noisy[k:k + 1], result.directions[k:k + 1], None, 1.0)[0][0]
        pooled = np.stack([rendered[k], noisy[k]]).mean(axis=(2, 3))
        cosine = pooled @ result.directions[k] / np.linalg.norm(pooled, axis=1) / np.linalg.norm(result.directions[k])
        assert cosine[0] > cosine[1]


# -- fooling images ----------------------------------------------------------------------------

@pytest.mark.parametrize("generator", ["cppn", "pattern"])
def test_evolved_images_fool_a_trained_model_at_99_percent(digit_model, generator):
    result = CP.evolve_fooling(digit_model, targets=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], generator=generator,
                               generations=150, population=32, seed=0)
    normalize = fa.Normalizer.from_model(digit_model)
    probabilities = fa.optimize.methods.softmax(digit_model.predict(normalize(result.images * 255.0)), axis=1)
    np.testing.assert_allclose(probabilities[np.arange(10), result.targets], result.confidences, rtol=1e-4)
    assert int(np.sum(result.confidences >= 0.99)) >= 3, result.confidences
    # not noise: neighbouring pixels are far closer than in uniform noise (mean |difference| 1/3)
    assert np.abs(np.diff(result.images, axis=-1)).mean() < 0.15
    assert np.all(np.diff(result.history["confidence"], axis=0) >= 0)


def test_bad_input_raises_a_clear_error():
    model = chain()
    with pytest.raises(ValueError, match="channel 9 is out of range"):
        fa.direction_visualization(model, "conv2", {9: 1.0}, steps=1)
    with pytest.raises(ValueError, match=r"shaped \(C,\) or \(K, C\) with C = 6"):
        fa.direction_visualization(model, "conv2", np.ones(5), steps=1)
    with pytest.raises(ValueError, match="position must be"):
        fa.direction_visualization(model, "conv2", np.ones(6), position=(12, 0), steps=1)
    with pytest.raises(ValueError, match="count must be at least 2"):
        fa.diverse_visualization(model, "conv2", 0, count=1)
    with pytest.raises(ValueError, match="generator must be one of"):
        CP.evolve_fooling(model, generator="noise")
    with pytest.raises(ValueError, match="method must be one of"):
        fa.activation_atlas(model, np.zeros((5, 1, 12, 12), np.uint8), "conv2", method="pca")


def test_command_line_tools(digit_model, tmp_path, capsys):
    import fastconv

    path = tmp_path / "model.npz"
    fastconv.save(digit_model, path)
    common = ["--dataset", "mnist-sample", "--steps", "10"]
    figure = tmp_path / "diverse.png"
    assert cli.main(["viz", "feature-vis", str(path), "--layers", "conv2", "--channels", "1", "--diversity", "3",
                     *common, "--out", str(figure)]) == 0
    assert figure.stat().st_size > 0
    assert cli.main(["viz", "feature-vis", str(path), "--layers", "conv2", "--combine", "1:1", "3:-0.5",
                     *common, "--out", str(tmp_path / "combine.png")]) == 0
    assert cli.main(["viz", "atlas", str(path), "--layer", "conv2", "--grid", "3", "--limit", "60",
                     "--method", "tsne", "--parametrization", "fourier", *common,
                     "--out", str(tmp_path / "atlas.png")]) == 0
    assert cli.main(["viz", "fooling", str(path), "--targets", "1", "--generations", "5",
                     "--out", str(tmp_path / "fool.png")]) == 0
    said = capsys.readouterr().out
    assert "cells of 3x3 drawn (" in said and "of 1 classes at 99% or more" in said
    assert "channel 1: values " in said and "Gram similarity " in said and "direction 0: objective " in said
