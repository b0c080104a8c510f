"""ExecuTorch programs through ExecuTorch's Python runtime (XNNPACK delegate kernels).

The XNNPACK thread pool is sized to the same thread count as every other backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeexport.runners.base import Runner


class ExecuTorchRunner(Runner):
    backend = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None, input_names=("input",), output_names=()):
        super().__init__(threads)
        self.path = Path(path)
        self._inputs, self._outputs = list(input_names), list(output_names)

    @classmethod
    def availability(cls):
        try:
            from edgeexport.util import quiet

            with quiet():
                import executorch.runtime  # noqa: F401
        except ImportError:
            return False, "executorch is not installed (pip install 'edgeexport[executorch]')"
        return True, ""

    def _activate(self) -> None:
        import torch

        from edgeexport.util import quiet

        self.torch = torch
        with quiet():
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            if self.threads:
                portable_lib._unsafe_reset_threadpool(self.threads)
            self.program = Runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")

    def _infer(self, feed):
        args = [self.torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self._inputs]
        outs = self.method.execute(args)
        names = self._outputs or [f"output{i}" for i in range(len(outs))]
        return {n: o.detach().numpy().astype(np.float32, copy=False) for n, o in zip(names, outs)}

    def _deactivate(self) -> None:
        self.method = self.program = None

    def describe(self) -> dict:
        from importlib.metadata import version

        return {**super().describe(), "runtime": f"executorch {version('executorch')}", "device": "cpu (xnnpack)",
                "artifact": str(self.path)}
