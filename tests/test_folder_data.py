"""Folder data sets of real-world photos: any size, some files broken, a cache the user can see and clear."""
import numpy as np
import pytest
from PIL import Image

from fastconv.data import DataError, cache_info, clear_cache, load_dataset, resize_and_crop


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "cache"))


def _photo(path, width, height, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _folder(root, sizes, broken=()):
    """root/<cat|dog>/<i>.png of the given (width, height) sizes, and broken .jpg files."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            _photo(root / name / f"{i}.png", w, h, seed=10 * c + i)
    for name in broken:
        (root / name).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return root


def test_image_size_resizes_the_shorter_side_then_cuts_the_centre(tmp_path):
    root = _folder(tmp_path / "photos", [(40, 20), (30, 60), (16, 16)])
    ds = load_dataset(f"folder:{root}", image_size=10, test_fraction=0.34)
    assert ds.input_shape == (3, 10, 10)
    # Independently: Pillow's bilinear resize to 20x10, then columns 5..14.
    wide = np.asarray(Image.open(root / "cat" / "0.png").convert("RGB").resize((20, 10), Image.BILINEAR))
    expected = wide[:, 5:15].transpose(2, 0, 1)
    images = np.concatenate([ds.x_train, ds.x_test])
    assert any(np.array_equal(image, expected) for image in images)


def test_mixed_sizes_without_image_size_say_which_option_fixes_it(tmp_path):
    root = _folder(tmp_path / "photos", [(40, 20), (30, 60)])
    with pytest.raises(DataError, match="--image-size"):
        load_dataset(f"folder:{root}")


def test_every_unreadable_file_is_named_at_once_or_skipped_and_counted(tmp_path):
    root = _folder(tmp_path / "photos", [(12, 12)] * 3, broken=("cat/x1.jpg", "cat/x2.jpg", "dog/x3.jpg"))
    with pytest.raises(DataError) as error:
        load_dataset(f"folder:{root}")
    message = str(error.value)
    assert message.startswith("3 files are not a readable image")
    for name in ("x1.jpg", "x2.jpg", "x3.jpg"):
        assert name in message
    assert "--skip-bad-images" in message
    ds = load_dataset(f"folder:{root}", skip_bad_images=True, test_fraction=0.34)
    assert sorted(p.name for p in ds.skipped) == ["x1.jpg", "x2.jpg", "x3.jpg"]
    assert len(ds.x_train) + len(ds.x_test) == 6
    # From the cache, the same answer.
    again = load_dataset(f"folder:{root}", skip_bad_images=True, test_fraction=0.34)
    assert sorted(p.name for p in again.skipped) == ["x1.jpg", "x2.jpg", "x3.jpg"]
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_folder_options_are_refused_for_the_built_in_data_sets():
    with pytest.raises(DataError, match="applies to folder: data sets"):
        load_dataset("mnist-sample", image_size=28)


def test_bad_image_size_names_the_value(tmp_path):
    root = _folder(tmp_path / "photos", [(12, 12)] * 2)
    with pytest.raises(ValueError, match="got 0"):
        load_dataset(f"folder:{root}", image_size=0)


def test_cache_info_shows_what_is_cached_and_clear_cache_frees_it(tmp_path):
    rows = cache_info()
    assert [row["files"] for row in rows] == [0, 0]
    root = _folder(tmp_path / "photos", [(12, 12)] * 2)
    load_dataset(f"folder:{root}")
    decoded = cache_info()[0]
    assert decoded["path"] == tmp_path / "cache" / "folder-cache"
    assert decoded["files"] == 1 and decoded["bytes"] > 0
    assert clear_cache() == decoded["bytes"]
    assert [row["files"] for row in cache_info()] == [0, 0]


def test_resize_and_crop_keeps_grey_images_grey():
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    out = resize_and_crop(grey, size=4, resize=4)
    assert out.shape == (4, 4) and out.dtype == np.uint8
