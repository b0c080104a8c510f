"""Exact, export-friendly rewrites applied to a copy of the model before export.

Each rewrite is a function ``model -> count`` that edits the model in place and returns
how many modules it changed; the pipeline reports the counts. Every rewrite is verified
numerically against the original module in the tests.
"""
from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from edgeexport.errors import UserError
from edgeexport.rewrite.modules import replace_modules  # noqa: F401  (part of the package's interface)
from edgeexport.rewrite.adaptive_pool import rewrite_adaptive_max_pool, rewrite_adaptive_pool
from edgeexport.rewrite.fold_bn import rewrite_fold_bn
from edgeexport.rewrite.rank4 import rewrite_rank4
from edgeexport.rewrite.reparameterize import rewrite_reparameterize


def _hetconv(form: str) -> Callable[[nn.Module], int]:
    def rewrite(model: nn.Module) -> int:
        from edgeexport.rewrite.hetconv import set_hetconv_form

        return set_hetconv_form(model, form)

    rewrite.__name__ = f"hetconv_{form}"
    return rewrite


REWRITES: dict[str, Callable[[nn.Module], int]] = {
    "adaptive_pool": rewrite_adaptive_pool,
    "adaptive_max_pool": rewrite_adaptive_max_pool,
    "fold_bn": rewrite_fold_bn,
    "reparameterize": rewrite_reparameterize,
    "rank4": rewrite_rank4,
    "hetconv_dense": _hetconv("dense"),
    "hetconv_grouped": _hetconv("grouped"),
}
DEFAULT_REWRITES = ("reparameterize", "adaptive_pool", "adaptive_max_pool")


def apply_rewrites(model: nn.Module, names, inplace: bool = False) -> tuple[nn.Module, dict[str, int]]:
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise UserError(f"unknown rewrite(s) {', '.join(unknown)}; known: {', '.join(REWRITES)}")
    if not inplace:
        model = copy.deepcopy(model)
    counts = {name: REWRITES[name](model) for name in names}
    return model, counts
