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


FORMATS: tuple[Format, ...] = (
    Format("onnx", ".onnx", "onnxruntime", ("fp32",), ("onnx", "onnxruntime", "onnxsim"),
           "pip install edgeexport", ("opset", "exporter", "simplify", "rewrites", "dynamic"), "any CPU"),
)

BACKENDS: dict[str, tuple[str, str]] = {
    # backend -> (python module, install hint)
    "torch": ("torch", "pip install torch"),
    "onnx": ("onnx", "pip install onnx"),
    "onnxruntime": ("onnxruntime", "pip install onnxruntime"),
    "onnxsim": ("onnxsim", "pip install onnxsim"),
    "onnxscript": ("onnxscript", "pip install onnxscript"),
}


def get_format(name: str) -> Format:
    return next(f for f in FORMATS if f.name == name)
