"""One normalization for the whole package: the trainer's Normalize is what
the analysis tools apply, with the same arithmetic."""
import numpy as np
import pytest

import fastconv.analysis as fa
from fastconv.data import Normalize
from fastconv.models import mnist2


def test_the_analysis_normalizer_is_the_trainers():
    assert fa.Normalizer is Normalize


def test_from_model_applies_what_the_trainer_stored_bit_for_bit():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    fitted = Normalize.fit(raw)
    model = mnist2(seed=0)
    model.meta["normalization"] = fitted.to_meta()
    np.testing.assert_array_equal(Normalize.from_model(model)(raw), fitted(raw))
    # in float64 the same formula, against the textbook one
    model64 = model.astype(np.float64)
    model64.meta = dict(model.meta)
    x = Normalize.from_model(model64)(raw)
    assert x.dtype == np.float64
    expected = (raw / 255.0 - fitted.mean[0]) / fitted.std[0]
    np.testing.assert_allclose(x, expected, rtol=1e-12, atol=1e-12)


def test_a_model_without_statistics_gets_pixels_over_255():
    raw = np.arange(0, 256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = Normalize.from_model(mnist2(seed=0))(raw)
    np.testing.assert_allclose(x, raw / np.float32(255), rtol=1e-6)


def test_one_value_covers_every_channel_and_a_wrong_count_is_named():
    norm = Normalize([0.5], [0.25])
    x = norm(np.full((2, 3, 4, 4), 255, np.uint8))
    np.testing.assert_allclose(x, 2.0)
    with pytest.raises(ValueError, match="3 channels, but the normalization has 2"):
        Normalize([0.5, 0.5], [1.0, 1.0])(np.zeros((1, 3, 2, 2), np.uint8))


def test_undo_and_pixel_value_invert_the_normalization():
    norm = Normalize([0.2, 0.4, 0.6], [0.3, 0.2, 0.1], dtype=np.float64)
    raw = np.random.default_rng(1).integers(0, 256, (3, 3, 5, 5)).astype(np.float64)
    np.testing.assert_allclose(norm.undo(norm(raw)), raw, atol=1e-9)
    np.testing.assert_allclose(norm.pixel_value(255, 3), norm(np.full((1, 3, 1, 1), 255.0)).reshape(-1))


@pytest.mark.parametrize("mean, std, scale, message", [
    ([0.5], [0.0], 255, "std must be positive"),
    ([0.5, 0.1], [0.2], 255, "one value per channel"),
    ([0.5], [0.2], 0, "scale must be a positive number"),
])
def test_bad_statistics_are_refused_with_the_value(mean, std, scale, message):
    with pytest.raises(ValueError, match=message):
        Normalize(mean, std, scale)
