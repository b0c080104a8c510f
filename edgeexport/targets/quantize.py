"""Reduced-precision ONNX graphs, run with ONNX Runtime: static int8 (Q/DQ, calibrated and planned
here), dynamic int8, fp16, and the symmetric int8 Q/DQ graph TensorRT builds from.

Starts from the fp32 ONNX graph (the ``onnx`` target's, or the user's ``.onnx`` file). The
machinery lives in :mod:`edgeexport.quantize`; this file is the target: options, formats,
the build record and its report section.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import Field

from edgeexport.parity import budget_missed, meets, resolve_budget
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner, OrtRunnerOptions, ort_profile
from edgeexport.targets.base import (Budget, Equalize, FloatModules, BuildRecord, Format, Repair, RepairStep, Requirement, Target,
                                     TargetOptions, fp32_graph, fp32_graph_requirement)
from edgeexport.targets.registry import register_target
from edgeexport.util import md_table


class QuantizeOptions(TargetOptions):
    """One reduced-precision build of the fp32 ONNX graph (``NAME.int8.onnx`` / ``NAME.fp16.onnx``)."""

    mode: Literal["int8", "int8-dynamic", "fp16"] = "int8"
    calib_size: int = Field(8, ge=1, le=4096, description="calibration batches")
    calib_folder: str | None = Field(None, description="calibration images: a folder, or a built-in task's "
                                                       "split such as shapes_seg:calib",
                                     json_schema_extra={"flag": "--calib"})
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = Field(True, json_schema_extra={"flag": "--per-channel/--per-tensor"})
    format: Literal["qdq", "qoperator"] = "qdq"
    exclude: list[str] = Field(default_factory=list, description="node to keep in float (repeatable)")
    float_modules: FloatModules = Field(default_factory=list, description="module of the model to keep in float, by "
                                     "its path as `edgeexport diff` names it (repeatable)",
                                     json_schema_extra={"flag": "--float-module"})
    budget: Budget = Field(
        None, description="accuracy budget, e.g. miou_drop=0.5, top1_drop=0.5, snr_db=25 or agreement=0.99",
        json_schema_extra={"parse": "budget"})
    plans: list[Literal["all", "float_stem", "dense"]] | Literal["auto"] = Field(
        "auto", json_schema_extra={"cli": False})
    target: Literal["cpu", "tensorrt"] = Field(
        "cpu", description="tensorrt: the symmetric int8 Q/DQ graph TensorRT imports", json_schema_extra={"cli": False})
    equalize: Equalize = "auto"


TABLE_TITLES = {
    "plans": "Candidate int8 plans, measured here (latency interleaved with the fp32 graph; accuracy vs the reference)",
    "per_layer": "Where precision is lost: nodes ranked by the SNR they drop (int8 vs fp32 activations)",
    "float_nodes": "Nodes that run in float in the optimised int8 graph, and why",
    "largest_activations": "Largest activation magnitudes (fp16 overflows above 65504)",
    "fp16_overflow": "Tensors that overflow fp16",
}


class QuantizeRecord(BuildRecord):
    mode: str
    # int8 (static)
    target: str | None = None
    format: str | None = None
    method: str | None = None
    per_channel: bool | None = None
    calib_size: int | None = None
    calib_source: str | None = None
    static_shape: list[int] | None = None
    prep: dict[str, int] = {}
    plan: str | None = None
    plan_choice: str | None = None
    fp32_ms_during_planning: float | None = None
    plans: list[dict] = []
    budget: dict | None = None
    budget_met: bool | None = None
    per_layer: list[dict] = []
    float_nodes: list[dict] = []
    optimized_op_counts: dict[str, int] = {}
    excluded: dict[str, str] = {}
    phase_s: dict[str, float] = {}
    float_modules: dict[str, list[str]] = {}  # module kept in float -> its nodes
    # module kept in float (by name, or by the budget) -> the activations its nodes read in float (no Q/DQ pair)
    float_tensors: dict[str, list[str]] = {}
    scopes_kept: int | None = None  # nodes that still name their module (the per-layer diff's pairing)
    # int8-dynamic
    weight_type: str | None = None
    # fp16
    converter: str | None = None
    max_activation: float | None = None
    largest_activations: list[dict] = []
    fp16_overflow: list[dict] = []
    kept_fp32_for_overflow: list[str] = []
    constants_beyond_fp16: list[str] = []
    kept_fp32_for_types: list[str] = []
    fp32_initializers_restored: int | None = None

    def markdown(self) -> list[str]:
        skip = set(TABLE_TITLES) | {"budget", "excluded", "notes", "optimized_op_counts"}
        lines = [f"- {k}: {json.dumps(v, default=str)}" for k, v in self.model_dump().items()
                 if k not in skip and v not in (None, [], {})]
        if self.excluded:
            lines.append(f"- nodes the quantizer left in float: {len(self.excluded)}")
        if self.optimized_op_counts:
            lines.append(f"- optimized_op_counts: {json.dumps(self.optimized_op_counts)}")
        if self.budget:
            b = self.budget
            lines.append(f"- accuracy budget {json.dumps(b['target'])}: {'met' if b['met'] else 'NOT met'}; "
                         f"kept in float: {', '.join(b['kept_float']) or 'nothing'}")
        tables = []
        for key, title in TABLE_TITLES.items():
            rows = getattr(self, key)
            if rows:
                tables += ["", f"{title}:", ""] + md_table(rows)
        if self.budget and self.budget.get("steps"):
            tables += ["", "Accuracy-aware steps (each keeps one more node in float):", ""] + md_table(self.budget["steps"])
        return lines + tables


_SUFFIX = {"int8": ".int8.onnx", "int8-dynamic": ".int8-dynamic.onnx", "int8-tensorrt": ".int8-tensorrt.onnx",
           "fp16": ".fp16.onnx"}


@register_target
class QuantizeTarget(Target):
    name = "quantize"
    order = 10
    title = "ONNX Runtime"
    backend = "onnxruntime"
    help = "Build NAME.int8.onnx / NAME.fp16.onnx and check it against eager PyTorch and the fp32 graph."
    Options = QuantizeOptions
    runner_options = OrtRunnerOptions
    Record = QuantizeRecord
    multiple = True
    from_onnx_file = True
    formats = (
        Format(kind="onnx-int8", suffix=".int8.onnx", precision="int8",
               runs_on="any CPU (fast int8 on AVX512-VNNI / AVX-VNNI / ARM dot-product)", options={"mode": "int8"}),
        Format(kind="onnx-int8-dynamic", suffix=".int8-dynamic.onnx", precision="int8", runs_on="any CPU",
               options={"mode": "int8-dynamic"}),
        Format(kind="onnx-fp16", suffix=".fp16.onnx", precision="fp16",
               runs_on="GPUs and fp16-capable CPUs; slower than fp32 on x86 CPUs", options={"mode": "fp16"}),
        Format(kind="onnx-int8-tensorrt", suffix=".int8-tensorrt.onnx", precision="int8",
               runs_on="input to TensorRT (symmetric int8 Q/DQ); ONNX Runtime runs it anywhere",
               options={"mode": "int8", "target": "tensorrt"}),
    )
    build_modules = ("onnx", "onnxruntime", "onnxconverter_common")
    run_modules = ("onnxruntime",)
    distributions = {"onnxconverter_common": "onnxconverter-common"}

    @classmethod
    def requires(cls, options, ctx) -> list[Requirement]:
        return fp32_graph_requirement(ctx)

    @classmethod
    def searches_budget(cls, options) -> bool:
        return options.mode == "int8"  # the int8 builder's budget loop, node by node

    def build(self, ctx, options: QuantizeOptions, art) -> None:
        from edgeexport.quantize.fp16 import build_fp16
        from edgeexport.quantize.int8 import Int8Options, build_int8, build_int8_dynamic

        art.compare_to = "onnx"
        art.dynamic = ctx.dynamic if options.mode == "fp16" else "none"  # int8 graphs are static
        fp32 = fp32_graph(ctx, equalize=options.mode == "int8" and options.equalize == "on")
        with ctx.status(f"Building {art.path.name}"):
            if options.mode == "int8":
                # TensorRT's explicit quantization: symmetric int8 activations, and TensorRT chooses its own
                # kernels, so the plans measured on this CPU do not apply
                for_trt = options.target == "tensorrt"
                opts = Int8Options(calib_size=options.calib_size, calib_folder=ctx.calib_spec(options.calib_folder),
                                   method=options.method, per_channel=options.per_channel, format=options.format,
                                   exclude=list(options.exclude), float_modules=list(options.float_modules),
                                   budget=resolve_budget(options.budget, ctx.task_data and ctx.task_data.task),
                                   plans=options.plans, consumer=options.target, symmetric=for_trt,
                                   cpu_plans=not for_trt)
                tol = ctx.tolerance("int8")
                floor = {k: v for k, v in (("snr_db", tol.min_snr_db), ("agreement", tol.min_agreement),
                                           ("cosine", tol.min_cosine)) if v is not None}
                if ctx.task_data is not None and tol.max_task_drop is not None:
                    floor["task_drop"] = tol.max_task_drop
                info = build_int8(fp32, art.path, opts, evaluator(ctx), floor, log=ctx.log)
                info["mode"] = "int8"
                if info.get("budget"):
                    art.repair = node_repair(info["budget"], info.get("phase_s", {}).get("budget"))
                if info.get("budget_met") is False:
                    last = next(s for s in reversed(info["budget"]["steps"]) if s.get("kept", True))
                    art.failures.append(budget_missed(art.repair.budget, last, art.repair.float_modules))
            elif options.mode == "int8-dynamic":
                info = build_int8_dynamic(fp32, art.path, ctx.shape, options.per_channel)
            else:
                info = build_fp16(fp32, art.path, ctx.input_name, ctx.eval_batches())
        art.finish(QuantizeRecord(**info), ctx.runner_spec(type(self), art.path))

    @classmethod
    def runner(cls, spec, threads):
        return OnnxRuntimeRunner(spec.artifact, threads=threads, **spec.options)

    @classmethod
    def operator_profile(cls, spec, feed, threads: int, runs: int) -> dict:
        return ort_profile(spec.artifact, feed, threads, spec.options.get("optimization", "all"), runs)


def node_repair(budget: dict, seconds: float | None) -> Repair:
    """The int8 builder's budget loop (nodes back in float, the worst first) as the report's repair record:
    the modules of the user's model those nodes come from."""
    floats, steps = [], []
    for s in budget["steps"]:
        node = s.get("excluded")
        module = (s.get("module") or f"node {node}") if node else None
        kept = s.get("kept", True)
        trial = [*floats, module] if module and module not in floats else list(floats)
        if kept:
            floats = trial
        metrics = {k: s.get(k) for k in ("snr_db", "agreement", "cosine", "task_drop") if s.get(k) is not None}
        steps.append(RepairStep(float_modules=trial, added=module, kept=kept,
                                why=f"node {node} ({s['op']}) loses {s['drop_db']:.1f} dB" if node else None,
                                metrics=metrics, met=meets(metrics, budget["target"])))
    return Repair(search="node-level, in the int8 builder: the node losing the most SNR goes back to float (its "
                         "inputs read in float), a step that does not get closer to the budget undone and the next "
                         "node tried, the ranking recomputed after each kept step", budget=budget["target"], met=bool(budget["met"]),
                  float_modules=floats, steps=steps,
                  ranked_on="ONNX Runtime's int8 and fp32 activations, node by node",
                  int8_ms=budget.get("int8_ms"), repaired_ms=budget.get("repaired_ms"), seconds=seconds)


def evaluator(ctx):
    """What the int8 builder may measure (an :class:`~edgeexport.quantize.int8.Evaluator`): accuracy of a
    graph against the reference, latencies here."""
    import contextlib

    from edgeexport.bench import benchmark_interleaved
    from edgeexport.quantize.int8 import Evaluator

    def accuracy(path) -> dict:
        with QuantizeTarget.runner(ctx.runner_spec(QuantizeTarget, path), ctx.threads) as r:
            return ctx.accuracy(r, "int8")

    def latency(paths) -> list[float]:
        runners = {str(i): QuantizeTarget.runner(ctx.runner_spec(QuantizeTarget, p), ctx.threads)
               for i, p in enumerate(paths)}
        with contextlib.ExitStack() as stack:
            for r in runners.values():
                stack.enter_context(r)
            stats = benchmark_interleaved(runners, ctx.feed(), warmup=1, runs=20, budget_s=2.0, rounds=5, min_runs=5)
        return [stats[str(i)].median_ms for i in range(len(paths))]

    return Evaluator(ctx.input_name, ctx.shape, lambda n, folder: ctx.calibration(n, folder), accuracy, latency,
                     ctx.eval_batches())
