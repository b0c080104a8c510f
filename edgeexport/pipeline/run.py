"""A recipe end to end: prepare, build and check every artifact, time them, bundle them, report."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from edgeexport.pipeline.context import Context, RunArtifact, no_status
from edgeexport.pipeline.execute import build, check_artifact, plan, time_all
from edgeexport.pipeline.prepare import prepare
from edgeexport.pipeline.views import profile_slow_int8
from edgeexport.recipe import Recipe


def run(recipe: Recipe, log=print, status=no_status, command: str | None = None, module=None) -> dict:
    """Run a recipe end to end and return the report (also written next to the artifacts, as JSON,
    Markdown and a self-contained HTML page). ``command``: the command line, recorded for the page;
    ``module``: the model, when the caller holds it in memory."""
    from edgeexport import report as R

    t0 = time.perf_counter()
    ctx = prepare(recipe, log, status, module=module)
    for target_cls, options, required_by in plan(ctx):
        art = build(ctx, target_cls, options, required_by)
        ctx.artifacts.append(art)
        check_artifact(ctx, art)
    time_all(ctx)
    profile_slow_int8(ctx)  # after timing: why an int8 artifact is not faster than its fp32 graph
    if recipe.stages.bundle is not None:  # after timing, so bundles carry the build host's latency
        stage_bundle(ctx)
    rep = R.build_report(ctx, time.perf_counter() - t0, command=command)
    R.write_reports(rep, ctx.out_dir, ctx.name, log=log)
    return rep


def stage_bundle(ctx: Context) -> None:
    """Write a parity bundle for every built artifact the stage names (no new artifact)."""
    kinds = ctx.recipe.stages.bundle.artifacts
    for art in ctx.artifacts:
        if (art.error or art.path is None or art.runner is None or not art.path.exists()
                or ("all" not in kinds and art.kind not in kinds)):
            continue
        out = ctx.out_dir / f"{ctx.name}.{art.kind}.bundle"
        with ctx.status(f"Bundling {art.kind}"):
            write_bundle_for(ctx, art, out, sign_key=ctx.recipe.stages.bundle.sign_key)
        art.notes.append(f"parity bundle: {out}")


def write_bundle_for(ctx: Context, art: RunArtifact, out: Path, sign_key: str | Path | None = None) -> dict:
    from edgeexport.bundle import write_bundle
    from edgeexport.report import versions

    shape = ctx.shape
    inputs = ctx.eval_batches()
    model = {**ctx.handle.info(shape), "dynamic": "none",
             "images": [n for names, _ in ctx.refs.batches[shape] for n in names]}
    return write_bundle(out, runner=art.runner, kind=art.kind, precision=art.precision, inputs=inputs,
                        references=ctx.refs.outputs(shape), tasks=ctx.handle.tasks,
                        tolerance=asdict(ctx.recipe.tolerance(art.precision)), model=model, versions=versions(),
                        build_latency_ms=art.latency.median_ms if art.latency else None, sign_key=sign_key)


def unbuilt(report: dict, target: str) -> list[dict]:
    """The artifacts of ``target`` that this machine could not build (its converter is missing)."""
    return [a for a in report["artifacts"] if a["target"] == target and not a["built"]]
