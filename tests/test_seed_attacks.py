"""The adversarial experiments of the seeds: loss histories of the attacks,
look-alike images (target class + beta * MSE to a picture), one image's
perturbation on another, the substitute black-box attack, the feature-squeezing
detector and expectation over transformation; each checked for the property
it exists for, on a small trained Sequential and a small trained Graph, and
from the command line."""
import json

import numpy as np
import pytest
from nets import MNIST_MEAN, MNIST_NORMALIZATION, MNIST_STD, digit_net

import fastconv.analysis as fa
from fastconv import cli
from fastconv.analysis.attacks import detect as D
from fastconv.analysis.attacks import eot as E
from fastconv.analysis.attacks import methods as A
from fastconv.data import load_dataset
from fastconv.nn import layers as L
from fastconv.nn import losses
from fastconv.nn.graph import Add, Graph

NORMALIZATION = MNIST_NORMALIZATION
MEAN, STD = MNIST_MEAN, MNIST_STD


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def small_graph(seed=0):
    """conv - ReLU - pool, a residual block (conv - ReLU, added to its input), pool, linear."""
    rng = np.random.default_rng(seed)
    g = Graph()
    g.add("conv1", L.Conv2d(1, 8, 3, padding=1, seed=rng))
    g.add("relu1", L.ReLU())
    stem = g.add("pool1", L.MaxPool2d(2))
    g.add("block.conv", L.Conv2d(8, 8, 3, padding=1, seed=rng), stem)
    branch = g.add("block.relu", L.ReLU())
    g.add("block.add", Add(), branch, stem)
    g.add("pool2", L.MaxPool2d(2))
    g.add("flat", L.Flatten())
    g.add("fc", L.Linear(8 * 7 * 7, 10, seed=rng))
    g.meta["normalization"] = dict(NORMALIZATION)
    return g


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist-sample")
    return (data.x_train.astype(np.float32) / 255, data.y_train,
            data.x_test.astype(np.float32) / 255, data.y_test)


@pytest.fixture(scope="module", params=["sequential", "graph"])
def trained(request, digits, fit_briefly):
    """A small network of each kind trained briefly on the MNIST sample, on normalized inputs."""
    x, y, x_test, y_test = digits
    make = digit_net if request.param == "sequential" else small_graph
    model = fit_briefly(make(), (x - MEAN) / STD, y, steps=150, lr=3e-3)
    accuracy = np.mean(A.predict_pixels(model, x_test[:300]).argmax(axis=1) == y_test[:300])
    assert accuracy > 0.85, f"the small {request.param} did not learn (accuracy {accuracy})"
    return model


@pytest.fixture(scope="module")
def correct(trained, digits):
    """Test images the trained net classifies correctly (up to 60), and their labels."""
    _, _, x_test, y_test = digits
    keep = A.predict_pixels(trained, x_test[:100]).argmax(axis=1) == y_test[:100]
    return x_test[:100][keep][:60], y_test[:100][keep][:60]


def mean_cross_entropy(model, x, classes):
    """The mean cross-entropy of ``classes``, computed apart: normalize, forward, fastconv's loss."""
    return float(losses.CrossEntropyLoss()(model.predict(((x - MEAN) / STD).astype(x.dtype)), classes))


# ------------------------------------------------------------------ loss histories


def test_loss_history_has_a_value_per_step_and_pgd_climbs(trained, correct):
    x, y = correct[0][:16], correct[1][:16]
    bim = A.BIM(trained, eps=0.2, steps=8)
    bim(x, y)
    assert bim.loss_history.shape == (8,)
    # the first step's loss is the clean images' cross-entropy, measured apart
    assert bim.loss_history[0] == pytest.approx(mean_cross_entropy(trained, x, y), rel=1e-4)
    pgd = A.PGD(trained, eps=0.2, steps=8)
    pgd(x, y)
    assert pgd.loss_history.shape == (8,)
    assert pgd.loss_history[-1] > pgd.loss_history[0] + 1.0
    assert np.all(np.diff(pgd.loss_history) > -0.05)
    fgsm = A.FGSM(trained, eps=0.1)
    fgsm(x, y)
    assert fgsm.loss_history.shape == (1,)
    # batches: the history averages over all images, whatever the batch size
    batched = A.BIM(trained, eps=0.2, steps=8, batch_size=5)
    batched(x, y)
    np.testing.assert_allclose(batched.loss_history, bim.loss_history, rtol=1e-4)
    momentum = A.MIFGSM(trained, eps=0.2, steps=8)
    momentum(x, y)
    assert momentum.loss_history.shape == (8,)
    assert momentum.loss_history[0] == pytest.approx(bim.loss_history[0], rel=1e-6)
    assert momentum.loss_history[-1] > momentum.loss_history[0] + 1.0


def test_targeted_and_minimal_attacks_record_falling_objectives(trained, correct):
    x, y = correct[0][:8], correct[1][:8]
    iterative = A.IterativeTargeted(trained, confidence=0.9, steps=100)
    iterative(x, target=(y + 1) % 10)
    assert 1 <= len(iterative.loss_history) <= 100
    assert iterative.loss_history[-1] < iterative.loss_history[0]
    deepfool = A.DeepFool(trained, steps=20)
    deepfool(x, y)
    assert deepfool.loss_history[0] > 0 and deepfool.loss_history[-1] < deepfool.loss_history[0]
    cw = A.CarliniWagnerL2(trained, steps=10, binary_search_steps=2, abort_early=False)
    cw(x, y)
    assert cw.loss_history.shape == (20,)
    assert A.PGD(trained).loss_history.shape == (0,)


# ------------------------------------------------------------------ look-alike images


def test_look_alike_is_classified_as_the_target_and_stays_close_to_its_picture(trained, digits):
    _, _, x_test, y_test = digits
    zeros = x_test[y_test == 0][:3]
    fives = x_test[y_test == 5][:50]
    steps, beta = 250, 0.185
    attack = fa.LookAlike(trained, beta=beta, steps=steps, lr=0.05)
    images = attack(zeros, target=5)
    assert np.all(A.predict_pixels(trained, images).argmax(axis=1) == 5)
    assert images.min() >= 0 and images.max() <= 1
    mse = np.square(images - zeros).reshape(3, -1).mean(axis=1)
    # closer to its picture of a 0 than the real 5s are on average, and far closer than its noise start
    real = np.square(fives[:, None] - zeros[None]).reshape(50, 3, -1).mean(axis=2).mean(axis=0)
    assert np.all(mse < real), (mse, real)
    assert np.all(mse < 0.5 * attack.loss_parts["mse"][0])
    # the cost curve: one value per step, the sum of its terms, falling
    parts = attack.loss_parts
    assert attack.loss_history.shape == (steps,) and parts["mse"].shape == (steps,)
    np.testing.assert_allclose(attack.loss_history, parts["cross_entropy"] + beta * parts["mse"], rtol=1e-10)
    assert attack.loss_history[-1] < 0.2 * attack.loss_history[0]
    assert parts["target_probability"][-1] > 0.5
    # without the similarity term nothing pulls towards the picture
    free = fa.LookAlike(trained, beta=0.0, steps=steps, lr=0.05)(zeros, target=5)
    assert np.square(free - zeros).mean() > 2 * mse.mean()


def test_look_alike_needs_a_target_and_sane_options(trained, digits):
    x = digits[2][:1]
    with pytest.raises(ValueError, match="target"):
        fa.LookAlike(trained)(x)
    with pytest.raises(ValueError, match="start"):
        fa.LookAlike(trained, start="photo")
    with pytest.raises(ValueError, match="beta"):
        fa.LookAlike(trained, beta=-1)


def test_perturbation_transfer_adds_the_same_perturbation_to_the_other_image(trained, correct):
    x, y = correct
    attack = A.PGD(trained, eps=0.2, steps=10)
    result = fa.perturbation_transfer(trained, attack, x[:4], x[4:8], target=3)
    np.testing.assert_allclose(result["other_adv"], np.clip(x[4:8] + result["perturbation"], 0, 1), atol=1e-6)
    np.testing.assert_allclose(result["perturbation"], result["x_adv"] - x[:4], atol=1e-6)
    for name in ("x", "x_adv", "other", "other_adv"):
        np.testing.assert_array_equal(result["prediction"][name],
                                      A.predict_pixels(trained, result[name]).argmax(axis=1))
    assert result["attack_success_rate"] == np.mean(result["prediction"]["x_adv"] == 3)
    assert result["attack_success_rate"] >= 0.75
    with pytest.raises(ValueError, match="other"):
        fa.perturbation_transfer(trained, attack, x[:4], x[4:7])


# ------------------------------------------------------------------ detector


def test_squeezers_follow_their_definitions():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(D.reduce_bit_depth(x, 1), (x >= 0.5).astype(np.float32))
    three = D.reduce_bit_depth(x, 3)
    assert np.all(np.abs(three - x) <= 0.5 / 7 + 1e-7) and len(np.unique(three)) <= 8
    smooth = D.median_smooth(x, 2)
    for i in range(1, 6):
        for j in range(1, 7):
            window = np.sort(x[:, :, i - 1:i + 1, j - 1:j + 1].reshape(2, 3, 4), axis=2)
            np.testing.assert_array_equal(smooth[:, :, i, j], window[:, :, 2])


def test_feature_squeezing_separates_pgd_examples_from_natural_ones(trained, correct):
    x, y = correct
    detector = fa.FeatureSqueezing(trained)
    threshold = detector.fit(x[:30], false_positive_rate=0.1)
    assert np.mean(detector.score(x[:30]) > threshold) <= 0.1
    x_eval, y_eval = x[30:], y[30:]
    x_adv = A.PGD(trained, eps=0.2, steps=10)(x_eval, y_eval)
    fooled = A.predict_pixels(trained, x_adv).argmax(axis=1) != y_eval
    roc = fa.detection_roc(detector, x_eval, x_adv[fooled])
    # the AUC is the chance that an adversarial image scores above a natural one: count the pairs
    clean, adversarial = detector.score(x_eval), detector.score(x_adv[fooled])
    pairs = (adversarial[:, None] > clean[None]).mean() + 0.5 * (adversarial[:, None] == clean[None]).mean()
    assert roc["auc"] == pytest.approx(pairs, abs=1e-9)
    assert roc["auc"] > 0.7, roc["auc"]
    assert 0 <= roc["detection_rate"] <= 1 and roc["adversarial"] == int(fooled.sum())


def test_detector_refuses_bad_settings(trained, digits):
    with pytest.raises(ValueError, match="bits"):
        fa.FeatureSqueezing(trained, bits=9)
    with pytest.raises(RuntimeError, match="fit"):
        fa.FeatureSqueezing(trained).detect(digits[2][:2])
    with pytest.raises(ValueError, match="false_positive_rate"):
        fa.FeatureSqueezing(trained).fit(digits[2][:2], false_positive_rate=1.0)


# ------------------------------------------------------------------ expectation over transformation


def test_a_quarter_turn_is_numpys_rot90_and_the_backward_pass_is_the_adjoint():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.5, (2, 1, 5, 5))
    turn = E.Transform(rotation=90, scale=1.0, blur=0.0, gain=1.0, offset=0.0, jpeg_quality=None)
    np.testing.assert_allclose(turn.apply(x), np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    identity = E.Transform(rotation=0, scale=1.0, blur=0.0, gain=1.0, offset=0.0, jpeg_quality=None)
    np.testing.assert_array_equal(identity.apply(x), x)
    # with no clipping, <T x, g> = <x, T' g> for the rotation, scaling, blur and gain together
    general = E.Transform(rotation=17.0, scale=1.08, blur=0.8, gain=1.3, offset=0.0, jpeg_quality=None)
    x = rng.uniform(0, 0.5, (2, 3, 9, 8))
    g = rng.standard_normal(x.shape)
    assert np.sum(general.apply(x) * g) == pytest.approx(np.sum(x * general.backward(g)), rel=1e-10)
    jpeg = E.Transform(rotation=0, scale=1.0, blur=0.0, gain=1.0, offset=0.0, jpeg_quality=50).apply(x)
    assert jpeg.shape == x.shape and 0 < np.abs(jpeg - x).max() < 0.5


def test_eot_images_survive_random_transformations_more_often_than_pgd_images(trained, correct):
    x, y = correct[0][:24], correct[1][:24]
    transformations = fa.Transformations(rotation=20, scale=(0.85, 1.15), blur=1.0, jpeg=0.5)
    pgd = A.PGD(trained, eps=0.2, steps=10)(x, y)
    eot_attack = fa.EOT(trained, eps=0.2, steps=10, samples=4, transformations=transformations)
    eot = eot_attack(x, y)
    assert np.abs(eot - x).max() <= 0.2 + 1e-6 and eot_attack.loss_history.shape == (10,)
    pgd_rate = fa.survival(trained, pgd, y, transformations=transformations, draws=16)
    eot_rate = fa.survival(trained, eot, y, transformations=transformations, draws=16)
    assert eot_rate["survival_rate"] > pgd_rate["survival_rate"] + 0.1, (eot_rate, pgd_rate)


def test_transformations_refuse_bad_ranges(trained, digits):
    with pytest.raises(ValueError, match="scale"):
        fa.Transformations(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="jpeg"):
        fa.Transformations(jpeg=1.5)
    with pytest.raises(ValueError, match="one of the two"):
        fa.survival(trained, digits[2][:2], y=[1, 2], target=3)


# ------------------------------------------------------------------ black box


def test_the_substitute_attack_transfers_above_chance(trained, digits):
    """Papernot et al.'s attack on a victim seen only through its labels: the
    substitute's FGSM examples fool the victim more often than random noise of the same size."""
    _, _, x_test, y_test = digits
    substitute, info = fa.train_substitute(trained, x_test[1000:1150], lambda: digit_net(seed=5), rounds=3,
                                           epochs=4, batch_size=32, lr=3e-3)
    assert info["set_sizes"] == [150, 300, 600] and info["queries"] == 600
    x, y = x_test[:100], y_test[:100]
    eps = 0.3
    result = fa.transfer(A.FGSM(substitute, eps=eps), trained, x, y)
    noisy = np.clip(x + eps * np.random.default_rng(0).choice([-1.0, 1.0], x.shape), 0, 1).astype(x.dtype)
    correct = A.predict_pixels(trained, x).argmax(axis=1) == y
    noise_rate = np.sum(correct & (A.predict_pixels(trained, noisy).argmax(axis=1) != y)) / correct.sum()
    assert result["transferable"] >= 20
    assert result["transfer_rate"] > noise_rate + 0.1, (result["transfer_rate"], noise_rate)


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    trained.meta["dataset"] = "mnist-sample"
    trained.save(path)
    return path


def run_cli(*args):
    assert cli.main([str(a) for a in args]) == 0


def test_attack_plots_its_loss_history(model_file, tmp_path):
    out, loss = tmp_path / "pgd.png", tmp_path / "loss.png"
    run_cli("attack", model_file, "--method", "pgd", "--eps", "0.2", "--steps", "6", "--index", "0", "1",
            "--dataset", "mnist-sample", "--threads", "1", "--out", out, "--plot-loss", loss)
    record = json.loads(out.with_suffix(".json").read_text())
    values = record["loss_history"]["values"]
    assert len(values) == 6 and values[-1] > values[0] and loss.stat().st_size > 0


def test_plot_loss_is_refused_for_an_attack_that_records_none(model_file, tmp_path, capsys):
    status = cli.main(["attack", str(model_file), "--method", "square", "--eps", "0.2", "--queries", "10",
                       "--dataset", "mnist-sample", "--threads", "1", "--out", str(tmp_path / "sq.png"),
                       "--plot-loss", str(tmp_path / "loss.png")])
    err = capsys.readouterr().err
    assert status != 0 and "square records no per-step objective" in err
    assert not (tmp_path / "sq.png").exists()


def test_look_alike_and_transfer_grid_from_the_command_line(model_file, tmp_path):
    out = tmp_path / "look.png"
    run_cli("adversarial", "look-alike", model_file, "--index", "3", "--target", "5", "--steps", "200",
            "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    # classified as the target, and at half its noise start's distance to the picture or closer
    assert record["images"][0]["prediction"] == 5 and record["images"][0]["mse"] < 0.5 * record["cost"]["mse"][0]
    assert len(record["cost"]["total"]) == 200 and (tmp_path / "look_cost.png").stat().st_size > 0
    out = tmp_path / "grid.png"
    run_cli("adversarial", "transfer-grid", model_file, "--index", "0", "1", "--other", "2", "3", "--eps", "0.2",
            "--target", "3", "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert [p["other"] for p in record["pairs"]] == [2, 3] and 0 <= record["other_changed_rate"] <= 1


def test_detect_and_eot_from_the_command_line(model_file, tmp_path):
    out = tmp_path / "roc.png"
    run_cli("adversarial", "detect", model_file, "--methods", "pgd", "--eps", "0.2", "--limit", "30",
            "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["rocs"]["pgd eps 0.2"]["auc"] > 0.6
    out = tmp_path / "eot.png"
    run_cli("adversarial", "eot", model_file, "--eps", "0.2", "--steps", "5", "--samples", "2", "--draws", "8",
            "--limit", "12", "--views", "3", "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["survival"]) == {"PGD eps 0.2", "EOT eps 0.2"}


def test_substitute_from_the_command_line(model_file, tmp_path):
    out = tmp_path / "substitute.png"
    run_cli("adversarial", "substitute", model_file, "--substitute-model", "mnist2", "--queries", "40",
            "--start-index", "1000", "--rounds", "2", "--epochs", "1", "--limit", "30", "--methods", "fgsm",
            "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["training"]["set_sizes"] == [40, 80] and record["training"]["queries"] == 80
    result = record["transfers"]["fgsm eps 0.3"]
    assert 0 <= result["transfer_rate"] <= 1 and 0 <= record["random_noise_fooling_rate"] <= 1


@pytest.mark.slow
def test_distill_from_the_command_line(model_file, tmp_path):
    out = tmp_path / "distill.png"
    run_cli("adversarial", "distill", model_file, "--substitute-model", "mnist2", "--train-images", "200",
            "--temperature", "50", "--limit", "10", "--cw-steps", "3", "--steps", "2", "--eps-list", "0", "0.2",
            "--l2-eps-list", "0", "2", "--dataset", "mnist-sample", "--threads", "1", "--out", out)
    record = json.loads(out.with_suffix(".json").read_text())
    assert set(record["curves"]) == {"distilled (T=50)", "standard"}
    assert record["curves"]["standard"]["curves"]["pgd"]["eps"] == [0.0, 0.2]
