"""Eager PyTorch: the reference every artifact is compared against."""
from __future__ import annotations

import numpy as np
import torch

from edgeexport.runners.base import Runner


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str],
                 threads: int | None = None, device: str = "cpu"):
        super().__init__(threads)
        self.model, self._inputs, self._outputs, self.device = model, list(input_names), list(output_names), device
        self._saved_threads: int | None = None

    def _activate(self) -> None:
        if self.threads:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self.model.eval().to(self.device)

    def _deactivate(self) -> None:
        if self._saved_threads:
            torch.set_num_threads(self._saved_threads)

    @torch.inference_mode()
    def _infer(self, feed):
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])).to(self.device) for n in self._inputs]
        out = self.model(*args)
        if self.device != "cpu":
            torch.cuda.synchronize()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.detach().float().cpu().numpy() for n, t in zip(self._outputs, outs)}

    def describe(self) -> dict:
        return {**super().describe(), "runtime": f"torch {torch.__version__}", "device": self.device,
                "artifact": None, "precision": "fp32"}
