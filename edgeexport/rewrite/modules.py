"""Module surgery shared by the rewrites."""
from __future__ import annotations

from torch import nn


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
