"""edgeexport: take PyTorch vision models to edge runtimes and prove they still compute the same.

Optional backends (CoreML, TensorRT, ExecuTorch, LiteRT, ncnn, OpenVINO) are imported lazily, only
by the target that needs them.
"""
from edgeexport.version import __version__  # noqa: F401
