"""Calibration data: real photographs through ONNX Runtime's ``CalibrationDataReader``."""
from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgeexport.data import InputSource, Preprocess
from edgeexport.errors import UserError


def calibration_batches(shape, count: int, preprocess: Preprocess, folder: str | None = None,
                        eval_folder: str | None = None) -> list[np.ndarray]:
    """``count`` batches from the calibration photographs (disjoint from the evaluation set), or
    from ``folder``. Photos are reused as random crops/flips once every image has been seen."""
    if count < 1:
        raise UserError("calibration size must be at least 1")
    if folder is not None:
        from pathlib import Path

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
