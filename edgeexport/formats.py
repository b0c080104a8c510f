"""The single table of export formats: artifact suffix, backend, what it needs, which options.

Every command, the recipe stages, ``doctor`` and the reports read this table; nothing
else lists formats.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # the recipe stage / CLI command that builds it
    suffix: str  # artifact name is NAME + suffix
    backend: str  # runner that executes it
    precisions: tuple[str, ...]
    requires: tuple[str, ...]  # python modules the builder needs
    install: str  # how to get them
    options: tuple[str, ...]  # recipe / CLI options of the stage
    runs_on: str  # where the runner can execute


_QUANT_OPTS = ("calib_size", "calib_folder", "method", "per_channel", "format", "exclude", "budget", "plans")

FORMATS: tuple[Format, ...] = (
    Format("onnx", ".onnx", "onnxruntime", ("fp32",), ("onnx", "onnxruntime", "onnxsim"),
           "pip install edgeexport", ("opset", "exporter", "simplify", "rewrites", "dynamic"), "any CPU"),
    Format("onnx-int8", ".int8.onnx", "onnxruntime", ("int8",), ("onnxruntime",), "pip install edgeexport",
           _QUANT_OPTS, "any CPU (fast int8 on AVX512-VNNI / AVX-VNNI / ARM dot-product)"),
    Format("onnx-int8-dynamic", ".int8-dynamic.onnx", "onnxruntime", ("int8",), ("onnxruntime",),
           "pip install edgeexport", ("per_channel",), "any CPU"),
    Format("onnx-fp16", ".fp16.onnx", "onnxruntime", ("fp16",), ("onnxconverter_common",),
           "pip install onnxconverter-common", (), "GPUs and fp16-capable CPUs; slower than fp32 on x86 CPUs"),
    Format("onnx-int8-tensorrt", ".int8-tensorrt.onnx", "onnxruntime", ("int8",), ("onnxruntime",),
           "pip install edgeexport", _QUANT_OPTS, "input to TensorRT --int8 (symmetric int8 Q/DQ)"),
    Format("tensorrt", ".engine", "tensorrt", ("fp32", "fp16", "int8"), ("tensorrt", "cuda"),
           "pip install 'edgeexport[tensorrt]' on a machine with an NVIDIA GPU",
           ("fp16", "int8", "min_shape", "opt_shape", "max_shape", "workspace_mib", "timing_cache"),
           "the NVIDIA GPU (and TensorRT version) that built it"),
    Format("coreml", ".mlpackage", "coreml", ("fp32", "fp16"), ("coremltools",), "pip install 'edgeexport[coreml]'",
           ("precision", "compress", "deployment_target", "compute_units"), "macOS / iOS (converts anywhere)"),
    Format("executorch", ".pte", "executorch", ("fp32", "int8"), ("executorch",),
           "pip install 'edgeexport[executorch]'", ("quantize", "calib_size"), "any CPU with the ExecuTorch runtime"),
)


def format_for_path(path: str) -> Format | None:
    """The format of an artifact file, by its name (longest suffix wins)."""
    matches = [f for f in FORMATS if str(path).rstrip("/").endswith(f.suffix)]
    return max(matches, key=lambda f: len(f.suffix)) if matches else None

BACKENDS: dict[str, tuple[str, str]] = {
    # backend -> (python module, install hint)
    "torch": ("torch", "pip install torch"),
    "onnx": ("onnx", "pip install onnx"),
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "onnxsim": ("onnxsim", "pip install onnxsim"),
    "onnxscript": ("onnxscript", "pip install onnxscript"),
    "onnxconverter_common": ("onnxconverter_common", "pip install onnxconverter-common"),
    "coremltools": ("coremltools", "pip install 'edgeexport[coreml]'"),
    "executorch": ("executorch", "pip install 'edgeexport[executorch]'"),
    "tensorrt": ("tensorrt", "pip install 'edgeexport[tensorrt]' (NVIDIA GPU + driver; wheels from NVIDIA's index)"),
}


def get_format(name: str) -> Format:
    return next(f for f in FORMATS if f.name == name)
