"""AutoAttack's components, MI-FGSM and universal perturbations: the losses and
the boundary step against hand computations and a linear program, each
attack's defining property on a small trained CIFAR-shaped network, and
agreement with torchattacks on the same weights and images."""
import json

import numpy as np
import pytest

import fastconv.analysis as fa
from fastconv.analysis.attacks import autoattack as AA
from fastconv.analysis.attacks import methods as A
from fastconv.analysis.attacks import universal as U
from fastconv.models import resnets
from fastconv.nn import layers as L
from fastconv.nn.model import Sequential

MEAN, STD = 0.5, 0.25
NORMALIZATION = {"mean": [MEAN] * 3, "std": [STD] * 3, "scale": 255.0}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def cifar_shaped(n, seed, signal=0.12, balanced=False):
    """n 3x32x32 images of 10 classes: a class's coarse colour pattern, faint
    (``signal`` of the range) under uniform noise, so that a small net learns
    it quickly but small perturbations can still flip many images."""
    patterns = np.kron(np.random.default_rng(123).uniform(0, 1, (10, 3, 4, 4)), np.ones((1, 1, 8, 8)))
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10 if balanced else rng.integers(0, 10, n)
    x = signal * patterns[y] + (1 - signal) * rng.uniform(0, 1, (n, 3, 32, 32))
    return x.astype(np.float32), y


def small_net(seed=0, dtype=np.float32):
    """conv 8 - ReLU - pool - conv 16 - ReLU - pool - linear 10, for 3x32x32 images."""
    rng = np.random.default_rng(seed)
    model = Sequential([
        L.Conv2d(3, 8, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(8, 16, 3, padding=1, seed=rng, dtype=dtype), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(16 * 8 * 8, 10, seed=rng, dtype=dtype),
    ])
    model.meta["normalization"] = dict(NORMALIZATION)
    return model


@pytest.fixture(scope="module")
def trained(fit_briefly):
    x, y = cifar_shaped(2000, seed=1)
    model = fit_briefly(small_net(), (x - MEAN) / STD, y, steps=300, lr=3e-3)
    x_test, y_test = cifar_shaped(300, seed=2)
    accuracy = np.mean(A.predict_pixels(model, x_test).argmax(axis=1) == y_test)
    assert accuracy > 0.9, f"the small net did not learn (accuracy {accuracy})"
    return model


@pytest.fixture(scope="module")
def held_out():
    return cifar_shaped(300, seed=2)


def as_float64(model):
    twin = model.astype(np.float64)
    twin.meta["normalization"] = dict(NORMALIZATION)
    return twin.eval()


def accuracy(model, x, y):
    return float(np.mean(A.predict_pixels(model, x).argmax(axis=1) == y))


# ------------------------------------------------------------------ losses and the boundary step


def test_dlr_loss_matches_a_hand_computation_and_its_gradient_finite_differences():
    logits = np.array([[4.0, 1.0, 3.0, -2.0], [0.5, 2.5, 2.0, 1.0]])
    y = np.array([0, 0])
    value, grad = AA.dlr_loss(logits, y)
    # image 0: z_y = 4, best other 3, sorted 4, 3, 1: -(4 - 3) / (4 - 1)
    # image 1: z_y = 0.5, best other 2.5, sorted 2.5, 2, 1: -(0.5 - 2.5) / (2.5 - 1)
    np.testing.assert_allclose(value, [-1 / 3, 2 / 1.5], rtol=1e-10)
    t_value, t_grad = AA.targeted_dlr_loss(logits, y, np.array([3, 2]))
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    np.testing.assert_allclose(t_value, [-(4 + 2) / (4 - (1 - 2) / 2), -(0.5 - 2) / (2.5 - (1 + 0.5) / 2)],
                               rtol=1e-10)
    h = 1e-6
    for function, analytic in ((lambda z: AA.dlr_loss(z, y)[0], grad),
                               (lambda z: AA.targeted_dlr_loss(z, y, np.array([3, 2]))[0], t_grad)):
        numeric = np.zeros_like(logits)
        for index in np.ndindex(logits.shape):
            up, down = logits.copy(), logits.copy()
            up[index] += h
            down[index] -= h
            numeric[index] = (function(up)[index[0]] - function(down)[index[0]]) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, atol=1e-7)
    # the ratio ignores a shift and a scale of the logits
    np.testing.assert_allclose(AA.dlr_loss(7 * logits + 3, y)[0], value, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 3 classes"):
        AA.dlr_loss(logits[:, :2], y)


def test_linf_boundary_step_is_the_linear_programs_solution():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    for trial in range(20):
        d = 12
        point = rng.uniform(0, 1, (1, d))
        w = rng.standard_normal((1, d))
        value = rng.uniform(-2, 2, 1) * (0.2 if trial % 2 else 1.0)
        delta = AA.linf_boundary_step(point, w, value)[0]
        # min t subject to <w, delta> = -value, -t <= delta <= t, 0 <= point + delta <= 1
        cost = np.r_[np.zeros(d), 1.0]
        eye = np.eye(d)
        bounds_ub = np.block([[eye, -np.ones((d, 1))], [-eye, -np.ones((d, 1))]])
        result = scipy_optimize.linprog(cost, A_ub=bounds_ub, b_ub=np.zeros(2 * d),
                                        A_eq=np.r_[w[0], 0.0][None], b_eq=-value,
                                        bounds=[(-p, 1 - p) for p in point[0]] + [(0, None)])
        if result.status == 2:  # the box cannot reach the hyperplane: the step goes to the box's corner
            assert np.all((point[0] + delta <= 1 + 1e-12) & (point[0] + delta >= -1e-12))
            assert abs(w[0] @ delta) <= abs(value[0])
            continue
        assert result.status == 0
        assert np.abs(delta).max() == pytest.approx(result.x[-1], abs=1e-9)
        assert w[0] @ delta == pytest.approx(-value[0], abs=1e-9)
        assert np.all((point[0] + delta <= 1 + 1e-12) & (point[0] + delta >= -1e-12))


def test_apgd_checkpoints_follow_the_papers_schedule():
    # p: 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 of the iterations
    assert AA.apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert AA.apgd_checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert AA.square_fraction(0, 5000, 0.8) == 0.8 and AA.square_fraction(4999, 5000, 0.8) == 0.8 / 512


# ------------------------------------------------------------------ each attack's defining property


def test_apgd_breaks_at_least_what_pgd_breaks_and_stays_in_the_ball(trained, held_out):
    x, y = held_out[0][:60], held_out[1][:60]
    eps = 2 / 255
    pgd = A.PGD(trained, eps=eps, steps=20)(x, y)
    results = {"pgd": pgd}
    for attack in (AA.APGD(trained, eps=eps, steps=20), AA.APGDDLR(trained, eps=eps, steps=20),
                   AA.APGDT(trained, eps=eps, steps=20, targets=3)):
        results[attack.name] = attack(x, y)
    for name, x_adv in results.items():
        assert np.abs(x_adv.astype(np.float64) - x).max() <= eps + 1e-6, name
        assert x_adv.min() >= 0 and x_adv.max() <= 1 and x_adv.dtype == x.dtype
    left = {name: accuracy(trained, x_adv, y) for name, x_adv in results.items()}
    assert accuracy(trained, x, y) > left["pgd"] > 0, "eps should break some images and not all"
    for name in ("apgd-ce", "apgd-dlr", "apgd-t"):
        assert left[name] <= left["pgd"], left


def test_targeted_apgd_and_fab_reach_the_target(trained, held_out):
    x, y = held_out[0][:20], held_out[1][:20]
    target = (y + 1) % 10
    for attack in (AA.APGDT(trained, eps=16 / 255, steps=30), AA.FAB(trained, eps=16 / 255, steps=30)):
        reached = A.predict_pixels(trained, attack(x, target=target)).argmax(axis=1) == target
        assert reached.mean() >= 0.8, (attack.name, reached.mean())


def test_fab_finds_smaller_perturbations_than_its_budget_and_keeps_the_failures_unchanged(trained, held_out):
    x, y = held_out[0][:40], held_out[1][:40]
    eps = 3 / 255
    x_adv = AA.FAB(trained, eps=eps, steps=20, targets=3)(x, y)
    size = np.abs(x_adv.astype(np.float64) - x).reshape(len(x), -1).max(axis=1)
    broken = A.predict_pixels(trained, x_adv).argmax(axis=1) != y
    assert broken.any() and not broken.all()
    assert np.all(size[broken] <= eps + 1e-6)
    assert np.all(size[~broken] == 0)
    # the minimal-distortion attack breaks images with less than PGD's full eps
    assert np.median(size[broken]) < eps
    untargeted = AA.FAB(trained, eps=eps, steps=10, targets=None)
    assert untargeted.name == "fab"
    assert accuracy(trained, untargeted(x[:10], y[:10]), y[:10]) < accuracy(trained, x[:10], y[:10])


def test_square_uses_the_scores_only(trained, held_out, monkeypatch):
    x, y = held_out[0][:30], held_out[1][:30]

    def no_gradient(*args, **kwargs):
        raise AssertionError("the Square attack asked for a gradient")

    monkeypatch.setattr(trained, "backward", no_gradient)
    eps = 4 / 255
    x_adv = AA.Square(trained, eps=eps, queries=300)(x, y)
    assert np.abs(x_adv.astype(np.float64) - x).max() <= eps + 1e-6
    assert accuracy(trained, x_adv, y) < accuracy(trained, x, y) - 0.2


# ------------------------------------------------------------------ the sequence, against torchattacks


def torch_twin(torch):
    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(16 * 8 * 8, 10))

        def forward(self, images):
            return self.net((images - MEAN) / STD)

    return Twin().eval()


@pytest.fixture
def torchattacks(torch):
    return pytest.importorskip(
        "torchattacks", reason="torchattacks is the oracle of this test; 'pip install --no-deps torchattacks' "
                               "keeps the installed torch")


def their_robust_accuracy(torch, attack, twin, x, y):
    x_adv = attack(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    with torch.no_grad():
        return float((twin(x_adv).argmax(dim=1).numpy() == y).mean())


def compare_with_torchattacks(trained, torch, torchattacks, copy_to_torch, x, y, eps, steps, queries):
    """(ours, theirs, our report): robust accuracies of the standard sequence, both
    with ``steps`` iterations for APGD, APGD-T and FAB-T and ``queries`` of Square."""
    twin = torch_twin(torch)
    copy_to_torch(trained, twin)
    suite = fa.AutoAttack(trained, eps=eps, steps=steps, queries=queries)
    _, report = suite.evaluate(x, y)
    common = {"eps": eps, "norm": "Linf", "seed": 0, "n_restarts": 1}
    theirs = torchattacks.MultiAttack([
        torchattacks.APGD(twin, loss="ce", steps=steps, **common),
        torchattacks.APGDT(twin, steps=steps, n_classes=10, **common),
        torchattacks.FAB(twin, steps=steps, multi_targeted=True, n_classes=10, **common),
        torchattacks.Square(twin, n_queries=queries, **common),
    ])
    return report["robust_accuracy"], their_robust_accuracy(torch, theirs, twin, x, y), report


@pytest.mark.torch
def test_autoattack_matches_torchattacks_on_the_same_weights(trained, held_out, torch, torchattacks, copy_to_torch):
    x, y = held_out[0][:100], held_out[1][:100]
    # torchattacks' AutoAttack budget for the iterations; a fifth of its Square queries, to stay quick
    ours, theirs, report = compare_with_torchattacks(trained, torch, torchattacks, copy_to_torch, x, y,
                                                     eps=4 / 255, steps=10, queries=1000)
    # an eps at which the comparison means something: some images hold, some break
    assert 0.1 < ours < report["clean_accuracy"] - 0.1, report
    assert abs(ours - theirs) <= 0.01 + 1e-9, (ours, theirs, report)
    steps = [step["robust_accuracy"] for step in report["sequence"]]
    assert [s["attack"] for s in report["sequence"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert steps == sorted(steps, reverse=True) and steps[-1] == ours


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_autoattack_matches_torchattacks_on_200_images(trained, torch, torchattacks, copy_to_torch, eps):
    x, y = cifar_shaped(200, seed=3)
    # The paper's 100 iterations; a fifth of Square's 5,000 queries, which on the
    # images that survive the gradient attacks take most of the time. The full
    # budget on real CIFAR-10 images: benchmarks/autoattack_agreement.py.
    ours, theirs, report = compare_with_torchattacks(trained, torch, torchattacks, copy_to_torch, x, y, eps,
                                                     steps=100, queries=1000)
    assert abs(ours - theirs) <= 0.01 + 1e-9, (ours, theirs, report)
    twin = torch_twin(torch)
    copy_to_torch(trained, twin)
    # torchattacks' own AutoAttack runs its components with 10 iterations: ours with the paper's 100 is as strong
    as_shipped = their_robust_accuracy(torch, torchattacks.AutoAttack(twin, eps=eps, seed=0), twin, x, y)
    assert ours <= as_shipped + 0.01, (ours, as_shipped)


@pytest.mark.torch
@pytest.mark.parametrize("targeted", [False, True])
def test_mi_fgsm_matches_torchattacks(trained, held_out, torch, torchattacks, copy_to_torch, targeted):
    x, y = held_out[0][:20].astype(np.float64), held_out[1][:20]
    model = as_float64(trained)
    twin = torch_twin(torch).double()
    copy_to_torch(model, twin)
    labels = (y + 3) % 10 if targeted else y
    ours = A.MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=6, decay=1.0)
    theirs = torchattacks.MIFGSM(twin, eps=8 / 255, alpha=2 / 255, steps=6, decay=1.0)
    if targeted:
        theirs.set_mode_targeted_by_label(quiet=True)
        x_ours = ours(x, target=labels)
    else:
        x_ours = ours(x, labels)
    x_theirs = theirs(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))).numpy()
    # the signs of gradients that are zero up to rounding may differ
    differ = np.abs(x_ours - x_theirs) > 1e-9
    assert differ.mean() < 1e-3, f"{differ.sum()} of {differ.size} pixels differ"


# ------------------------------------------------------------------ universal perturbations


def test_one_universal_perturbation_fools_held_out_images(trained, held_out):
    x_fit, y_fit = cifar_shaped(400, seed=5)
    x, y = held_out
    eps = 6 / 255
    delta = U.universal_perturbation(trained, x_fit, y_fit, eps=eps, epochs=3)
    assert delta.shape == x.shape[1:] and np.abs(delta).max() <= eps + 1e-7
    rate = U.fooling_rate(trained, x, delta)
    noise = np.random.default_rng(0).choice([-eps, eps], size=delta.shape).astype(np.float32)
    assert rate >= 0.25, rate
    assert rate > U.fooling_rate(trained, x, noise) + 0.2
    attack = fa.UniversalPerturbation(trained, eps=eps, epochs=1)
    x_adv = attack(x[:50], y[:50])
    np.testing.assert_allclose(x_adv, np.clip(x[:50] + attack.delta, 0, 1))
    with pytest.raises(ValueError, match="untargeted"):
        attack(x[:2], target=3)
    with pytest.raises(ValueError, match="shape of one image"):
        U.fooling_rate(trained, x, delta[:2])


# ------------------------------------------------------------------ graphs, bad input, the command line


def test_the_attacks_run_on_a_graph_model():
    model = resnets.resnet20(seed=0).eval()
    model.meta["normalization"] = dict(NORMALIZATION)
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    eps = 4 / 255
    for attack in (AA.APGD(model, eps=eps, steps=2), AA.APGDT(model, eps=eps, steps=2, targets=1),
                   AA.FAB(model, eps=eps, steps=2, targets=1), AA.Square(model, eps=eps, queries=3),
                   A.MIFGSM(model, eps=eps, steps=2)):
        x_adv = attack(x)
        assert x_adv.shape == x.shape and np.abs(x_adv.astype(np.float64) - x).max() <= eps + 1e-6, attack.name
    _, report = fa.AutoAttack(model, eps=eps, steps=2, queries=3, targets=1).evaluate(x, [0, 1])
    assert len(report["sequence"]) == 4


def test_bad_input_is_refused_with_the_value(trained):
    with pytest.raises(ValueError, match="'hinge'"):
        AA.APGD(trained, loss="hinge")
    with pytest.raises(ValueError, match="-0.1"):
        AA.Square(trained, eps=-0.1)
    with pytest.raises(ValueError, match="1.5"):
        AA.Square(trained, p_init=1.5)
    with pytest.raises(ValueError, match="2"):
        AA.FAB(trained, beta=2)
    with pytest.raises(ValueError, match="0"):
        AA.APGDT(trained, targets=0)
    with pytest.raises(ValueError, match="untargeted"):
        fa.AutoAttack(trained, steps=1, queries=1)(np.zeros((1, 3, 32, 32), np.float32), target=2)


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("run")
    x, y = cifar_shaped(40, seed=7, balanced=True)
    for i, (image, label) in enumerate(zip((x * 255).round().astype(np.uint8), y)):
        (folder / "data" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / "data" / str(label) / f"{i:02d}.png")
    model = trained.astype(np.float32)
    model.meta.update({"dataset": f"folder:{folder / 'data'}", "classes": [str(k) for k in range(10)],
                       "input_shape": [3, 32, 32], "normalization": dict(NORMALIZATION)})
    model.save(folder / "model.npz")
    return folder


def test_attack_and_robustness_commands_run_the_new_attacks(run_dir, tmp_path, capsys):
    from fastconv.cli import main

    out = tmp_path / "apgd.png"
    for method in ("apgd-ce", "mi-fgsm", "square", "universal"):
        status = main(["attack", str(run_dir), "--method", method, "--eps", "0.03", "--index", "0", "1",
                       "--split", "train", "--out", str(out)])
        assert status == 0, method
        result = json.loads(out.with_suffix(".json").read_text())
        assert result["method"] == method and all(row["linf"] <= 0.03 + 1e-6 for row in result["images"])
    assert main(["attack", str(run_dir), "--method", "pgd", "--eps", "0.03", "--queries", "5",
                 "--out", str(out)]) == 2
    assert "--queries is not an option of pgd" in capsys.readouterr().err
    out = tmp_path / "aa.png"
    status = main(["robustness", str(run_dir), "--suite", "autoattack", "--eps", "0.01", "--steps", "3",
                   "--queries", "20", "--limit", "12", "--split", "train", "--individual", "--out", str(out)])
    assert status == 0 and out.is_file()
    run = json.loads(out.with_suffix(".json").read_text())["runs"][run_dir.name]
    assert run["images"] == 12 and [s["attack"] for s in run["sequence"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert set(run["individual"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}
    assert run["robust_accuracy"] <= min(v["robust_accuracy"] for v in run["individual"].values())
