"""Figures a reader can use: maps on their own range, crops of one size, no blank margins."""
import numpy as np
from PIL import Image

from fastconv.analysis.attribution.occlusion import OcclusionMaps
from fastconv.analysis.visualize.figures import plot_occlusion, plot_top_images
from fastconv.analysis.visualize.units import TopImages
from fastconv.train.figures import plot_confusion


def _confident_maps():
    # Probabilities all within 1e-3 of 1, as for an image the model is sure of.
    probability = 1.0 - np.linspace(0.0, 1e-3, 16).reshape(1, 4, 4)
    return OcclusionMaps(target=np.array([3]), probability=probability, top_class=np.full((1, 4, 4), 3),
                         top_probability=probability, baseline_probability=np.array([1.0]), patch=(4, 4),
                         stride=(2, 2))


def test_an_occlusion_map_is_drawn_on_its_own_range():
    maps = _confident_maps()
    fig = plot_occlusion(maps, np.zeros((1, 1, 10, 10), np.uint8), [str(c) for c in range(10)])
    heat = fig.axes[1].images[-1]
    pixels = maps.pixel_map((1, 10, 10))
    assert heat.get_clim() == (np.nanmin(pixels), np.nanmax(pixels))
    assert np.nanmax(pixels) - np.nanmin(pixels) < 2e-3


def test_crops_at_the_border_are_padded_to_the_fields_size():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (2, 1, 12, 12), dtype=np.uint8)
    boxes = np.array([[0, 0, 5, 6], [3, 3, 9, 9]])
    fields = np.array([[-1, 0, 5, 6], [3, 3, 9, 9]])
    crops = [data[i][:, t:b, l:r] for i, (t, l, b, r) in enumerate(boxes)]
    top = TopImages("conv2", 0, np.arange(2), np.array([2.0, 1.0]), np.zeros((2, 2)), boxes, crops, 2, fields)
    fig = plot_top_images(top, data)
    crop_axes = [ax for ax in fig.axes if ax.images and ax.images[0].get_array().shape[:2] == (6, 6)]
    assert len(crop_axes) == 2, "both crops drawn at the field's 6x6 size"
    border = crop_axes[0]
    assert border.collections, "the part beyond the image is hatched"
    shown = np.asarray(border.images[0].get_array())
    np.testing.assert_allclose(shown[1:, :], data[0, 0, 0:5, 0:6] / 255.0)
    assert np.all(shown[0, :] == 0.5)


def test_the_confusion_matrix_has_no_blank_sides(tmp_path):
    matrix = np.diag(np.full(10, 50)) + 1
    path = plot_confusion(matrix, [str(c) for c in range(10)], tmp_path / "cm.png")
    grey = np.asarray(Image.open(path).convert("L"))
    blank_columns = np.all(grey > 250, axis=0)
    # At most a thin white border on each side, not a quarter of the width.
    left = np.argmax(~blank_columns)
    right = np.argmax(~blank_columns[::-1])
    assert left < 0.05 * grey.shape[1] and right < 0.05 * grey.shape[1]
