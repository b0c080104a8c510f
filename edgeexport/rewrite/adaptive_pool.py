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

from edgeexport.rewrite.modules import replace_modules


def _static_mask(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """The bins of a static size as a constant: a traced program then carries a ready matrix instead of
    integer index arithmetic, which PT2E int8 quantizers would otherwise try to observe as floats."""
    rows = [[(i * n_in) // n_out <= h < -(-(i + 1) * n_in // n_out) for h in range(n_in)] for i in range(n_out)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def pooling_matrix(n_in, n_out: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    if isinstance(n_in, int):
        inside = _static_mask(n_in, n_out, device).to(dtype)
        return inside / inside.sum(dim=1, keepdim=True)
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
    return replace_modules(model, _needs_rewrite, lambda m: AdaptiveAvgPool2dMatmul(m.output_size))


# ---------------------------------------------------------------- adaptive max pooling
#
# ``nn.AdaptiveMaxPool2d(k)`` takes the maximum over the same bins as the average above.
# ONNX has no adaptive max pooling: the TorchScript exporter emits ``GlobalMaxPool`` for
# 1x1 and otherwise a ``MaxPool`` whose kernel it computes from the export size, so it
# refuses dynamic H/W ("input size not accessible") and sizes that ``k`` does not divide.
# A maximum is no matrix product, so the rewrite masks instead: each axis is reduced in
# turn (bins are rectangles, the maximum is separable), every element outside a bin is
# replaced by a value no larger than any element of the map, and ``ReduceMax`` takes the
# bin's maximum. The fill is the map's own per-channel minimum, not -inf: bins are never
# empty, so the result is the same, and every intermediate stays finite (int8 calibration
# of the ``Where`` output keeps a usable range). Like the average, the masks come from the
# runtime shape (Range / comparisons), so one graph is exact for every input size.


def bin_mask(n_in, n_out: int, device=None) -> torch.Tensor:
    """``mask[i, h]``: position ``h`` of an axis of length ``n_in`` lies in adaptive bin ``i`` of ``n_out``."""
    if isinstance(n_in, int):
        return _static_mask(n_in, n_out, device)
    i = torch.arange(n_out, device=device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    pos = torch.arange(n_in, device=device)
    return (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])


def _masked_max(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, axis: int) -> torch.Tensor:
    """Max of ``x`` over the bins of ``mask`` ([bins, len]) along ``axis`` (-2 or -1); bins take its place."""
    if axis == -2:  # x: [N, C, H, W] -> [N, C, bins, H, W], reduce H
        m = mask[:, :, None]
        return torch.where(m, x[:, :, None], fill[:, :, None]).amax(dim=-2)
    # x: [N, C, B, W] -> [N, C, B, bins, W], reduce W
    return torch.where(mask, x[..., None, :], fill[..., None, :]).amax(dim=-1)


class AdaptiveMaxPool2dMasked(nn.Module):
    """Drop-in replacement of ``nn.AdaptiveMaxPool2d`` (without indices) computed by masking."""

    def __init__(self, output_size):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        oh, ow = self.output_size
        squeeze = x.dim() == 3
        if squeeze:
            x = x[None]
        if (oh, ow) == (1, 1):  # global: a plain reduction (ExecuTorch has no adaptive_max_pool2d kernel)
            x = x.amax(dim=(-2, -1), keepdim=True)
            return x[0] if squeeze else x
        fill = x.amin(dim=(-2, -1), keepdim=True)  # [N, C, 1, 1]: <= every element, finite
        if oh is not None:
            x = _masked_max(x, bin_mask(x.shape[-2], oh, x.device), fill, -2)
        if ow is not None:
            x = _masked_max(x, bin_mask(x.shape[-1], ow, x.device), fill, -1)
        return x[0] if squeeze else x

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _needs_max_rewrite(m: nn.Module) -> bool:
    return isinstance(m, nn.AdaptiveMaxPool2d) and not m.return_indices


def rewrite_adaptive_max_pool(model: nn.Module) -> int:
    return replace_modules(model, _needs_max_rewrite, lambda m: AdaptiveMaxPool2dMasked(m.output_size))
