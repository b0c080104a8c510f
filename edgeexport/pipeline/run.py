"""A recipe end to end: prepare, build and check every artifact, time them, bundle them, report."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeexport.bundle import is_bundle, write_bundle
from edgeexport.doctor import installed_versions
from edgeexport.errors import UserError
from edgeexport.keys import load_private_key
from edgeexport.pipeline.context import Context, RunArtifact, no_status
from edgeexport.pipeline.divergence import diff_artifact, diff_failed
from edgeexport.pipeline.equalize import build_choosing
from edgeexport.pipeline.execute import (build_checked, check_artifact, check_outputs, plan, probe_refusals,
                                         time_all)
from edgeexport.pipeline.repair import check_budget, price_repair, search_float_set, wants_search
from edgeexport.pipeline.prepare import prepare
from edgeexport.pipeline.views import profile_slow_int8
from edgeexport.recipe import Recipe
from edgeexport.report import Eager, Inputs, ModelInfo, Report, ReportBuilder, check_report_paths
from edgeexport.targets import all_formats, checked_spec, format_for_path, load_in_child
from edgeexport.util import atomic_target, regular_input


def run(recipe: Recipe, log=print, status=no_status, command: str | None = None, module=None,
        calibration: list[np.ndarray] | None = None) -> Report:
    """Run a recipe end to end and return the report (also written next to the artifacts, as JSON,
    Markdown and a self-contained HTML page). ``command``: the command line, recorded for the page;
    ``module``: the model, when the caller holds it in memory; ``calibration``: calibration batches at
    the recipe's shape, given in memory (used when a stage names no calibration folder)."""
    t0 = time.perf_counter()
    ctx = prepare(recipe, log, status, module=module)
    ctx.calibration_arrays = calibration
    ctx.builder = build_checked
    steps = plan(ctx)
    for target_cls, options, _ in steps:  # bad input is found before anything is built or written
        check_budget(ctx, options)
        check_outputs(ctx, target_cls, options)
    for target_cls, options, required_by in steps:
        art, options = build_choosing(ctx, target_cls, options, required_by)  # equalize auto: on or off
        if wants_search(target_cls, options):
            search_float_set(ctx, target_cls, options, art)
        elif art.repair is not None:
            price_repair(ctx, target_cls, options, art)
        ctx.artifacts.append(art)
        check_artifact(ctx, art)
    probe_refusals(ctx)
    if recipe.parity.enabled and recipe.parity.diff_on_failure:
        diff_failed(ctx)
    time_all(ctx)
    profile_slow_int8(ctx)  # after timing: why an int8 artifact is not faster than its fp32 graph
    if recipe.stages.bundle is not None:  # after timing, so bundles carry the build host's latency
        stage_bundle(ctx)
    rep = report_of(ctx, ReportBuilder("run", threads=ctx.threads, command=command, started=t0))
    rep.write(ctx.out_dir, ctx.name, log=log)
    return rep


def report_of(ctx: Context, builder: ReportBuilder) -> Report:
    """The run's report: every artifact as its checks left it, the model, inputs, recipe and eager figures."""
    for art in ctx.artifacts:
        base = ctx.find(art.compare_to) if art.compare_to else None
        builder.artifact(
            kind=art.kind, target=art.target, backend=art.backend, precision=art.precision,
            checked=art.parity_status, error=art.error, reason=art.not_run_reason, path=art.path,
            size_bytes=art.size if art.error is None else None, dynamic=art.dynamic, built=art.built,
            required_by=art.required_by, runner=art.runner, build=art.record, failures=art.failures,
            notes=art.all_notes, parity=art.parity, compared=art.compared, latency=art.latency,
            eager_latency=ctx.eager_latency, baseline_latency=base.latency if base else None, task=art.task,
            task_drop=art.task_drop, task_issue=art.task_issue, views=art.views, profile=art.profile,
            unsupported=art.unsupported, layers=art.layers, repair=art.repair)
    recipe = ctx.recipe
    model = ctx.handle.info(ctx.shape)
    model["preparation"] += [f"rewrite {name}: {n} module(s) of the copy the targets convert"
                             for name, n in ctx.rewrites_applied().items()] + ctx.rewrite_notes()
    return builder.build(
        model=ModelInfo(**model, dynamic=recipe.dynamic),
        inputs=Inputs(source=recipe.inputs.source, folder=recipe.inputs.folder,
                      shapes=[list(s) for s in ctx.refs.batches],
                      images=sorted({n for b in ctx.refs.batches.values() for names, _ in b for n in names})),
        recipe=recipe.model_dump(mode="json"),
        eager=Eager(backend=ctx.refs.eager_runner().backend, latency=ctx.eager_latency, task=ctx.eager_task),
        eval_data=ctx.task_data.describe() if ctx.task_data is not None else None, views=ctx.views)


def artifact_format(path: Path, precision: str | None = None):
    """The target, format and companion files of an artifact built elsewhere, from its file name, after checking
    that it is what a runtime may open: a non-empty regular file (a folder for package formats), its companions
    regular files beside it. Bad input is a one-line :class:`UserError`, before anything runs."""
    path = Path(path)
    found = format_for_path(str(path))
    if found is None:
        suffixes = ", ".join(sorted({f.suffix for _, f in all_formats()}))
        raise UserError(f"{path}: unknown artifact type (edgeexport knows {suffixes})")
    target, fmt = found
    if precision not in (None, "fp32", "fp16", "int8"):
        raise UserError(f"precision {precision!r}: expected fp32, fp16 or int8")
    regular_input(path, "artifact", folder=fmt.folder)
    companions = [path.with_name(path.name[:-len(fmt.suffix)] + c) for c in fmt.companions]
    for c in companions:
        if not c.exists():
            raise UserError(f"{path} needs {c.name} beside it")
        regular_input(c, "companion file")
    return target, fmt, companions


def artifact_from_file(ctx: Context, path: Path, precision: str | None = None,
                       runner_options: dict | None = None, probe: bool = True) -> RunArtifact:
    """An artifact built elsewhere, as this run's artifact: its target and format from the file name, its
    companion files beside it, how to run it (``runner_options``: e.g. CoreML compute units). ``probe``: the
    file is first loaded in a child process (:func:`~edgeexport.targets.load_in_child`)."""
    path = Path(path)
    target, fmt, companions = artifact_format(path, precision)
    art = RunArtifact(fmt.kind, target.name, target.backend, precision or fmt.precision, path)
    art.runner = checked_spec(ctx.runner_spec(target, path, companions, **(runner_options or {})))
    if probe and target.run_availability()[0]:
        load_in_child(art.runner, str(path))  # a runtime that crashes on the file costs one line, not the process
    ctx.artifacts.append(art)
    return art


def check_file(recipe: Recipe, path: Path, precision: str | None = None, runner_options: dict | None = None,
               log=print, status=no_status, command: str | None = None, module=None) -> Report:
    """Judge an artifact built elsewhere against the recipe's eager model, as a run judges its own: task
    metrics, parity, latency beside eager; the report is written to the recipe's output folder."""
    t0 = time.perf_counter()
    artifact_format(path, precision)
    ctx = prepare(recipe, log, status, module=module)
    art = artifact_from_file(ctx, path, precision, runner_options)
    check_report_paths(ctx.out_dir, f"{ctx.name}.{art.kind}.check")
    check_artifact(ctx, art)
    time_all(ctx)
    profile_slow_int8(ctx)
    rep = report_of(ctx, ReportBuilder("run", threads=ctx.threads, command=command, started=t0))
    rep.write(ctx.out_dir, f"{ctx.name}.{art.kind}.check", log=log)  # beside the artifact's own report
    return rep


def diff_file(recipe: Recipe, path: Path, precision: str | None = None, runner_options: dict | None = None,
              log=print, status=no_status, command: str | None = None, module=None) -> Report:
    """Per-layer divergence of an artifact from the recipe's eager model, with its parity verdict (no timing);
    the report is written beside the artifact's as ``NAME.KIND.diff``."""
    t0 = time.perf_counter()
    artifact_format(path, precision)
    ctx = prepare(recipe, log, status, module=module)
    art = artifact_from_file(ctx, path, precision, runner_options)
    check_report_paths(ctx.out_dir, f"{ctx.name}.{art.kind}.diff")
    check_artifact(ctx, art)
    if art.error is not None:
        raise UserError(art.error)
    art.layers = diff_artifact(ctx, art)
    rep = report_of(ctx, ReportBuilder("run", threads=ctx.threads, command=command, started=t0))
    rep.write(ctx.out_dir, f"{ctx.name}.{art.kind}.diff", log=log)
    return rep


def bundle_file(recipe: Recipe, path: Path, out: Path | None = None, precision: str | None = None,
                runner_options: dict | None = None, sign_key: str | Path | None = None,
                log=print, module=None) -> tuple[Path, dict]:
    """A parity bundle of an artifact file (built here or elsewhere) against the recipe's eager model:
    the bundle folder (default: ``NAME.KIND.bundle`` beside the artifact) and its manifest."""
    if sign_key is not None:
        load_private_key(sign_key)  # a bad key fails now, not after the model has run
    artifact_format(path, precision)
    if out is not None:  # a folder in the way that is not an earlier bundle is refused before any work
        atomic_target(Path(out), writes_folder=True, replaces=is_bundle)
    ctx = prepare(recipe, log, module=module)
    art = artifact_from_file(ctx, path, precision, runner_options, probe=False)
    out = Path(out) if out else Path(path).parent / f"{ctx.name}.{art.kind}.bundle"
    atomic_target(out, writes_folder=True, replaces=is_bundle)
    return out, write_bundle_for(ctx, art, out, sign_key=sign_key)


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
    shape = ctx.shape
    inputs = ctx.eval_batches()
    model = {**ctx.handle.info(shape), "dynamic": "none",
             "images": [n for names, _ in ctx.refs.batches[shape] for n in names]}
    return write_bundle(out, runner=art.runner, kind=art.kind, precision=art.precision, inputs=inputs,
                        references=ctx.refs.outputs(shape), tasks=ctx.handle.tasks,
                        tolerance=ctx.recipe.tolerance(art.precision).model_dump(), model=model,
                        versions=installed_versions(),
                        build_latency_ms=art.latency.median_ms if art.latency else None, sign_key=sign_key)


def unbuilt(report: Report, target: str) -> list:
    """The artifacts of ``target`` that this machine could not build (its converter is missing)."""
    return [a for a in report.artifacts.values() if a.target == target and not a.built]
