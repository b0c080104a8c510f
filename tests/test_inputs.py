import numpy as np
import pytest

from edgeexport.images import CALIB_PHOTOS, EVAL_PHOTOS, Preprocess, folder_images, photos
from edgeexport.inputs import InputSource
from edgeexport.errors import UserError

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_bundled_photos_are_real_and_split_disjointly():
    assert not set(EVAL_PHOTOS) & set(CALIB_PHOTOS)
    ev = photos("eval")
    assert len(ev) >= 4
    for name, img in ev:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 256
        assert img.std() > 20  # a photograph, not a flat test card
    assert len(photos("calib")) >= 8


def test_preprocess_resize_and_normalise():
    img = np.full((40, 60, 3), 255, np.uint8)
    x = PRE(img, 16, 24)
    assert x.shape == (3, 16, 24) and x.dtype == np.float32
    assert np.allclose(x, (1 - 0.5) / 0.25)


def test_center_crop_keeps_aspect():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 90:110] = 255  # a bright vertical bar in the middle
    x = Preprocess((0, 0, 0), (1, 1, 1), "center_crop")(img, 32, 32)
    assert x.shape == (3, 32, 32)
    assert x[0, :, 16].mean() > 0.9 and x[0, :, 0].mean() < 0.1


def test_batches_cycle_images_and_name_them():
    src = InputSource("photos", "eval")
    batches = list(src.batches((2, 3, 32, 48), 3, PRE))
    assert len(batches) == 3 and all(b.shape == (2, 3, 32, 48) for _, b in batches)
    names = [n for ns, _ in batches for n in ns]
    assert names[:len(EVAL_PHOTOS)] == list(EVAL_PHOTOS)


def test_random_only_when_asked():
    (names, x), = InputSource("random", seed=3).batches((1, 3, 8, 8), 1, PRE)
    assert names == ["random0"] and x.shape == (1, 3, 8, 8)


def test_augmented_batches_differ_from_plain_ones():
    src = InputSource("photos", "calib")
    n = len(CALIB_PHOTOS)
    plain = [b for _, b in src.batches((1, 3, 16, 16), n + 2, PRE)]
    aug = [b for _, b in src.batches((1, 3, 16, 16), n + 2, PRE, augmented=True)]
    assert np.array_equal(plain[0], aug[0]) and not np.array_equal(plain[n], aug[n])


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder_images(tmp_path / "missing")
    with pytest.raises(UserError, match="is empty"):
        folder_images(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="has no images"):
        folder_images(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match="broken.jpg: not a readable image"):
        folder_images(tmp_path)


def test_folder_channel_layouts(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(tmp_path / "rgb.png")
    imgs = dict(folder_images(tmp_path))
    assert imgs["gray.png"].shape == (20, 20, 3) and imgs["rgb.png"][0, 0, 0] == 7
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 3] = 10
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.raises(UserError, match="alpha.png: image has transparency"):
        folder_images(tmp_path)
    (tmp_path / "alpha.png").unlink()
    Image.new("CMYK", (20, 20)).save(tmp_path / "print.jpg")  # four channels
    with pytest.raises(UserError, match="print.jpg: unsupported channel layout"):
        folder_images(tmp_path)
