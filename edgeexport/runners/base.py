"""The runner interface every backend implements (Polygraphy-style lifecycle).

A runner loads one artifact (or wraps an eager model), runs *named* numpy inputs and
returns *named* numpy outputs, and describes itself. Parity and benchmarking only ever
talk to this interface, so they never special-case a backend:

    with SomeRunner(path, threads=2) as r:      # activate() ... deactivate()
        outputs = r.infer({"input": x})         # dict[str, np.ndarray] -> dict[str, np.ndarray]

Whether a runtime can execute on this machine (CoreML off macOS, TensorRT without a GPU) is its
target's ``run_availability()``: :func:`edgeexport.targets.make_runner` refuses a runner whose
runtime is missing (one line, exit 2), and the pipeline records such a check as "not run on this
machine" instead of running it.

Runners of exported artifacts live with their target (``edgeexport/targets/<name>.py``) and are
made from a serialisable :class:`~edgeexport.targets.base.RunnerSpec`; this package holds the
interface, the eager PyTorch reference and ONNX Runtime's runner (the reference for a user's
``.onnx`` file, and the runtime of every ONNX artifact).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class Tap:
    """One intermediate tensor a runtime computed, and where it came from in the user's model."""

    name: str  # the runtime's own name for it (ONNX tensor, OpenVINO op, LiteRT tensor, ncnn blob)
    module: str | None  # the path of the module of the user's model that produced it (None: unknown)
    op: str  # the runtime's operator that produced it
    array: np.ndarray  # float32, dequantized; in the runtime's layout
    layout: str = "nchw"  # "nhwc" (LiteRT) or "chw" (ncnn: one batch item, no batch axis)
    alternatives: tuple[str, ...] = ()  # the other modules a fused op names, in the runtime's order


class TapsUnavailable(RuntimeError):
    """This runtime (or this build of it) cannot return intermediate tensors."""


class Runner(abc.ABC):
    backend: ClassVar[str] = "?"

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self.is_active = False
        self._inputs: list[str] = []  # set by the constructor or by _activate()
        self._outputs: list[str] = []

    # ---- lifecycle
    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        """Release the session / model; default: nothing to release."""

    # ---- inference
    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__}.infer() called before activate()")
        missing = [n for n in self.input_names if n not in feed]
        if missing:
            raise KeyError(f"missing inputs {missing}; this runner takes {self.input_names}")
        return self._infer(feed)

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def taps(self, feed: dict[str, np.ndarray]) -> list[Tap]:
        """Run ``feed`` (one sample) and return every intermediate tensor the runtime can expose, in the order
        it computed them, each attributed to a module of the user's model where the artifact records one."""
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__}.taps() called before activate()")
        return self._taps(feed)

    def _taps(self, feed: dict[str, np.ndarray]) -> list[Tap]:
        raise TapsUnavailable(f"{self.backend} cannot return intermediate tensors")

    def describe(self) -> dict:
        """Backend, runtime version, device, threads, artifact: what a report needs to say."""
        return {"backend": self.backend, "threads": self.threads}
