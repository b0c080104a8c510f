"""ONNX Runtime (CPU execution provider) for .onnx artifacts of any precision."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeexport.runners.base import Runner


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 optimization: str = "all"):
        super().__init__(threads)
        self.path = Path(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization = optimization
        self.session = None

    @classmethod
    def availability(cls):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        return True, ""

    def _activate(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), so, providers=self.providers)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feed):
        arrays = self.session.run(self._outputs, {n: np.ascontiguousarray(feed[n]) for n in self._inputs})
        return {n: np.asarray(a) for n, a in zip(self._outputs, arrays)}

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**super().describe(), "runtime": f"onnxruntime {ort.__version__}", "device": "cpu",
                "providers": self.providers, "artifact": str(self.path)}
