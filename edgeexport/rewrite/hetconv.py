"""HetConv forms as exact rewrites: reference -> dense / grouped (and back, for checks).

A :class:`~edgeexport.zoo.hetconv.HetConv` computes the same function in three forms that
share one state dict (see :mod:`edgeexport.zoo.hetconv`): ``reference`` (``out * in``
single-channel convolutions summed, the seed's code: thousands of ONNX nodes), ``dense``
(one 3x3 convolution, 1x1 kernels zero-padded to the centre tap) and ``grouped`` (a P-group
3x3 convolution between two channel permutations plus a pointwise convolution; the
cheapest, exact when ``P`` divides both channel counts, otherwise the layer computes the
dense form). Each rewrite sets ``form`` on every HetConv in place and returns how many
modules it changed (those whose ``form`` was different); parameters are untouched.
"""
from __future__ import annotations

from torch import nn

from edgeexport.zoo.hetconv import HetConv


def set_hetconv_form(model: nn.Module, form: str) -> int:
    count = 0
    for m in model.modules():
        if isinstance(m, HetConv) and m.form != form:
            m.form = form
            count += 1
    return count


def to_dense(model: nn.Module) -> int:
    """Every HetConv computes one dense 3x3 convolution."""
    return set_hetconv_form(model, "dense")


def to_grouped(model: nn.Module) -> int:
    """Every HetConv computes the grouped form (the dense one where the groups would be unequal)."""
    return set_hetconv_form(model, "grouped")


def to_reference(model: nn.Module) -> int:
    """Every HetConv computes the seed's per-channel sum (for checks, small layers only)."""
    return set_hetconv_form(model, "reference")
