"""Task metrics with known answers: confusion matrix, mIoU, pixel accuracy, top-k, drops in points."""
import math

import numpy as np
import pytest

from edgeexport.metrics import ConfusionMatrix, TaskAccumulator, TaskMetrics, TopK


def test_confusion_matrix_known_answer():
    # target / prediction over 8 pixels, 3 classes, one ignored pixel
    t = np.array([0, 0, 1, 1, 2, 2, 2, 255])
    p = np.array([0, 1, 1, 1, 2, 0, 2, 1])
    cm = ConfusionMatrix(3)
    cm.update(t, p)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert cm.pixels == 7  # the ignore label is left out
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 2 / (3 + 2 - 2) = 2/3
    assert cm.per_class_iou() == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)


def test_absent_classes_do_not_count_and_range_is_checked():
    cm = ConfusionMatrix(4)
    cm.update(np.array([[0, 0], [1, 1]]), np.array([[0, 0], [1, 0]]))
    ious = cm.per_class_iou()
    assert ious[2] is None and ious[3] is None  # in neither labels nor predictions
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="out of range"):
        cm.update(np.array([4]), np.array([0]))
    with pytest.raises(ValueError, match="prediction"):
        cm.update(np.array([0]), np.array([7]))
    assert ConfusionMatrix(2).miou() is None  # nothing seen yet


def test_perfect_and_worst_segmentation():
    t = np.random.default_rng(0).integers(0, 5, (3, 16, 16))
    good, bad = ConfusionMatrix(5), ConfusionMatrix(5)
    good.update(t, t)
    bad.update(t, (t + 1) % 5)
    assert good.miou() == 1.0 and good.pixel_accuracy() == 1.0
    assert bad.miou() == 0.0 and bad.pixel_accuracy() == 0.0


def test_topk_known_answer():
    logits = np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # label 1: top-1 hit
                       [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # label 4: top-5 hit only
                       [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])  # label 0: miss (rank 6)
    k = TopK()
    k.update(np.array([1, 4, 0]), logits)
    assert k.accuracy(1) == pytest.approx(1 / 3)
    assert k.accuracy(5) == pytest.approx(2 / 3)


def test_accumulator_segmentation_and_drop_in_points():
    labels = [np.array([[0, 1], [1, 255]])]
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[0, 1] = [[-1, 1], [1, 1]]  # predicts 0, 1 / 1, 1: perfect where labeled
    acc = TaskAccumulator("segmentation", 2, "out")
    pred = acc.update(logits, labels)
    assert pred.tolist() == [[[0, 1], [1, 1]]]
    eager = acc.result()
    assert eager.value == 1.0 and eager.primary == "miou" and eager.per_image == [1.0]
    worse = TaskMetrics(task="segmentation", output="out", images=1, miou=0.9875)
    assert worse.drop_below(eager) == pytest.approx(1.25)  # 100 * (1.0 - 0.9875)
    assert eager.drop_below(worse) == pytest.approx(-1.25)
    assert TaskMetrics(task="segmentation", output="out", images=0, miou=None).drop_below(eager) is None


def test_accumulator_classification():
    acc = TaskAccumulator("classification", 3, "logits", ["a", "b", "c"])
    acc.update(np.array([[3.0, 1, 0], [0, 1, 3.0]]), [0, 1])
    res = acc.result()
    assert res.top1 == 0.5 and res.top5 == 1.0 and res.miou is None
    assert res.per_image == [1.0, 0.0]
    d = res.model_dump(mode="json")
    assert d["metric"] == "top1" and d["value"] == 0.5 and d["classes"] == ["a", "b", "c"] and "per_image" not in d
    with pytest.raises(ValueError):
        TaskAccumulator("features", 3, "x")
    assert math.isclose(res.drop_below(res), 0.0)
