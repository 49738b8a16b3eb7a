"""Optimization to image (fastconv.analysis.optimize, .parametrize, .style):
class models, feature visualization, pushing an image to a class, feature
inversion, DeepDream and style transfer, each checked for what it promises,
on a small net trained on the bundled MNIST sample and on small RGB nets."""

import numpy as np
import pytest
from matplotlib.figure import Figure

import fastconv.analysis as fa
from fastconv.analysis.optimize import figures as OF
from fastconv.analysis.optimize import parametrize as P
from fastconv.analysis.optimize import style as S
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax
from fastconv.nn.model import Sequential

pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")


def rgb_net(seed=3, dtype=np.float32):
    """A small RGB net with batch norm whose convolutional part takes any size."""
    rng = np.random.default_rng(seed)
    model = Sequential([
        L.Conv2d(3, 6, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.BatchNorm2d(6, dtype=dtype), L.MaxPool2d(2),
        L.Conv2d(6, 8, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(8 * 4 * 4, 4, seed=rng, dtype=dtype),
    ]).eval()
    bn = model.layer("bn1")
    bn.buffers["running_mean"][...] = rng.uniform(0.1, 0.5, 6)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 6)
    model.meta.update({"normalization": {"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.25, 0.3], "scale": 255.0},
                       "input_shape": [3, 16, 16]})
    return model


def to_input(model, pixels):
    """The oracle's normalization: raw pixels through the trainer's Normalizer."""
    pixels = pixels if pixels.ndim == 4 else pixels[None]
    return fa.Normalizer.from_model(model)(pixels * 255.0)


def numerical_gradient(f, x, indices, h=1e-6):
    grads = []
    for index in indices:
        old = x[index]
        x[index] = old + h
        up = f(x)
        x[index] = old - h
        down = f(x)
        x[index] = old
        grads.append((up - down) / (2 * h))
    return np.array(grads)


def some_indices(shape, count, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(count)]


# -- class models and feature visualization -------------------------------------------------

def test_class_model_score_rises_past_the_threshold(digit_model):
    targets = [0, 3, 8]
    zero_scores = digit_model.predict(to_input(digit_model, np.full((1, 1, 28, 28), 0.1307)))[0, targets]
    result = fa.class_model(digit_model, targets, steps=40, progress=False)
    assert result.images.shape == (3, 1, 28, 28) and result.image.shape == (1, 28, 28)
    assert result.images.min() >= 0 and result.images.max() <= 1
    logits = digit_model.predict(to_input(digit_model, result.images))
    probabilities = softmax(logits.astype(np.float64))
    for k, target in enumerate(targets):
        assert probabilities[k, target] > 0.99
        assert logits[k, target] > zero_scores[k] + 10
    np.testing.assert_allclose(result.values, logits[np.arange(3), targets], rtol=1e-5, atol=1e-4)
    assert result.history["objective"].shape == (40, 3)
    assert result.history["probability"][-1].min() > 0.99


def test_yosinski_regularizers_compose_and_still_reach_the_class(digit_model):
    plain = fa.class_model(digit_model, 5, steps=40, seed=1, init="noise", l2_decay=0.0, progress=False)
    regularized = fa.class_model(digit_model, 5, steps=40, seed=1, init="noise", l2_decay=0.02, blur_every=4,
                                 blur_sigma=0.6, jitter=2, clip_norm=20, clip_contribution=20, progress=False)
    probability = softmax(digit_model.predict(to_input(digit_model, regularized.image)).astype(np.float64))
    assert probability[0, 5] > 0.9
    # blur, decay and clipping leave a smoother image nearer the zero image
    roughness = [P.total_variation(r.images)[0] for r in (plain, regularized)]
    assert roughness[1] < roughness[0]


def test_feature_visualization_beats_every_data_image(digit_model, mnist):
    x = to_input(digit_model, mnist.x_test[:500] / 255.0)
    conv2 = digit_model.forward(x, until="conv2").astype(np.float64)
    fc = digit_model.forward(x, until="fc1").astype(np.float64)
    channels = [0, 5, 11]
    result = fa.feature_visualization(digit_model, "conv2", channels, steps=30, progress=False)
    reached = digit_model.forward(to_input(digit_model, result.images), until="conv2").astype(np.float64)
    for k, c in enumerate(channels):
        assert reached[k, c].mean() > conv2[:, c].mean(axis=(1, 2)).max()
    unit = fa.feature_visualization(digit_model, "conv2", (4, 7, 7), steps=30, progress=False)
    value = digit_model.forward(to_input(digit_model, unit.image), until="conv2")[0, 4, 7, 7]
    assert value > conv2[:, 4, 7, 7].max()
    neuron = fa.feature_visualization(digit_model, "fc1", 2, steps=30, progress=False)
    assert digit_model.forward(to_input(digit_model, neuron.image), until="fc1")[0, 2] > fc[:, 2].max()


def test_fourier_decorrelated_robust_visualization_beats_the_data():
    model = rgb_net()
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (64, 3, 16, 16))
    data[:, 1] = 0.7 * data[:, 0] + 0.3 * data[:, 1]
    best = model.forward(to_input(model, data), until="conv2").astype(np.float64)[:, 3].mean(axis=(1, 2)).max()
    result = fa.feature_visualization(model, "conv2", 3, steps=60, parametrization="fourier", color=data,
                                      jitter=1, scale=(0.9, 1.1), rotate=10, progress=False)
    assert 0 < result.image.min() and result.image.max() < 1
    reached = model.forward(to_input(model, result.images), until="conv2").astype(np.float64)[0, 3].mean()
    assert reached > best
    grid = fa.feature_grid(model, per_layer=2, steps=5, progress=False)
    assert list(grid) == ["conv1", "conv2"] and [g.units for g in grid.values()] == [[(0,), (5,)], [(0,), (7,)]]


def test_same_seed_same_image_other_seed_other_image(digit_model):
    options = dict(steps=8, init="noise", jitter=2, progress=False)
    first = fa.feature_visualization(digit_model, "conv1", 1, seed=4, **options)
    again = fa.feature_visualization(digit_model, "conv1", 1, seed=4, **options)
    other = fa.feature_visualization(digit_model, "conv1", 1, seed=5, **options)
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)
    textures = [S.style_transfer(rgb_net(), None, np.random.default_rng(0).uniform(0, 1, (3, 16, 16)), size=16,
                                 steps=3, seed=s, progress=False).image for s in (1, 1, 2)]
    np.testing.assert_array_equal(textures[0], textures[1])
    assert not np.array_equal(textures[0], textures[2])


def test_tools_leave_the_model_as_they_found_it(digit_model):
    digit_model.train()
    before = {k: g.copy() for k, g in digit_model.gradients().items()}
    for g in digit_model.gradients().values():
        g += 0.5
    marked = {k: g.copy() for k, g in digit_model.gradients().items()}
    try:
        fa.class_model(digit_model, 1, steps=2, progress=False)
        fa.invert(digit_model, np.full((1, 28, 28), 0.5), "relu1", steps=3, progress=False)
        assert digit_model.training
        for key, grad in digit_model.gradients().items():
            np.testing.assert_array_equal(grad, marked[key])
    finally:
        digit_model.eval()
        for key, grad in digit_model.gradients().items():
            grad[...] = before[key]


# -- parametrizations, transformations, priors -------------------------------------------------

@pytest.mark.parametrize("width", [7, 8])
def test_fourier_image_gradient_matches_numerical(width):
    rng = np.random.default_rng(1)
    color = P.color_correlation(rng.uniform(0, 1, (4, 3, 5, 5)))
    image = P.FourierImage((2, 3, 6, width), np.array([0.4, 0.5, 0.6]), rng, color=color, std=0.3)
    upstream = rng.normal(size=(2, 3, 6, width))

    def loss(params):
        image.params = params
        return float(np.sum(image.render() * upstream))

    params = image.params.copy()
    loss(params)
    analytic = image.backward(upstream)
    indices = some_indices(params.shape, 40)
    numeric = numerical_gradient(loss, params, indices)
    np.testing.assert_allclose([analytic[i] for i in indices], numeric, rtol=1e-5, atol=1e-8)


def test_transformation_adjoint_passes_the_dot_product_test():
    rng = np.random.default_rng(2)
    transform = P.RandomTransform(jitter=3, scale=(0.8, 1.2), rotate=20)
    for _ in range(3):
        transform.sample(rng, (9, 11))
        x = rng.normal(size=(2, 3, 9, 11))
        y = rng.normal(size=(2, 3, 9, 11))
        np.testing.assert_allclose(np.sum(transform(x) * y), np.sum(x * transform.adjoint(y)), rtol=1e-10)
    identity = P.RandomTransform()
    identity.sample(rng, (9, 11))
    np.testing.assert_array_equal(identity(x), x)


@pytest.mark.parametrize("beta", [2.0, 1.5, 1.0])
def test_total_variation_value_and_gradient(beta):
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (2, 3, 5, 6))
    eps = 0.0 if beta == 2.0 else 1e-8
    expected = np.mean([
        ((images[n, c, i, j + 1] - images[n, c, i, j]) ** 2 + (images[n, c, i + 1, j] - images[n, c, i, j]) ** 2
         + eps) ** (beta / 2)
        for n in range(2) for c in range(3) for i in range(4) for j in range(5)
    ])
    value, gradient = P.total_variation(images, beta)
    assert value == pytest.approx(expected, rel=1e-12)
    indices = some_indices(images.shape, 30)
    numeric = numerical_gradient(lambda v: P.total_variation(v, beta)[0], images, indices)
    np.testing.assert_allclose([gradient[i] for i in indices], numeric, rtol=1e-5, atol=1e-9)


def test_alpha_norm_value_and_gradient():
    values = np.random.default_rng(4).normal(size=(2, 3, 4, 4))
    value, gradient = P.alpha_norm(values, 6.0)
    assert value == pytest.approx(np.mean(values ** 6))
    np.testing.assert_allclose(gradient, 6 * values ** 5 / values.size)


def test_backward_from_equals_one_backward_per_layer():
    model = rgb_net(dtype=np.float64)
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16))
    outputs = {}
    handle = model.register_forward_hook(lambda name, layer, out: outputs.__setitem__(name, out.shape))
    model.forward(x, until="relu2")
    handle.remove()
    rng = np.random.default_rng(6)
    grads = {name: rng.normal(size=outputs[name]) for name in ("relu1", "bn1", "relu2")}
    combined = P.backward_from(model, grads)
    separate = sum(model.backward(g, start=name) for name, g in grads.items())
    np.testing.assert_allclose(combined, separate, rtol=1e-10, atol=1e-12)


# -- to class -----------------------------------------------------------------------------

def test_to_class_pushes_an_image_past_the_threshold(digit_model, mnist):
    predictions = digit_model.predict(to_input(digit_model, mnist.x_test[:20] / 255.0)).argmax(axis=1)
    index = int(np.flatnonzero(predictions == 7)[0])
    image = mnist.x_test[index] / 255.0
    result = fa.to_class(digit_model, image, 3, threshold=0.9, progress=False)
    probabilities = result.history["probability"]
    assert result.reached and probabilities[0] < 0.5 and probabilities[-1] >= 0.9
    assert len(probabilities) == result.steps + 1 and np.all(probabilities[:-1] < 0.9)
    final = softmax(digit_model.predict(to_input(digit_model, result.image)).astype(np.float64))[0]
    assert final[3] == pytest.approx(probabilities[-1], rel=1e-5)
    assert result.history["predicted"][0] == 7 and result.history["predicted"][-1] == 3
    np.testing.assert_array_equal(result.original, image)
    assert 0 <= result.image.min() and result.image.max() <= 1
    hopeless = fa.to_class(digit_model, image, 3, threshold=0.999999, max_steps=2, lr=1e-4, progress=False)
    assert not hopeless.reached and hopeless.steps == 2 and len(hopeless.history["probability"]) == 3


# -- inversion --------------------------------------------------------------------------------

def test_inversion_from_an_early_layer_is_closer_than_from_a_late_one(digit_model, mnist):
    image = mnist.x_test[0] / 255.0
    early, late = fa.invert_layers(digit_model, image, layers=["relu1", "fc1"], steps=80, progress=False)
    mse = [float(np.mean((r.image - image) ** 2)) for r in (early, late)]
    assert mse[0] < 0.01 and mse[0] < mse[1] / 5
    # both match their own code well: the late layer simply keeps less of the image
    assert early.relative_error < 0.1 and late.relative_error < 0.1
    assert len(early.history["loss"]) <= 80
    np.testing.assert_allclose(early.history["loss"], early.history["representation"] + early.history["prior"])


# -- DeepDream --------------------------------------------------------------------------------

def test_deep_dream_runs_at_any_size_and_raises_the_activations():
    model = rgb_net()
    image = np.random.default_rng(7).uniform(0.3, 0.7, (3, 37, 50))
    result = fa.deep_dream(model, image, "relu2", steps=6, octaves=3, jitter=2, progress=False)
    assert result.image.shape == (3, 37, 50) and result.sizes[-1] == (37, 50) and len(result.sizes) == 3
    assert 0 <= result.image.min() and result.image.max() <= 1

    def energy(pixels):
        out = model.forward(to_input(model, pixels), until="relu2").astype(np.float64)
        return 0.5 * np.mean(out ** 2)

    assert energy(result.image) > 2 * energy(image)
    last = result.history["objective"][result.history["octave"] == 2]
    assert last[-1] > last[0]
    with pytest.raises(ValueError, match="'fc1'"):
        fa.deep_dream(model, image, "fc1", progress=False)


# -- style transfer ------------------------------------------------------------------------------

def test_gram_matrix_and_style_loss_match_numpy():
    rng = np.random.default_rng(8)
    features = rng.normal(size=(1, 4, 5, 6))
    target_features = rng.normal(size=(1, 4, 7, 3))
    gram = S.gram_matrix(features)
    direct = np.zeros((4, 4))
    for i in range(5):
        for j in range(6):
            direct += np.outer(features[0, :, i, j], features[0, :, i, j])
    np.testing.assert_allclose(gram[0], direct / 30, rtol=1e-12)
    target = S.style_statistics(target_features)
    value, _ = S.style_loss(features, target)
    assert value == pytest.approx(np.sum((direct / 30 - target[0]) ** 2) / np.sum(target[0] ** 2), rel=1e-12)
    mean, var = features[0].reshape(4, -1).mean(axis=1), features[0].reshape(4, -1).var(axis=1)
    target_mean = target_features[0].reshape(4, -1).mean(axis=1)
    target_var = target_features[0].reshape(4, -1).var(axis=1)
    value, _ = S.style_loss(features, S.style_statistics(target_features, "mean_var"), "mean_var")
    expected = (np.sum((mean - target_mean) ** 2) / np.sum(target_mean ** 2)
                + np.sum((var - target_var) ** 2) / np.sum(target_var ** 2))
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("statistics", ["gram", "mean_var"])
def test_style_and_content_loss_gradients_match_numerical(statistics):
    rng = np.random.default_rng(9)
    features = rng.normal(size=(1, 3, 4, 5))
    target = S.style_statistics(rng.normal(size=(1, 3, 6, 6)), statistics)
    _, gradient = S.style_loss(features, target, statistics)
    indices = some_indices(features.shape, 25)
    numeric = numerical_gradient(lambda f: S.style_loss(f, target, statistics)[0], features, indices)
    np.testing.assert_allclose([gradient[i] for i in indices], numeric, rtol=1e-5, atol=1e-9)
    content = rng.normal(size=features.shape)
    _, gradient = S.content_loss(features, content)
    numeric = numerical_gradient(lambda f: S.content_loss(f, content)[0], features, indices)
    np.testing.assert_allclose([gradient[i] for i in indices], numeric, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("statistics", ["gram", "mean_var"])
def test_style_objective_gradient_through_the_network_matches_numerical(statistics):
    model = rgb_net(dtype=np.float64)
    rng = np.random.default_rng(10)
    content, style = rng.uniform(0, 1, (3, 12, 12)), rng.uniform(0, 1, (3, 20, 16))
    objective = S.StyleObjective(model, content, style, content_layer="conv2", style_layers=["relu1", "bn1", "relu2"],
                                 style_weights=[0.5, 1.0, 2.0], style_weight=3.0, tv_weight=0.7,
                                 statistics=statistics)
    image = rng.uniform(0.2, 0.8, (3, 12, 12))
    loss, gradient, parts = objective(image)
    assert loss == pytest.approx(parts["content"] + 3.0 * parts["style"] + 0.7 * parts["tv"])
    indices = some_indices(image.shape, 20)
    numeric = numerical_gradient(lambda v: objective(v)[0], image, indices)
    np.testing.assert_allclose([gradient[i] for i in indices], numeric, rtol=1e-4, atol=1e-8)


def test_lbfgs_beats_adam_at_the_same_number_of_evaluations():
    model = rgb_net()
    rng = np.random.default_rng(11)
    content = np.clip(rng.uniform(0, 1, (3, 1, 1)) + 0.2 * rng.normal(size=(3, 24, 24)), 0, 1)
    style = rng.uniform(0, 1, (3, 24, 24))

    def run(method, steps, lr=0.02):
        result = S.style_transfer(model, content, style, steps=steps, method=method, lr=lr, progress=False)
        assert result.image.shape == (3, 24, 24) and 0 <= result.image.min() and result.image.max() <= 1
        assert result.history["loss"].min() < 0.5 * result.history["loss"][0]
        return result

    lbfgs = run("lbfgs", 40)
    assert lbfgs.evaluations <= 40
    for lr in (0.005, 0.02, 0.05):
        adam = run("adam", 40, lr)
        assert adam.evaluations == 40
        assert lbfgs.history["loss"].min() < adam.history["loss"].min()
    # and Adam at its default step needs more than twice the evaluations to catch up
    assert lbfgs.history["loss"].min() < run("adam", 100).history["loss"].min()


def test_texture_from_a_random_weight_network():
    trained = rgb_net()
    random = S.random_weights(trained, seed=1)
    assert [n for n, _ in random.named_layers()] == [n for n, _ in trained.named_layers()]
    assert not np.array_equal(random.layer("conv1").params["weight"], trained.layer("conv1").params["weight"])
    assert np.all(random.layer("bn1").buffers["running_var"] == 1) and random.meta == trained.meta
    rows, cols = np.mgrid[0:20, 0:20]
    stripes = 0.5 + 0.4 * np.sin(2 * np.pi * (rows + 2 * cols) / 7)
    style = np.stack([stripes, 1 - stripes, np.full((20, 20), 0.3)])
    result = S.style_transfer(random, None, style, size=(24, 28), steps=30, progress=False)
    assert result.image.shape == (3, 24, 28) and result.content_layer is None
    assert result.history["style"].min() < 0.05 * result.history["style"][0]


# -- bad input ---------------------------------------------------------------------------------------

def test_bad_input_raises_a_clear_error_naming_the_value(digit_model, tmp_path):
    image = np.full((1, 28, 28), 0.5)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    cases = [
        (lambda: fa.feature_visualization(digit_model, "conv9", 0, steps=1), ValueError, "'conv9'"),
        (lambda: fa.class_model(digit_model, 10, steps=1), ValueError, "class 10 is out of range"),
        (lambda: fa.class_model(digit_model, -1, steps=1), ValueError, "class -1"),
        (lambda: fa.feature_visualization(digit_model, "conv2", 16, steps=1), ValueError, "channel 16"),
        (lambda: fa.feature_visualization(digit_model, "conv2", (1, 14, 0), steps=1), ValueError, r"\(1, 14, 0\)"),
        (lambda: fa.class_model(digit_model, 1, l2_decay=-0.1), ValueError, "-0.1"),
        (lambda: fa.class_model(digit_model, 1, clip_norm=100), ValueError, "100"),
        (lambda: fa.class_model(digit_model, 1, optimizer="rmsprop"), ValueError, "rmsprop"),
        (lambda: fa.feature_visualization(digit_model, "conv1", 0, parametrization="fourier", blur_every=2),
         ValueError, "blur_every=2"),
        (lambda: fa.invert(digit_model, image, "relu1", tv_weight=-1.0), ValueError, "-1.0"),
        (lambda: fa.invert(digit_model, image, "pool7"), ValueError, "'pool7'"),
        (lambda: fa.invert(digit_model, image * 3, "relu1"), ValueError, "from 1.5 to 1.5"),
        (lambda: fa.to_class(digit_model, image, 12), ValueError, "class 12"),
        (lambda: fa.to_class(digit_model, image, 1, threshold=1.5), ValueError, "1.5"),
        (lambda: fa.to_class(digit_model, np.full((3, 28, 28), 0.5), 1), ValueError, "3 channels"),
        (lambda: fa.deep_dream(digit_model, image, "fc1"), ValueError, "'fc1'"),
        (lambda: fa.deep_dream(digit_model, image, "conv1", octave_scale=0.5), ValueError, "0.5"),
        (lambda: S.style_transfer(digit_model, image, image, style_weight=-2), ValueError, "-2"),
        (lambda: S.style_transfer(digit_model, image, image, style_layers=["relu1"], style_weights=[-0.5]),
         ValueError, "-0.5"),
        (lambda: S.style_transfer(digit_model, image, image, style_layers=["relu9"]), ValueError, "'relu9'"),
        (lambda: S.style_transfer(digit_model, image, image, statistics="cov"), ValueError, "'cov'"),
        (lambda: S.style_transfer(digit_model, None, image), ValueError, "size"),
        (lambda: S.style_transfer(digit_model, image, image, method="sgd"), ValueError, "'sgd'"),
        (lambda: fa.load_image(not_an_image), ValueError, "notes.png"),
        (lambda: fa.load_image(tmp_path / "missing.jpg"), ValueError, "missing.jpg"),
        (lambda: fa.load_image("grace_hopper", channels=2), ValueError, "channels must be 1 or 3, got 2"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_load_image_reads_samples_and_files(tmp_path):
    from PIL import Image

    hopper = fa.load_image("grace_hopper", size=64)
    assert hopper.shape == (3, 64, 55) and hopper.dtype == np.float64 and 0 <= hopper.min() and hopper.max() <= 1
    present = fa.load_image("present", channels=1, size=(20, 30))
    assert present.shape == (1, 20, 30)
    assert present[0, 0, 0] == 1.0  # the transparent corner is laid on white
    pixels = np.random.default_rng(13).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "own.png")
    np.testing.assert_array_equal(fa.load_image(tmp_path / "own.png"), pixels.transpose(2, 0, 1) / 255.0)


# -- figures and command line -----------------------------------------------------------------------

def test_every_figure_is_written(digit_model, tmp_path):
    image = np.full((1, 28, 28), 0.2)
    image[0, 8:20, 12:16] = 0.9
    textures = {m: S.style_transfer(digit_model, None, image, size=20, steps=3, method=m, progress=False)
                for m in ("lbfgs", "adam")}
    drawings = {
        "class_models": lambda path: OF.plot_class_models(
            fa.class_model(digit_model, [1, 2], steps=2, progress=False), classes=list("0123456789"), path=path),
        "feature_grid": lambda path: OF.plot_feature_grid(
            fa.feature_grid(digit_model, per_layer=2, steps=2, progress=False), path=path),
        "to_class": lambda path: OF.plot_to_class(fa.to_class(digit_model, image, 4, max_steps=3, progress=False),
                                                  path=path),
        "inversions": lambda path: OF.plot_inversions(
            fa.invert_layers(digit_model, image, ["relu1", "fc1"], steps=3, progress=False), path=path),
        "dream": lambda path: OF.plot_dream(
            fa.deep_dream(digit_model, image, "relu2", steps=2, octaves=2, progress=False), path=path),
        "style": lambda path: OF.plot_style(S.style_transfer(digit_model, image, image, steps=3, progress=False),
                                            image, image, path=path),
        "texture": lambda path: OF.plot_style(textures["lbfgs"], None, image, path=path),
        "comparison": lambda path: OF.plot_optimizer_comparison(textures, path=path),
    }
    for name, draw in drawings.items():
        path = tmp_path / f"{name}.png"
        assert isinstance(draw(path), Figure)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
