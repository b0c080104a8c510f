"""The built-in shapes task: deterministic, disjoint splits, labels that mean what they say."""
import numpy as np
import pytest

from edgeexport.datasets import DATASETS, get_dataset, open_labeled, parse_builtin_spec
from edgeexport.datasets.shapes import CLASSES, IGNORE
from edgeexport.errors import UserError


def test_classes_sorted_so_an_image_folder_keeps_the_indices():
    assert list(CLASSES) == sorted(CLASSES) and len(CLASSES) == 8
    assert get_dataset("shapes_seg").classes == ("background", *CLASSES)
    assert get_dataset("shapes_cls").classes == CLASSES


def test_samples_are_deterministic_and_splits_differ():
    ds = get_dataset("shapes_seg")
    a_img, a_lab = ds.sample("eval", 0, 3, size=(96, 96))
    b_img, b_lab = ds.sample("eval", 0, 3, size=(96, 96))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    for other in (("train", 0, 3), ("calib", 0, 3), ("eval", 1, 3), ("eval", 0, 4)):
        img, _ = ds.sample(*other, size=(96, 96))
        assert not np.array_equal(img, a_img), other


def test_segmentation_labels():
    ds = get_dataset("shapes_seg")
    seen = set()
    for i in range(8):
        img, lab = ds.sample("eval", 0, i, size=(128, 128), scale_ref=520)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert lab.shape == (128, 128) and lab.dtype == np.uint8
        values = set(np.unique(lab).tolist())
        assert values <= set(range(9)) | {IGNORE}
        seen |= values
    assert 0 in seen and IGNORE in seen and len(seen - {0, IGNORE}) >= 3  # several shape classes, boundaries ignored


def test_a_shape_label_covers_a_visible_object():
    """Pixels labeled as a shape differ from the photo behind it: labels are not invisible."""
    ds = get_dataset("shapes_seg")
    img, lab = ds.sample("eval", 0, 0)
    fg = (lab > 0) & (lab != IGNORE)
    assert fg.mean() > 0.005
    ring = np.zeros_like(fg)
    ring[1:-1, 1:-1] = fg[1:-1, 1:-1] & ~(fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:])
    # edges of labeled regions coincide with image gradients far more often than random pixels do
    g = np.abs(np.diff(img.astype(np.float32).mean(2), axis=1, append=0))
    assert g[ring].mean() > 2 * g.mean()


def test_classification_labels_cover_every_class():
    ds = get_dataset("shapes_cls")
    labels = [ds.sample("eval", 0, i)[1] for i in range(40)]
    assert set(labels) == set(range(8))
    img, _ = ds.sample("eval", 0, 0)
    assert img.shape == (256, 256, 3)


def test_spec_parsing():
    ds, split, seed = parse_builtin_spec("shapes_seg")
    assert (ds.name, split, seed) == ("shapes_seg", "eval", 0)
    assert parse_builtin_spec("shapes_cls:calib:7")[1:] == ("calib", 7)
    assert parse_builtin_spec("some/folder") is None
    with pytest.raises(UserError, match="split"):
        parse_builtin_spec("shapes_seg:test")
    with pytest.raises(UserError, match="seed"):
        parse_builtin_spec("shapes_seg:eval:x")
    with pytest.raises(UserError, match="unknown dataset"):
        get_dataset("voc")
    assert set(DATASETS) == {"shapes_seg", "shapes_cls"}


def test_open_labeled_builtin_counts_and_checks_the_task():
    data = open_labeled("shapes_cls:eval:3", count=5)
    assert len(data) == 5 and data.task == "classification"
    name, img, label = data[2]
    assert name.endswith("00002") and isinstance(label, int)
    with pytest.raises(UserError, match="segmentation set"):
        open_labeled("shapes_seg", count=2, task="classification")
