"""How robust a network is, and two defenses.

Measurement
    :func:`evaluate_attack` (success rate, perturbation norms),
    :func:`robustness_curve` (accuracy against eps for several attacks),
    :func:`transfer` (adversarial examples of one model shown to another).
Defenses
    :class:`AdversarialTraining`, a ``fastconv.train.Trainer`` hook mixing
    FGSM or PGD examples into every batch; :func:`defensive_distillation`
    (a teacher and a student trained at temperature T on soft labels).
Black box
    :func:`train_substitute`: a substitute trained on the victim's answers
    to a small query set grown by Jacobian-based augmentation (Papernot et
    al. 2017), whose adversarial examples are then shown to the victim.

Images are [0, 1] pixels as for the attacks (:mod:`.attacks`); every
model's normalization (``model.meta``) is applied inside.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np

from fastconv import _checks
from fastconv.analysis import _common as C
from fastconv.analysis.attacks import methods as A
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from numpy.typing import ArrayLike

    import fastconv

__all__ = [
    "AdversarialTraining", "attack_report", "evaluate_attack", "robustness_curve", "transfer",
    "fit", "defensive_distillation", "train_substitute", "jacobian_augmentation",
]


# ------------------------------------------------------------------ measurement


def _norms(x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(n, -1)
    return np.sqrt(np.square(delta).sum(axis=1)), np.abs(delta).max(axis=1)


def _predicted(model: fastconv.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    return A.predict_pixels(model, x, batch_size).argmax(axis=1)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def attack_report(model: fastconv.Model, x: np.ndarray, x_adv: np.ndarray, y: ArrayLike,
                  target: ArrayLike | None = None, batch_size: int = 256) -> dict[str, Any]:
    """Numbers describing adversarial examples x_adv of the images x (labels y).

    ``clean_accuracy`` and ``adversarial_accuracy`` are over all images.
    ``success_rate`` is over the images the model gets right: the fraction
    whose adversarial version is misclassified (untargeted) or classified
    as ``target``. ``mean_l2`` and ``mean_linf`` average the perturbation
    norms of the successful examples (pixel units); ``median_l2`` likewise.
    """
    x = A.check_pixels(model, x)
    x_adv = A.check_pixels(model, x_adv, "x_adv")
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv has shape {x_adv.shape} but x has shape {x.shape}")
    n = x.shape[0]
    num_classes = A._num_classes(model, x.shape)
    y = A._class_array(y, n, num_classes, "label")
    clean = _predicted(model, x, batch_size)
    adversarial = _predicted(model, x_adv, batch_size)
    correct = clean == y
    if target is not None:
        target = A._class_array(target, n, num_classes, "target")
        success = adversarial == target
    else:
        success = adversarial != y
    won = correct & success
    l2, linf = _norms(x, x_adv)
    return {
        "images": int(n),
        "targeted": target is not None,
        "clean_accuracy": float(correct.mean()),
        "adversarial_accuracy": float((adversarial == y).mean()),
        "success_rate": float(won.sum() / max(correct.sum(), 1)),
        "mean_l2": _mean(l2[won]),
        "median_l2": float(np.median(l2[won])) if won.any() else None,
        "mean_linf": _mean(linf[won]),
    }


def evaluate_attack(model: fastconv.Model, attack: A.Attack, x: np.ndarray, y: ArrayLike,
                    target: ArrayLike | None = None, batch_size: int = 256) -> tuple[dict[str, Any], np.ndarray]:
    """Run ``attack`` (on ``model``) on x and return (report, x_adv); see :func:`attack_report`."""
    x_adv = attack(x, y if target is None else None, target=target)
    return attack_report(model, x, x_adv, y, target, batch_size), x_adv


def _label(item: str | A.Attack) -> str:
    if isinstance(item, str):
        return item
    return getattr(item, "name", type(item).__name__)


def _attack_items(model: fastconv.Model,
                  attacks_or_names: str | A.Attack | Sequence[str | A.Attack] | dict[str, str | A.Attack],
                  attack_options: Mapping[str, Mapping[str, Any]] | None) -> list[tuple[str, A.Attack]]:
    """(label, attack) pairs; names become attacks built on ``model``."""
    if isinstance(attacks_or_names, (str, A.Attack)):
        attacks_or_names = [attacks_or_names]
    if isinstance(attacks_or_names, dict):
        pairs = list(attacks_or_names.items())
    else:
        pairs = [(_label(item), item) for item in attacks_or_names]
    if not pairs:
        raise ValueError("no attack given: name at least one of " + ", ".join(A.ATTACKS))
    options = attack_options or {}
    unknown = sorted(set(options) - set(A.ATTACKS))
    if unknown:
        raise ValueError(f"attack_options names unknown attacks {unknown}; the attacks are {', '.join(A.ATTACKS)}")
    items = []
    for label, item in pairs:
        if isinstance(item, str):
            item = A.make_attack(item, model, **options.get(item, {}))
        elif not isinstance(item, A.Attack):
            raise TypeError(f"an attack must be a name ({', '.join(A.ATTACKS)}) or an Attack, got {item!r}")
        elif item.model is not model:
            raise ValueError(f"the attack {label!r} was built on another model than the one measured")
        items.append((label, item))
    labels = [label for label, _ in items]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two attacks share a label in {labels}; pass a dict {{label: attack}}")
    return items


@overload
def _eps_values(values: None, name: str) -> None:
    ...


@overload
def _eps_values(values: ArrayLike, name: str) -> list[float]:
    ...


def _eps_values(values: ArrayLike | None, name: str) -> list[float] | None:
    if values is None:
        return None
    values = [A._eps(v, f"{name} entry") for v in np.atleast_1d(values).tolist()]
    if not values:
        raise ValueError(f"{name} is empty")
    return sorted(values)


def robustness_curve(model: fastconv.Model, x: np.ndarray, y: ArrayLike,
                     attacks_or_names: str | A.Attack | Sequence[str | A.Attack] | dict[str, str | A.Attack],
                     eps_list: ArrayLike, l2_eps_list: ArrayLike | None = None,
                     attack_options: Mapping[str, Mapping[str, Any]] | None = None, batch_size: int = 256,
                     progress: Callable[[str], object] | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` on adversarial versions of (x, y) against the
    perturbation size eps, for each attack.

    attacks_or_names
        Attack names (keys of ``attacks.ATTACKS``), Attack objects built on
        ``model``, or a dict {label: name or Attack}. ``attack_options``
        ({name: {option: value}}) passes constructor options to named ones.
    eps_list, l2_eps_list
        The sizes to measure: ``eps_list`` for L-infinity attacks, and for
        L2 attacks too unless ``l2_eps_list`` is given (L2 sizes are much
        larger numbers: the norm of the whole perturbation).

    Attacks bounded by eps (FGSM, BIM, PGD, PGD-L2, the iterative attack)
    run once per eps. DeepFool and CW look for the smallest perturbation
    that succeeds, so they run once, and an image counts as broken at eps
    when its perturbation is successful and of norm <= eps.

    Returns {"images", "clean_accuracy", "curves": {label: {"attack",
    "norm", "minimal", "eps", "accuracy", "success_rate", "mean_l2",
    "mean_linf", "seconds"}}} (lists aligned with "eps"; success rates and
    norms as in :func:`attack_report`), ready for json and for
    :func:`~fastconv.analysis.plot_robustness`.
    """
    x = A.check_pixels(model, x)
    items = _attack_items(model, attacks_or_names, attack_options)
    linf_eps = _eps_values(eps_list, "eps_list")
    l2_eps = _eps_values(l2_eps_list, "l2_eps_list") or linf_eps
    n = x.shape[0]
    y = np.asarray(y)
    clean = _predicted(model, x, batch_size)
    num_classes = A._num_classes(model, x.shape)
    y = A._class_array(y, n, num_classes, "label")
    correct = clean == y
    report: dict[str, Any] = {"images": int(n), "clean_accuracy": float(correct.mean()), "curves": {}}
    for label, attack in items:
        started = time.perf_counter()
        eps_values = l2_eps if attack.norm == "l2" else linf_eps
        curve: dict[str, Any] = {"attack": attack.name, "norm": attack.norm, "minimal": attack.minimal,
                                 "eps": eps_values, "accuracy": [], "success_rate": [], "mean_l2": [], "mean_linf": []}
        if attack.minimal:
            x_adv = attack(x, y)
            broken = correct & (_predicted(model, x_adv, batch_size) != y)
            l2, linf = _norms(x, x_adv)
            size = l2 if attack.norm == "l2" else linf
            for eps in eps_values:
                within = broken & (size <= eps)
                _add_point(curve, correct, within, l2, linf)
        else:
            for eps in eps_values:
                if eps == 0:
                    within = np.zeros(n, dtype=bool)
                    l2 = linf = np.zeros(n)
                else:
                    x_adv = attack.with_eps(eps)(x, y)
                    within = correct & (_predicted(model, x_adv, batch_size) != y)
                    l2, linf = _norms(x, x_adv)
                _add_point(curve, correct, within, l2, linf)
                if progress:
                    progress(f"{label} eps {eps:g}: accuracy {curve['accuracy'][-1]:.4f}")
        curve["seconds"] = time.perf_counter() - started
        if progress and attack.minimal:
            progress(f"{label}: " + ", ".join(f"eps {e:g} {a:.4f}" for e, a in zip(eps_values, curve["accuracy"])))
        report["curves"][label] = curve
    return report


def _add_point(curve: dict[str, Any], correct: np.ndarray, broken: np.ndarray, l2: np.ndarray,
               linf: np.ndarray) -> None:
    curve["accuracy"].append(float((correct & ~broken).mean()))
    curve["success_rate"].append(float(broken.sum() / max(correct.sum(), 1)))
    curve["mean_l2"].append(_mean(l2[broken]))
    curve["mean_linf"].append(_mean(linf[broken]))


def transfer(attack: A.Attack, target_model: fastconv.Model, x: np.ndarray, y: ArrayLike,
             batch_size: int = 256) -> dict[str, Any]:
    """Show adversarial examples made by ``attack`` on its own model to ``target_model``.

    Returns the attack's report on its source model (:func:`attack_report`)
    under "source", the target's clean and adversarial accuracy, and
    ``transfer_rate``: among the images both models classify correctly and
    whose adversarial version fools the source, the fraction that fools the
    target too.
    """
    x = A.check_pixels(target_model, x)
    x_adv = attack(x, y)
    source = attack_report(attack.model, x, x_adv, y, batch_size=batch_size)
    y = np.asarray(y)
    source_clean = _predicted(attack.model, x, batch_size) == y
    source_fooled = _predicted(attack.model, x_adv, batch_size) != y
    target_clean = _predicted(target_model, x, batch_size) == y
    target_fooled = _predicted(target_model, x_adv, batch_size) != y
    eligible = source_clean & target_clean & source_fooled
    return {
        "images": int(len(y)),
        "source": source,
        "target_clean_accuracy": float(target_clean.mean()),
        "target_adversarial_accuracy": float((~target_fooled).mean()),
        "transferable": int(eligible.sum()),
        "transfer_rate": float((eligible & target_fooled).sum() / max(eligible.sum(), 1)),
    }


# ------------------------------------------------------------------ training on soft labels


def _soft_targets(targets: ArrayLike, n: int, num_classes: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim == 1:
        labels = A._class_array(targets, n, num_classes, "label")
        soft = np.zeros((n, num_classes))
        soft[np.arange(n), labels] = 1.0
        return soft
    if targets.shape != (n, num_classes):
        raise ValueError(f"targets must be N labels or an (N, {num_classes}) array of probabilities, "
                         f"got shape {targets.shape}")
    if np.any(targets < 0) or not np.allclose(targets.sum(axis=1), 1, atol=1e-4):
        raise ValueError("soft targets must be probabilities: non-negative rows that sum to 1")
    return targets.astype(np.float64)


def fit(model: fastconv.Model, x: np.ndarray, targets: ArrayLike, epochs: int = 1, batch_size: int = 64,
        lr: float = 1e-3, temperature: float = 1.0, weight_decay: float = 0.0,
        seed: np.random.Generator | int | None = 0,
        progress: Callable[[str], object] | None = None) -> fastconv.Model:
    """Train ``model`` with Adam on images x ([0, 1] pixels, through the model's
    normalization) against ``targets``: N labels, or (N, K) probabilities
    (soft labels).

    The loss is the cross-entropy between the targets and
    softmax(logits / temperature), so at temperature T > 1 the network
    learns logits T times larger than it would at T = 1: the training of
    defensive distillation. Returns the model in eval mode.
    """
    from fastconv import optim

    x = A.check_pixels(model, x)
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    temperature = A._number(temperature, "temperature", 0.0, strict=True)
    n = x.shape[0]
    pixels = A._PixelModel(model)
    num_classes = A._num_classes(model, x.shape)
    soft = _soft_targets(targets, n, num_classes)
    optimizer = optim.Adam(model, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for start, stop in C.batches(n, batch_size):
            idx = order[start:stop]
            logits = model.forward(pixels.inputs(x[idx]))
            p = softmax((logits / temperature).astype(np.float64), axis=1)
            total += float(-(soft[idx] * np.log(np.maximum(p, 1e-300))).sum())
            optimizer.zero_grad()
            model.backward(((p - soft[idx]) / (temperature * len(idx))).astype(logits.dtype), input_grad=False)
            optimizer.step()
        if progress:
            progress(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")
    return model.eval()


def _copy_normalization(source: fastconv.Model, model: fastconv.Model) -> fastconv.Model:
    if "normalization" in (source.meta or {}):
        model.meta["normalization"] = dict(source.meta["normalization"])
    return model


def defensive_distillation(make_model: Callable[[], fastconv.Model], x: np.ndarray, y: ArrayLike,
                           temperature: float = 100.0, epochs: int = 2, batch_size: int = 128, lr: float = 1e-3,
                           teacher: fastconv.Model | None = None, seed: int = 0,
                           progress: Callable[[str], object] | None = None
                           ) -> tuple[fastconv.Model, fastconv.Model]:
    """Defensive distillation (Papernot et al. 2016): a teacher trained at
    temperature T on the labels y, then a student of the same kind trained
    at T on the teacher's soft labels softmax(z / T); both then answer at
    T = 1, where their logits are about T times larger than usual and their
    softmax saturates.

    That hides the gradient of the cross-entropy (FGSM, PGD see a flat
    loss) without moving the decision boundary: an attack on the logits,
    such as Carlini-Wagner, goes through (Carlini & Wagner 2016).

    ``make_model()`` returns a fresh untrained network (with any
    normalization in its meta). Pass a ``teacher`` trained at T to skip
    its training. Returns (teacher, student).
    """
    if teacher is None:
        teacher = make_model()
        if progress:
            progress(f"teacher at temperature {temperature:g}")
        fit(teacher, x, y, epochs, batch_size, lr, temperature, seed=seed, progress=progress)
    logits = A.predict_pixels(teacher, x, batch_size=256)
    soft = softmax((logits.astype(np.float64) / temperature).astype(np.float64), axis=1)
    student = _copy_normalization(teacher, make_model())
    if progress:
        progress(f"student on the teacher's soft labels at temperature {temperature:g}")
    fit(student, x, soft, epochs, batch_size, lr, temperature, seed=seed + 1, progress=progress)
    for model in (teacher, student):
        model.meta["distillation_temperature"] = float(temperature)
    return teacher, student


# ------------------------------------------------------------------ black box


def jacobian_augmentation(substitute: fastconv.Model, x: np.ndarray, labels: ArrayLike,
                          step: float = 0.1) -> np.ndarray:
    """Papernot et al.'s Jacobian-based augmentation: x + step * sign(d Z_label / dx)
    for each image, where Z_label is the substitute's logit of the label the
    victim gave; new points where the substitute's decision is most sensitive."""
    x = A.check_pixels(substitute, x)
    n = x.shape[0]
    labels = A._class_array(labels, n, A._num_classes(substitute, x.shape), "label")
    out = np.empty_like(x)
    with C.evaluating(substitute):
        pixels = A._PixelModel(substitute)
        for start, stop in C.batches(n, 256):
            logits = pixels.logits(x[start:stop])
            seed = np.zeros(logits.shape)
            # labels is the array _class_array returns: mypy cannot tell, as it does not follow the
            # fastconv.analysis imports.
            seed[np.arange(stop - start), labels[start:stop]] = 1.0  # type: ignore[index]
            grad = pixels.input_gradient(seed, x.shape[1])
            out[start:stop] = np.clip(x[start:stop] + step * np.sign(grad), 0, 1)
    return out


def train_substitute(victim: fastconv.Model | Callable[[np.ndarray], ArrayLike], x_seed: ArrayLike,
                     make_model: Callable[[], fastconv.Model], rounds: int = 5, step: float = 0.1,
                     epochs: int = 10, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     x_check: ArrayLike | None = None,
                     progress: Callable[[str], object] | None = None) -> tuple[fastconv.Model, dict[str, Any]]:
    """Train a substitute of a black-box ``victim`` from its answers only.

    The victim is a model, or a function from [0, 1] images to predicted
    labels; it is only asked for labels. Starting from the small query set
    ``x_seed``, each round labels the set with the victim, trains a fresh
    substitute (``make_model()``) on it, and doubles the set with
    :func:`jacobian_augmentation`, whose step changes sign every three
    rounds (as Papernot et al.'s does) to keep exploring.

    Returns (substitute, info), info = {"queries", "set_sizes",
    "agreement"}: the victim queries made, the training set size of each
    round and the share of the images ``x_check`` (default: the seed
    images, which the substitute trains on) on which substitute and victim
    agree after each round; the victim's answers on ``x_check`` are a
    measurement, not counted as queries.
    """
    ask = victim if not hasattr(victim, "forward") else (
        lambda images: _predicted(cast("fastconv.Model", victim), images, 256))
    x_seed = np.asarray(x_seed)
    rounds = _checks.positive_int(rounds, "rounds")
    data = x_seed.copy()
    labels = np.asarray(ask(data))
    queries = len(data)
    info: dict[str, Any] = {"queries": 0, "set_sizes": [], "agreement": []}
    check = data if x_check is None else np.asarray(x_check)
    check_labels = labels if x_check is None else np.asarray(ask(check))
    substitute = None
    for r in range(rounds):
        substitute = make_model()
        fit(substitute, data, labels, epochs, batch_size, lr, seed=seed + r)
        agreement = float((_predicted(substitute, check, 256) == check_labels).mean())
        info["set_sizes"].append(int(len(data)))
        info["agreement"].append(agreement)
        if progress:
            progress(f"round {r + 1}/{rounds}: {len(data)} images, agreement with the victim {agreement:.3f}")
        if r == rounds - 1:
            break
        direction = (-1.0) ** (r // 3)
        new = jacobian_augmentation(substitute, data, labels, direction * step)
        new_labels = np.asarray(ask(new))
        queries += len(new)
        data = np.concatenate([data, new])
        labels = np.concatenate([labels, new_labels])
    info["queries"] = int(queries)
    return cast("fastconv.Model", substitute), info  # rounds >= 1: a substitute was trained


# ------------------------------------------------------------------ adversarial training


class AdversarialTraining:
    """A :class:`fastconv.train.Trainer` hook (``Trainer(..., adversarial=hook)``)
    that replaces a ``fraction`` of every training batch by adversarial
    versions of those images, so that the network learns from both.

    ``method`` is 'fgsm' (Goodfellow et al. 2015, one step of eps) or 'pgd'
    (Madry et al. 2018: ``steps`` steps from a random start drawn from the
    trainer's generator, step size ``alpha``, default 2.5 * eps / steps).
    ``eps`` is the L-infinity size in [0, 1] pixels. The examples are made
    with the model in eval mode, for the labels of the batch.
    """

    METHODS = ("fgsm", "pgd")
    PGD_STEPS = 7

    def __init__(self, method: str = "pgd", eps: float = 0.3, fraction: float = 0.5, steps: int = PGD_STEPS,
                 alpha: float | None = None) -> None:
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}")
        self.method = method
        self.eps = A._eps(eps)
        self.fraction = A._number(fraction, "fraction", 0.0)
        if self.fraction > 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        self.steps = _checks.positive_int(steps, "steps")
        self.alpha = None if alpha is None else A._number(alpha, "alpha", 0.0, strict=True)

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "eps": self.eps, "fraction": self.fraction,
                "steps": self.steps if self.method == "pgd" else 1, "alpha": self.alpha}

    def __repr__(self) -> str:
        steps = f", {self.steps} steps" if self.method == "pgd" else ""
        return f"adversarial training ({self.method}, eps {self.eps:g}{steps}, {self.fraction:.0%} of each batch)"

    def attack(self, model: fastconv.Model, rng: np.random.Generator) -> A.FGSM | A.PGD:
        if self.method == "fgsm":
            return A.FGSM(model, eps=self.eps)
        return A.PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True, seed=rng)

    def __call__(self, model: fastconv.Model, inputs: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
        count = int(round(self.fraction * len(inputs)))
        if count == 0 or self.eps == 0:
            return inputs
        pixels = A._PixelModel(model)
        mean, std = pixels._stats(inputs.shape[1])
        raw = inputs[:count] * std + mean
        if raw.min() < -1e-3 or raw.max() > 1 + 1e-3:
            raise ValueError(
                f"adversarial training needs images that map back to [0, 1] pixels through the model's "
                f"normalization; the batch spans {float(raw.min()):g} to {float(raw.max()):g} "
                f"(train on uint8 images, or floats in [0, 1])"
            )
        adversarial = self.attack(model, rng)(np.clip(raw, 0, 1).astype(inputs.dtype), labels[:count])
        mixed = inputs.copy()
        mixed[:count] = pixels.inputs(adversarial)
        return mixed
