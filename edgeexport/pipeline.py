"""The pipeline: build artifacts stage by stage, then check every artifact the same way.

``run(recipe)`` loads the model, builds the artifacts its stages ask for, then for every
artifact (whatever the backend) runs parity against eager PyTorch on real photographs at
the main shape and, for dynamic exports, at other shapes, and times it beside eager with
the same thread count. Stages only build; checking goes through the runner interface.
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
from edgeexport.util import default_threads, ensure_output_dir, file_size


# ---------------------------------------------------------------- artifacts


@dataclass
class Artifact:
    """One built file (or package) with how to run it and what its checks found."""

    kind: str  # e.g. "onnx", "onnx-int8"
    backend: str
    precision: str
    path: Path | None
    make_runner: Callable[[int], Runner] | None = None
    dynamic: str = "none"
    build: dict = field(default_factory=dict)
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

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures and self.parity_status in ("passed", "not_run", "skipped")

    @property
    def size(self) -> int | None:
        return file_size(self.path) if self.path is not None and self.path.exists() else None


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

    def shapes_for(self, artifact: Artifact) -> list[tuple]:
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
    rewrites: dict = field(default_factory=dict)
    rewritten: torch.nn.Module | None = None
    task_data: object = None  # TaskData when the recipe has labeled data
    eager_task: TaskMetrics | None = None

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

    def fp32_onnx(self) -> Path | None:
        """The fp32 ONNX graph later stages start from: the export, or the graph the user gave."""
        if self.handle.is_onnx:
            return self.handle.onnx_path
        art = self.find("onnx")
        return art.path if art is not None else None

    def find(self, kind: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind and a.error is None), None)


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
    for q in recipe.stages.quantize:  # bad calibration input fails before anything is built
        if q.calib_folder:
            from edgeexport.quantize.calib import check_calibration_source

            check_calibration_source(q.calib_folder, recipe.inputs.folder, eval_spec)
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
                ctx.eager_task, _ = ctx.task_data.evaluate(r, refs.input_name)
    return ctx


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


# ---------------------------------------------------------------- stages


def stage_onnx(ctx: Context) -> Artifact:
    from edgeexport.export.onnx import ExportFailed, export_onnx, simplify_onnx
    from edgeexport.rewrite import apply_rewrites
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

    cfg = ctx.recipe.stages.onnx
    path = ctx.artifact_path(".onnx")
    art = Artifact("onnx", "onnxruntime", "fp32", path, dynamic=ctx.recipe.dynamic)
    model, counts = apply_rewrites(ctx.handle.model, cfg.rewrites)
    art.build["rewrites"] = counts
    sample = torch.from_numpy(ctx.refs.feed()[ctx.refs.input_name])
    with ctx.status(f"Exporting {ctx.name} to ONNX ({cfg.exporter}, opset {cfg.opset}, dynamic={ctx.recipe.dynamic})"):
        try:
            art.build.update(export_onnx(ctx.handle.wrapped(model), sample, path, input_name=ctx.refs.input_name,
                                         output_names=ctx.handle.output_names, opset=cfg.opset,
                                         dynamic=ctx.recipe.dynamic, exporter=cfg.exporter))
        except ExportFailed as exc:
            art.error = str(exc)
            return art
    if cfg.simplify:
        with ctx.status("Simplifying with onnxsim"):
            art.build["simplify"] = simplify_onnx(path, ctx.refs.feed())
        if not art.build["simplify"]["applied"]:
            art.notes.append(art.build["simplify"]["reason"])
    else:
        art.build["simplify"] = {"applied": False, "reason": "disabled"}
    art.make_runner = lambda threads, p=path: OnnxRuntimeRunner(p, threads=threads)
    return art


def stage_quantize(ctx: Context, only_last: bool = False) -> list[Artifact]:
    from edgeexport.quantize.fp16 import build_fp16
    from edgeexport.quantize.int8 import Int8Options, build_int8, build_int8_dynamic
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

    arts = []
    fp32 = ctx.fp32_onnx()
    configs = ctx.recipe.stages.quantize[-1:] if only_last else ctx.recipe.stages.quantize
    for cfg in configs:
        mode = "int8-tensorrt" if cfg.mode == "int8" and cfg.target == "tensorrt" else cfg.mode
        suffix, precision = {"int8": (".int8.onnx", "int8"), "int8-dynamic": (".int8-dynamic.onnx", "int8"),
                             "int8-tensorrt": (".int8-tensorrt.onnx", "int8"), "fp16": (".fp16.onnx", "fp16")}[mode]
        path = ctx.artifact_path(suffix)
        art = Artifact(f"onnx-{mode}", "onnxruntime", precision, path, compare_to="onnx",
                       dynamic=ctx.recipe.dynamic if cfg.mode == "fp16" else "none")  # int8 graphs are static
        arts.append(art)
        if fp32 is None:
            art.error = "no fp32 ONNX graph to start from (the onnx stage is disabled or failed)"
            continue
        with ctx.status(f"Building {path.name}"):
            try:
                if cfg.mode == "int8":
                    opts = Int8Options(calib_size=cfg.calib_size, calib_folder=ctx.calib_spec(cfg.calib_folder),
                                       method=cfg.method, per_channel=cfg.per_channel, format=cfg.format,
                                       exclude=list(cfg.exclude), budget=task_budget(ctx, cfg.budget),
                                       plans=cfg.plans, target=cfg.target)
                    tol = ctx.tolerance("int8")
                    floor = {k: v for k, v in (("snr_db", tol.min_snr_db), ("agreement", tol.min_agreement),
                                               ("cosine", tol.min_cosine)) if v is not None}
                    if ctx.task_data is not None and tol.max_task_drop is not None:
                        floor["task_drop"] = tol.max_task_drop
                    art.build = build_int8(fp32, path, opts, evaluator(ctx), floor, log=ctx.log)
                    if art.build.get("budget_met") is False:
                        art.failures.append(f"accuracy budget {cfg.budget} not met; kept the most accurate graph found")
                elif cfg.mode == "int8-dynamic":
                    art.build = build_int8_dynamic(fp32, path, ctx.shape, cfg.per_channel)
                else:
                    art.build = build_fp16(fp32, path, ctx.refs.input_name, [b for _, b in ctx.refs.batches[ctx.shape]])
            except EdgeExportError:
                raise
            except Exception as exc:
                art.error = f"{cfg.mode} build failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                continue
        art.notes += art.build.pop("notes", [])
        art.make_runner = lambda threads, p=path: OnnxRuntimeRunner(p, threads=threads)
    return arts


def evaluator(ctx: Context):
    """What the int8 builder may measure: accuracy against the reference, latency here."""
    from edgeexport.bench import benchmark_interleaved
    from edgeexport.quantize.int8 import Evaluator
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

    refs, shape = ctx.refs, ctx.shape
    tol = ctx.tolerance("int8")

    def accuracy(path: Path) -> dict:
        with OnnxRuntimeRunner(path, threads=ctx.threads) as r:
            res = check_parity(r, refs, [shape], "int8", tol)[0]
            task = ctx.task_data.evaluate(r, refs.input_name)[0] if ctx.task_data is not None else None
        ms = [o.metrics for o in res.outputs]
        worst = lambda k: min((m[k] for m in ms if m.get(k) is not None), default=None)  # noqa: E731
        acc = {"snr_db": worst("snr_db"), "agreement": worst("agreement"), "cosine": worst("cosine")}
        if task is not None:
            acc[task.primary] = task.value
            acc["task_drop"] = task.drop_points(ctx.eager_task)
        return acc

    def latency(paths: list[Path]) -> list[float]:
        runners = {str(i): OnnxRuntimeRunner(p, threads=ctx.threads) for i, p in enumerate(paths)}
        with contextlib.ExitStack() as stack:
            for r in runners.values():
                stack.enter_context(r)
            stats = benchmark_interleaved(runners, refs.feed(), warmup=1, runs=20, budget_s=2.0, rounds=5, min_runs=5)
        return [stats[str(i)].median_ms for i in range(len(paths))]

    return Evaluator(refs.input_name, shape, ctx.handle.preprocess, accuracy, latency,
                     [b for _, b in refs.batches[shape]], ctx.recipe.inputs.folder)


def task_budget(ctx: Context, budget: dict | None) -> dict | None:
    """The int8 accuracy budget with ``miou_drop`` / ``top1_drop`` checked against the labeled data
    and mapped to the builder's ``task_drop``."""
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


def _rewritten(ctx: Context) -> torch.nn.Module:
    """The eager model with the recipe's export rewrites applied (cached; shared by every target)."""
    if ctx.rewritten is None:
        from edgeexport.rewrite import apply_rewrites

        from edgeexport.rewrite import DEFAULT_REWRITES

        names = ctx.recipe.stages.onnx.rewrites if ctx.recipe.stages.onnx else list(DEFAULT_REWRITES)
        ctx.rewritten, ctx.rewrites = apply_rewrites(ctx.handle.model, names)
    return ctx.rewritten


def _calibration_tensors(ctx: Context, count: int) -> list[torch.Tensor]:
    from edgeexport.quantize.calib import calibration_batches

    return [torch.from_numpy(b) for b in calibration_batches(ctx.shape, count, ctx.handle.preprocess,
                                                             ctx.calib_spec(None))]


def _needs_torch_model(ctx: Context, art: Artifact) -> bool:
    if ctx.handle.model is None:
        art.error = "this target converts from the PyTorch model; an ONNX file was given"
        return False
    return True


def stage_trt(ctx: Context) -> list[Artifact]:
    from edgeexport.export.tensorrt import TensorRTBuildFailed, build_engine, tensorrt_available
    from edgeexport.export.trt_preflight import preflight, summarize
    from edgeexport.runners.tensorrt import TensorRTRunner

    cfg = ctx.recipe.stages.trt
    precision = "int8" if cfg.int8 else "fp16" if cfg.fp16 else "fp32"
    art = Artifact("tensorrt", "tensorrt", precision, ctx.artifact_path(".engine"), dynamic=ctx.recipe.dynamic)
    source = ctx.fp32_onnx()
    if cfg.int8:
        qart = ctx.find("onnx-int8-tensorrt")
        if qart is None:
            from edgeexport.recipe import QuantizeStage

            ctx.recipe.stages.quantize.append(QuantizeStage(mode="int8", target="tensorrt"))
            built = stage_quantize(ctx, only_last=True)
            ctx.artifacts.extend(built)
            for a in built:
                check_artifact(ctx, a)
            qart = ctx.find("onnx-int8-tensorrt")
        source = qart.path if qart is not None else None
        art.dynamic = "none"
    if source is None:
        art.error = "no ONNX graph to build from"
        return [art]
    import onnx

    art.build["source"] = str(source)
    art.build["preflight"] = summarize(preflight(onnx.load(str(source), load_external_data=False)))
    if not art.build["preflight"]["parses"]:
        art.error = "pre-flight: TensorRT's ONNX parser would reject " + "; ".join(
            f"{e['node']} ({e['op']}): {e['message']}" for e in art.build["preflight"]["errors"][:3])
        return [art]
    ok, reason = tensorrt_available()
    if not ok:
        art.path = None
        art.parity_status, art.not_run_reason = "not_run", f"not run on this machine: {reason}"
        art.notes.append(f"engine not built: {reason}; the pre-flight above ran here")
        return [art]
    n, c, h, w = ctx.shape
    shapes = None
    if art.dynamic != "none":
        lo = tuple(cfg.min_shape or (1, c, max(32, h // 2) if "hw" in art.dynamic or art.dynamic == "all" else h,
                                     max(32, w // 2) if art.dynamic in ("hw", "all") else w))
        opt = tuple(cfg.opt_shape or ctx.shape)
        hi = tuple(cfg.max_shape or (n * (4 if art.dynamic in ("batch", "all") else 1), c,
                                     h * 2 if art.dynamic in ("hw", "all") else h,
                                     w * 2 if art.dynamic in ("hw", "all") else w))
        shapes = {ctx.refs.input_name: (lo, opt, hi)}
    cache = Path(cfg.timing_cache) if cfg.timing_cache else ctx.out_dir / "tensorrt.timing.cache"
    with ctx.status(f"Building TensorRT engine ({precision})"):
        try:
            art.build.update(build_engine(source, art.path, fp16=cfg.fp16, int8=cfg.int8, shapes=shapes,
                                          workspace_mib=cfg.workspace_mib, timing_cache=cache))
        except TensorRTBuildFailed as exc:
            art.error = str(exc)
            return [art]
    art.make_runner = lambda threads, p=art.path: TensorRTRunner(p, threads=threads)
    return [art]


def stage_coreml(ctx: Context) -> list[Artifact]:
    from edgeexport.export.coreml import CoreMLConversionFailed, convert
    from edgeexport.runners.coreml import CoreMLRunner

    arts = []
    for cfg in ctx.recipe.stages.coreml:
        suffix = ".mlpackage" if cfg.compress == "none" else f".{cfg.compress}.mlpackage"
        kind = "coreml" if cfg.compress == "none" else f"coreml-{cfg.compress}"
        art = Artifact(kind, "coreml", cfg.precision, ctx.artifact_path(suffix))
        arts.append(art)
        if not _needs_torch_model(ctx, art):
            continue
        sample = torch.from_numpy(ctx.refs.feed()[ctx.refs.input_name])
        with ctx.status(f"Converting to CoreML ({cfg.precision}, compress={cfg.compress})"):
            try:
                art.build = convert(ctx.handle.wrapped(_rewritten(ctx)), sample, art.path,
                                    input_name=ctx.refs.input_name, output_names=ctx.handle.output_names,
                                    precision=cfg.precision, compress=cfg.compress,
                                    deployment_target=cfg.deployment_target)
            except CoreMLConversionFailed as exc:
                art.error = str(exc)
                continue
        if art.build["validation_problems"]:
            art.failures += art.build["validation_problems"]
        art.make_runner = lambda threads, p=art.path, u=cfg.compute_units: CoreMLRunner(p, threads, u)
    return arts


def stage_executorch(ctx: Context) -> list[Artifact]:
    from edgeexport.export.executorch import ExecuTorchLoweringFailed, lower
    from edgeexport.runners.executorch import ExecuTorchRunner

    arts = []
    for cfg in ctx.recipe.stages.executorch:
        int8 = cfg.quantize == "int8"
        art = Artifact("executorch-int8" if int8 else "executorch", "executorch", "int8" if int8 else "fp32",
                       ctx.artifact_path(".int8.pte" if int8 else ".pte"))
        arts.append(art)
        if not _needs_torch_model(ctx, art):
            continue
        sample = torch.from_numpy(ctx.refs.feed()[ctx.refs.input_name])
        with ctx.status(f"Lowering to ExecuTorch / XNNPACK ({cfg.quantize})"):
            try:
                calib = _calibration_tensors(ctx, cfg.calib_size) if int8 else None
                art.build = lower(ctx.handle.wrapped(_rewritten(ctx)), sample, art.path,
                                  quantize="int8" if int8 else None, calibration=calib)
            except ExecuTorchLoweringFailed as exc:
                art.error = str(exc)
                continue
        names = (ctx.handle.input_names, ctx.handle.output_names)
        art.make_runner = lambda threads, p=art.path, n=names: ExecuTorchRunner(p, threads, n[0], n[1])
    return arts


def stage_bundle(ctx: Context) -> list[Artifact]:
    """Write a parity bundle for every built artifact the stage names (no new artifact)."""
    kinds = ctx.recipe.stages.bundle.artifacts
    for art in ctx.artifacts:
        if art.error or art.path is None or not art.path.exists() or ("all" not in kinds and art.kind not in kinds):
            continue
        out = ctx.out_dir / f"{ctx.name}.{art.kind}.bundle"
        with ctx.status(f"Bundling {art.kind}"):
            write_bundle_for(ctx, art, out)
        art.build["bundle"] = str(out)
    return []


def write_bundle_for(ctx: Context, art: Artifact, out: Path) -> dict:
    from dataclasses import asdict

    from edgeexport.bundle import write_bundle
    from edgeexport.report import versions

    shape = ctx.shape
    inputs = [x for _, x in ctx.refs.batches[shape]]
    model = {**ctx.handle.info(shape), "dynamic": "none",
             "images": [n for names, _ in ctx.refs.batches[shape] for n in names]}
    return write_bundle(out, artifact=art.path, backend=art.backend, precision=art.precision, kind=art.kind,
                        input_name=ctx.refs.input_name, inputs=inputs, references=ctx.refs.outputs(shape),
                        tasks=ctx.handle.tasks, tolerance=asdict(ctx.recipe.tolerance(art.precision)), model=model,
                        versions=versions(), build_latency_ms=art.latency.median_ms if art.latency else None)


STAGES: dict[str, Callable[[Context], Artifact | list[Artifact] | None]] = {
    "onnx": stage_onnx,
    "quantize": stage_quantize,
    "trt": stage_trt,
    "coreml": stage_coreml,
    "executorch": stage_executorch,
}


# ---------------------------------------------------------------- checks


def check_artifact(ctx: Context, art: Artifact) -> None:
    """Parity (main + dynamic shapes) and latency of one artifact, through its runner."""
    if art.error is not None or art.make_runner is None:
        return
    runner = art.make_runner(ctx.threads)
    ok, reason = runner.availability()
    if not ok:
        art.parity_status, art.not_run_reason = "not_run", f"not run on this machine: {reason}"
        return
    try:
        _check_with(ctx, art, runner)
    except EdgeExportError:
        raise
    except Exception as exc:  # a built artifact its runtime refuses or crashes on is a failed artifact
        art.error = f"{art.backend} could not run the artifact: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        art.make_runner = None


def _check_with(ctx: Context, art: Artifact, runner: Runner) -> None:
    recipe = ctx.recipe
    tol = ctx.tolerance(art.precision)
    with runner:
        if ctx.task_data is not None:
            with ctx.status(f"Task metrics: {art.kind} on {ctx.task_data.count} labeled images"):
                art.task, _ = ctx.task_data.evaluate(runner, ctx.refs.input_name)
            art.task_drop = art.task.drop_points(ctx.eager_task)
            if tol.max_task_drop is not None and art.task_drop is not None and art.task_drop > tol.max_task_drop:
                art.task_issue = (f"{art.task.primary} {100 * art.task.value:.2f} is {art.task_drop:.2f} points below "
                                  f"eager, limit {tol.max_task_drop:g}")
        if recipe.parity.enabled:
            with ctx.status(f"Parity: {art.kind} vs eager on {recipe.inputs.source}"):
                art.parity = check_parity(runner, ctx.refs, ctx.refs.shapes_for(art), art.precision, tol)
            art.parity_status = ("passed" if all(p.passed for p in art.parity) and not art.failures
                                 and art.task_issue is None else "failed")
            base = ctx.find(art.compare_to) if art.compare_to else None
            if base is not None and base.make_runner is not None:
                with base.make_runner(ctx.threads) as b:
                    outs = {s: [b.infer({ctx.refs.input_name: x}) for _, x in ctx.refs.batches[s]]
                            for s in [ctx.shape]}
                res = check_parity(runner, ctx.refs, [ctx.shape], art.precision, tol, against=lambda s: outs[s])
                art.extra_parity[f"vs_{art.compare_to}"] = [r.to_dict() for r in res]
        else:
            art.parity_status = "failed" if art.task_issue else "skipped"


def time_all(ctx: Context) -> None:
    """Latency of eager PyTorch and of every runnable artifact, interleaved, same threads, same input."""
    b = ctx.recipe.bench
    if not b.enabled:
        return
    runners: dict[str, Runner] = {"eager": ctx.refs.eager_runner()}
    for art in ctx.artifacts:
        if art.error is None and art.make_runner is not None and art.parity_status != "not_run":
            runners[art.kind] = art.make_runner(ctx.threads)
    with contextlib.ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        with ctx.status(f"Timing {', '.join(runners)} ({ctx.threads} threads, interleaved)"):
            stats = benchmark_interleaved(runners, ctx.refs.feed(), b.warmup, b.runs, b.budget_s)
    ctx.eager_latency = stats.pop("eager")
    for art in ctx.artifacts:
        art.latency = stats.get(art.kind, art.latency)


def run(recipe: Recipe, log=print, status=_noop_status) -> dict:
    """Run a recipe end to end and return the report (also written next to the artifacts)."""
    from edgeexport import report as R

    t0 = time.perf_counter()
    ctx = prepare(recipe, log, status)
    stage_names = [name for name in STAGES if getattr(recipe.stages, name, None)
                   and not (name == "onnx" and ctx.handle.is_onnx)]
    for name in stage_names:
        built = STAGES[name](ctx)
        for art in built if isinstance(built, list) else [built] if built else []:
            ctx.artifacts.append(art)
            check_artifact(ctx, art)
    time_all(ctx)
    if recipe.stages.bundle is not None:  # after timing, so bundles carry the build host's latency
        stage_bundle(ctx)
    rep = R.build_report(ctx, time.perf_counter() - t0)
    R.write_reports(rep, ctx.out_dir, ctx.name)
    return rep
