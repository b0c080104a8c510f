"""Re-parameterisation by the model's own hooks: multi-branch training blocks (MobileOne, FastViT,
RepViT, RepVGG) fused into the single convolutions they are equivalent to at inference.

A block that can re-parameterise itself says so with a method, and only the block knows how: timm's
``fuse()`` (returns the fused module) and ``reparameterize()`` (in place), RepVGG's ``switch_to_deploy()``.
This walks the module tree like timm's ``reparameterize_model`` and calls whichever hook a block has; a
model without hooks is left as it is. The fused graph is what deployment runs, and every artifact is still
compared with the original, unfused eager model.

A hook is a *method of the block's class*. An attribute of the same name is not: a neck whose fusion layers
are an ``nn.ModuleList`` called ``fuse`` (PANet, BiFPN) is callable, and calling it runs the list's missing
``forward``. The hook runs on a copy of the block, so a hook that raises leaves the block as it was (unfused,
and said so in the report's preparation) instead of failing the export or leaving it half fused.
"""
from __future__ import annotations

import copy
import inspect

from torch import nn

from edgeexport.rewrite.modules import Outcome

HOOKS = ("fuse", "reparameterize", "switch_to_deploy")  # timm's order: fuse() returns the fused module


def reparameterization_hook(block: nn.Module) -> str | None:
    """The name of ``block``'s re-parameterisation hook: a function defined on its class (submodules,
    parameters and other instance attributes of those names are not hooks)."""
    for name in HOOKS:
        if inspect.isfunction(inspect.getattr_static(type(block), name, None)):
            return name
    return None


def _fused(block: nn.Module, hook: str) -> nn.Module:
    """The block after its hook ran on a copy: ``fuse()`` returns the module to use (None: fused in place),
    the other hooks fuse in place."""
    work = copy.deepcopy(block)
    result = getattr(work, hook)()
    if hook == "fuse" and result is not None:
        if not isinstance(result, nn.Module):
            raise TypeError(f"fuse() returned a {type(result).__name__}, not a module")
        return result
    return work


def rewrite_reparameterize(model: nn.Module, outcome: Outcome | None = None, prefix: str = "") -> Outcome:
    """Fuse every block that has a re-parameterisation hook (in place); the outcome counts the blocks fused
    and names each block whose hook raised (left unfused)."""
    outcome = outcome if outcome is not None else Outcome()
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        hook = reparameterization_hook(child)
        if hook is not None:
            try:
                setattr(model, name, _fused(child, hook))
                outcome.count += 1
            except Exception as exc:  # the block's own code: whatever it raises, the block stays as it was
                message = str(exc).splitlines()[0][:160] if str(exc) else ""
                outcome.notes.append(f"reparameterize: {path} ({type(child).__name__}) left unfused: its {hook}() "
                                     f"raised {type(exc).__name__}{': ' + message if message else ''}")
        rewrite_reparameterize(getattr(model, name), outcome, f"{path}.")
    return outcome
