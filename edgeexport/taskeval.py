"""Task accuracy of a runner on labeled data, at the recipe's input shape.

:class:`TaskData` prepares a labeled set once for one model and shape (images resized by the
model's own preprocessing, masks through the same geometry by nearest neighbour); then
:meth:`TaskData.evaluate` scores any runner (eager PyTorch or an artifact, through the runner
interface) and returns :class:`~edgeexport.metrics.TaskMetrics`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeexport.errors import UserError
from edgeexport.metrics import TaskAccumulator, TaskMetrics

DEFAULT_FOLDER_CAP = 500  # images read from a user folder unless --eval-images says otherwise


@dataclass
class TaskData:
    task: str
    output: str  # the model output the metric reads
    num_classes: int
    classes: list[str] | None
    shape: tuple[int, int, int, int]
    source: dict
    names: list[list[str]] = field(default_factory=list)  # per batch
    images: list[np.ndarray] = field(default_factory=list)  # per batch: N x H x W x 3 uint8 (resized)
    labels: list[list] = field(default_factory=list)  # per batch: N masks (H x W uint8) or N class indices
    preprocess: object = None

    @classmethod
    def prepare(cls, labeled, handle, shape, log=lambda m: None) -> "TaskData":
        """``labeled``: a :class:`~edgeexport.datasets.labeled.LabeledSet`; ``handle``: the model (probed)."""
        outputs = [n for n in handle.output_names if handle.tasks.get(n) == labeled.task]
        if not outputs:
            raise UserError(f"labeled data is for {labeled.task}, but {handle.name} has no {labeled.task} output "
                            f"(outputs: {', '.join(f'{n} ({t})' for n, t in handle.tasks.items())})")
        output = outputs[0]
        num_classes = handle.num_classes_of(output)
        labeled.check_range(num_classes)
        n, c, h, w = shape
        pre = handle.preprocess
        data = cls(labeled.task, output, num_classes, labeled.classes or handle.class_names, tuple(shape),
                   labeled.describe(), preprocess=pre)
        names, images, labels = [], [], []
        for name, image, label in labeled:
            names.append(name)
            images.append(pre.resize(image, h, w))
            labels.append(pre.resize_mask(label, h, w) if labeled.task == "segmentation" else int(label))
            if len(names) == n:
                data.names.append(names)
                data.images.append(np.stack(images))
                data.labels.append(labels)
                names, images, labels = [], [], []
        if names:  # a last partial batch is left out: the graph may be static in N
            log(f"labeled data: the last {len(names)} image(s) do not fill a batch of {n} and are not used")
        if not data.images:
            raise UserError(f"labeled data has {len(labeled)} image(s), fewer than one batch of {n}")
        return data

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.names)

    def batches(self):
        for names, images, labels in zip(self.names, self.images, self.labels):
            yield names, self.preprocess.normalize(images), labels

    def evaluate(self, runner, input_name: str, keep_predictions: bool = False) -> tuple[TaskMetrics, list]:
        """Run every batch through an active runner; returns the metrics (and the predicted classes)."""
        acc = TaskAccumulator(self.task, self.num_classes, self.output, self.classes)
        preds = []
        for _, x, labels in self.batches():
            out = runner.infer({input_name: x})
            if self.output not in out:
                raise RuntimeError(f"the artifact has no output {self.output!r} (it has {sorted(out)})")
            logits = out[self.output]
            if self.task == "segmentation" and logits.shape[-2:] != x.shape[-2:]:
                raise RuntimeError(f"output {self.output!r} is {list(logits.shape)}, not at the input resolution "
                                   f"{list(x.shape[-2:])}")
            p = acc.update(logits, labels)
            if keep_predictions:
                preds.extend(p.astype(np.uint8) if self.task == "segmentation" else p.tolist())
        return acc.result(), preds

    def describe(self) -> dict:
        return {**self.source, "images_used": self.count, "output": self.output, "num_classes": self.num_classes,
                "input_shape": list(self.shape)}


def open_task_data(spec: str, count: int | None, handle, shape, log=lambda m: None) -> TaskData:
    from edgeexport.datasets import open_labeled, parse_builtin_spec

    task = next((t for t in handle.tasks.values() if t in ("segmentation", "classification")), None)
    cap = count
    if cap is None and parse_builtin_spec(spec) is None:
        cap = DEFAULT_FOLDER_CAP
    labeled = open_labeled(spec, count=cap, task=task)
    return TaskData.prepare(labeled, handle, shape, log)
