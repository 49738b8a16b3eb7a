"""Losses and (log-)softmax against PyTorch and numerical gradients."""
import numpy as np
import pytest
from test_layers import numerical_gradient, rel_error

from fastconv.nn import losses


def batch(dtype=np.float64, n=6, k=5, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * scale).astype(dtype), rng.integers(0, k, n)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(torch, dtype, tol, reduction):
    logits, labels = batch(dtype)
    loss = losses.CrossEntropyLoss(reduction=reduction)
    value = loss(logits, labels)
    grad = loss.backward()
    t_logits = torch.tensor(logits, requires_grad=True)
    t_value = torch.nn.CrossEntropyLoss(reduction=reduction)(t_logits, torch.tensor(labels))
    t_value.backward()
    assert isinstance(value, float)
    assert value == pytest.approx(t_value.item(), rel=tol)
    assert grad.dtype == dtype
    assert rel_error(grad, t_logits.grad.numpy()) < tol


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_nll_and_softmax_match_torch(torch, dtype, tol):
    logits, labels = batch(dtype)
    log_probs = losses.log_softmax(logits)
    t_logits = torch.tensor(logits)
    assert rel_error(log_probs, torch.log_softmax(t_logits, dim=1).numpy()) < tol
    assert rel_error(losses.softmax(logits), torch.softmax(t_logits, dim=1).numpy()) < tol
    assert rel_error(losses.softmax(logits, axis=0), torch.softmax(t_logits, dim=0).numpy()) < tol
    loss = losses.NLLLoss()
    value = loss(log_probs, labels)
    t_log_probs = torch.tensor(log_probs, requires_grad=True)
    t_value = torch.nn.NLLLoss()(t_log_probs, torch.tensor(labels))
    t_value.backward()
    assert value == pytest.approx(t_value.item(), rel=tol)
    assert rel_error(loss.backward(), t_log_probs.grad.numpy()) < tol


def test_cross_entropy_gradient_is_numerically_right():
    logits, labels = batch()
    loss = losses.CrossEntropyLoss()
    loss(logits, labels)
    assert rel_error(loss.backward(), numerical_gradient(lambda: loss(logits, labels), logits)) < 1e-7


def test_cross_entropy_equals_nll_of_log_softmax():
    logits, labels = batch()
    expected = -np.mean(np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(6), labels])
    assert losses.CrossEntropyLoss()(logits, labels) == pytest.approx(expected, rel=1e-13)
    assert losses.NLLLoss()(losses.log_softmax(logits), labels) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits_are_stable(dtype):
    logits, labels = batch(dtype, scale=1.0)
    shifted = logits + dtype(1e4)  # exp(1e4) overflows; the loss must be shift-invariant
    shifted[0] += dtype(500)
    loss = losses.CrossEntropyLoss()
    value = loss(shifted, labels)
    grad = loss.backward()
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    reference = losses.CrossEntropyLoss()
    unshifted = shifted.astype(np.float64) - 1e4
    assert value == pytest.approx(reference(unshifted, labels), rel=1e-4)
    np.testing.assert_allclose(losses.softmax(shifted).sum(axis=1), 1, rtol=1e-6)


def test_bad_labels_and_misuse():
    logits, labels = batch()
    with pytest.raises(ValueError, match="label 5 at index 2"):
        losses.CrossEntropyLoss()(logits, np.array([0, 1, 5, 0, 0, 0]))
    with pytest.raises(ValueError, match="label -1"):
        losses.NLLLoss()(logits, np.array([0, 1, 2, -1, 0, 0]))
    with pytest.raises(ValueError, match=r"\(5,\).*\(6,\)"):
        losses.CrossEntropyLoss()(logits, labels[:5])
    with pytest.raises(TypeError, match="float64"):
        losses.CrossEntropyLoss()(logits, labels.astype(np.float64))
    with pytest.raises(ValueError, match=r"2-D.*\(6, 5, 1\)"):
        losses.CrossEntropyLoss()(logits[..., None], labels)
    with pytest.raises(TypeError, match="int64"):
        losses.CrossEntropyLoss()(logits.astype(np.int64), labels)
    with pytest.raises(RuntimeError, match="before"):
        losses.CrossEntropyLoss().backward()
    with pytest.raises(ValueError, match="'avg'"):
        losses.CrossEntropyLoss(reduction="avg")
    assert losses.CrossEntropyLoss()(logits, list(labels)) == losses.CrossEntropyLoss()(logits, labels)


def probabilities(dtype=np.float64, n=6, k=5, seed=1):
    rng = np.random.default_rng(seed)
    weights = rng.random((n, k)) ** 3
    return (weights / weights.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["soft", "one-hot", "unnormalized"])
def test_cross_entropy_of_class_probabilities_matches_torch(torch, dtype, tol, reduction, kind):
    logits, labels = batch(dtype)
    targets = {"soft": probabilities(dtype),
               "one-hot": np.eye(5, dtype=dtype)[labels],
               "unnormalized": probabilities(dtype) * np.arange(1, 7, dtype=dtype)[:, None]}[kind]
    loss = losses.CrossEntropyLoss(reduction=reduction)
    value = loss(logits, targets)
    grad = loss.backward()
    t_logits = torch.tensor(logits, requires_grad=True)
    t_value = torch.nn.functional.cross_entropy(t_logits, torch.tensor(targets), reduction=reduction)
    t_value.backward()
    assert value == pytest.approx(t_value.item(), rel=tol)
    assert grad.dtype == dtype
    assert rel_error(grad, t_logits.grad.numpy()) < tol
    if kind == "one-hot":  # the same loss as the class indices, to the last bits of a sum's order
        indices = losses.CrossEntropyLoss(reduction=reduction)
        assert value == pytest.approx(indices(logits, labels), rel=tol)
        np.testing.assert_allclose(grad, indices.backward(), rtol=tol, atol=tol)


def test_class_probabilities_gradient_is_numerically_right():
    logits, _ = batch()
    targets = probabilities() * 0.7  # rows summing to 0.7: the gradient's sum_k t_k term
    loss = losses.CrossEntropyLoss()
    loss(logits, targets)
    assert rel_error(loss.backward(), numerical_gradient(lambda: loss(logits, targets), logits)) < 1e-7


def test_class_probabilities_take_the_logits_dtype_and_refuse_nonsense():
    logits, labels = batch(np.float32)
    loss = losses.CrossEntropyLoss()
    assert loss(logits, np.eye(5)[labels]) == pytest.approx(loss(logits, np.eye(5, dtype=np.float32)[labels]))
    assert loss.backward().dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \(6, 4\), expected the logits' shape \(6, 5\)"):
        loss(logits, np.eye(4)[labels % 4])
    with pytest.raises(TypeError, match="float32 or float64, got dtype int64.*one-hot rows as floats"):
        loss(logits, np.eye(5, dtype=np.int64)[labels])
    bad = probabilities()
    bad[2, 3] = -0.1
    with pytest.raises(ValueError, match=r"-0.1 at index \(2, 3\)"):
        loss(logits, bad)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"nan at index \(2, 3\)"):
        loss(logits, bad)
    with pytest.raises(TypeError, match="float64"):  # 1-D floats are neither indices nor probabilities
        loss(logits, labels.astype(np.float64))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.2, 1.0])
@pytest.mark.parametrize("kind", ["indices", "probabilities"])
def test_label_smoothing_matches_torch(torch, dtype, tol, reduction, smoothing, kind):
    logits, labels = batch(dtype)
    if kind == "probabilities":
        labels = np.random.default_rng(3).dirichlet(np.ones(logits.shape[1]), len(labels)).astype(dtype)
    loss = losses.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)
    value = loss(logits, labels)
    grad = loss.backward()
    t_logits = torch.tensor(logits, requires_grad=True)
    t_value = torch.nn.CrossEntropyLoss(reduction=reduction, label_smoothing=smoothing)(
        t_logits, torch.tensor(labels))
    t_value.backward()
    assert value == pytest.approx(t_value.item(), rel=tol)
    assert grad.dtype == dtype
    assert rel_error(grad, t_logits.grad.numpy()) < tol


def test_label_smoothing_gradient_is_numerically_right_and_zero_smoothing_changes_nothing():
    logits, labels = batch()
    loss = losses.CrossEntropyLoss(label_smoothing=0.3)
    loss(logits, labels)
    grad = loss.backward()
    assert rel_error(grad, numerical_gradient(lambda: float(loss(logits, labels)), logits)) < 1e-7
    plain, zero = losses.CrossEntropyLoss(), losses.CrossEntropyLoss(label_smoothing=0.0)
    assert float(plain(logits, labels)) == float(zero(logits, labels))
    np.testing.assert_array_equal(plain.backward(), zero.backward())
    for bad, error in ((1.5, ValueError), (-0.1, ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match="label_smoothing"):
            losses.CrossEntropyLoss(label_smoothing=bad)
