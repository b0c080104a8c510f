"""Module surgery shared by the rewrites."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class Outcome:
    """What a rewrite changed: how many modules it replaced, and notes for the report (what it left alone
    and why). A rewrite returns one of these, or just the count."""

    count: int = 0
    notes: list[str] = field(default_factory=list)


def replace_modules(model: nn.Module, predicate, factory) -> int:
    """Replace every submodule for which ``predicate(m)`` holds by ``factory(m)``; return the count."""
    count = 0
    for name, child in list(model.named_children()):
        if predicate(child):
            setattr(model, name, factory(child))
            count += 1
        else:
            count += replace_modules(child, predicate, factory)
    return count
