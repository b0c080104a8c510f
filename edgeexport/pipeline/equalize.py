"""``equalize: auto`` on an int8 target: equalize where it can help, and keep it only where it did.

1. Measure the calibration images' activation ranges on every tensor cross-layer equalization acts on
   and their consumers' weight ranges per input channel (:func:`~edgeexport.rewrite.equalize.range_imbalance`).
   Where the widest channel is less than ``GATE`` times
   the median, per-tensor int8 spends few levels on it: the artifact is built as is, and a note says so.
2. Otherwise build the artifact both ways (``equalize: off``, then ``on`` in a scratch folder), measure both against
   the reference (the task metric on labeled data, then SNR) and keep the better one; the note gives both
   figures. What the rewrite changed is in the report's preparation; the equalized fp32 ONNX graph, where a
   target quantizes one, is an artifact of the run with its own parity check.

The target itself never sees ``auto``: it builds ``on`` or ``off``, and the budget search after this works on the
chosen one.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from edgeexport.parity import accuracy_key
from edgeexport.pipeline.context import Context, RunArtifact
from edgeexport.pipeline.execute import build
from edgeexport.pipeline.repair import adopt, measure, scratch_build
from edgeexport.targets import Target, TargetOptions
from edgeexport.util import one_line

GATE = 32.0  # widest channel over the median: activations 3-16 on the zoo's models, trained or not (weights 1.4-2.2);
# 147-276 with the faults
CALIBRATION_BATCHES = 4


def wants_choice(target_cls: type[Target], options: TargetOptions) -> bool:
    return getattr(options, "equalize", None) == "auto" and target_cls.format_for(options).precision == "int8"


def resolved(options: TargetOptions, mode: str) -> TargetOptions:
    return options.model_copy(update={"equalize": mode})


def build_choosing(ctx: Context, target_cls: type[Target], options: TargetOptions,
                   required_by: str | None) -> tuple[RunArtifact, TargetOptions]:
    """The artifact, and the options it was built with (``equalize`` resolved to ``on`` / ``off``)."""
    if not wants_choice(target_cls, options):
        return build(ctx, target_cls, options, required_by), options
    off = resolved(options, "off")
    if ctx.handle.model is None:
        art = build(ctx, target_cls, off, required_by)
        art.notes.append("equalize auto: not equalized (equalization rewrites the PyTorch model; an ONNX file "
                         "was given)")
        return art, off
    ratio, where = imbalance(ctx)
    art = build(ctx, target_cls, off, required_by)
    if ratio < GATE or art.error or art.runner is None:
        if art.error is None:
            art.notes.append(f"equalize auto: not needed (the widest activation or weight channel is {ratio:.1f}x the "
                             f"median{f' at {where}' if where else ''}, under {GATE:g}x); built as is")
        return art, off
    on = resolved(options, "on")
    with tempfile.TemporaryDirectory(prefix=".equalize-", dir=art.path.parent) as tmp:
        with ctx.status(f"equalize auto: {where} has a channel {ratio:.0f}x the median; building "
                        f"{art.kind} equalized too"):
            cand = scratch_build(ctx, target_cls, on, Path(tmp))
        if cand.error or cand.runner is None:
            art.notes.append(f"equalize auto: the equalized build failed ({one_line(cand.error or 'no runner')}); "
                             "kept the one as is")
            return art, off
        plain, equalized = measure(ctx, art), measure(ctx, cand)
        better = accuracy_key(equalized) > accuracy_key(plain)
        said = (f"equalize auto: {'kept' if better else 'not kept'} ({where} has a channel {ratio:.0f}x the "
                f"median): int8 {describe(equalized)} equalized, {describe(plain)} as is")
        if better:
            adopt(art, cand)
        art.notes.append(said)
    return art, on if better else off


def imbalance(ctx: Context) -> tuple[float, str | None]:
    from edgeexport.provenance import user_path
    from edgeexport.rewrite.equalize import range_imbalance

    ratio, where = range_imbalance(ctx.handle.model, ctx.calibration(CALIBRATION_BATCHES))
    return ratio, user_path(where) if where else None


def describe(acc: dict) -> str:
    parts = [f"SNR {acc['snr_db']:.2f} dB"] if acc.get("snr_db") is not None else []
    if acc.get("task_drop") is not None:
        parts.insert(0, f"task drop {acc['task_drop']:.2f} points")
    return ", ".join(parts) or "nothing measured"
