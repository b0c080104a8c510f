"""Weights: deterministic defaults, user checkpoints loaded strictly.

Nothing is downloaded. Without a checkpoint a model gets seeded initial weights whose
BatchNorm running statistics are re-estimated on the bundled photographs: a plainly
initialised network (running mean 0, variance 1) has activations that drift out of
range layer after layer and, for LR-ASPP, predicts one class everywhere, which would
make every parity check pass vacuously.

Residual branches are damped before the re-estimation: the BatchNorm that closes each
residual branch gets scale ``RESIDUAL_GAIN`` (the non-zero version of the usual
"zero-init the last BN" initialisation). Without it a randomly initialised residual
network is chaotic: a perturbation of -33 dB in its first layer reaches the logits at
-18 dB (measured on LR-ASPP), so any reduced-precision build looks far worse than it
would on trained weights, whose residual branches are small. The damped network still
predicts many classes; it only behaves like a trained one under small perturbations.

The resulting weights are cached on disk (they are a pure function of the model name,
options, torch version and photos).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from edgeexport.version import __version__
from edgeexport.errors import UserError
from edgeexport.util import atomic_path

RECAL_VERSION = 3
RESIDUAL_GAIN = 0.25
RECAL_IMAGES = 8
RECAL_MAX_SIDE = 320  # re-estimate at most at this resolution to keep the first use fast


def cache_dir() -> Path:
    root = os.environ.get("EDGEEXPORT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgeexport")
    return Path(root)


# ---------------------------------------------------------------- BatchNorm re-estimation


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Re-estimate every BatchNorm's running mean/variance as a cumulative average over ``batches``.

    Only BatchNorm layers switch to training mode (dropout stays off). Returns the number
    of BatchNorm layers updated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    was_training = model.training
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    try:
        for x in batches:
            model(torch.as_tensor(x))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return len(bns)


SETTLE_BATCH, SETTLE_BATCHES = 8, 2  # BatchNorm settled on 16 calibration images, 8 at a time


def settle_batchnorm(model: nn.Module, shape, preprocess, calib_spec: str | None, eval_folder: str | None) -> str:
    """Re-estimate ``model``'s BatchNorm statistics on calibration images (never the evaluation images) at
    the input size of ``shape``; returns what was done, for the report."""
    from edgeexport.inputs import calibration_batches

    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not n_bn:
        return "--settle-bn: the model has no BatchNorm; nothing settled"
    batch_shape = (SETTLE_BATCH, *tuple(shape)[1:])
    batches = calibration_batches(batch_shape, SETTLE_BATCHES, preprocess, calib_spec, eval_folder)
    recalibrate_batchnorm(model, batches)
    return (f"BatchNorm statistics of {n_bn} layers settled on {SETTLE_BATCH * SETTLE_BATCHES} calibration images "
            f"({calib_spec or 'the bundled calibration photographs'}, {batch_shape[2]}x{batch_shape[3]})")


def damp_residual_branches(model: nn.Module, gain: float = RESIDUAL_GAIN) -> int:
    """Scale the BatchNorm(s) closing every residual branch.

    Blocks expose ``residual_norm()`` (one BatchNorm, or None for a block without a residual) or,
    when the branch ends in several (OctConv's high and low frequencies), ``residual_norms()``.
    """
    count = 0
    with torch.no_grad():
        for m in model.modules():
            if callable(getattr(m, "residual_norms", None)):
                norms = list(m.residual_norms())
            elif callable(getattr(m, "residual_norm", None)):
                norms = [m.residual_norm()]
            else:
                continue
            for norm in norms:
                if norm is not None:
                    norm.weight.mul_(gain)
                    count += 1
    return count


def _recal_shape(meta) -> tuple[int, int, int, int]:
    c, h, w = meta.input_size
    scale = min(1.0, RECAL_MAX_SIDE / max(h, w))
    m = max(meta.size_multiple, 1)
    h, w = max(m, round(h * scale / m) * m), max(m, round(w * scale / m) * m)
    return (RECAL_IMAGES // 2, c, h, w)


def apply_default_weights(model: nn.Module, name: str, meta, build_kwargs: dict) -> None:
    """Give ``model`` the deterministic default weights of ``name`` (cached after the first time)."""
    from edgeexport.images import Preprocess
    from edgeexport.inputs import InputSource

    opts = json.dumps({k: v for k, v in sorted(build_kwargs.items()) if v is not None}, default=str)
    key = hashlib.sha256(f"{name}|{opts}|{torch.__version__}|{__version__}|{RECAL_VERSION}".encode()).hexdigest()[:16]
    path = cache_dir() / "weights" / f"{name}-{key}.pt"
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return
        except Exception:
            path.unlink(missing_ok=True)  # a corrupt cache entry is rebuilt
    damp_residual_branches(model)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        shape = _recal_shape(meta)
        pre = Preprocess(meta.mean, meta.std, meta.resize)
        src = InputSource("photos", split="all", seed=1234)
        recalibrate_batchnorm(model, (b for _, b in src.batches(shape, 2, pre, augmented=True)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


# ---------------------------------------------------------------- user checkpoints


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict, or the state dict inside a training checkpoint, from ``path``."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"weights file {p} does not exist")
    if not p.is_file():
        raise UserError(f"weights path {p} is not a file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read weights {p}: {first[:200]} (expected a torch.save'd state dict "
                        "or checkpoint dict; pickled modules are not loaded)") from None
    if isinstance(obj, dict):
        for k in ("state_dict", "model_state_dict", "model", "net", "weights"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights {p} hold no state dict (a mapping of names to tensors)")
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):  # saved from DataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 5) -> list[str]:
    """Differences between ``state`` and the model's own keys and shapes, as short lines."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return problems


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a checkpoint strictly; a mismatch is a ``UserError`` listing what does not fit."""
    load_state(model, read_state_dict(path), f"checkpoint {path}")


def load_state(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    problems = check_state_dict(model, state)
    if problems:
        raise UserError(f"{label} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
