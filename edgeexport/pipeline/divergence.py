"""Per-layer divergence of a built artifact from eager PyTorch (``edgeexport diff``, and every failed verdict).

The artifact's runner taps every intermediate tensor its runtime computes (:meth:`Runner.taps`) on the first
evaluation image; the eager model records the output of each of its modules on the same image;
:func:`edgeexport.divergence.align` pairs them by module path. The record goes into the artifact's report.
"""
from __future__ import annotations

import time

from edgeexport.divergence import ROOT, LayerDiff, align, eager_taps
from edgeexport.errors import EdgeExportError
from edgeexport.pipeline.context import Context, RunArtifact
from edgeexport.runners.base import Tap, TapsUnavailable
from edgeexport.targets import get_target, make_runner
from edgeexport.util import one_line

PROFILE_RUNS = 5  # profiled runs for the time per layer (their median)


def why_no_diff(ctx: Context, art: RunArtifact) -> str | None:
    """Why ``art`` cannot be diffed here (None: it can)."""
    if ctx.handle.model is None:
        return "the reference is an ONNX graph, not a PyTorch model: there are no modules to name"
    if art.error is not None or art.runner is None or art.path is None:
        return "the artifact was not built"
    ok, reason = get_target(art.runner.target).run_availability()
    return None if ok else f"not run on this machine: {reason}"


def diff_artifact(ctx: Context, art: RunArtifact) -> LayerDiff:
    """Tap ``art``'s runtime and eager PyTorch on the first evaluation image and pair them by module."""
    t0 = time.perf_counter()
    names, batch = ctx.refs.batches[tuple(ctx.shape)][0]
    x = batch[:1]
    reason = why_no_diff(ctx, art)
    if reason is not None:
        return LayerDiff(precision=art.precision, threshold_db=0.0, note=reason)
    try:
        with ctx.status(f"Per-layer diff: {art.kind} vs eager on {names[0]}"):
            with make_runner(art.runner, ctx.threads) as runner:
                feed = {ctx.input_name: x}
                taps = runner.taps(feed)
                first, out = next(iter(runner.infer(feed).items()))
                taps.append(Tap(first, ROOT, "output", out))  # what the model returns, in the model's layout
            eager = eager_taps(ctx.handle.model, x)
    except TapsUnavailable as exc:
        return LayerDiff(precision=art.precision, threshold_db=0.0, note=str(exc))
    except EdgeExportError:
        raise
    except Exception as exc:  # noqa: BLE001 (a runtime that fails to tap fails the diff, not the run)
        return LayerDiff(precision=art.precision, threshold_db=0.0,
                         note=f"{art.backend} could not return its intermediate tensors: {one_line(exc)}")
    result = align(taps, eager, art.precision)
    try:
        prof = get_target(art.runner.target).operator_profile(art.runner, feed, ctx.threads, PROFILE_RUNS)
    except Exception:  # noqa: BLE001 (the times are extra: a profiler that fails leaves them out)
        prof = None
    if prof and prof.get("modules"):
        result.attach_times(prof["modules"], prof.get("runtime") or art.backend, prof.get("total_ms"))
    result.seconds = round(time.perf_counter() - t0, 2)
    if not result.layers:
        result.note = (f"none of the {result.tapped} tensors {art.backend} returned could be paired with a module "
                       f"({result.attributed} carried a module path)")
    return result


def diff_failed(ctx: Context) -> None:
    """Every artifact whose verdict failed gets its per-layer diff (``parity.diff_on_failure``)."""
    for art in ctx.artifacts:
        if art.parity_status == "failed" and art.layers is None and why_no_diff(ctx, art) is None:
            art.layers = diff_artifact(ctx, art)
