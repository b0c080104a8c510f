"""Rank-4 forms of public blocks whose forward goes through a 5-D tensor or a strided slice, for runtimes
whose tensors have at most four dimensions with the batch first (ncnn).

ncnn's blobs have at most 4 dimensions and pnnx treats the first as the batch. timm's attention blocks
split ``qkv`` by reshaping to ``[B, N, 3, heads, head_dim]``, permuting the ``3`` to the front (moving the
batch) and unbinding it; pnnx leaves ``torch.unbind`` in the graph and ncnn cannot load it. The same
split is three chunks of the last axis, each reshaped to ``[B, N, heads, head_dim]``: the numbers are
the same, every tensor stays rank 4. LeViT's downsample takes every second row and column with a strided
slice, which ncnn has no layer for; a 1x1 max pooling with the same stride picks the same elements.

Each rewrite is matched by the block's class (timm's, by qualified name, so timm is never imported
here) and then *checked on the block itself*: the replacement runs on a random input beside the
original and is kept only if it agrees to float rounding. A timm release that changes a block's forward
therefore leaves the block as it was, and the converter's own refusal names it, instead of a silent
change of numbers.

Not here: EdgeNeXt's cross-covariance attention. Its chunked form converts, but ncnn computes it wrong
(NaN through ``Normalize``; written out as sum / sqrt / divide, errors of 1e12 through rank-4 ``MatMul``),
so ncnn keeps refusing ``torch.unbind`` there, which is the honest answer.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads * d] -> [B, heads, N, d]."""
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def _vit_attention(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """timm's ``Attention`` (ViT, DeiT, MobileViT...) with qkv split by chunks."""
    if attn_mask is not None or is_causal:
        return type(self).forward(self, x, attn_mask, is_causal)
    b, n, _ = x.shape
    gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
    q, k, v = (_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
    if gate is not None:
        x = x * gate
    return self.proj_drop(self.proj(x))


def _strided_downsample(self, x: torch.Tensor) -> torch.Tensor:
    """timm LeViT's ``Downsample`` without pooling: ``x[:, ::s, ::s]`` as a 1x1 max pooling of stride s."""
    if self.pool is not None:
        return type(self).forward(self, x)
    b, _, c = x.shape
    x = x.view(b, self.resolution[0], self.resolution[1], c).permute(0, 3, 1, 2)
    x = F.max_pool2d(x, kernel_size=1, stride=self.stride)
    return x.permute(0, 2, 3, 1).reshape(b, -1, c)


def _tokens(m: nn.Module) -> torch.Tensor:
    return torch.randn(2, 16, m.qkv.in_features)


def _grid(m: nn.Module) -> torch.Tensor:
    h, w = m.resolution
    return torch.randn(2, h * w, 8)


# class qualified name -> (rank-4 forward, a random input for the block's self-check)
FORMS = {
    "timm.layers.attention.Attention": (_vit_attention, _tokens),
    "timm.models.levit.Downsample": (_strided_downsample, _grid),
}


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


@torch.no_grad()
def _agrees(m: nn.Module, forward, example) -> bool:
    was_training = m.training
    m.eval()
    try:
        x = example(m)
        want = m(x)
        got = forward(m, x)
        scale = want.abs().max().clamp_min(1e-6)
        return got.shape == want.shape and bool(((got - want).abs().max() / scale) < 1e-4)
    except Exception:  # noqa: BLE001 - a form that does not even run on this block is not this block's form
        return False
    finally:
        m.train(was_training)


def rewrite_rank4(model: nn.Module) -> int:
    """Give every block with a known rank-4 form that form (in place); returns how many changed."""
    count = 0
    for m in model.modules():
        form = FORMS.get(_qualname(m))
        if form is None or "forward" in vars(m):
            continue
        forward, example = form
        if _agrees(m, forward, example):
            m.forward = types.MethodType(forward, m)
            count += 1
    return count
