"""edgeexport: take PyTorch vision models to edge runtimes and prove they still compute the same.

>>> import torch, edgeexport
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
>>> report = edgeexport.export(model, (1, 3, 64, 64), targets=["onnx", "onnx-int8"])   # doctest: +SKIP

The library API (:mod:`edgeexport.api`): :func:`export`, :func:`check`, :func:`diff`, :func:`run`, :func:`verify`,
:func:`matrix`, :func:`load_report`, :func:`recipe_for`; the typed :class:`Report` they return. They are
imported on first use, so ``import edgeexport`` stays cheap, and optional backends (CoreML, TensorRT,
ExecuTorch, LiteRT, ncnn, OpenVINO) are imported only by the target that needs them.
"""
from edgeexport.version import __version__  # noqa: F401

_API = ("export", "check", "diff", "run", "verify", "matrix", "load_report", "recipe_for", "Report", "ArtifactResult",
        "Recipe", "Tolerance", "UserError", "EdgeExportError", "Unsupported")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from edgeexport import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgeexport' has no attribute {name!r}")
