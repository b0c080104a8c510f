"""CoreML packages through coremltools' ``MLModel.predict`` (macOS only)."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from edgeexport.runners.base import Runner

COMPUTE_UNITS = ("cpu_only", "cpu_and_gpu", "all", "cpu_and_ne")


class CoreMLRunner(Runner):
    backend = "coreml"

    def __init__(self, path: str | Path, threads: int | None = None, compute_units: str = "cpu_only"):
        super().__init__(threads)
        self.path, self.compute_units = Path(path), compute_units

    @classmethod
    def availability(cls):
        if platform.system() != "Darwin":
            return False, "CoreML prediction needs macOS (coremltools converts on Linux but cannot predict)"
        try:
            from edgeexport.util import quiet

            with quiet():
                import coremltools  # noqa: F401
        except ImportError:
            return False, "coremltools is not installed (pip install 'edgeexport[coreml]')"
        return True, ""

    def _activate(self) -> None:
        import coremltools as ct

        units = {"cpu_only": ct.ComputeUnit.CPU_ONLY, "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
                 "all": ct.ComputeUnit.ALL, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE}[self.compute_units]
        self.model = ct.models.MLModel(str(self.path), compute_units=units)
        spec = self.model.get_spec()
        self._inputs = [i.name for i in spec.description.input]
        self._outputs = [o.name for o in spec.description.output]

    def _infer(self, feed):
        out = self.model.predict({n: np.ascontiguousarray(feed[n]) for n in self._inputs})
        return {n: np.asarray(out[n], dtype=np.float32) for n in self._outputs}

    def _deactivate(self) -> None:
        self.model = None

    def describe(self) -> dict:
        import coremltools as ct

        return {**super().describe(), "runtime": f"coremltools {ct.__version__}", "device": self.compute_units,
                "artifact": str(self.path)}
