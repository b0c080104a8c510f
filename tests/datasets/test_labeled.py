"""Labeled folders: the layouts `edgeexport data` writes read back exactly; bad folders are one clear error."""
import json

import numpy as np
import pytest
from PIL import Image

from edgeexport.datasets import get_dataset, open_labeled
from edgeexport.datasets.labeled import from_builtin, load_folder, read_mask, write_folder
from edgeexport.errors import UserError
from tests.conftest import assert_one_line_error


def _seg_folder(tmp_path, count=3, size=(64, 64)):
    return write_folder(from_builtin(get_dataset("shapes_seg"), "eval", 5, count, size), tmp_path / "seg")


def test_segmentation_round_trip(tmp_path):
    src = from_builtin(get_dataset("shapes_seg"), "eval", 5, 3, (64, 48))
    out = write_folder(src, tmp_path / "seg")
    back = load_folder(out)
    assert back.task == "segmentation" and len(back) == 3
    assert back.classes == list(get_dataset("shapes_seg").classes)
    for (_, img, mask), (_, img2, mask2) in zip(src, back):
        assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    with Image.open(out / "masks" / "00000.png") as im:
        assert im.mode == "P"  # a VOC-style palette PNG, read as its indices
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["spec"] == "shapes_seg:eval:5" and meta["images"] == 3


def test_classification_round_trip_and_image_folder_order(tmp_path):
    src = from_builtin(get_dataset("shapes_cls"), "eval", 2, 12, (40, 40))
    out = write_folder(src, tmp_path / "cls")
    back = load_folder(out)
    assert back.task == "classification" and back.classes == list(get_dataset("shapes_cls").classes)
    assert sorted(lab for _, _, lab in back) == sorted(lab for _, _, lab in src)
    # without classes.txt the sorted folder names give the same indices (the classes are alphabetical)
    (out / "classes.txt").unlink()
    again = load_folder(out)
    assert again.classes == sorted(p.name for p in out.iterdir() if p.is_dir())
    assert [lab for _, _, lab in again] == [lab for _, _, lab in back]


def test_count_cap_keeps_every_class(tmp_path):
    out = write_folder(from_builtin(get_dataset("shapes_cls"), "eval", 0, 40, (32, 32)), tmp_path / "cls")
    few = load_folder(out, count=8)
    assert len(few) == 8 and len({lab for _, _, lab in few}) == 8


def test_classes_txt_decides_the_indices(tmp_path):
    root = tmp_path / "c"
    for name in ("zebra", "apple"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name / "a.png")
    (root / "classes.txt").write_text("zebra\napple\n")
    data = load_folder(root)
    assert data.classes == ["zebra", "apple"]
    assert dict((n.split("/")[0], lab) for n, _, lab in data) == {"zebra": 0, "apple": 1}
    (root / "classes.txt").write_text("zebra\n")
    with pytest.raises(UserError, match="not in classes.txt"):
        load_folder(root)


@pytest.mark.parametrize("breakage, needle", [
    ("empty", "is empty"),
    ("missing", "does not exist"),
    ("loose_images", "without labels"),
    ("no_pairs", "no image in images/ has a mask"),
    ("size", "mask is 32x32, its image"),
    ("rgb_mask", "single-channel class indices"),
    ("no_masks_dir", "needs both images/ and masks/"),
])
def test_bad_folders(tmp_path, breakage, needle):
    root = tmp_path / "data"
    if breakage != "missing":
        root.mkdir()
    img = Image.fromarray(np.zeros((48, 48, 3), np.uint8))
    if breakage == "loose_images":
        img.save(root / "a.png")
    if breakage in ("no_pairs", "size", "rgb_mask", "no_masks_dir"):
        (root / "images").mkdir()
        img.save(root / "images" / "a.png")
        if breakage != "no_masks_dir":
            (root / "masks").mkdir()
    if breakage == "no_pairs":
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(root / "masks" / "b.png")
    if breakage == "size":
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / "a.png")
    if breakage == "rgb_mask":
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(root / "masks" / "a.png")
    with pytest.raises(UserError, match=needle):
        data = load_folder(root)
        list(data)  # some problems show when the pixels are read


def test_label_out_of_range(tmp_path):
    out = _seg_folder(tmp_path)
    data = load_folder(out)
    data.check_range(9)  # background + 8 shapes
    with pytest.raises(UserError, match="9 classes, the model predicts 3"):
        load_folder(out).check_range(3)
    (out / "classes.txt").unlink()  # without names, the pixels themselves are checked
    with pytest.raises(UserError, match=r"has class index \d, out of range for a model with 3 classes"):
        load_folder(out).check_range(3)
    mask = read_mask(out / "masks" / "00000.png")
    assert mask.max() == 255  # the ignore label is never out of range


def test_write_refuses_a_non_empty_folder_and_leaves_nothing_behind(tmp_path):
    out = _seg_folder(tmp_path, count=1)
    with pytest.raises(UserError, match="not empty"):
        _seg_folder(tmp_path, count=1)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left


def test_data_command(cli, tmp_path):
    code, out, err = cli("data", "shapes_cls", "--count", "9", "--seed", "11", "--size", "48x48", "-o", tmp_path / "d")
    assert code == 0, err
    data = open_labeled(str(tmp_path / "d"))
    assert len(data) == 9 and data.task == "classification"
    code, _, err = cli("data", "shapes_seg", "--split", "test", "-o", tmp_path / "e")
    assert_one_line_error(code, err, "--split")
    code, _, err = cli("data", "voc", "-o", tmp_path / "e")
    assert_one_line_error(code, err, "unknown dataset")
    code, _, err = cli("data", "shapes_seg", "--size", "big", "-o", tmp_path / "e")
    assert_one_line_error(code, err, "--size")
    assert not (tmp_path / "e").exists()
