"""Adaptive average pooling as two matrix products, exact for any input size.

``nn.AdaptiveAvgPool2d(k)`` averages bin ``i`` over rows ``floor(i*H/k) .. ceil((i+1)*H/k)``.
When ``k`` does not divide ``H`` the bins have unequal sizes and overlap, which ONNX's
fixed-kernel ``AveragePool`` cannot express: torch's TorchScript exporter refuses it and
the dynamo exporter unrolls it into hundreds of static ``Gather`` nodes. The same average is
``P_h @ x @ P_w^T`` with ``P[i, h] = 1/len(bin i)`` inside bin ``i``. The matrices are built
from the runtime shape (Range / comparisons / Div in ONNX), so one graph stays exact for
every input size: dynamic H and W keep working, and every target that has MatMul takes it.
"""
from __future__ import annotations

import torch
from torch import nn


def pooling_matrix(n_in, n_out: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    i = torch.arange(n_out, device=device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    pos = torch.arange(n_in, device=device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


class AdaptiveAvgPool2dMatmul(nn.Module):
    """Drop-in replacement of ``nn.AdaptiveAvgPool2d`` computed with MatMul."""

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh, ow = self.output_size
        oh = x.shape[-2] if oh is None else oh
        ow = x.shape[-1] if ow is None else ow
        ph = pooling_matrix(x.shape[-2], oh, x.dtype, x.device)
        pw = pooling_matrix(x.shape[-1], ow, x.dtype, x.device)
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _needs_rewrite(m: nn.Module) -> bool:
    if not isinstance(m, nn.AdaptiveAvgPool2d):
        return False
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    return size != (1, 1)  # global pooling exports as GlobalAveragePool everywhere


def rewrite_adaptive_pool(model: nn.Module) -> int:
    from edgeexport.rewrite import replace_modules

    return replace_modules(model, _needs_rewrite, lambda m: AdaptiveAvgPool2dMatmul(m.output_size))
