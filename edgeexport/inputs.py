"""Where a run's inputs come from: evaluation images, labeled data, calibration images.

* **Evaluation images** (:class:`InputSource`): the bundled photographs (``eval`` split), a folder of
  the user's images, the images of a labeled set, or random tensors (only when asked for).
* **Labeled data** (:func:`eval_data_spec`): the recipe's folder or built-in task, or the built-in task
  trained weights were trained on.
* **Calibration images** (:func:`calibration_batches`): the stage's folder (or a built-in task's split
  such as ``shapes_seg:calib``), else the calibration split of the trained weights' task, else the
  bundled calibration photographs. The evaluation images (and a task's evaluation split) are never used
  for calibration (:func:`check_calibration_source`).

The pipeline asks this module once per question; the images themselves come from
:mod:`edgeexport.images` and :mod:`edgeexport.datasets`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeexport.datasets import open_labeled, parse_builtin_spec
from edgeexport.errors import UserError
from edgeexport.images import Preprocess, augment, folder_images, photos

SOURCES = ("photos", "folder", "random", "eval_data")


@dataclass(frozen=True)
class InputSource:
    """Where input samples come from: bundled photos (a split), a user folder, or random noise."""

    source: str = "photos"
    split: str = "eval"
    folder: str | None = None
    seed: int = 0

    def images(self) -> list[tuple[str, np.ndarray]]:
        if self.source == "photos":
            return photos(self.split)
        if self.source == "eval_data":  # the images of a labeled set (a folder or a built-in task)
            return [(name, image) for name, image, _ in open_labeled(self.folder, count=64)]
        if self.source == "folder":
            if not self.folder:
                raise UserError("input source 'folder' needs a folder path")
            return folder_images(self.folder)
        raise UserError(f"input source {self.source!r} has no images")

    def batches(self, shape: tuple[int, ...], count: int, preprocess: Preprocess,
                augmented: bool = False) -> Iterator[tuple[list[str], np.ndarray]]:
        """``count`` NCHW float32 batches of the given shape, with the names of their images.

        Images are used in order and cycled; with ``augmented`` every reuse is a new random crop.
        """
        n, c, h, w = shape
        if c != 3 and self.source != "random":
            raise UserError(f"photographs have 3 channels, the model input has {c}")
        if self.source == "random":
            rng = np.random.default_rng(self.seed)
            for i in range(count):
                yield [f"random{i}"], rng.standard_normal(shape, dtype=np.float32)
            return
        images = self.images()
        rng = np.random.default_rng(self.seed)
        k = 0
        for _ in range(count):
            names, arrays = [], []
            for _ in range(n):
                name, img = images[k % len(images)]
                if augmented and k >= len(images):
                    img, name = augment(img, rng), f"{name}#aug{k}"
                names.append(name)
                arrays.append(preprocess(img, h, w))
                k += 1
            yield names, np.stack(arrays)


# ---------------------------------------------------------------- labeled data


def eval_data_spec(spec: str, trained_dataset: str | None) -> str | None:
    """The labeled data a run uses: ``spec`` (a folder or a built-in task), none for ``"none"``, and for
    ``"auto"`` the evaluation split of the built-in task the weights were trained on (if they were)."""
    if spec == "none":
        return None
    if spec == "auto":
        return f"{trained_dataset}:eval" if trained_dataset else None
    return spec


# ---------------------------------------------------------------- calibration


def _builtin(spec: str | None):
    return parse_builtin_spec(spec) if spec else None


def check_calibration_source(spec: str, eval_folder: str | None = None, eval_spec: str | None = None) -> None:
    """Refuse a calibration source that is missing, empty, unreadable, or the evaluation data itself."""
    builtin = _builtin(spec)
    if builtin is not None:
        ds, split, seed = builtin
        ev = _builtin(eval_spec)
        if split == "eval" or (ev is not None and (ds.name, split, seed) == (ev[0].name, ev[1], ev[2])):
            raise UserError(f"calibration data {spec} is the evaluation data; use the calib split "
                            f"({ds.name}:calib)")
        return
    for other in (eval_folder, eval_spec):
        if other and _builtin(other) is None and Path(spec).resolve() == Path(other).resolve():
            raise UserError("calibration and evaluation images must be different folders")
    folder_images(spec)


def calibration_batches(shape, count: int, preprocess: Preprocess, folder: str | None = None,
                        eval_folder: str | None = None) -> list[np.ndarray]:
    """``count`` batches from ``folder`` (images, or a built-in task's split), else from the calibration
    photographs (disjoint from the evaluation set). Photos are reused as random crops/flips once every
    image has been seen; a built-in task yields new samples for every image."""
    if count < 1:
        raise UserError("calibration size must be at least 1")
    n, c, h, w = shape
    builtin = _builtin(folder)
    if builtin is not None:
        check_calibration_source(folder, eval_folder)
        ds, split, seed = builtin
        out = []
        for b in range(count):
            images = [ds.sample(split, seed, b * n + i)[0] for i in range(n)]
            out.append(np.stack([preprocess(im, h, w) for im in images]))
        return out
    if folder is not None:
        if eval_folder is not None and Path(folder).resolve() == Path(eval_folder).resolve():
            raise UserError("calibration and evaluation images must be different folders")
        source = InputSource("folder", folder=folder, seed=7)
    else:
        source = InputSource("photos", split="calib", seed=7)
    return [b for _, b in source.batches(tuple(shape), count, preprocess, augmented=True)]
