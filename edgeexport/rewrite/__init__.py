"""Exact, export-friendly rewrites applied to a copy of the model before export.

Each rewrite is a function ``model -> count`` (or ``-> Outcome``, a count with notes) that edits the
model in place and returns how many modules it changed; the pipeline reports the counts and notes. Every rewrite is verified
numerically against the original module in the tests.
"""
from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from edgeexport.errors import UserError
from edgeexport.rewrite.modules import Outcome, replace_modules  # noqa: F401  (part of the package's interface)
from edgeexport.rewrite.adaptive_pool import rewrite_adaptive_max_pool, rewrite_adaptive_pool
from edgeexport.rewrite.equalize import rewrite_equalize
from edgeexport.rewrite.fold_bn import rewrite_fold_bn
from edgeexport.rewrite.rank4 import rewrite_rank4
from edgeexport.rewrite.reparameterize import rewrite_reparameterize


def _hetconv(form: str) -> Callable[[nn.Module], int]:
    def rewrite(model: nn.Module) -> int:
        from edgeexport.rewrite.hetconv import set_hetconv_form

        return set_hetconv_form(model, form)

    rewrite.__name__ = f"hetconv_{form}"
    return rewrite


REWRITES: dict[str, Callable[[nn.Module], "int | Outcome"]] = {
    "adaptive_pool": rewrite_adaptive_pool,
    "adaptive_max_pool": rewrite_adaptive_max_pool,
    "fold_bn": rewrite_fold_bn,
    "equalize": rewrite_equalize,  # cross-layer equalization before int8 (exact; see rewrite/equalize.py)
    "reparameterize": rewrite_reparameterize,
    "rank4": rewrite_rank4,
    "hetconv_dense": _hetconv("dense"),
    "hetconv_grouped": _hetconv("grouped"),
}
DEFAULT_REWRITES = ("reparameterize", "adaptive_pool", "adaptive_max_pool")


def apply_rewrites(model: nn.Module, names, inplace: bool = False,
                   notes: list[str] | None = None) -> tuple[nn.Module, dict[str, int]]:
    """Apply the named rewrites in order (to a copy unless ``inplace``); returns the model and each rewrite's
    count. ``notes``, when given, receives what the rewrites report leaving alone (a hook that raised)."""
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise UserError(f"unknown rewrite(s) {', '.join(unknown)}; known: {', '.join(REWRITES)}")
    if not inplace:
        model = copy.deepcopy(model)
    counts = {}
    for name in names:
        done = REWRITES[name](model)
        if isinstance(done, Outcome):
            counts[name] = done.count
            if notes is not None:
                notes.extend(done.notes)
        else:
            counts[name] = done
    return model, counts
