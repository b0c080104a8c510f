"""edgeexport: take PyTorch vision models to edge runtimes and prove they still compute the same.

>>> import torch, edgeexport
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
>>> report = edgeexport.export(model, (1, 3, 64, 64), targets=["onnx", "onnx-int8"])   # doctest: +SKIP

The library API (:mod:`edgeexport.api`): :func:`export`, :func:`check`, :func:`diff`, :func:`run`, :func:`verify`,
:func:`matrix`, :func:`load_report`, :func:`recipe_for`; the typed :class:`Report` they return. They are
imported on first use, so ``import edgeexport`` stays cheap, and optional backends (CoreML, TensorRT,
ExecuTorch, LiteRT, ncnn, OpenVINO) are imported only by the target that needs them.
"""
import os as _os

from edgeexport.version import __version__  # noqa: F401

# No third-party telemetry: ONNX Runtime (1.29+ on Linux and macOS) otherwise writes a device id and an event
# database under ~/.cache/Microsoft and uploads usage events. It reads this once, when it initialises, so it is
# set before any module of ours imports it. (OpenVINO's and NNCF's are turned off by the OpenVINO target, Ray's
# usage statistics by the matrix.)
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

_API = ("export", "check", "diff", "run", "verify", "matrix", "load_report", "recipe_for", "Report", "ArtifactResult",
        "Recipe", "Tolerance", "UserError", "EdgeExportError", "Unsupported")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from edgeexport import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeexport' has no attribute {name!r}")
