"""Calibration data: real photographs (or a labeled task's calibration split) through ONNX Runtime's
``CalibrationDataReader``.

Sources, in order of preference: the stage's ``calib_folder`` (a folder of images, or a built-in
task's split such as ``shapes_seg:calib``); the calibration split of the built-in task that
trained weights were trained on; the bundled calibration photographs. The evaluation images
(and the evaluation split of a task) are never used for calibration.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgeexport.data import InputSource, Preprocess
from edgeexport.errors import UserError


def _builtin(spec: str | None):
    if not spec:
        return None
    from edgeexport.datasets import parse_builtin_spec

    return parse_builtin_spec(spec)


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
    from edgeexport.data import folder_images

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


class BatchReader(CalibrationDataReader):
    """Feeds a fixed list of batches to ONNX Runtime's calibrators; rewindable."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches = input_name, batches
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {self.input_name: b}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
