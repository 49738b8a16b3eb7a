"""The airbench pieces above the kernels: translation with reflected borders,
the alternating flip, test-time augmentation, the background batch
thread, and recipes (built, written, read back and trained), with the
airbench94 network and its recipe's first steps against PyTorch."""
import json
import threading
import time

import numpy as np
import pytest
from test_layers import rel_error
from test_train import toy_data, toy_model

from fastconv import models, optim
from fastconv.data import Augment, Normalize
from fastconv.data.loader import Prefetcher
from fastconv.data.transforms import shift, tta_views
from fastconv.nn.losses import CrossEntropyLoss
from fastconv.train import Trainer, evaluate
from fastconv.train.recipes import (
    RECIPES,
    EvaluationSpec,
    LookaheadSpec,
    LossSpec,
    OptimizerSpec,
    Recipe,
    ScheduleSpec,
    load_recipe,
)

# ---------------------------------------------------------------------------
# Augmentation


def crop_oracle(x, dy, dx, flips, padding, mode):
    """One image at a time, with np.pad: what the batched Augment must give."""
    out = np.empty_like(x)
    for i in range(len(x)):
        padded = np.pad(x[i], ((0, 0), (padding, padding), (padding, padding)),
                        mode="reflect" if mode == "reflect" else "constant")
        crop = padded[:, dy[i]:dy[i] + x.shape[2], dx[i]:dx[i] + x.shape[3]]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("padding", [0, 1, 2, 4])
def test_translation_and_random_flip_match_an_image_by_image_oracle(mode, padding):
    x = np.random.default_rng(1).integers(0, 256, (37, 3, 9, 7), dtype=np.uint8)
    out = Augment(padding, True, padding_mode=mode)(x, np.random.default_rng(2))
    rng = np.random.default_rng(2)  # the same draws, in the documented order
    dy, dx = rng.integers(0, 2 * padding + 1, 37), rng.integers(0, 2 * padding + 1, 37)
    flips = rng.random(37) < 0.5
    np.testing.assert_array_equal(out, crop_oracle(x, dy, dx, flips, padding, mode))
    assert out.dtype == np.uint8 and out.flags.c_contiguous


def test_the_alternating_flip_shows_every_image_both_ways_in_two_epochs():
    x = np.random.default_rng(3).integers(0, 256, (1000, 1, 4, 4), dtype=np.uint8)
    augment = Augment(0, True, flip_mode="alternate", flip_seed=7)
    indices = np.arange(1000)
    rng = np.random.default_rng(0)
    flipped = [(augment(x, rng, indices, epoch) != x).any(axis=(1, 2, 3)) for epoch in range(4)]
    symmetric = (x == x[..., ::-1]).all(axis=(1, 2, 3))
    assert not symmetric.any()
    np.testing.assert_array_equal(flipped[0], ~flipped[1])
    np.testing.assert_array_equal(flipped[0], flipped[2])
    np.testing.assert_array_equal(flipped[1], flipped[3])
    assert 450 < flipped[0].sum() < 550  # about half, by the hash
    # It depends on the image's index, not on where it sits in the batch or on the rng.
    order = np.random.default_rng(4).permutation(1000)
    shuffled = augment(x[order], np.random.default_rng(9), indices[order], 0)
    np.testing.assert_array_equal(shuffled, augment(x, rng, indices, 0)[order])
    other_seed = Augment(0, True, flip_mode="alternate", flip_seed=8)(x, rng, indices, 0)
    assert (other_seed != augment(x, rng, indices, 0)).any()
    with pytest.raises(ValueError, match="needs the images' indices"):
        augment(x, rng)
    with pytest.raises(ValueError, match=r"indices have shape \(3,\)"):
        augment(x, rng, np.arange(3))


def test_augment_settings_are_checked_and_round_trip():
    augment = Augment(2, True, padding_mode="reflect", flip_mode="alternate", flip_seed=3)
    assert Augment(**augment.config()).config() == augment.config()
    assert Augment(4, True).config() == {"padding": 4, "flip": True}  # an older run's record still matches
    for bad in ({"padding_mode": "wrap"}, {"flip_mode": "sometimes"}, {"flip_seed": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Augment(**bad)
    with pytest.raises(ValueError, match="reflect padding of 4 pixels"):
        Augment(4, padding_mode="reflect")(np.zeros((1, 1, 3, 3)), np.random.default_rng(0))


def test_shift_and_the_tta_views():
    x = np.arange(2 * 3 * 5 * 4, dtype=np.float32).reshape(2, 3, 5, 4)
    moved = shift(x, 1, 1)
    np.testing.assert_array_equal(moved[:, :, 1:, 1:], x[:, :, :-1, :-1])
    np.testing.assert_array_equal(moved[:, :, 0, 1:], x[:, :, 1, :-1])  # the reflected row
    np.testing.assert_array_equal(shift(x, -1, -2, "zeros")[:, :, :-1, :-2], x[:, :, 1:, 2:])
    assert not shift(x, -1, -2, "zeros")[:, :, -1].any()
    for mode, count in (("none", 1), ("flip", 2), ("flip-translate", 6)):
        views = tta_views(x, mode)
        assert len(views) == count and sum(w for w, _ in views) == pytest.approx(1.0)
        assert all(v.shape == x.shape and v.flags.c_contiguous for _, v in views)
    with pytest.raises(ValueError, match="test-time augmentation must be one of"):
        tta_views(x, "mirror")


def test_evaluate_averages_the_logits_of_the_views():
    x, y = toy_data(40, seed=5)
    model = toy_model(seed=3).eval()
    normalize = Normalize.fit(x)
    result = evaluate(model, x, y, normalize, batch_size=16, tta="flip-translate")
    inputs = normalize(x)
    expected = sum(w * model.predict(v) for w, v in tta_views(inputs, "flip-translate"))
    np.testing.assert_allclose(result["logits"], expected, rtol=1e-5, atol=1e-6)
    plain = evaluate(model, x, y, normalize, batch_size=16)
    np.testing.assert_allclose(plain["logits"], model.predict(inputs), rtol=1e-6)
    with pytest.raises(ValueError, match="test-time augmentation"):
        evaluate(model, x, y, tta="rotate")


# ---------------------------------------------------------------------------
# The background batch thread


def test_prefetcher_gives_every_batch_in_order_and_never_runs_far_ahead():
    made, handed = [], []

    def make(i):
        made.append(i)
        return i * i

    with Prefetcher(make, 3, 40, depth=2) as batches:
        for value in batches:
            time.sleep(0.001)
            handed.append(value)
            # the one handed out, the ones waiting, and the one being made
            assert len(made) - len(handed) <= 3
    assert handed == [i * i for i in range(3, 40)]


def test_prefetcher_raises_the_error_of_its_batch_and_close_stops_the_thread():
    def make(i):
        if i == 4:
            raise KeyError("batch 4")
        return i

    batches = Prefetcher(make, 0, 10, depth=2)
    got = []
    with pytest.raises(KeyError, match="batch 4"):
        for value in batches:
            got.append(value)
    assert got == [0, 1, 2, 3]
    started = threading.active_count()
    slow = Prefetcher(lambda i: time.sleep(0.01) or i, 0, 10_000, depth=3)
    assert next(slow) == 0
    slow.close()
    assert threading.active_count() <= started
    assert list(slow) == []


@pytest.mark.parametrize("augment", [None, Augment(1, True), Augment(1, True, "reflect", "alternate")])
def test_batches_made_ahead_train_exactly_as_batches_made_in_the_loop(augment):
    x, y = toy_data()
    weights = []
    for prefetch in (0, 2):
        model = toy_model()
        trainer = Trainer(model, optim.SGD(model, lr=0.05, momentum=0.9), batch_size=16, augment=augment,
                          normalize=Normalize.fit(x), progress=False, log=None, prefetch=prefetch)
        trainer.fit(x, y, 2)
        weights.append(model.state_dict())
    for key, value in weights[0].items():
        np.testing.assert_array_equal(value, weights[1][key], err_msg=key)


def test_a_summed_loss_is_recorded_per_image_and_epochs_are_announced():
    x, y = toy_data(128)  # whole batches: a summed loss over a short one would step less
    begun = []

    class Watch:
        def on_epoch_begin(self, trainer, epoch):
            begun.append(epoch)

    records = []
    for reduction, lr in (("mean", 0.05), ("sum", 0.05 / 16)):
        model = toy_model()
        trainer = Trainer(model, optim.SGD(model, lr=lr), CrossEntropyLoss(reduction=reduction), batch_size=16,
                          normalize=Normalize.fit(x), progress=False, log=None, callbacks=[Watch()])
        records.append(trainer.fit(x, y, 2))
    assert begun == [0, 1, 0, 1]
    for mean, summed in zip(*records):
        assert summed["train_loss"] == pytest.approx(mean["train_loss"], rel=1e-4)
        assert summed["train_loss"] < 2  # per image, not per batch of 16


# ---------------------------------------------------------------------------
# Recipes


def test_the_airbench94_recipe_is_the_papers_method_in_plain_values(tmp_path):
    recipe = RECIPES["airbench94"]
    assert recipe.batch_size == 1024 and recipe.epochs == 10 and recipe.model == "airbench94"
    spec = recipe.optimizer
    assert spec.name == "sgd" and spec.nesterov and spec.momentum == 0.85 and spec.bias_lr_scale == 64
    # The paper's per-1024-images rate and decay: per step, lr * weight_decay is 0.0153 * 1024 / kilostep.
    kilostep = 1024 * (1 + 1 / 0.15)
    assert spec.lr == pytest.approx(11.5 / kilostep) and spec.lr * spec.weight_decay == pytest.approx(0.0153 * 1024
                                                                                                      / kilostep)
    assert recipe.loss == LossSpec(0.2, "sum") and recipe.evaluation == EvaluationSpec("flip-translate")
    assert recipe.lookahead.k == 5 and 1 - recipe.lookahead.alpha == pytest.approx(0.95 ** 5)
    values = recipe.to_dict()
    assert json.loads(json.dumps(values)) == values
    assert Recipe.from_dict(values) == recipe
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**values, "name": "mine", "epochs": 3}))
    assert load_recipe(path) == recipe.replace(name="mine", epochs=3)
    assert load_recipe("cifar6") is RECIPES["cifar6"]


def test_replace_reaches_the_parts_and_refuses_nonsense():
    recipe = RECIPES["airbench94"].replace(lr=0.01, tta="flip", label_smoothing=0.1, epochs=3, optimizer="adam")
    assert recipe.optimizer.lr == 0.01 and recipe.optimizer.name == "adam" and not recipe.optimizer.nesterov
    assert recipe.evaluation.tta == "flip" and recipe.loss.label_smoothing == 0.1 and recipe.epochs == 3
    assert RECIPES["airbench94"].optimizer.lr != 0.01  # the preset is untouched
    with pytest.raises(ValueError, match="model must be one of"):
        Recipe("x", "resnet", 1, 8)
    with pytest.raises(ValueError, match="whitening is the first layer of airbench94"):
        RECIPES["airbench94"].replace(model="cifar6")
    with pytest.raises(ValueError, match="flip_mode"):
        RECIPES["cifar6"].replace(augment={"flip_mode": "never"})
    with pytest.raises(ValueError, match="no setting 'learning_rate'"):
        Recipe.from_dict({**RECIPES["cifar6"].to_dict(), "learning_rate": 1})
    with pytest.raises(ValueError, match="'optimizer' has no 'beta'"):
        Recipe.from_dict({**RECIPES["cifar6"].to_dict(), "optimizer": {"beta": 1}})
    with pytest.raises(ValueError, match="no recipe 'airbench95'"):
        load_recipe("airbench95")
    with pytest.raises(ValueError, match="schedule must be one of"):
        ScheduleSpec("triangle")
    with pytest.raises(ValueError, match="nesterov"):
        OptimizerSpec("adam", nesterov=True)


def tiny_cifar(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8), rng.integers(0, 10, n)


def test_building_the_airbench94_recipe():
    x, y = tiny_cifar()
    setup = RECIPES["airbench94"].replace(batch_size=32, epochs=4, model_options={"widths": [8, 16, 16]}).build(
        x, 10, seed=1)
    model = setup.model
    assert model.layer("whiten").frozen == {"weight"}
    assert all(model.layer(f"block{b}_bn{i}").frozen == {"weight"} for b in (1, 2, 3) for i in (1, 2))
    # the whitening filters are those of the training images, normalized
    sample = setup.normalize(x, dtype=np.float64)
    from fastconv.nn import init
    expected = init.patch_whitening_(np.zeros((24, 3, 2, 2)), sample, eps=5e-4)
    np.testing.assert_allclose(model.layer("whiten").params["weight"], expected, rtol=1e-4, atol=1e-6)
    groups = setup.optimizer.optimizer.param_groups
    shifts = [p.name for p in groups[1]["params"]]
    assert shifts == [f"block{b}_bn{i}.bias" for b in (1, 2, 3) for i in (1, 2)]
    assert groups[1]["lr"] == pytest.approx(64 * groups[0]["lr"])
    assert groups[1]["lr"] * groups[1]["weight_decay"] == pytest.approx(groups[0]["lr"] * groups[0]["weight_decay"])
    assert isinstance(setup.optimizer, optim.Lookahead) and setup.optimizer.total_steps == 4 * 3
    assert setup.augment.config()["flip_seed"] == 1 and setup.loss.label_smoothing == 0.2
    # Trained, it ends on Lookahead's slow weights.
    trainer = Trainer(model, setup.optimizer, setup.loss, setup.schedule, batch_size=32,
                      normalize=setup.normalize, augment=setup.augment, schedule_interval=setup.schedule_interval,
                      callbacks=setup.callbacks, progress=False, log=None)
    history = trainer.fit(x, y, 4)
    assert len(history) == 4 and all(np.isfinite(r["train_loss"]) for r in history)
    for param in setup.optimizer.parameters():
        np.testing.assert_array_equal(param.data, setup.optimizer.slow[param.name])


def test_the_whitening_bias_trains_for_its_epochs_then_stops():
    # Without Lookahead, whose synchronizations move a frozen parameter too
    # (towards the value it was frozen at), as the paper's does.
    x, y = tiny_cifar()
    setup = RECIPES["airbench94"].replace(batch_size=32, epochs=4, lookahead=None,
                                          model_options={"widths": [8, 16, 16]}).build(x, 10, seed=1)
    model = setup.model
    biases = []

    class Watch:
        def on_epoch_end(self, trainer, record):
            biases.append(model.layer("whiten").params["bias"].copy())

    trainer = Trainer(model, setup.optimizer, setup.loss, setup.schedule, batch_size=32,
                      normalize=setup.normalize, augment=setup.augment, schedule_interval=setup.schedule_interval,
                      callbacks=[*setup.callbacks, Watch()], progress=False, log=None)
    trainer.fit(x, y, 4)
    assert not np.array_equal(biases[1], biases[2])
    np.testing.assert_array_equal(biases[2], biases[3])
    assert model.layer("whiten").frozen == {"weight", "bias"}


def torch_airbench(torch, widths=(8, 16, 16), classes=10):
    nn = torch.nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout, eps=1e-12, momentum=0.4), nn.GELU()]

    return nn.Sequential(nn.Conv2d(3, 24, 2), nn.GELU(), *block(24, widths[0]), *block(widths[0], widths[1]),
                         *block(widths[1], widths[2]), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                         nn.Linear(widths[2], classes, bias=False)).double()


def test_airbench94_network_and_recipe_steps_match_torch(backend, torch, copy_to_torch):
    """Three steps of the recipe's optimizer (parameter groups with their own rate
    and decay, Nesterov momentum, frozen batch-norm scales and whitening filters,
    the summed label-smoothed loss, the piecewise schedule) against PyTorch."""
    x, y = tiny_cifar(24, seed=2)
    images = Normalize.fit(x)(x, dtype=np.float64)
    recipe = RECIPES["airbench94"].replace(batch_size=8, epochs=1, model_options={"widths": [8, 16, 16]},
                                           lookahead=None)
    model = models.airbench94(widths=(8, 16, 16), seed=0, whitening_images=images).astype(np.float64)
    for name, layer in model.named_layers():  # astype keeps no freezing: freeze as the network does
        if name == "whiten" or "_bn" in name:
            layer.requires_grad_(False, "weight")
    twin = torch_airbench(torch)
    keys = copy_to_torch(model, twin)
    opt, schedule, _ = recipe.build_optimizer(model, steps_per_epoch=3)
    loss = CrossEntropyLoss(reduction="sum", label_smoothing=0.2)
    frozen = {id(m.weight) for m in twin if isinstance(m, torch.nn.BatchNorm2d)} | {id(twin[0].weight)}
    for p in twin.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    shifts = [m.bias for m in twin if isinstance(m, torch.nn.BatchNorm2d)]
    others = [p for p in twin.parameters() if p.requires_grad and all(p is not s for s in shifts)]
    spec = recipe.optimizer
    t_opt = torch.optim.SGD([{"params": others}, {"params": shifts, "lr": spec.lr * 64,
                                                   "weight_decay": spec.weight_decay / 64}],
                            lr=spec.lr, momentum=0.85, nesterov=True, weight_decay=spec.weight_decay)
    t_schedule = torch.optim.lr_scheduler.LambdaLR(t_opt, lambda s: float(np.interp(s, [0, 0.6, 3], [0.2, 1, 0])))
    t_loss = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.2)
    for step in range(3):
        xb, yb = images[8 * step:8 * step + 8], y[8 * step:8 * step + 8]
        opt.zero_grad()
        logits = model.forward(xb)
        loss(logits, yb)
        model.backward(loss.backward(), input_grad=False)
        opt.step()
        schedule.step()
        t_opt.zero_grad()
        t_logits = twin(torch.from_numpy(xb)) / 9
        t_loss(t_logits, torch.from_numpy(yb)).backward()
        t_opt.step()
        t_schedule.step()
        assert rel_error(logits, t_logits.detach().numpy()) < 1e-9, step
        theirs = twin.state_dict()
        for key, value in model.state_dict().items():
            assert rel_error(value, theirs[keys[key]].numpy()) < 1e-8, (step, key)


def test_a_recipe_without_lookahead_or_whitening_builds_plain_parts():
    x, y = tiny_cifar(40)
    recipe = Recipe("plain", "airbench94", 1, 8, optimizer=OptimizerSpec("adamw", lr=1e-3),
                    lookahead=None, whitening=None, model_options={"widths": [8, 8, 8]},
                    evaluation=EvaluationSpec("flip"))
    setup = recipe.build(x, 10, seed=0)
    assert isinstance(setup.optimizer, optim.AdamW) and setup.schedule is None and setup.callbacks == []
    assert setup.model.layer("whiten").frozen == frozenset()
    assert recipe.replace(lookahead=LookaheadSpec(k=2)).build(x, 10).optimizer.k == 2
