"""Images made to order: a class the network must see, a picture they must resemble.

:class:`LookAlike` makes an image that the network classifies as a chosen
class while it stays close, in mean squared error, to a chosen picture: "an
image of a 0 classified as 5". It minimizes, over the pixels x in [0, 1],

    cross-entropy(model(x), target) + beta * mean((x - picture) ** 2)

from uniform noise (or from the picture itself), with Adam. The first term
pulls towards the target class, the second towards the picture; once the
network is confident the first term's gradient fades and the second takes
over, so beta sets where the two balance.

:func:`perturbation_transfer` asks the converse question: does the
perturbation that turns one image into the target class do the same to
another image? It returns the four images of the 2x2 grid
(:func:`~fastconv.analysis.attacks.figures.plot_perturbation_transfer`) and
what the network makes of each.

Images are [0, 1] pixels and the model's normalization is applied inside,
as for every attack (:mod:`.methods`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv import _checks
from fastconv.analysis.attacks import methods as A
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    import fastconv

__all__ = ["LookAlike", "perturbation_transfer"]


class LookAlike(A.Attack):
    """Images the model classifies as ``target`` that resemble the pictures given.

    ``LookAlike(model, beta=0.185, steps=670)(pictures, target=5)`` returns,
    for each picture, the minimizer found of the cross-entropy of the target
    plus ``beta`` times the mean squared error to the picture, after
    ``steps`` Adam steps of learning rate ``lr`` from ``start``: 'noise'
    (uniform, from ``seed``) or 'image' (the picture itself). The pixels are
    clipped to [0, 1] after every step. ``target`` is required; ``y`` is
    not used.

    ``loss_history`` holds the mean objective at each step and
    ``loss_parts`` its two terms ("cross_entropy", "mse") and the target's
    probability ("target_probability"): the cost curve.
    """

    name = "look-alike"
    loss_name = "cross-entropy of the target + beta * MSE to the picture"
    STARTS = ("noise", "image")

    def __init__(self, model: fastconv.Model, beta: float = 0.185, steps: int = 670, lr: float = 0.01,
                 start: str = "noise", seed: np.random.Generator | int | None = 0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size)
        self.beta = A._number(beta, "beta", 0.0)
        self.steps = _checks.positive_int(steps, "steps")
        self.lr = A._number(lr, "lr", 0.0, strict=True)
        if start not in self.STARTS:
            raise ValueError(f"start must be one of {', '.join(self.STARTS)}, got {start!r}")
        self.start = start
        self.seed = seed

    def __call__(self, x: np.ndarray, y: ArrayLike | None = None, target: ArrayLike | None = None) -> np.ndarray:
        """Images like the pictures x ((N, C, H, W), [0, 1]) classified as ``target`` (one class or N)."""
        if target is None:
            raise ValueError("LookAlike needs a target: the class the new images must be classified as")
        return super().__call__(x, None, target)

    def _attack(self, pixels: A._PixelModel, x: np.ndarray, y: np.ndarray | None, target: np.ndarray | None,
                rng: np.random.Generator) -> np.ndarray:
        goal = np.asarray(target)
        n = x.shape[0]
        size = x[0].size
        picture = x.astype(np.float64)
        image = rng.uniform(0, 1, x.shape) if self.start == "noise" else picture.copy()
        m, v = np.zeros_like(image), np.zeros_like(image)
        beta1, beta2 = 0.9, 0.999
        rows = np.arange(n)
        for step in range(self.steps):
            logits = pixels.logits(image.astype(x.dtype))
            cross_entropy = A._cross_entropy(logits, goal)
            difference = image - picture
            mse = np.square(difference).reshape(n, -1).mean(axis=1)
            probability = softmax(logits.astype(np.float64), axis=1)[rows, goal]
            self._record(step, cross_entropy + self.beta * mse, cross_entropy=cross_entropy, mse=mse,
                         target_probability=probability)
            # descend the cross-entropy of the target: the ascent direction towards it
            grad = -pixels.input_gradient(A._cross_entropy_ascent(logits, None, goal), x.shape[1])
            grad = grad.astype(np.float64) + self.beta * 2 * difference / size
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * np.square(grad)
            m_hat = m / (1 - beta1 ** (step + 1))
            v_hat = v / (1 - beta2 ** (step + 1))
            image = np.clip(image - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8), 0, 1)
        return image.astype(x.dtype)


def perturbation_transfer(model: fastconv.Model, attack: A.Attack, x: np.ndarray, other: np.ndarray,
                          y: ArrayLike | None = None, target: ArrayLike | None = None) -> dict[str, Any]:
    """Attack the images x, then add each one's perturbation to the image of ``other`` in the same row.

    Returns {"x", "x_adv", "perturbation", "other", "other_adv"} (arrays
    shaped like x; ``other_adv = clip(other + perturbation, 0, 1)``), the
    model's predictions "prediction" of each of them (a dict of N ints per
    image kind), and "attack_success" (the attack moved x where it was
    asked: away from y, or to the target) and "other_changed" (the
    prediction of the other image moved) per row, with their rates.
    """
    x = A.check_pixels(model, x)
    other = A.check_pixels(model, other, "other")
    if other.shape != x.shape:
        raise ValueError(f"other has shape {other.shape} but x has shape {x.shape}: one other image per image")
    if attack.model is not model:
        raise ValueError("the attack was built on another model than the one given")
    x_adv = attack(x, y, target=target)
    perturbation = x_adv.astype(np.float64) - x
    other_adv = np.clip(other + perturbation, 0, 1).astype(x.dtype)
    images = {"x": x, "x_adv": x_adv, "other": other, "other_adv": other_adv}
    predicted = {name: A.predict_pixels(model, value).argmax(axis=1) for name, value in images.items()}
    if target is not None:
        success = predicted["x_adv"] == np.broadcast_to(np.asarray(target), (len(x),))
    else:
        reference = predicted["x"] if y is None else np.broadcast_to(np.asarray(y), (len(x),))
        success = predicted["x_adv"] != reference
    changed = predicted["other_adv"] != predicted["other"]
    return {**images, "perturbation": perturbation.astype(x.dtype), "prediction": predicted,
            "attack_success": success, "other_changed": changed,
            "attack_success_rate": float(success.mean()), "other_changed_rate": float(changed.mean())}
