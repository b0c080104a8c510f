"""Re-parameterisation by the model's own hooks: multi-branch training blocks (MobileOne, FastViT,
RepViT, RepVGG) fused into the single convolutions they are equivalent to at inference.

A block that can re-parameterise itself says so with a method, and only the block knows how: timm's
``fuse()`` (returns the fused module) and ``reparameterize()`` (in place), RepVGG's ``switch_to_deploy()``.
This walks the module tree like timm's ``reparameterize_model`` and calls whichever hook a block has; a
model without hooks is left as it is. The fused graph is what deployment runs, and every artifact is still
compared with the original, unfused eager model.
"""
from __future__ import annotations

from torch import nn


def rewrite_reparameterize(model: nn.Module) -> int:
    """Fuse every block that has a re-parameterisation hook (in place); returns how many did."""
    count = 0
    for name, child in list(model.named_children()):
        if callable(getattr(child, "fuse", None)):
            setattr(model, name, child.fuse())
            count += 1
        elif callable(getattr(child, "reparameterize", None)):
            child.reparameterize()
            count += 1
        elif callable(getattr(child, "switch_to_deploy", None)):
            child.switch_to_deploy()
            count += 1
        count += rewrite_reparameterize(getattr(model, name))
    return count
