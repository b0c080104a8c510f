"""Calibration batches for ONNX Runtime's calibrators (``CalibrationDataReader``).

Which images calibrate is :func:`edgeexport.inputs.calibration_batches`' choice (never the evaluation
images); this module only feeds them to ONNX Runtime.
"""
from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


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
