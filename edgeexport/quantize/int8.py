"""Static int8 that is faithful and actually fast on the machine that builds it.

A naive ``quantize_static`` of LR-ASPP ran slower than fp32 in ONNX Runtime here. The
builder therefore does not stop at "quantize everything":

1. **Static shapes.** The int8 graph is built for the recipe's input shape (dynamic shapes
   keep ONNX Runtime from fusing and pre-packing the int8 kernels).
2. **Graph preparation** (``prep.py``, exact): GlobalAveragePool instead of ReduceMean,
   BatchNorm after Concat folded into the convolutions, grouped convolutions densified to
   block-diagonal form, HardSigmoid / HardSwish decomposed into operators with int8 kernels,
   every node named; after quantization, scalar Muls absorbed into dequantization scales.
3. **One calibration** over real photographs (disjoint from the evaluation photographs),
   cached, so every candidate below re-quantizes in about a second.
4. **Candidate plans**, each a choice of what stays in float, measured here (latency
   interleaved with the fp32 graph, accuracy against eager PyTorch); the fastest plan that
   meets the accuracy floor wins (when none does, the most accurate plan that is at least 10%
   faster than fp32). With labeled data the floor is the task metric's drop (mIoU / top-1 points). ``all`` quantizes everything but the output tail; ``float_stem`` also keeps
   the stem convolution (3 input channels) in float; ``dense`` also keeps depthwise
   convolutions, and activations ONNX Runtime has no int8 kernel for, in float.
5. **Accuracy budget** (optional): while the budget (e.g. ``snr_db=25``) is missed, the node
   that adds the most error (per-layer SNR drop, ``debug.py``) goes back to float.
6. **Truth from the runtime**: the final graph is optimised by ONNX Runtime and inspected, so
   the report lists the nodes that really run in float, each with the reason.
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from edgeexport.errors import UserError
from edgeexport.parity import accuracy_key, meets, shortfall  # noqa: F401  (the budget rules; tests import them here)
from edgeexport.quantize import prep
from edgeexport.inputs import calibration_batches
from edgeexport.provenance import keep_scopes, match_modules, onnx_scopes
from edgeexport.quantize.calib import BatchReader
from edgeexport.quantize.debug import per_layer_errors, top_drops

NO_INT8_KERNEL = {"HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu", "Erf", "Tanh", "Exp", "Log", "Pow", "Div",
                  "Sqrt", "Reciprocal", "Softplus", "Mish", "LayerNormalization", "ReduceMean"}
SAME_SPEED = 0.05  # plans within 5% of the fastest one's latency count as equally fast (timing noise)
WORTHWHILE_RATIO = 0.9  # when no plan is accurate enough, only plans at least this much faster than fp32 compete
PLANS = ("all", "float_stem", "dense")  # candidate splits, from most to least int8
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
REASONS = {
    "user": "excluded with --exclude",
    "tail": "output tail: a float Resize/Add on the small logits is cheaper than dequantizing the full-size output",
    "depthwise": "depthwise conv: ONNX Runtime's int8 depthwise kernel is slower than its fp32 one here",
    "stem": "stem conv (<= 4 input channels): the int8 kernel is slower and quantizing the image costs accuracy",
    "no_kernel": "no int8 kernel in ONNX Runtime's CPU provider",
    "budget": "kept in float by the accuracy budget",
    "island": "consumer of a float node (ONNX Runtime would otherwise re-quantize the float node)",
}


@dataclass
class Int8Options:
    calib_size: int = 8
    calib_folder: str | None = None
    method: str = "minmax"
    per_channel: bool = True
    format: str = "qdq"
    exclude: list[str] = field(default_factory=list)
    float_modules: list[str] = field(default_factory=list)  # modules of the model (paths) whose nodes stay float
    budget: dict[str, float] | None = None
    plans: list[str] | str = "auto"
    max_budget_steps: int = 16
    table_rows: int = 15
    consumer: str = "cpu"  # what runs the graph (recorded in the report)
    symmetric: bool = False  # signed symmetric int8 activations and weights (explicit quantization for GPUs)
    cpu_plans: bool = True  # measure plans on this CPU; off when another runtime chooses its own kernels


@dataclass
class Evaluator:
    """What the builder may ask of the pipeline: accuracy against eager, latency here."""

    input_name: str
    shape: tuple[int, int, int, int]
    calibration: Callable[[int, str | None], list[np.ndarray]]  # (batches, folder) -> calibration batches
    accuracy: Callable[[Path], dict]  # path -> {"snr_db", "agreement", "cosine"[, "task_drop"]} vs eager
    latency: Callable[[list[Path]], list[float]]  # paths -> median ms, measured interleaved
    debug_batches: list[np.ndarray]


def _quant_args(opts: Int8Options):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.method]
    args = dict(per_channel=opts.per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=method,
                quant_format=QuantFormat.QDQ if opts.format == "qdq" else QuantFormat.QOperator)
    if opts.symmetric:
        args.update(activation_type=QuantType.QInt8, quant_format=QuantFormat.QDQ,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return args


def fix_input_shape(model: onnx.ModelProto, shape) -> bool:
    """Pin dynamic input dims to ``shape``; drop stale inferred shapes. Returns whether anything changed."""
    changed = False
    for inp in model.graph.input[:1]:
        for dim, value in zip(inp.type.tensor_type.shape.dim, shape):
            if dim.dim_param or dim.dim_value != value:
                dim.Clear()
                dim.dim_value = int(value)
                changed = True
    if changed:
        del model.graph.value_info[:]
        for out in model.graph.output:
            for dim in out.type.tensor_type.shape.dim:
                if dim.dim_param:
                    dim.Clear()
    return changed


class Int8Builder:
    def __init__(self, fp32_path: Path, opts: Int8Options, ev: Evaluator, log=lambda m: None):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about unused initializers
        self.fp32_path, self.opts, self.ev, self.log = Path(fp32_path), opts, ev, log
        self.tmp = Path(tempfile.mkdtemp(prefix="edgeexport-int8-"))
        self.plan_paths: dict[frozenset, Path] = {}  # QDQ graph of each measured plan, by its exclusions
        self.float_set: set[str] = set()  # nodes of modules kept in float by name or by the budget
        self.info: dict = {"target": opts.consumer, "format": opts.format, "method": opts.method,
                           "per_channel": opts.per_channel,
                           "calib_size": opts.calib_size,
                           "calib_source": opts.calib_folder or "bundled calibration photographs"}

    @functools.cached_property
    def fp32_meta(self) -> onnx.ModelProto:
        """The fp32 graph without its weights: the module scopes its nodes record (read once)."""
        return onnx.load(str(self.fp32_path), load_external_data=False)

    @functools.cached_property
    def scopes(self) -> dict[str, str]:
        return onnx_scopes(self.fp32_meta.graph)

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- preparation

    def prepare(self) -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        model = onnx.load(str(self.fp32_path))
        fixed = fix_input_shape(model, self.ev.shape)
        self.info["static_shape"] = list(self.ev.shape)
        if fixed:
            self.info["notes"] = ["the int8 graph is static: dynamic shapes keep ONNX Runtime from fusing "
                                  "and pre-packing int8 kernels"]
        staged = self.tmp / "staged.onnx"
        onnx.save(model, str(staged))
        pre = self.tmp / "pre.onnx"
        try:
            quant_pre_process(str(staged), str(pre))
        except Exception as exc:  # symbolic shape inference gives up on some graphs; ORT's own passes still apply
            self.log(f"quant_pre_process failed ({type(exc).__name__}); continuing without it")
            shutil.copy(staged, pre)
        model = onnx.load(str(pre))
        self.info["prep"] = prep.prepare_for_int8(model)
        self.prepared = self.tmp / "prepared.onnx"
        onnx.save(model, str(self.prepared))
        self.graph = model.graph
        if self.opts.float_modules:
            self._exclude_modules(model)
        names = {n.name for n in model.graph.node}
        unknown = [n for n in self.opts.exclude if n not in names]
        if unknown:
            raise UserError(f"--exclude: no node named {', '.join(unknown[:5])} in the prepared graph "
                            f"(see the report's per-layer table for node names)")
        return self.prepared

    def _exclude_modules(self, model) -> None:
        """Every node that comes from one of ``float_modules`` (by the module scope the fp32 graph records for a
        node of the same name) joins the nodes kept in float."""
        kept = match_modules(self.opts.float_modules, {n.name: self.scopes.get(n.name) for n in model.graph.node})
        self.info["float_modules"] = kept
        self.float_set |= {n for hits in kept.values() for n in hits}
        self.opts.exclude = list(dict.fromkeys([*self.opts.exclude, *(n for hits in kept.values() for n in hits)]))

    # ---------------------------------------------------------------- calibration

    def calibrate(self) -> None:
        batches = self.ev.calibration(self.opts.calib_size, self.opts.calib_folder)
        self.cache = self.tmp / "calibration.json"
        if self.opts.method == "entropy":
            self._entropy_ranges(batches)
        self._quantize(self.prepared, self.tmp / "calibrated.onnx", set(), BatchReader(self.ev.input_name, batches))

    def _entropy_ranges(self, batches) -> None:
        """KL-divergence ranges over 2048-bin histograms (TensorRT's entropy calibration), cached for the plans.

        ``quantize_static`` builds its entropy calibrator with 128 histogram bins and 128 quantized bins,
        which leaves one candidate threshold, the full range: its "entropy" ranges are minmax ranges.
        """
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

        calibrator = create_calibrator(self.prepared, augmented_model_path=str(self.tmp / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128,
                                                      "symmetric": self.opts.symmetric})
        calibrator.collect_data(BatchReader(self.ev.input_name, batches))
        save_tensors_data(calibrator.compute_data(), self.cache)
        del calibrator

    def _quantize(self, src: Path, dst: Path, exclude: set[str], reader=None, fmt: str | None = None) -> Path:
        from onnxruntime.quantization import quantize_static

        args = _quant_args(self.opts)
        if fmt is not None:
            from onnxruntime.quantization import QuantFormat

            args["quant_format"] = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
        quantize_static(str(src), str(dst), reader, nodes_to_exclude=sorted(exclude),
                        calibration_cache_path=str(self.cache), **args)
        if args["quant_format"].name == "QDQ":
            model = onnx.load(str(dst))
            absorbed = prep.absorb_scalar_muls(model)
            # the float set (modules kept in float by name or by the budget) reads float tensors: the quantizer
            # leaves the Q/DQ pair of an int8 producer on an excluded node's input, which would quantize it anyway
            if prep.float_inputs(model, self.graph, self.float_set & exclude) or absorbed:
                onnx.save(model, str(dst))
        return dst

    # ---------------------------------------------------------------- plans

    def classify(self) -> dict[str, str]:
        """Node name -> why it might stay float (for every plan's candidates)."""
        g = self.graph
        inits = {i.name: i for i in g.initializer}
        outputs = {o.name for o in g.output}
        producers = {o: n for n in g.node for o in n.output}
        why: dict[str, str] = {}
        for n in g.node:
            if n.op_type in NO_INT8_KERNEL:
                why[n.name] = "no_kernel"
            if n.op_type == "Conv" and n.input[1] in inits:
                dims = list(inits[n.input[1]].dims)
                groups = next((a.i for a in n.attribute if a.name == "group"), 1)
                if groups > 1 and dims[1] == 1:
                    why[n.name] = "depthwise"
                elif dims[1] <= 4 and groups == 1:
                    why[n.name] = "stem"
        # Output tail: a Resize (or Add of classifier maps) producing a graph output, and its feeders.
        for n in g.node:
            if any(o in outputs for o in n.output) and n.op_type in ("Resize", "Upsample"):
                why[n.name] = "tail"
                src = producers.get(n.input[0])
                if src is not None and src.op_type == "Add":
                    why[src.name] = "tail"
                    for i in src.input:
                        p = producers.get(i)
                        if p is not None and p.op_type == "Conv":
                            why[p.name] = "tail"
        return why

    def close_islands(self, exclude: set[str]) -> set[str]:
        """Grow each excluded node into a float island that ONNX Runtime will not re-quantize.

        ONNX Runtime fuses any DequantizeLinear -> op -> QuantizeLinear it has a kernel for, even
        for an op the quantizer left in float (it quantizes float weights on the fly). So an
        excluded node's float consumers join it, up to the next compute node (Conv / Gemm /
        MatMul), which takes a QuantizeLinear on its input instead.
        """
        consumers: dict[str, list] = {}
        for n in self.graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        out, todo = set(exclude), list(exclude)
        by_name = {n.name: n for n in self.graph.node}
        while todo:
            node = by_name.get(todo.pop())
            if node is None:
                continue
            for o in node.output:
                for c in consumers.get(o, []):
                    if c.op_type not in COMPUTE_OPS and c.name not in out:
                        out.add(c.name)
                        todo.append(c.name)
        return out

    def islands(self, exclude: set[str], closed: set[str] | None = None) -> set[str]:
        """:meth:`close_islands`, recording why each node it added is float (``closed``: already computed)."""
        closed = self.close_islands(exclude) if closed is None else closed
        for n in closed - exclude:
            self.why.setdefault(n, "island")
        return closed

    def plan_exclusions(self, plan: str, why: dict[str, str]) -> set[str]:
        base = {n for n, r in why.items() if r == "tail"} | set(self.opts.exclude)
        if plan == "all":
            return self.islands(base)
        if plan == "float_stem":
            return self.islands(base | {n for n, r in why.items() if r == "stem"})
        if plan == "dense":
            return self.islands(base | {n for n, r in why.items() if r in ("depthwise", "stem", "no_kernel")})
        raise UserError(f"unknown int8 plan {plan!r} (known: {', '.join(PLANS)})")

    def choose_plan(self, floor: dict[str, float]) -> tuple[str, set[str], list[dict]]:
        why = self.classify()
        self.why = why
        if not self.opts.cpu_plans:  # the consumer chooses its own kernels: plans measured here do not apply
            return "all", set(self.opts.exclude), []
        plans = list(PLANS) if self.opts.plans == "auto" else list(self.opts.plans)
        candidates = []
        for plan in plans:
            excl = self.plan_exclusions(plan, why)
            if any(c["exclude"] == excl for c in candidates):
                continue  # the same graph as an earlier plan
            path = self._quantize(self.prepared, self.tmp / f"plan-{plan}.onnx", excl)
            candidates.append({"plan": plan, "path": path, "exclude": excl})
        times = self.ev.latency([self.fp32_path] + [c["path"] for c in candidates])
        fp32_ms = times[0]
        rows = []
        for c, ms in zip(candidates, times[1:]):
            acc = self.ev.accuracy(c["path"])
            c.update(ms=ms, acc=acc)
            rows.append({"plan": c["plan"], "median_ms": round(ms, 2), "ratio_to_fp32": round(ms / fp32_ms, 3),
                         **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in acc.items()},
                         "float_nodes": len(c["exclude"])})
        best, self.info["plan_choice"] = pick_plan(candidates, floor, fp32_ms)
        self.info["fp32_ms_during_planning"] = round(fp32_ms, 2)
        if best["ms"] >= fp32_ms:
            self.info.setdefault("notes", []).append(
                f"the chosen int8 plan measured no faster than the fp32 graph here ({best['ms'] / fp32_ms:.2f}x): "
                "on this machine the fp32 graph is the better artifact")
        self.plan_paths = {frozenset(c["exclude"]): c["path"] for c in candidates if self.opts.format == "qdq"}
        return best["plan"], best["exclude"], rows

    # ---------------------------------------------------------------- accuracy budget

    def budget_loop(self, exclude: set[str], budget: dict[str, float]) -> tuple[set[str], list[dict], bool]:
        """Keep the node that adds the most error in float (its inputs read in float), re-measure, repeat until
        the budget holds. A step that does not bring the graph closer to the budget is undone and the next node
        of the same ranking is tried; the ranking is recomputed from the graph each kept step leaves (once a node
        is float, the error it caused often reappears at its consumer's quantized input, which then ranks first).
        At most ``max_budget_steps`` graphs are built; the kept steps never lower the measured metric.
        """
        path = self._quantize(self.prepared, self.tmp / "budget-0.onnx", exclude, fmt="qdq")
        acc = self.ev.accuracy(path)
        steps = [{"step": 0, "excluded": None, "op": None, "drop_db": None, "kept": True, **acc}]
        tried: set[str] = set()
        i = 0
        while not meets(acc, budget) and i < self.opts.max_budget_steps:
            rows = per_layer_errors(self.prepared, path, self.ev.input_name, self.ev.debug_batches[:1])
            ranked = [r for r in self.candidates(sorted(rows, key=lambda r: -r["drop_db"]))
                      if r["node"] not in exclude and r["node"] not in tried and r["drop_db"] > 0]
            kept = False
            for row in ranked:
                if i >= self.opts.max_budget_steps:
                    break
                i += 1
                tried.add(row["node"])
                trial = self.close_islands(exclude | {row["node"]})
                self.float_set.add(row["node"])
                cand = self._quantize(self.prepared, self.tmp / f"budget-{i}.onnx", trial, fmt="qdq")
                got = self.ev.accuracy(cand)
                kept = shortfall(got, budget) < shortfall(acc, budget)
                steps.append({"step": i, "excluded": row["node"], "module": self.scopes.get(row["node"]),
                              "op": row["op"], "drop_db": row["drop_db"], "kept": kept, **got})
                if kept:
                    self.why[row["node"]] = "budget"
                    self.islands(exclude | {row["node"]}, trial)
                    exclude, path, acc = trial, cand, got
                    break
                self.float_set.discard(row["node"])
            if not kept:
                break  # every node of the ranking tried (or the step limit reached) without getting closer
        return exclude, steps, meets(acc, budget)

    def float_tensors(self, model) -> dict[str, list[str]]:
        """Per module of the float set (named, or the budget's nodes by their module), the activations its nodes
        read in float in the final graph ``model``: every input that is not an initializer, does not come through
        a DequantizeLinear, and is not made inside the same module."""
        owner = {n: m for m, nodes in self.info.get("float_modules", {}).items() for n in nodes}
        producers = {o: n for n in model.graph.node for o in n.output}
        inits = {i.name for i in model.graph.initializer}
        out: dict[str, list[str]] = {}
        for node in model.graph.node:
            if node.name not in self.float_set:
                continue
            module = owner.get(node.name) or self.scopes.get(node.name) or f"node {node.name}"
            for name in node.input:
                src = producers.get(name)
                if not name or name in inits or (src is not None and (
                        src.op_type == "DequantizeLinear" or (owner.get(src.name) or self.scopes.get(src.name)) == module)):
                    continue
                name = name.removesuffix(f"_float_for_{node.name}")  # an activation restored for it (prep.float_inputs)
                if name not in out.get(module, []):
                    out.setdefault(module, []).append(name)
        return out

    def candidates(self, rows: list[dict]) -> list[dict]:
        """The nodes to try in float for each lossy node, the worst first: the error that shows at an activation
        or pooling node (where the Q/DQ pair sits) is made by the compute node that feeds it, so that node comes
        first, then the lossy node itself."""
        producers = {o: n for n in self.graph.node for o in n.output}
        by_name = {n.name: n for n in self.graph.node}
        out, seen = [], set()
        for row in rows:
            chain = [row]
            src = by_name.get(row["node"])
            while src is not None and src.op_type not in COMPUTE_OPS and len(src.input) >= 1:
                src = producers.get(src.input[0])
                if src is not None and src.op_type in COMPUTE_OPS:
                    chain.insert(0, {**row, "node": src.name, "op": src.op_type, "via": row["node"]})
            for c in chain:
                if c["node"] not in seen:
                    seen.add(c["node"])
                    out.append(c)
        return out

    # ---------------------------------------------------------------- runtime truth

    def float_nodes(self, path: Path) -> tuple[list[dict], dict]:
        """Compute nodes that still run in float after ONNX Runtime's own optimisations."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(self.tmp / "optimized.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(str(self.tmp / "optimized.onnx"), load_external_data=False)
        counts: dict[str, int] = {}
        for n in opt.graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        original = {n.name: n.op_type for n in self.graph.node}
        floats = []
        for n in opt.graph.node:
            if n.op_type in COMPUTE_OPS | NO_INT8_KERNEL | {"Resize", "Add", "Mul", "Concat", "GlobalAveragePool"}:
                name = n.name if n.name in original else n.name.split("_token")[0]
                reason = self.why.get(name)
                floats.append({"node": name, "op": n.op_type,
                               "reason": REASONS.get(reason, "not fused to an int8 kernel by ONNX Runtime")})
        return floats, counts

    # ---------------------------------------------------------------- main

    def build(self, out: Path, floor: dict[str, float]) -> dict:
        from edgeexport.util import atomic_path

        t0 = time.perf_counter()
        phases: dict[str, float] = {}

        def lap(name: str) -> None:
            phases[name] = round(time.perf_counter() - t0 - sum(phases.values()), 1)

        self.prepare()
        lap("prepare")
        self.calibrate()
        lap("calibrate")
        plan, exclude, plan_rows = self.choose_plan(floor)
        self.info.update(plan=plan, plans=plan_rows)
        lap("plans")
        met = None
        if self.opts.budget:
            start = set(exclude)
            exclude, steps, met = self.budget_loop(exclude, self.opts.budget)
            self.info["budget"] = {"target": self.opts.budget, "met": met, "steps": steps,
                                   "kept_float": [s["excluded"] for s in steps if s.get("excluded") and s.get("kept", True)]}
            if exclude != start:  # what the nodes kept in float cost: both graphs timed interleaved
                plain = self.tmp / "budget-0.onnx"
                final = self.plan_paths.get(frozenset(exclude)) or self._quantize(
                    self.prepared, self.tmp / "budget-final.onnx", exclude, fmt="qdq")
                self.info["budget"]["int8_ms"], self.info["budget"]["repaired_ms"] = (
                    round(ms, 3) for ms in self.ev.latency([plain, final]))
            lap("budget")
        qdq = (self.plan_paths.get(frozenset(exclude))
               or self._quantize(self.prepared, self.tmp / "final-qdq.onnx", exclude, fmt="qdq"))
        rows = per_layer_errors(self.prepared, qdq, self.ev.input_name, self.ev.debug_batches[:1])
        self.info["per_layer"] = top_drops(rows, self.opts.table_rows)
        lap("per_layer")
        final = qdq if self.opts.format == "qdq" else self._quantize(self.prepared, self.tmp / "final.onnx", exclude)
        floats, counts = self.float_nodes(final)
        self.info["float_nodes"] = floats
        self.info["optimized_op_counts"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        self.info["excluded"] = {n: REASONS.get(self.why.get(n, "user"), "") for n in sorted(exclude)}
        model = onnx.load(str(final))
        self.info["float_tensors"] = self.float_tensors(model)
        # which module each node comes from, for the per-layer diff (quantization drops node metadata)
        self.info["scopes_kept"] = keep_scopes(self.fp32_meta, model)
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
        lap("final")
        self.info["phase_s"] = phases
        self.info["build_s"] = round(time.perf_counter() - t0, 1)
        self.info["budget_met"] = met
        return self.info


def pick_plan(candidates: list[dict], floor: dict[str, float], fp32_ms: float) -> tuple[dict, str]:
    """The plan rule. Each candidate has ``ms`` (median latency) and ``acc`` (accuracy metrics).

    The fastest plan that meets every limit in ``floor`` wins; plans within ``SAME_SPEED`` of it count as
    equally fast (timing noise on a shared machine, which flipped LR-ASPP's choice between two runs), and
    of those the most accurate wins. When none meets the floor, an int8 graph that is not clearly faster
    than fp32 has no reason to exist: the most accurate plan among those at most ``WORTHWHILE_RATIO`` x
    the fp32 latency (or among all, when none is that fast).
    """
    ok = [c for c in candidates if meets(c["acc"], floor, missing_ok=True)]
    if ok:
        fastest = min(c["ms"] for c in ok)
        tied = [c for c in ok if c["ms"] <= fastest * (1 + SAME_SPEED)]
        why = "the fastest plan that meets the int8 tolerances " + json.dumps(floor)
        if len(tied) > 1:
            why += f" (of those within {SAME_SPEED:.0%} of the fastest, the most accurate)"
        return max(tied, key=lambda c: accuracy_key(c["acc"])), why
    faster = [c for c in candidates if c["ms"] <= WORTHWHILE_RATIO * fp32_ms]
    best = max(faster or candidates, key=lambda c: accuracy_key(c["acc"]))
    return best, ("no plan meets the int8 tolerances: the most accurate plan "
                  + (f"among those at most {WORTHWHILE_RATIO}x the fp32 latency" if faster
                     else f"(none is at most {WORTHWHILE_RATIO}x the fp32 latency)"))


def build_int8(fp32_path: Path, out: Path, opts: Int8Options, ev: Evaluator, floor: dict[str, float],
               log=lambda m: None) -> dict:
    """``floor``: the accuracy every plan must reach to be chosen, e.g. {"snr_db": 20, "agreement": 0.9}."""
    b = Int8Builder(fp32_path, opts, ev, log)
    try:
        return b.build(out, floor)
    finally:
        b.close()


def build_int8_dynamic(fp32_path: Path, out: Path, shape, per_channel: bool = True) -> dict:
    """Dynamic quantization (int8 weights, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeexport.util import atomic_path

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="edgeexport-dyn-"))
    try:
        model = onnx.load(str(fp32_path))
        fix_input_shape(model, shape)
        prep.name_nodes(model)
        staged = tmp / "staged.onnx"
        onnx.save(model, str(staged))
        with atomic_path(out) as dst:
            quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QUInt8, per_channel=per_channel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"mode": "int8-dynamic", "weight_type": "uint8", "per_channel": per_channel,
            "build_s": round(time.perf_counter() - t0, 1),
            "notes": ["dynamic quantization maps Conv to ConvInteger, which ONNX Runtime runs without its fused "
                      "int8 kernels; it exists for comparison and for MatMul-heavy graphs"]}
