"""Task metrics on labeled data: what users judge a reduced-precision artifact by.

* segmentation: a confusion matrix over every labeled pixel (the ignore label, 255 by the
  Pascal VOC convention, is left out), from which pixel accuracy, per-class IoU and mIoU
  (the mean over classes that occur in the labels or the predictions, background included)
  are read;
* classification: top-1 and top-5 accuracy.

Values are fractions (0..1); drops against eager PyTorch are reported in **points**
(percentage points: ``100 * (eager - artifact)``), as accuracy tables in the field are.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, computed_field

from edgeexport.util import Data

IGNORE_INDEX = 255
PRIMARY = {"segmentation": "miou", "classification": "top1"}


class ConfusionMatrix:
    """Rows: true class, columns: predicted class."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        target, pred = np.asarray(target).reshape(-1), np.asarray(pred).reshape(-1)
        if target.shape != pred.shape:
            raise ValueError(f"target has {target.size} pixels, prediction {pred.size}")
        keep = target != self.ignore_index
        t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"label {int(t.max())} out of range for {self.num_classes} classes")
        if p.size and (p.min() < 0 or p.max() >= self.num_classes):
            raise ValueError(f"prediction {int(p.max())} out of range for {self.num_classes} classes")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes ** 2).reshape(
            self.num_classes, self.num_classes)

    @property
    def pixels(self) -> int:
        return int(self.matrix.sum())

    def pixel_accuracy(self) -> float | None:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else None

    def per_class_iou(self) -> list[float | None]:
        """IoU per class; None where the class is in neither the labels nor the predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        return [float(t / u) if u > 0 else None for t, u in zip(tp, union)]

    def miou(self) -> float | None:
        ious = [v for v in self.per_class_iou() if v is not None]
        return float(np.mean(ious)) if ious else None


class TopK:
    def __init__(self, ks=(1, 5)):
        self.ks = tuple(ks)
        self.correct = {k: 0 for k in self.ks}
        self.count = 0

    def update(self, labels: np.ndarray, logits: np.ndarray) -> None:
        labels = np.asarray(labels).reshape(-1)
        logits = np.asarray(logits).reshape(len(labels), -1)
        order = np.argsort(-logits, axis=1, kind="stable")
        for k in self.ks:
            kk = min(k, logits.shape[1])
            self.correct[k] += int((order[:, :kk] == labels[:, None]).any(1).sum())
        self.count += len(labels)

    def accuracy(self, k: int) -> float | None:
        return self.correct[k] / self.count if self.count else None


class TaskMetrics(Data):
    """Task metrics of one model or artifact on one labeled set (fractions, 0..1)."""

    task: Literal["segmentation", "classification"]
    output: str  # the model output the metric reads
    images: int
    miou: float | None = None  # segmentation
    pixel_accuracy: float | None = None
    per_class_iou: list[float | None] | None = None
    top1: float | None = None  # classification
    top5: float | None = None
    classes: list[str] | None = None
    per_image: list[float] = Field(default_factory=list, exclude=True)  # primary metric per image (worst-image views)

    @computed_field
    @property
    def metric(self) -> str:
        """The primary metric's name (``miou`` or ``top1``)."""
        return PRIMARY[self.task]

    @computed_field
    @property
    def value(self) -> float | None:
        """The primary metric's value."""
        return getattr(self, self.metric)

    @property
    def primary(self) -> str:
        return self.metric

    def drop_below(self, reference: "TaskMetrics") -> float | None:
        """How many points this is below ``reference`` (negative: better than the reference)."""
        if self.value is None or reference.value is None:
            return None
        return 100.0 * (reference.value - self.value)


class TaskAccumulator:
    """Accumulates predictions of one output against labels."""

    def __init__(self, task: str, num_classes: int, output: str, classes: list[str] | None = None):
        if task not in PRIMARY:
            raise ValueError(f"no task metric for {task!r}")
        self.task, self.output, self.classes = task, output, classes
        self.num_classes = num_classes
        self.cm = ConfusionMatrix(num_classes) if task == "segmentation" else None
        self.topk = TopK() if task == "classification" else None
        self.images = 0
        self.per_image: list[float] = []

    def update(self, logits: np.ndarray, labels) -> np.ndarray:
        """Add one batch (NxCxHxW logits with NxHxW labels, or NxC logits with N labels);
        returns the predicted classes."""
        pred = np.asarray(logits).argmax(1)
        if self.task == "segmentation":
            for t, p in zip(labels, pred):
                one = ConfusionMatrix(self.num_classes)
                one.update(t, p)
                self.cm.matrix += one.matrix
                self.per_image.append(one.miou() if one.pixels else float("nan"))
        else:
            labels = np.asarray(labels).reshape(-1)
            self.topk.update(labels, logits)
            self.per_image += (pred == labels).astype(float).tolist()
        self.images += len(pred)
        return pred

    def result(self) -> TaskMetrics:
        if self.task == "segmentation":
            values = {"miou": self.cm.miou(), "pixel_accuracy": self.cm.pixel_accuracy(),
                      "per_class_iou": self.cm.per_class_iou()}
        else:
            values = {"top1": self.topk.accuracy(1), "top5": self.topk.accuracy(5)}
        return TaskMetrics(task=self.task, output=self.output, images=self.images, classes=self.classes,
                           per_image=self.per_image, **values)
