"""Build, check, time: what a run does with the targets its recipe names. It names no backend.

* :func:`plan`: (target, options) in build order, each preceded by what it requires from other targets;
* :func:`build`: one artifact from one target (a failure is the artifact's error, never the run's);
* :func:`check_artifact`: task metrics on labeled data, parity against eager PyTorch on real
  photographs at the main shape and, for dynamic exports, at other shapes, through the artifact's runner;
* :func:`time_all`: eager and every runnable artifact, interleaved, the same thread count, the same input.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

from edgeexport.bench import benchmark_interleaved
from edgeexport.errors import BuildFailed, EdgeExportError, UnsupportedOp, UserError
from edgeexport.metrics import TaskMetrics
from edgeexport.parity import Tolerance
from edgeexport.pipeline.context import Context, RunArtifact, check_parity
from edgeexport.pipeline.views import collect_safely
from edgeexport.runners.base import Runner
from edgeexport.targets import Target, TargetOptions, get_target, list_targets, make_runner
from edgeexport.report import check_report_paths
from edgeexport.util import in_the_way, one_line


def plan(ctx: Context) -> list[tuple[type[Target], TargetOptions, str | None]]:
    """(target, options, required_by) in build order: the recipe's stages in registry order, each
    preceded by what it requires from other targets (built once, whether the recipe asks for it or not)."""
    def kind_of(t, o):
        return t.format_for(o).kind

    recipe_steps = []
    for t in list_targets():
        if t.input_replaces and ctx.source_onnx:
            continue  # the user's ONNX graph is this target's artifact
        cfg = getattr(ctx.recipe.stages, t.name, None)
        for o in (cfg if t.multiple else [cfg] if cfg is not None else []):
            kind = kind_of(t, o)
            if any(kind_of(t2, o2) == kind for t2, o2, _ in recipe_steps):
                raise UserError(f"stages.{t.name}: two option sets build the same artifact ({kind})")
            recipe_steps.append((t, o, None))
    steps: list[tuple[type[Target], TargetOptions, str | None]] = []

    def add(t: type[Target], o: TargetOptions, by: str | None) -> None:
        for req in t.requires(o, ctx):
            rt = get_target(req.target)
            ro = rt.Options(**req.options)
            kind = kind_of(rt, ro)
            if any(kind_of(t2, o2) == kind for t2, o2, _ in steps):
                continue
            later = next((st for st in recipe_steps if kind_of(st[0], st[1]) == kind), None)
            if later is not None:  # the recipe builds it anyway: now, before what needs it
                recipe_steps.remove(later)
                add(*later)
            else:
                add(rt, ro, t.name)
        steps.append((t, o, by))

    while recipe_steps:
        add(*recipe_steps.pop(0))
    return steps


def check_outputs(ctx: Context, target_cls: type[Target], options: TargetOptions) -> None:
    """Before anything is built: nothing of the user's stands where this step writes its artifact (and its
    companion files) or the run writes its report; a file of an earlier run of the same name is replaced."""
    fmt = target_cls.format_for(options)
    main = ctx.artifact_path(fmt.suffix)
    in_the_way(main, writes_folder=fmt.folder, replaces=lambda _: True)  # the writer checks a folder's contents
    for suffix in fmt.companions:
        in_the_way(main.with_name(main.name[:-len(fmt.suffix)] + suffix))
    check_report_paths(ctx.out_dir, ctx.name)


def build(ctx: Context, target_cls: type[Target], options: TargetOptions, required_by: str | None = None) -> RunArtifact:
    """One artifact from one target and its options; failures become the artifact's error."""
    fmt = target_cls.format_for(options)
    target = target_cls()
    art = ctx.new_artifact(target_cls, fmt, required_by=required_by)
    if ctx.handle.model is None and not target_cls.from_onnx_file:
        art.error = f"{target_cls.name} converts from the PyTorch model; an ONNX file was given"
        return art
    ok, reason = target_cls.build_availability()
    if not ok:
        art.built, art.path = False, None
        art.parity_status = "not_run"
        art.not_run_reason = f"not built on this machine: {reason} ({target_cls.install})"
        target.unavailable(ctx, options, art, reason)
        return art
    try:
        target.build(ctx, options, art)
    except UnsupportedOp as exc:  # the converter refused an op: not a crash, not a failed check
        art.unsupported, art.runner = {"op": exc.op, "module": exc.module}, None
        art.parity_status, art.not_run_reason = "unsupported", str(exc)
    except BuildFailed as exc:
        art.error = str(exc)
    except EdgeExportError:
        raise  # bad input: one line, exit 2
    except Exception as exc:
        art.error = f"{target_cls.name} build failed: {one_line(exc)}"
    if art.error is None and art.runner is None and art.built and art.unsupported is None:
        art.error = f"{target_cls.name} built nothing to run"
    return art


def build_checked(ctx: Context, target_cls: type[Target], options: TargetOptions, required_by: str | None) -> RunArtifact:
    """One artifact built and checked (what :meth:`Context.on_demand` builds with)."""
    check_outputs(ctx, target_cls, options)
    art = build(ctx, target_cls, options, required_by)
    check_artifact(ctx, art)
    return art


def probe_refusals(ctx: Context) -> None:
    """When a converter refused the model: which other registered targets convert it. Those this run built
    count; every other target that builds here converts the model once into a scratch folder (not checked,
    then discarded), one target per backend. The answer goes into each refused artifact's ``unsupported``."""
    refused = [a for a in ctx.artifacts if a.unsupported is not None]
    if not refused:
        return
    took = [a.target for a in ctx.artifacts if a.built and a.error is None and a.unsupported is None]
    if ctx.recipe.parity.probe_refusals:
        backends = {a.backend for a in ctx.artifacts}
        with tempfile.TemporaryDirectory(prefix="edgeexport-probe-") as tmp:
            probe = copy.copy(ctx)
            probe.out_dir, probe.artifacts = Path(tmp), list(ctx.artifacts)
            for target_cls in list_targets():
                if target_cls.backend in backends or not target_cls.build_availability()[0]:
                    continue
                backends.add(target_cls.backend)
                with ctx.status(f"{refused[0].target} refused the model: does {target_cls.name} convert it?"):
                    if _converts(probe, target_cls, target_cls.Options()):
                        took.append(target_cls.name)
    for art in refused:  # None: the other targets were not tried
        others = sorted(set(took) - {art.target})
        art.unsupported["taken_by"] = others if others or ctx.recipe.parity.probe_refusals else None


def _converts(ctx: Context, target_cls: type[Target], options: TargetOptions) -> bool:
    for req in target_cls.requires(options, ctx):
        rt = get_target(req.target)
        ro = rt.Options(**req.options)
        if ctx.find(rt.format_for(ro).kind) is None and not _converts(ctx, rt, ro):
            return False
    art = build(ctx, target_cls, options)
    ctx.artifacts.append(art)
    return art.built and art.error is None and art.unsupported is None


def check_artifact(ctx: Context, art: RunArtifact) -> None:
    """Task metrics, parity (main + dynamic shapes) and comparisons of one artifact, through its runner."""
    if art.error is not None or art.runner is None:
        return
    ok, reason = get_target(art.runner.target).run_availability()
    if not ok:
        art.parity_status, art.not_run_reason = "not_run", f"not run on this machine: {reason}"
        return
    try:
        _check_with(ctx, art, make_runner(art.runner, ctx.threads))
    except EdgeExportError:
        raise
    except Exception as exc:  # a built artifact its runtime refuses or crashes on is a failed artifact
        art.error = f"{art.backend} could not run the artifact: {one_line(exc)}"
        art.runner = None


def _check_with(ctx: Context, art: RunArtifact, runner: Runner) -> None:
    recipe = ctx.recipe
    tol = ctx.tolerance(art.precision)
    preds = None
    with runner:
        if ctx.task_data is not None:
            with ctx.status(f"Task metrics: {art.kind} on {ctx.task_data.count} labeled images"):
                art.task, preds = ctx.task_data.evaluate(runner, ctx.input_name, keep_predictions=True)
            art.task_drop = art.task.drop_below(ctx.eager_task)
            art.task_issue = task_issue(art.task, ctx.eager_task, tol)
        if recipe.parity.enabled:
            with ctx.status(f"Parity: {art.kind} vs eager on {recipe.inputs.source}"):
                art.parity = check_parity(runner, ctx.refs, ctx.refs.shapes_for(art), art.precision, tol)
            art.parity_status = ("passed" if all(p.passed for p in art.parity) and not art.failures
                                 and art.task_issue is None else "failed")
            base = ctx.find(art.compare_to) if art.compare_to else None
            if base is not None and base.runner is not None:
                with make_runner(base.runner, ctx.threads) as b:
                    outs = [b.infer({ctx.input_name: x}) for x in ctx.eval_batches()]
                art.compared[base.kind] = check_parity(runner, ctx.refs, [ctx.shape], art.precision, tol,
                                                       against=lambda s: outs)
        else:
            art.parity_status = "failed" if art.task_issue else "skipped"
    collect_safely(ctx, art, preds)


def task_issue(task: TaskMetrics, eager: TaskMetrics, tol: Tolerance) -> str | None:
    """Why ``task`` fails its tolerance against eager (None when it holds or none is set)."""
    drop = task.drop_below(eager)
    if tol.max_task_drop is None or drop is None or drop <= tol.max_task_drop:
        return None
    return f"{task.primary} {100 * task.value:.2f} is {drop:.2f} points below eager, limit {tol.max_task_drop:g}"


def time_all(ctx: Context) -> None:
    """Latency of eager PyTorch and of every runnable artifact, interleaved, same threads, same input."""
    b = ctx.recipe.bench
    if not b.enabled:
        return
    runners: dict[str, Runner] = {"eager": ctx.refs.eager_runner()}
    for art in ctx.artifacts:
        if art.error is None and art.runner is not None and art.parity_status != "not_run":
            runners[art.kind] = make_runner(art.runner, ctx.threads)
    with contextlib.ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        with ctx.status(f"Timing {', '.join(runners)} ({ctx.threads} threads, interleaved)"):
            stats = benchmark_interleaved(runners, ctx.feed(), b.warmup, b.runs, b.budget_s)
    ctx.eager_latency = stats.pop("eager")
    for art in ctx.artifacts:
        art.latency = stats.get(art.kind, art.latency)
