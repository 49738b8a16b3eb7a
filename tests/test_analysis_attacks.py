"""Adversarial attacks, measurement and defenses of fastconv.analysis: the
closed forms and constraints that define each attack, their success on a
trained network, agreement with torchattacks on the same weights, and the
checks on bad input."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import MNIST_MEAN, MNIST_NORMALIZATION, MNIST_STD, digit_net

import fastconv.analysis as fa
from fastconv.analysis.attacks import methods as A
from fastconv.data import load_dataset
from fastconv.nn import losses
from fastconv.nn.losses import softmax
from fastconv.nn.model import Sequential

NORMALIZATION = MNIST_NORMALIZATION
MEAN, STD = MNIST_MEAN, MNIST_STD


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist-sample")
    return (data.x_train.astype(np.float32) / 255, data.y_train,
            data.x_test.astype(np.float32) / 255, data.y_test)


@pytest.fixture(scope="module")
def trained(digits, fit_briefly):
    """The small net trained briefly on the MNIST sample, on normalized inputs
    (so every attack has to apply model.meta's normalization itself)."""
    x, y, x_test, y_test = digits
    model = fit_briefly(digit_net(), (x - MEAN) / STD, y, steps=200, lr=3e-3)
    accuracy = np.mean(A.predict_pixels(model, x_test[:500]).argmax(axis=1) == y_test[:500])
    assert accuracy > 0.9, f"the small net did not learn (accuracy {accuracy})"
    return model


@pytest.fixture(scope="module")
def correct_images(trained, digits):
    """40 test images the trained net classifies correctly, and their labels."""
    _, _, x_test, y_test = digits
    keep = A.predict_pixels(trained, x_test[:80]).argmax(axis=1) == y_test[:80]
    return x_test[:80][keep][:40], y_test[:80][keep][:40]


def random_images(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(0, 1, (n, 1, 28, 28)).astype(dtype)


def reference_gradient(model, x, y=None, target=None):
    """d CE / d pixels computed with fastconv's loss and the model's own backward,
    outside the attack code: normalize, forward, CrossEntropyLoss, backward, / std."""
    logits = model.forward(((x - MEAN) / STD).astype(x.dtype))
    loss = losses.CrossEntropyLoss()
    loss(logits, y if target is None else target)
    grad = model.backward(loss.backward()) / x.dtype.type(STD)
    return grad if target is None else -grad


# ------------------------------------------------------------------ closed forms and constraints


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_is_its_closed_form(trained, correct_images, targeted):
    x, y = correct_images
    model = trained.astype(np.float64)
    model.meta["normalization"] = dict(NORMALIZATION)
    model.eval()
    x = x.astype(np.float64)
    eps = 0.1
    target = (y + 3) % 10 if targeted else None
    grad = reference_gradient(model, x, y, target)
    expected = np.clip(x + eps * np.sign(grad), 0, 1)
    x_adv = A.FGSM(model, eps=eps)(x, None if targeted else y, target=target)
    clear = np.abs(grad) > 1e-12 * np.abs(grad).max()
    np.testing.assert_array_equal(x_adv[clear], expected[clear])
    assert np.all(np.abs(x_adv - x)[~clear] <= eps)


def test_loss_gradient_matches_finite_differences():
    model = digit_net(seed=4, dtype=np.float64).eval()
    x = random_images(2, seed=1, dtype=np.float64)
    y = np.array([3, 7])
    grad = A.loss_gradient(model, x, y)
    loss = losses.CrossEntropyLoss(reduction="sum")

    def value(images):
        return loss(model.predict((images - MEAN) / STD), y)

    rng = np.random.default_rng(0)
    for index in zip(rng.integers(0, 2, 12), np.zeros(12, int), rng.integers(0, 28, 12), rng.integers(0, 28, 12)):
        h = 1e-6
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric = (value(up) - value(down)) / (2 * h)
        assert numeric == pytest.approx(grad[index], rel=1e-4, abs=1e-8)


@settings(max_examples=8, deadline=None)
@given(eps=st.floats(0.0, 0.5), steps=st.integers(1, 4), seed=st.integers(0, 100),
       norm=st.sampled_from(["linf", "l2"]))
def test_pgd_stays_in_the_eps_ball_and_in_pixel_range(eps, steps, seed, norm):
    model = digit_net(seed=seed % 3).eval()
    x = random_images(3, seed=seed)
    if norm == "linf":
        x_adv = A.PGD(model, eps=eps, steps=steps, alpha=0.2, seed=seed)(x)
        size = np.abs(x_adv.astype(np.float64) - x).reshape(3, -1).max(axis=1)
    else:
        eps = 10 * eps
        x_adv = A.PGDL2(model, eps=eps, steps=steps, alpha=2.0, seed=seed)(x)
        size = np.sqrt(np.square(x_adv.astype(np.float64) - x).reshape(3, -1).sum(axis=1))
    assert np.all(size <= eps + 1e-5)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape


def test_bim_is_pgd_without_random_start_and_random_starts_follow_the_seed(trained, correct_images):
    x, y = correct_images
    bim = A.BIM(trained, eps=0.1, steps=3)(x, y)
    pgd_fixed = A.PGD(trained, eps=0.1, steps=3, random_start=False)(x, y)
    np.testing.assert_array_equal(bim, pgd_fixed)
    first = A.PGD(trained, eps=0.1, steps=3, seed=5)(x, y)
    np.testing.assert_array_equal(first, A.PGD(trained, eps=0.1, steps=3, seed=5)(x, y))
    assert not np.array_equal(first, A.PGD(trained, eps=0.1, steps=3, seed=6)(x, y))


def test_iterative_attack_stops_each_image_once_it_is_confident(trained, correct_images):
    x, y = correct_images
    target = (y + 1) % 10
    x_adv = A.IterativeTargeted(trained, confidence=0.9, alpha=0.01, steps=300)(x, target=target)
    p = softmax(A.predict_pixels(trained, x_adv).astype(np.float64), axis=1)[np.arange(len(x)), target]
    assert np.all(p >= 0.9)
    # an image is left alone as soon as it is over the threshold: one step of
    # size alpha (RMS) earlier it was not, so it cannot be far over it
    one_step_back = A.IterativeTargeted(trained, confidence=0.999999, alpha=0.01, steps=1)(x, target=target)
    assert np.sqrt(np.square(one_step_back - x).reshape(len(x), -1).mean(axis=1)).max() == pytest.approx(0.01, rel=0.05)


def test_attacks_leave_the_model_as_they_found_it(correct_images):
    x, y = correct_images
    model = digit_net(seed=2)
    model.train()
    before = {k: g.copy() for k, g in model.gradients().items()}
    for attack in (A.PGD(model, eps=0.1, steps=2), A.DeepFool(model, steps=2), A.CarliniWagnerL2(model, steps=2)):
        attack(x[:4], y[:4])
        assert model.training
        for key, grad in model.gradients().items():
            np.testing.assert_array_equal(grad, before[key])


# ------------------------------------------------------------------ success on a trained net


@pytest.mark.parametrize("name, attack", [
    ("pgd", lambda m: A.PGD(m, eps=0.3, steps=20)),
    ("bim", lambda m: A.BIM(m, eps=0.3, steps=20)),
    ("pgd-l2", lambda m: A.PGDL2(m, eps=6.0, steps=20)),
    ("iterative", lambda m: A.IterativeTargeted(m, confidence=0.99, steps=200)),
    ("deepfool", lambda m: A.DeepFool(m)),
    ("cw", lambda m: A.CarliniWagnerL2(m, steps=60, binary_search_steps=3)),
])
def test_targeted_attacks_reach_the_target(trained, correct_images, name, attack):
    x, y = correct_images
    count = 20 if name == "cw" else len(x)
    x, y = x[:count], y[:count]
    target = (y + 1 + np.arange(count) % 9) % 10
    x_adv = attack(trained)(x, target=target)
    p = softmax(A.predict_pixels(trained, x_adv).astype(np.float64), axis=1)
    reached = p.argmax(axis=1) == target
    assert reached.mean() >= 0.95, f"{name} reached the target on {reached.mean():.0%} of the images"
    if name == "iterative":
        assert np.mean(p[np.arange(count), target] >= 0.99) >= 0.95


def test_deepfool_and_cw_need_smaller_perturbations_than_fgsm(trained, correct_images):
    x, y = correct_images
    x, y = x[:20], y[:20]
    fgsm = A.FGSM(trained, eps=0.25)(x, y)
    fooled = A.predict_pixels(trained, fgsm).argmax(axis=1) != y
    assert fooled.sum() >= 5
    l2 = {}
    for name, attack in (("fgsm", None), ("deepfool", A.DeepFool(trained)),
                         ("cw", A.CarliniWagnerL2(trained, steps=40, binary_search_steps=3))):
        x_adv = fgsm if attack is None else attack(x, y)
        if attack is not None:
            assert np.mean(A.predict_pixels(trained, x_adv).argmax(axis=1) != y) >= 0.9
        l2[name] = np.sqrt(np.square(x_adv - x).reshape(len(x), -1).sum(axis=1))[fooled]
    assert np.all(l2["deepfool"] < l2["fgsm"])
    assert np.all(l2["cw"] < l2["fgsm"])


# ------------------------------------------------------------------ torchattacks on the same weights


def torch_twin(torch):
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(16 * 7 * 7, 10))

        def forward(self, images):
            return self.net((images - MEAN) / STD)

    return Twin().double().eval()


@pytest.fixture
def torchattacks(torch):
    return pytest.importorskip(
        "torchattacks", reason="torchattacks is the oracle of this test; 'pip install torchattacks' pulls "
                               "another torch, 'pip install --no-deps torchattacks' keeps the installed one")


@pytest.mark.torch
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_and_pgd_match_torchattacks(trained, correct_images, torch, torchattacks, copy_to_torch,
                                         method, targeted):
    x, y = correct_images
    model = trained.astype(np.float64)
    model.meta["normalization"] = dict(NORMALIZATION)
    model.eval()
    twin = torch_twin(torch)
    copy_to_torch(model, twin)
    x = x.astype(np.float64)
    labels = (y + 2) % 10 if targeted else y
    if method == "fgsm":
        ours = A.FGSM(model, eps=0.1)
        theirs = torchattacks.FGSM(twin, eps=0.1)
    else:
        ours = A.PGD(model, eps=0.1, alpha=0.02, steps=5, random_start=False)
        theirs = torchattacks.PGD(twin, eps=0.1, alpha=0.02, steps=5, random_start=False)
    if targeted:
        theirs.set_mode_targeted_by_label(quiet=True)
        x_ours = ours(x, target=labels)
    else:
        x_ours = ours(x, labels)
    x_theirs = theirs(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))).numpy()
    # the signs of gradients that are zero up to rounding may differ
    differ = np.abs(x_ours - x_theirs) > 1e-9
    assert differ.mean() < 1e-3, f"{differ.sum()} of {differ.size} pixels differ"


# ------------------------------------------------------------------ bad input


def test_bad_input_is_refused_with_the_value(trained, correct_images):
    x, y = correct_images
    with pytest.raises(ValueError, match="-0.1"):
        A.FGSM(trained, eps=-0.1)
    with pytest.raises(ValueError, match="nan"):
        A.PGD(trained, eps=float("nan"))
    with pytest.raises(ValueError, match="target 10"):
        A.PGD(trained, eps=0.1)(x[:2], target=10)
    with pytest.raises(ValueError, match="target -1"):
        A.DeepFool(trained)(x[:2], target=[1, -1])
    with pytest.raises(ValueError, match="label 12"):
        A.FGSM(trained, eps=0.1)(x[:2], [1, 12])
    outside = x[:2].copy()
    outside[1, 0, 3, 4] = 1.5
    with pytest.raises(ValueError, match=r"1\.5 at index \(1, 0, 3, 4\)"):
        A.FGSM(trained, eps=0.1)(outside, y[:2])
    with pytest.raises(ValueError, match=r"-0\.42"):
        A.CarliniWagnerL2(trained)((x[:2] - MEAN) / STD, y[:2])
    with pytest.raises(TypeError, match="uint8"):
        A.FGSM(trained, eps=0.1)((x[:2] * 255).astype(np.uint8), y[:2])
    with pytest.raises(ValueError, match="confidence"):
        A.IterativeTargeted(trained, confidence=1.0)
    with pytest.raises(ValueError, match="steps"):
        A.BIM(trained, steps=0)
    with pytest.raises(ValueError, match="unknown attack 'fsgm'"):
        A.make_attack("fsgm", trained)


# ------------------------------------------------------------------ measurement


def test_robustness_curve(trained, correct_images):
    x, y = correct_images
    x, y = x[:16], y[:16]
    y = y.copy()
    y[0] = (y[0] + 1) % 10  # one wrong label: clean accuracy 15/16
    result = fa.robustness_curve(trained, x, y, ["fgsm", "pgd", "deepfool"], [0, 0.1, 0.3],
                                 l2_eps_list=[0, 1, 2, 10], attack_options={"pgd": {"steps": 5}})
    json.dumps(result)
    assert result["clean_accuracy"] == pytest.approx(15 / 16)
    for name in ("fgsm", "pgd"):
        curve = result["curves"][name]
        assert curve["norm"] == "linf" and curve["eps"] == [0, 0.1, 0.3]
        assert curve["accuracy"][0] == result["clean_accuracy"]
        assert curve["mean_linf"][-1] is None or curve["mean_linf"][-1] <= 0.3 + 1e-6
    deepfool = result["curves"]["deepfool"]
    assert deepfool["norm"] == "l2" and deepfool["eps"] == [0, 1, 2, 10]
    assert all(a >= b for a, b in zip(deepfool["accuracy"], deepfool["accuracy"][1:]))
    assert deepfool["accuracy"][-1] == 0
    assert result["curves"]["pgd"]["accuracy"][-1] <= result["curves"]["fgsm"]["accuracy"][-1]
    figure = fa.plot_robustness({"small": result, "again": result})
    assert len(figure.axes) == 2


def test_attack_report_and_transfer(trained, correct_images):
    x, y = correct_images
    x_adv = A.PGD(trained, eps=0.3, steps=10)(x, y)
    report = fa.attack_report(trained, x, x_adv, y)
    assert report["clean_accuracy"] == 1.0
    fooled = A.predict_pixels(trained, x_adv).argmax(axis=1) != y
    assert report["success_rate"] == pytest.approx(fooled.mean())
    assert report["mean_linf"] <= 0.3 + 1e-6
    with pytest.raises(ValueError, match="label 10"):
        fa.attack_report(trained, x[:2], x_adv[:2], [3, 10])
    same = fa.transfer(A.PGD(trained, eps=0.3, steps=10), trained, x, y)
    assert same["transfer_rate"] == 1.0 or same["transferable"] == 0
    untrained = digit_net(seed=9)
    other = fa.transfer(A.PGD(trained, eps=0.3, steps=10), untrained, x, y)
    assert 0 <= other["transfer_rate"] <= 1 and other["source"]["success_rate"] == report["success_rate"]


# ------------------------------------------------------------------ defenses


def test_adversarial_training_hook_replaces_part_of_each_batch(digits):
    from fastconv import optim
    from fastconv.train import Trainer

    x, y, _, _ = digits
    raw = (x[:96] * 255).round().astype(np.uint8)
    seen = []

    class Recorder(fa.AdversarialTraining):
        def __call__(self, model, inputs, labels, rng):
            mixed = super().__call__(model, inputs, labels, rng)
            seen.append((inputs.copy(), mixed))
            return mixed

    from fastconv.data import Normalize

    model = digit_net(seed=1)
    hook = Recorder("pgd", eps=0.2, fraction=0.5, steps=2)
    trainer = Trainer(model, optim.Adam(model, lr=1e-3), batch_size=32, normalize=Normalize([MEAN], [STD]),
                      log=None, progress=False, adversarial=hook)
    trainer.fit(raw, y[:96], epochs=1)
    assert len(seen) == 3
    for inputs, mixed in seen:
        change = np.abs(mixed - inputs) * STD  # in pixel units
        assert change[:16].max() <= 0.2 + 1e-5 and change[:16].max() > 0.1
        np.testing.assert_array_equal(mixed[16:], inputs[16:])
    assert trainer.state()["settings"]["adversarial"]["method"] == "pgd"


def test_distillation_masks_the_gradient_but_not_the_logits(trained, digits, correct_images):
    x, y, _, _ = digits
    temperature = 100
    # a network trained at temperature T computes T times the logits of one
    # trained at 1: the trained net with its last layer scaled stands in for the teacher
    teacher = trained.astype(np.float32)
    teacher.meta["normalization"] = dict(NORMALIZATION)
    for value in teacher.layer("fc1").params.values():
        value *= temperature
    _, student = fa.defensive_distillation(lambda: digit_net(seed=3), x[:1500], y[:1500], teacher=teacher,
                                           temperature=temperature, epochs=1, batch_size=32, lr=1e-2)
    x_test, y_test = correct_images
    right = A.predict_pixels(student, x_test).argmax(axis=1) == y_test
    assert right.mean() > 0.8
    x_test, y_test = x_test[right][:10], y_test[right][:10]
    fgsm = A.FGSM(student, eps=0.2)(x_test, y_test)
    # the softmax is saturated: the cross-entropy has no gradient for most images
    unchanged = np.all(fgsm == x_test, axis=(1, 2, 3))
    assert unchanged.mean() >= 0.5
    cw = A.CarliniWagnerL2(student, steps=60, binary_search_steps=3)(x_test, y_test)
    assert np.mean(A.predict_pixels(student, cw).argmax(axis=1) != y_test) >= 0.9


def test_jacobian_augmentation_and_substitute_bookkeeping(trained, digits):
    _, _, x_test, _ = digits
    seed_images = x_test[100:130]
    substitute = digit_net(seed=6).eval()
    labels = np.arange(30) % 10
    augmented = fa.jacobian_augmentation(substitute, seed_images, labels, step=0.1)
    logits = substitute.forward(((seed_images - MEAN) / STD).astype(np.float32))
    grad = substitute.backward(np.eye(10, dtype=np.float32)[labels]) / np.float32(STD)
    np.testing.assert_array_equal(augmented, np.clip(seed_images + 0.1 * np.sign(grad), 0, 1))
    assert logits.shape == (30, 10)
    asked = []

    def victim(images):
        asked.append(len(images))
        return A.predict_pixels(trained, images).argmax(axis=1)

    model, info = fa.train_substitute(victim, seed_images, lambda: digit_net(seed=7), rounds=3, epochs=2)
    assert info["set_sizes"] == [30, 60, 120]
    assert info["queries"] == sum(asked) == 120
    assert len(info["agreement"]) == 3 and all(0 <= a <= 1 for a in info["agreement"])
    assert isinstance(model, Sequential)
    # agreement measured on held-out images: the victim's answers there are not queries
    model, info = fa.train_substitute(victim, seed_images[:10], lambda: digit_net(seed=7), rounds=1, epochs=1,
                                      x_check=seed_images[10:30])
    expected = np.mean(A.predict_pixels(model, seed_images[10:30]).argmax(axis=1) == victim(seed_images[10:30]))
    assert info["queries"] == 10 and info["agreement"] == [expected]


# ------------------------------------------------------------------ the linear picture


def test_linear_templates_and_the_template_flip(digits):
    x, y, x_test, y_test = digits
    model = fa.train_linear(x[:3000], y[:3000], epochs=2)
    t = fa.templates(model)
    assert t.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(t.reshape(10, -1), model.layer("linear").params["weight"], rtol=1e-6)
    # on a grey image nothing is clipped: each class score moves by exactly s * (w_k . w_t)
    grey = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)
    moved = fa.add_template(model, grey, target=4, eps=0.05)
    change = A.predict_pixels(model, moved)[0].astype(np.float64) - A.predict_pixels(model, grey)[0]
    scale = 0.05 / np.abs(t[4]).max()
    np.testing.assert_allclose(change, scale * t.reshape(10, -1) @ t[4].reshape(-1), rtol=1e-3, atol=1e-4)
    images, labels = x_test[:30], y_test[:30]
    target = (labels + 1) % 10
    needed, flipped = fa.template_flip(model, images, target, [0.05, 0.1, 0.2, 0.4, 0.8])
    assert np.mean(~np.isnan(needed)) >= 0.9
    hit = ~np.isnan(needed)
    assert np.all(A.predict_pixels(model, flipped[hit]).argmax(axis=1) == target[hit])
    figure = fa.plot_templates(t, classes=[str(k) for k in range(10)])
    assert len(figure.axes) >= 10


# ------------------------------------------------------------------ figures and command line


def test_plot_adversarial_titles_both_confidences(trained, correct_images):
    x, y = correct_images
    x_adv = A.IterativeTargeted(trained)(x[:2], target=5)
    figure = fa.plot_adversarial(trained, x[:2], x_adv, y=y[:2], target=5)
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 6
    assert titles[0].startswith(f"label {y[0]}\noriginal: {y[0]} (")
    assert "perturbation x" in titles[1]
    assert titles[2].startswith("target 5: ") and "adversarial: 5 (" in titles[2]


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model = trained.astype(np.float32)
    model.meta.update({"dataset": "mnist-sample", "classes": [str(k) for k in range(10)],
                       "input_shape": [1, 28, 28], "normalization": dict(NORMALIZATION)})
    model.save(folder / "model.npz")
    return folder


def test_attack_command_writes_the_figure_and_the_numbers(run_dir, tmp_path, capsys):
    from fastconv.cli import main

    out = tmp_path / "attack.png"
    status = main(["attack", str(run_dir), "--method", "iterative", "--target", "3", "--index", "0", "1",
                   "--out", str(out)])
    assert status == 0 and out.is_file()
    result = json.loads(out.with_suffix(".json").read_text())
    assert [row["target"] for row in result["images"]] == [3, 3]
    assert all(row["success"] and row["target_confidence"] >= 0.99 for row in result["images"])
    status = main(["attack", str(run_dir), "--method", "pgd", "--eps", "0.1", "--target", "12", "--out", str(out)])
    assert status == 2
    assert "--target 12 is out of range" in capsys.readouterr().err
    assert main(["attack", str(run_dir), "--method", "fgsm", "--out", str(out)]) == 2
    assert "--eps is required for fgsm" in capsys.readouterr().err


def test_robustness_command_writes_the_figure_and_the_numbers(run_dir, tmp_path):
    from fastconv.cli import main

    out = tmp_path / "curves.png"
    status = main(["robustness", str(run_dir), "--methods", "fgsm", "deepfool", "--eps-list", "0", "0.2",
                   "--l2-eps-list", "0", "2", "--limit", "12", "--out", str(out)])
    assert status == 0 and out.is_file()
    result = json.loads(out.with_suffix(".json").read_text())
    run = result["runs"][run_dir.name]
    assert run["images"] == 12 and set(run["curves"]) == {"fgsm", "deepfool"}
    assert run["curves"]["deepfool"]["eps"] == [0, 2]


def test_train_command_adversarial_options(tmp_path, capsys):
    from fastconv.cli import main

    assert main(["train", "--dataset", "mnist-sample", "--adversarial", "pgd", "--out", str(tmp_path / "a")]) == 2
    assert "--adv-eps" in capsys.readouterr().err
    out = tmp_path / "run"
    status = main(["train", "--dataset", "mnist-sample", "--limit", "64", "--epochs", "1", "--threads", "1",
                   "--adversarial", "fgsm", "--adv-eps", "0.1", "--out", str(out)])
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert config["adversarial"] == "fgsm" and config["adv_eps"] == 0.1
    assert "adversarial training (fgsm, eps 0.1" in capsys.readouterr().out

    assert main(["train", "--dataset", "mnist-sample", "--adversarial", "fgsm", "--adv-eps", "0.1",
                 "--adv-steps", "3", "--out", str(tmp_path / "b")]) == 2
    assert "--adv-steps is for --adversarial pgd" in capsys.readouterr().err
    out = tmp_path / "pgd"
    status = main(["train", "--dataset", "mnist-sample", "--limit", "64", "--epochs", "1", "--threads", "1",
                   "--adversarial", "pgd", "--adv-eps", "0.1", "--adv-steps", "2", "--out", str(out)])
    assert status == 0
    assert json.loads((out / "config.json").read_text())["adv_steps"] == 2
    assert "adversarial training (pgd, eps 0.1, 2 steps" in capsys.readouterr().out
