"""Runners: one small module per backend, all implementing :class:`~edgeexport.runners.base.Runner`.

Backend modules are imported lazily through :func:`runner_class`, so a missing optional
runtime disables only its own backend.
"""
from __future__ import annotations

import importlib

from edgeexport.runners.base import Runner

_RUNNERS = {
    "torch": "edgeexport.runners.torch_eager:TorchRunner",
    "onnxruntime": "edgeexport.runners.onnxruntime:OnnxRuntimeRunner",
    "tensorrt": "edgeexport.runners.tensorrt:TensorRTRunner",
    "coreml": "edgeexport.runners.coreml:CoreMLRunner",
    "executorch": "edgeexport.runners.executorch:ExecuTorchRunner",
}


def runner_class(backend: str) -> type[Runner]:
    module, _, attr = _RUNNERS[backend].partition(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["Runner", "runner_class"]
