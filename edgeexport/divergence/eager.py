"""The eager side of a per-layer diff: the output of every module, in the order the modules finished."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


ROOT = "(model)"  # the path of the model itself: its outputs, and what its own forward computes outside modules


@dataclass
class EagerTap:
    path: str  # module path in the user's model ("features.3.block.0")
    cls: str  # its class name
    order: int  # completion order (children finish before their parents)
    array: np.ndarray
    reused: bool = False  # the module was called more than once (a shared activation): this is one of its calls


def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((o for o in out if isinstance(o, torch.Tensor)), None)
    if isinstance(out, dict):
        return next((o for o in out.values() if isinstance(o, torch.Tensor)), None)
    return None


def eager_taps(model, x) -> list[EagerTap]:
    """Run ``model`` on ``x`` (a tensor or numpy array) and record every submodule's (first) tensor output,
    by its path in the user's model (edgeexport's own wrappers left out of the path).

    A module called more than once (an activation shared by several layers) has no single output: each call is
    kept, flagged ``reused``, so that it can close a fused boundary but is never a layer of its own.
    """
    import torch

    from edgeexport.provenance import user_path

    x = torch.as_tensor(np.asarray(x, np.float32)) if not isinstance(x, torch.Tensor) else x
    seen: dict[str, int] = {}
    taps: list[EagerTap] = []

    def hook(path, cls):
        def record(_module, _inputs, out):
            seen[path] = seen.get(path, 0) + 1
            t = _first_tensor(out)
            if t is not None and t.is_floating_point():
                taps.append(EagerTap(path, cls, len(taps), t.detach().float().cpu().numpy().copy()))
        return record

    handles = [m.register_forward_hook(hook(user_path(name) or ROOT, type(m).__name__))
               for name, m in model.named_modules() if user_path(name) or m is model]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for t in taps:
        t.reused = seen[t.path] > 1
    return taps
