"""The pipeline: prepare, build, check, time, report. It names no backend.

``run(recipe)`` loads the model and its evaluation data (:func:`prepare`), asks every target the
recipe's stages name to build its artifacts, building first what a target requires from other
targets (:func:`plan`, :func:`build`), then checks every artifact the same way through its
runner (:func:`check_artifact`: task metrics on labeled data, parity against eager PyTorch on
real photographs at the main shape and, for dynamic exports, at other shapes), times them all
beside eager with the same thread count (:func:`time_all`) and writes the report.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgeexport.bench import LatencyStats, benchmark_interleaved
from edgeexport.data import InputSource
from edgeexport.errors import EdgeExportError, UserError
from edgeexport.metrics import TaskMetrics
from edgeexport.parity import ParityCheck, ParityResult, Tolerance
from edgeexport.recipe import Recipe
from edgeexport.runners.base import Runner
from edgeexport.source import ModelHandle, load_model, load_onnx
from edgeexport.targets import RunnerSpec, Target, TargetOptions, get_target, list_targets, make_runner
from edgeexport.targets.base import BuildRecord, Format
from edgeexport.util import default_threads, ensure_output_dir, file_size


class BuildFailed(EdgeExportError):
    """A target could not build its artifact; the artifact is reported as a failed build."""


# ---------------------------------------------------------------- artifacts


@dataclass
class Artifact:
    """One built file (or package), how to run it (a :class:`RunnerSpec`), what was built (a typed
    :class:`BuildRecord`) and what its checks found."""

    kind: str  # e.g. "onnx", "onnx-int8"
    target: str  # the registered target that built it
    backend: str  # the runtime that runs it
    precision: str
    path: Path | None
    dynamic: str = "none"
    runner: RunnerSpec | None = None
    record: BuildRecord | None = None
    required_by: str | None = None  # built because that target needs it
    built: bool = True  # False: this machine lacks the target's converter, nothing was built
    error: str | None = None  # build failure
    parity: list[ParityResult] = field(default_factory=list)
    parity_status: str = "not_run"  # passed | failed | not_run | skipped
    not_run_reason: str | None = None
    latency: LatencyStats | None = None
    notes: list[str] = field(default_factory=list)
    compare_to: str | None = None  # also compared against this artifact's kind (e.g. int8 vs fp32 ONNX)
    extra_parity: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # build-time verdicts (e.g. an accuracy budget missed)
    task: TaskMetrics | None = None  # task metric on the labeled data
    task_drop: float | None = None  # points below eager
    task_issue: str | None = None  # the drop exceeds the tolerance
    views: dict = field(default_factory=dict)  # the report's error views: worst image, top-5 (edgeexport.views)
    profile: dict | None = None  # per-operator time when int8 is not faster than fp32 (edgeexport.views)

    def finish(self, record: BuildRecord, runner: RunnerSpec | None) -> None:
        """What a target calls when the artifact is written: its record and how to run it."""
        self.record, self.runner = record, runner

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures and self.parity_status in ("passed", "not_run", "skipped")

    @property
    def size(self) -> int | None:
        if self.path is None or not self.path.exists():
            return None
        extra = [Path(f) for f in (self.runner.files if self.runner else []) if Path(f).exists()]
        return file_size(self.path) + sum(file_size(f) for f in extra)

    @property
    def all_notes(self) -> list[str]:
        return (self.record.notes if self.record else []) + self.notes


# ---------------------------------------------------------------- evaluation inputs and references


def auto_extra_shapes(shape, dynamic: str, size_multiple: int = 1, min_hw: int = 1) -> list[tuple[int, int, int, int]]:
    """Two shapes other than ``shape`` along the dynamic axes (odd sizes where the model allows)."""
    n, c, h, w = shape
    m = max(size_multiple, 1)

    def r(v):  # nearest size >= min_hw that is a multiple of m
        v = max(int(round(v)), min_hw)
        return max(m, -(-v // m) * m)

    b = dynamic in ("batch", "all")
    s = dynamic in ("hw", "all")
    if not (b or s):
        return []
    first = (n + 1 if b else n, c, r(h * 0.75) + (1 if m == 1 and s else 0) if s else h, r(w * 1.25) if s else w)
    second = (n + 2 if b else n, c, r(h * 0.6) if s else h, r(w * 0.8) + (1 if m == 1 and s else 0) if s else w)
    return [first, second]


class References:
    """Evaluation batches per shape and eager PyTorch's outputs for them (computed once)."""

    def __init__(self, handle: ModelHandle, main_shape, images: int, source: InputSource, extra_shapes, threads: int):
        self.handle, self.main_shape, self.threads = handle, tuple(main_shape), threads
        n = main_shape[0]
        count = max(1, math.ceil(images / n))
        pre = handle.preprocess
        self.batches: dict[tuple, list[tuple[list[str], np.ndarray]]] = {
            tuple(main_shape): list(source.batches(tuple(main_shape), count, pre))}
        for s in extra_shapes:
            self.batches[tuple(s)] = list(source.batches(tuple(s), 1, pre))
        self._outputs: dict[tuple, list[dict[str, np.ndarray]]] = {}

    @property
    def input_name(self) -> str:
        return self.handle.input_names[0]

    def eager_runner(self) -> Runner:
        """The reference runner (eager PyTorch, or the user's fp32 ONNX graph)."""
        return self.handle.reference_runner(self.threads)

    def outputs(self, shape) -> list[dict[str, np.ndarray]]:
        shape = tuple(shape)
        if shape not in self._outputs:
            with self.eager_runner() as r:
                self._outputs[shape] = [r.infer({self.input_name: x}) for _, x in self.batches[shape]]
        return self._outputs[shape]

    def shapes_for(self, artifact: "Artifact") -> list[tuple]:
        shapes = list(self.batches)
        return shapes if artifact.dynamic != "none" else [self.main_shape]

    def feed(self, shape=None) -> dict[str, np.ndarray]:
        return {self.input_name: self.batches[tuple(shape or self.main_shape)][0][1]}


def check_parity(runner: Runner, refs: References, shapes, precision: str, tolerance,
                 against: Callable[[tuple], list[dict]] | None = None) -> list[ParityResult]:
    """Compare ``runner`` with eager PyTorch (or with ``against``) at each shape."""
    results = []
    for shape in shapes:
        reference = against(shape) if against else refs.outputs(shape)
        check = ParityCheck(shape, precision, tolerance, refs.handle.tasks)
        for (names, x), ref in zip(refs.batches[tuple(shape)], reference):
            check.add(ref, runner.infer({refs.input_name: x}), names)
        results.append(check.result())
    return results


# ---------------------------------------------------------------- run context


@dataclass
class Context:
    recipe: Recipe
    handle: ModelHandle
    shape: tuple[int, int, int, int]
    out_dir: Path
    threads: int
    refs: References
    log: Callable[[str], None]
    status: Callable
    artifacts: list[Artifact] = field(default_factory=list)
    eager_latency: LatencyStats | None = None
    rewrites: dict = field(default_factory=dict)  # rewrite set -> {rewrite: modules replaced}
    rewritten: dict = field(default_factory=dict)  # rewrite set -> wrapped, rewritten model
    task_data: object = None  # TaskData when the recipe has labeled data
    eager_task: TaskMetrics | None = None
    eager_preds: list | None = None  # eager's predicted classes on the labeled data (the report's mask views)
    views: dict = field(default_factory=dict)  # report-level view data: images shared by artifacts' views

    @property
    def name(self) -> str:
        return self.recipe.name or self.handle.name

    def tolerance(self, precision: str) -> Tolerance:
        """The limits an artifact of ``precision`` is judged by (task-metric drops when data is labeled)."""
        return self.recipe.tolerance(precision, labeled=self.task_data is not None)

    def calib_spec(self, cfg_folder: str | None) -> str | None:
        """Calibration images: the stage's folder, else the calibration split of the weights' own task."""
        if cfg_folder:
            return cfg_folder
        return f"{self.handle.trained.dataset}:calib" if self.handle.trained is not None else None

    def artifact_path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"

    def find(self, kind: str) -> "Artifact | None":
        return next((a for a in self.artifacts if a.kind == kind and a.error is None), None)

    def require(self, kind: str) -> "Artifact":
        """A built artifact this target needs (see ``Target.requires``), or a BuildFailed saying why not."""
        art = next((a for a in self.artifacts if a.kind == kind), None)
        if art is None:
            raise BuildFailed(f"needs the {kind} artifact, which was not built")
        if art.error is not None or art.path is None:
            raise BuildFailed(f"needs the {kind} artifact, which failed: {art.error or art.not_run_reason}")
        return art

    # ---- what targets use to build
    def new_artifact(self, target: type[Target], fmt: Format, **kw) -> "Artifact":
        kw.setdefault("dynamic", "none")
        return Artifact(fmt.kind, target.name, target.backend, fmt.precision, self.artifact_path(fmt.suffix), **kw)

    def runner_spec(self, target: type[Target], path: Path, files=(), **options) -> RunnerSpec:
        return RunnerSpec(target=target.name, artifact=str(path), files=[str(f) for f in files],
                          input_names=list(self.handle.input_names), output_names=list(self.handle.output_names),
                          options=options)

    def sample(self) -> torch.Tensor:
        """One input batch at the main shape (a real photograph), as a tensor."""
        return torch.from_numpy(self.refs.feed()[self.refs.input_name])

    def torch_model(self, rewrites: list[str] | None = None) -> torch.nn.Module:
        """The eager model with export rewrites applied (default: the recipe's ONNX stage's), wrapped to
        return a tuple in output-name order. Cached per set of rewrites, shared by every target that
        converts from PyTorch; a target whose converter takes an op the ONNX rewrites replace (ncnn's
        native adaptive pooling) asks for its own set."""
        from edgeexport.rewrite import DEFAULT_REWRITES, apply_rewrites

        if rewrites is None:
            rewrites = self.recipe.stages.onnx.rewrites if self.recipe.stages.onnx else list(DEFAULT_REWRITES)
        key = tuple(rewrites)
        if key not in self.rewritten:
            model, self.rewrites[key] = apply_rewrites(self.handle.model, list(rewrites))
            self.rewritten[key] = self.handle.wrapped(model)
        return self.rewritten[key]

    def calibration(self, count: int, folder: str | None = None) -> list[np.ndarray]:
        """``count`` calibration batches at the main shape, never the evaluation images."""
        from edgeexport.quantize.calib import calibration_batches

        return calibration_batches(self.shape, count, self.handle.preprocess, self.calib_spec(folder),
                                   self.recipe.inputs.folder)


def _noop_status(msg):
    return contextlib.nullcontext()


def prepare(recipe: Recipe, log=print, status=_noop_status) -> Context:
    """Load the model and the evaluation inputs; validate everything the stages will need."""
    shape = tuple(recipe.input_shape) if recipe.input_shape else None
    if shape is None and ":" in recipe.model:
        raise UserError(f"user model {recipe.model} needs an input shape (--shape NxCxHxW)")
    if recipe.inputs.source == "folder" and not recipe.inputs.folder:
        raise UserError("inputs.source is 'folder' but inputs.folder is not set")
    out_dir = ensure_output_dir(recipe.output)
    with status(f"Loading {recipe.model}"):
        if recipe.model.endswith(".onnx"):
            handle = load_onnx(recipe.model, recipe.task, shape)
        else:
            handle = load_model(recipe.model, recipe.weights, recipe.num_classes, recipe.task,
                                tuple(shape[1:]) if shape else None, recipe.model_kwargs)
    if recipe.mean or recipe.std:
        if len(recipe.mean or [0] * 3) != 3 or len(recipe.std or [1] * 3) != 3 or min(recipe.std or [1]) <= 0:
            raise UserError("mean and std take three values each (std > 0)")
        handle.meta = replace(handle.meta, mean=tuple(recipe.mean or handle.meta.mean),
                              std=tuple(recipe.std or handle.meta.std))
    if shape is None:
        shape = (1, *handle.meta.input_size)
    if shape[1] != handle.meta.input_size[0] and handle.origin.startswith("zoo:"):
        raise UserError(f"{handle.name} takes {handle.meta.input_size[0]} input channels, not {shape[1]}")
    if min(shape[2], shape[3]) < handle.meta.min_hw:
        raise UserError(f"{handle.name} needs H and W of at least {handle.meta.min_hw}; got {shape[2]}x{shape[3]}")
    m = handle.meta.size_multiple
    if m > 1 and (shape[2] % m or shape[3] % m):
        raise UserError(f"{handle.name} needs H and W that are multiples of {m}; got {shape[2]}x{shape[3]}")
    if recipe.dynamic in ("hw", "all") and not handle.meta.dynamic_hw:
        raise UserError(f"{handle.name} cannot take dynamic H/W: {handle.meta.notes or 'fixed-size graph'}")
    eval_spec = resolve_eval_data(recipe, handle)
    for options in stage_options(recipe):  # bad calibration input fails before anything is built
        if getattr(options, "calib_folder", None):
            from edgeexport.quantize.calib import check_calibration_source

            check_calibration_source(options.calib_folder, recipe.inputs.folder, eval_spec)
    if recipe.inputs.source == "eval_data" and not eval_spec:
        raise UserError("inputs.source is 'eval_data' but there is no labeled data (inputs.eval_data)")
    source = InputSource(recipe.inputs.source, "eval", eval_spec if recipe.inputs.source == "eval_data"
                         else recipe.inputs.folder)
    source_images = None if source.source == "random" else source.images()
    if source_images is not None and not source_images:
        raise UserError("no evaluation images")
    try:
        probe = next(source.batches(shape, 1, handle.preprocess))[1]
        handle.probe(torch.from_numpy(probe))
    except EdgeExportError:
        raise
    except Exception as exc:
        raise UserError(f"{handle.name} does not run at input shape {'x'.join(map(str, shape))}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    threads = recipe.bench.threads or default_threads()
    extra = []
    if recipe.dynamic != "none" and recipe.parity.enabled:
        extra = (auto_extra_shapes(shape, recipe.dynamic, handle.meta.size_multiple, handle.meta.min_hw)
                 if recipe.parity.extra_shapes == "auto" else [tuple(s) for s in recipe.parity.extra_shapes])
        for s in extra:
            _check_extra_shape(s, shape, recipe.dynamic)
    refs = References(handle, shape, recipe.inputs.images, source, extra, threads)
    ctx = Context(recipe, handle, shape, out_dir, threads, refs, log, status)
    if eval_spec:
        from edgeexport.taskeval import open_task_data

        with status(f"Reading labeled data {eval_spec}"):
            ctx.task_data = open_task_data(eval_spec, recipe.inputs.eval_images, handle, shape, log)
        with status(f"Task metrics of {handle.reference_label} on {ctx.task_data.count} labeled images"):
            with refs.eager_runner() as r:
                ctx.eager_task, ctx.eager_preds = ctx.task_data.evaluate(r, refs.input_name, keep_predictions=True)
    return ctx


def stage_options(recipe: Recipe) -> list[TargetOptions]:
    """Every option set the recipe's stages give, over all registered targets."""
    out = []
    for t in list_targets():
        cfg = getattr(recipe.stages, t.name, None)
        out += cfg if t.multiple else [cfg] if cfg is not None else []
    return out


def resolve_eval_data(recipe: Recipe, handle: ModelHandle) -> str | None:
    """The labeled-data spec a run uses: the recipe's, or (``auto``) the built-in task of trained weights."""
    spec = recipe.inputs.eval_data
    if spec == "none":
        return None
    if spec == "auto":
        return f"{handle.trained.dataset}:eval" if handle.trained is not None else None
    return spec


def _check_extra_shape(s, shape, dynamic):
    if len(s) != 4 or any(int(d) <= 0 for d in s):
        raise UserError(f"parity.extra_shapes: {s} is not a positive NxCxHxW shape")
    fixed = {"batch": (1, 2, 3), "hw": (0, 1), "all": (1,)}[dynamic]
    for axis in fixed:
        if s[axis] != shape[axis]:
            raise UserError(f"parity.extra_shapes: {list(s)} changes axis {axis}, which is not dynamic ({dynamic})")



# ---------------------------------------------------------------- build


def plan(ctx: Context) -> list[tuple[type[Target], TargetOptions, str | None]]:
    """(target, options, required_by) in build order: the recipe's stages in registry order, each
    preceded by what it requires from other targets (built once, whether the recipe asks for it or not)."""
    def kind_of(t, o):
        return t.format_for(o).kind

    recipe_steps = []
    for t in list_targets():
        if t.input_replaces and ctx.handle.is_onnx:
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


def build(ctx: Context, target_cls: type[Target], options: TargetOptions, required_by: str | None = None) -> Artifact:
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
    except BuildFailed as exc:
        art.error = str(exc)
    except EdgeExportError:
        raise  # bad input: one line, exit 2
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        art.error = f"{target_cls.name} build failed: {type(exc).__name__}: {first}"
    if art.error is None and art.runner is None and art.built:
        art.error = f"{target_cls.name} built nothing to run"
    return art


def task_budget(ctx: Context, budget: dict | None) -> dict | None:
    """An accuracy budget with ``miou_drop`` / ``top1_drop`` checked against the labeled data
    and mapped to ``task_drop``."""
    if not budget:
        return None
    out = {}
    for key, value in budget.items():
        if key in ("miou_drop", "top1_drop"):
            need = {"miou_drop": "segmentation", "top1_drop": "classification"}[key]
            if ctx.task_data is None:
                raise UserError(f"--budget {key}={value:g} needs labeled data (--eval-data)")
            if ctx.task_data.task != need:
                raise UserError(f"--budget {key} is a {need} metric; the labeled data is {ctx.task_data.task}")
            out["task_drop"] = value
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- bundles


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


def write_bundle_for(ctx: Context, art: Artifact, out: Path, sign_key: str | Path | None = None) -> dict:
    from dataclasses import asdict

    from edgeexport.bundle import write_bundle
    from edgeexport.report import versions

    shape = ctx.shape
    inputs = [x for _, x in ctx.refs.batches[shape]]
    model = {**ctx.handle.info(shape), "dynamic": "none",
             "images": [n for names, _ in ctx.refs.batches[shape] for n in names]}
    return write_bundle(out, runner=art.runner, kind=art.kind, precision=art.precision, inputs=inputs,
                        references=ctx.refs.outputs(shape), tasks=ctx.handle.tasks,
                        tolerance=asdict(ctx.recipe.tolerance(art.precision)), model=model, versions=versions(),
                        build_latency_ms=art.latency.median_ms if art.latency else None, sign_key=sign_key)


# ---------------------------------------------------------------- checks


def check_artifact(ctx: Context, art: Artifact) -> None:
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
        art.error = f"{art.backend} could not run the artifact: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        art.runner = None


def _check_with(ctx: Context, art: Artifact, runner: Runner) -> None:
    recipe = ctx.recipe
    tol = ctx.tolerance(art.precision)
    preds = None
    with runner:
        if ctx.task_data is not None:
            with ctx.status(f"Task metrics: {art.kind} on {ctx.task_data.count} labeled images"):
                art.task, preds = ctx.task_data.evaluate(runner, ctx.refs.input_name, keep_predictions=True)
            art.task_drop = art.task.drop_points(ctx.eager_task)
            art.task_issue = task_issue(art.task, ctx.eager_task, tol)
        if recipe.parity.enabled:
            with ctx.status(f"Parity: {art.kind} vs eager on {recipe.inputs.source}"):
                art.parity = check_parity(runner, ctx.refs, ctx.refs.shapes_for(art), art.precision, tol)
            art.parity_status = ("passed" if all(p.passed for p in art.parity) and not art.failures
                                 and art.task_issue is None else "failed")
            base = ctx.find(art.compare_to) if art.compare_to else None
            if base is not None and base.runner is not None:
                with make_runner(base.runner, ctx.threads) as b:
                    outs = {s: [b.infer({ctx.refs.input_name: x}) for _, x in ctx.refs.batches[s]]
                            for s in [ctx.shape]}
                res = check_parity(runner, ctx.refs, [ctx.shape], art.precision, tol, against=lambda s: outs[s])
                art.extra_parity[f"vs_{art.compare_to}"] = [r.to_dict() for r in res]
        else:
            art.parity_status = "failed" if art.task_issue else "skipped"
    _collect_views(ctx, art, preds)


def _collect_views(ctx: Context, art: Artifact, preds) -> None:
    """The report's error views of one artifact (a failure here is noted on the page, never fatal)."""
    from edgeexport import views

    try:
        views.collect(ctx, art, preds)
    except Exception as exc:
        art.views = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}


def task_issue(task: TaskMetrics, eager: TaskMetrics, tol: Tolerance) -> str | None:
    """Why ``task`` fails its tolerance against eager (None when it holds or none is set)."""
    drop = task.drop_points(eager)
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
            stats = benchmark_interleaved(runners, ctx.refs.feed(), b.warmup, b.runs, b.budget_s)
    ctx.eager_latency = stats.pop("eager")
    for art in ctx.artifacts:
        art.latency = stats.get(art.kind, art.latency)


# ---------------------------------------------------------------- run


def run(recipe: Recipe, log=print, status=_noop_status, command: str | None = None) -> dict:
    """Run a recipe end to end and return the report (also written next to the artifacts, as JSON,
    Markdown and a self-contained HTML page). ``command``: the command line, recorded for the page."""
    from edgeexport import report as R
    from edgeexport.views import profile_slow_int8

    t0 = time.perf_counter()
    ctx = prepare(recipe, log, status)
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


def unbuilt(report: dict, target: str) -> list[dict]:
    """The artifacts of ``target`` that this machine could not build (its converter is missing)."""
    return [a for a in report["artifacts"] if a["target"] == target and not a["built"]]
