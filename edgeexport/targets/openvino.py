"""OpenVINO IR (``NAME.xml`` + ``NAME.bin``), fp32 or int8 (NNCF post-training quantization), and
its runner (OpenVINO Runtime, the CPU plugin unless the stage names another device).

Starts from the fp32 ONNX graph (the ``onnx`` target's, or the user's ``.onnx`` file):
``openvino.convert_model`` reads it, keeping its input and output names, and ``ov.save_model``
writes the IR. int8: NNCF inserts FakeQuantize nodes calibrated on the calibration images (never
the evaluation images); the CPU plugin runs them as int8 kernels. With an accuracy budget on the
task metric (``miou_drop`` / ``top1_drop``) and labeled data, NNCF's accuracy-controlled
quantization puts back into float the layers that cost the most accuracy until the drop, measured
against the fp32 IR on the labeled data, is within the budget.

Caveats (measured with OpenVINO 2026.4 / NNCF 3.4):

* ``ov.save_model`` compresses weights to fp16 unless ``compress_to_fp16=False``; both IRs are
  saved uncompressed (NNCF's int8 IR stores its quantized weights as int8 itself).
* The CPU plugin's default inference precision is bf16 on CPUs with AVX512-BF16 or AMX, so an
  "fp32" IR silently runs in bf16 there (about 1e-2 of the logit scale on LR-ASPP). The runner
  sets ``INFERENCE_PRECISION_HINT`` to f32 (recorded in the runner spec; for int8 IRs it is the
  precision of the layers left in float) and ``INFERENCE_NUM_THREADS`` to the run's thread count.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StringConstraints

from edgeexport.errors import BuildFailed, UnsupportedOp
from edgeexport.metrics import PRIMARY, TaskAccumulator
from edgeexport.parity import resolve_budget
from edgeexport.provenance import locate_onnx, match_modules, refused_op
from edgeexport.runners.openvino import OpenVINORunner, annotate_modules, compile_model, op_modules, openvino_profile
from edgeexport.targets.base import (RunnerOptions, Budget, Equalize, FloatModules, BuildRecord, Format, Repair, RepairStep, Requirement, Target,
                                     TargetOptions, fp32_graph, fp32_graph_requirement)
from edgeexport.targets.registry import register_target
from edgeexport.util import atomic_path, quiet, version_of

# OpenVINO's converter and NNCF send usage events to Google Analytics (from a forked process) unless the
# user opted out; both fall back to a no-op stub when `openvino_telemetry` cannot be imported. edgeexport
# never touches the network at run time, so it is made unimportable before either is imported.
sys.modules.setdefault("openvino_telemetry", None)

INSTALL_HINT = "pip install 'edgeexport[openvino]'"
TASK_BUDGETS = ("miou_drop", "top1_drop")
VIRTUAL_DEVICES = ("AUTO", "HETERO", "MULTI", "BATCH")
# how OpenVINO's ONNX frontend says that it cannot take an operator
REFUSALS = (r"No conversion rule found for operations:\s*-?\s*([\w.]+)", r"OpConversionFailure.*?\b(\w+)-\d+ ")


def _failing_op(exc: Exception) -> str:
    """The operators OpenVINO's ONNX frontend could not convert, from its error text."""
    text = str(exc)
    for marker in ("No conversion rule found for operations:", "Failed operations detailed log:"):
        if marker in text:
            rest = [ln.strip(" -") for ln in text[text.index(marker) + len(marker):].splitlines() if ln.strip(" -")]
            return f"{marker.rstrip(':')}: {'; '.join(rest[:3])[:300]}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def save_ir(model, xml: Path) -> None:
    """Write ``xml`` and its ``.bin`` (weights uncompressed), both to temporaries first, then renamed."""
    import openvino as ov

    xml = Path(xml)
    with atomic_path(xml, suffix=".xml") as tmp_xml, atomic_path(xml.with_suffix(".bin"), suffix=".bin") as tmp_bin:
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
            os.replace(tmp_xml.with_suffix(".bin"), tmp_bin)
        finally:
            tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    # the .bin is renamed first, then the .xml: a reader never finds an .xml without its weights


def ir_facts(model) -> dict:
    """Op counts by type and the bytes of constants by element type (f32 weights, or NNCF's i8)."""
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    weights: Counter = Counter()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant":
            t = op.get_output_element_type(0)
            weights[t.get_type_name()] += t.size * int(np.prod(op.get_output_shape(0)))
    return {"op_counts": dict(ops.most_common()), "constant_bytes": dict(weights.most_common())}


def runtime_precisions(compiled) -> dict[str, int]:
    """How many layers of the compiled (runtime) graph run in each precision (int8 kernels show as i8/u8)."""
    skip = {"Parameter", "Result", "Constant", "Input", "Output"}
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info and "layerType" in info and info["layerType"].astype(str) not in skip:
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(counts.most_common())


@contextlib.contextmanager
def _nncf_log():
    """NNCF's log messages, captured (its own stdout handler silenced)."""
    lg = logging.getLogger("nncf")
    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, saved = Capture(logging.INFO), (lg.level, [(h, h.level) for h in lg.handlers])
    for h in lg.handlers:
        h.setLevel(logging.CRITICAL + 1)
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        lg.removeHandler(handler)
        lg.setLevel(saved[0])
        for h, level in saved[1]:
            h.setLevel(level)


def _reverted(messages: list[str]) -> tuple[list[str], int | None]:
    """The operations NNCF's accuracy control put back into float, and how many were quantized
    (from its final report: "N out of M were reverted back to the floating-point precision:")."""
    for m in reversed(messages):
        found = re.match(r"(\d+) out of (\d+) were reverted back to the floating-point precision", m)
        if found:
            return [n.strip() for n in m.splitlines()[1:] if n.strip()], int(found.group(2))
    return [], None


# ---------------------------------------------------------------- module paths and taps

def float_operations(model, modules: list[str]) -> dict[str, list[str]]:
    """The operations of an IR (friendly names) that come from each of ``modules``: what NNCF's ignored scope
    keeps in float."""
    return match_modules(modules, op_modules(model))


def float_inputs(quantized, float_ops: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per float module, the tensors its operations read from outside it that stayed float (their producer's
    friendly name): an input that comes through a FakeQuantize is still rounded to int8, one that does not is
    float. Constants (the module's own weights) are left out."""
    by_name = {op.get_friendly_name(): op for op in quantized.get_ops()}
    out: dict[str, list[str]] = {}
    for module, names in float_ops.items():
        inside = set(names)
        for name in names:
            op = by_name.get(name)
            for value in (op.input_values() if op is not None else ()):
                src = value.get_node()
                kind, src_name = src.get_type_name(), src.get_friendly_name()
                if kind not in ("Constant", "FakeQuantize") and src_name not in inside \
                        and src_name not in out.get(module, []):
                    out.setdefault(module, []).append(src_name)
    return out


# ---------------------------------------------------------------- the target


class OpenVINOOptions(TargetOptions):
    quantize: Literal["none", "int8"] = Field("none", description="int8: NNCF post-training quantization")
    calib_size: int = Field(8, ge=1, le=4096, description="calibration batches (int8)")
    calib_folder: str | None = Field(None, description="calibration images (int8): a folder, or a built-in task's "
                                                       "split such as shapes_seg:calib",
                                     json_schema_extra={"flag": "--calib"})
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="int8: symmetric activations (performance) or asymmetric (mixed)")
    budget: Budget = Field(
        None, description="int8 accuracy budget: miou_drop=0.5 or top1_drop=0.5 (points, on labeled data) turns on "
                          "NNCF's accuracy control", json_schema_extra={"parse": "budget"})
    float_modules: FloatModules = Field(default_factory=list, description="int8: module of the model to keep in float "
                                     "(NNCF ignored scope), by its path as `edgeexport diff` names it (repeatable)",
                                     json_schema_extra={"flag": "--float-module"})
    device: str = Field("CPU", min_length=1, description="OpenVINO device the IR is compiled for (CPU, GPU, NPU, "
                                                         "AUTO); recorded in the runner spec")
    equalize: Equalize = "auto"


OpenVINODevice = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,15}(\.[0-9]{1,3})?(:[A-Z0-9_.,]{1,80})?$")]


class OpenVINORunnerOptions(RunnerOptions):
    device: OpenVINODevice = "CPU"
    inference_precision: Literal["f32", "f16", "bf16"] = "f32"


class OpenVINORecord(BuildRecord):
    quantize: str
    openvino: str | None = None
    nncf: str | None = None
    source: str
    device: str
    inference_precision: str
    convert_s: float
    op_counts: dict[str, int] = {}
    constant_bytes: dict[str, int] = {}
    runtime_precisions: dict[str, int] = {}
    # int8
    preset: str | None = None
    calib_size: int | None = None
    calib_source: str | None = None
    fake_quantize: int | None = None
    quantize_s: float | None = None
    accuracy_control: dict | None = None
    float_modules: dict[str, list[str]] = {}  # module kept in float (NNCF ignored scope) -> its operations
    float_tensors: dict[str, list[str]] = {}  # module kept in float -> the producers of the float tensors it reads
    modules_recorded: int = 0  # ops whose runtime info names the module of the user's model (for `diff`)

    def markdown(self) -> list[str]:
        import json

        skip = {"notes", "op_counts", "constant_bytes", "runtime_precisions", "accuracy_control"}
        lines = [f"- {k}: {json.dumps(v, default=str)}" for k, v in self.model_dump().items()
                 if k not in skip and v not in (None, [], {})]
        for key in ("op_counts", "constant_bytes", "runtime_precisions"):
            if getattr(self, key):
                lines.append(f"- {key}: {json.dumps(getattr(self, key))}")
        ac = self.accuracy_control
        if ac:
            lines.append(f"- accuracy control: {_accuracy_line(ac)}" + (
                f"; reverted: {', '.join(ac['reverted'][:8])}{', ...' if len(ac['reverted']) > 8 else ''}"
                if ac["reverted"] else ""))
        return lines

    def terminal(self) -> list[str]:
        ac = self.accuracy_control
        return [f"openvino-int8 accuracy control: {_accuracy_line(ac)}"] if ac else []


def _repair_of(ac: dict, model, key: str) -> Repair:
    """NNCF's accuracy control as the report's repair record: the modules of the operations it reverted."""
    module_of = op_modules(model)
    floats = list(dict.fromkeys(module_of.get(name) or f"operation {name}" for name in ac["reverted"]))
    drops = {"task_drop": round(ac["fp32"] - ac["quantized"], 4)}
    steps = [RepairStep(float_modules=[], metrics=drops, met=drops["task_drop"] <= ac["max_drop"] + 1e-9)]
    if floats:
        steps.append(RepairStep(float_modules=floats, metrics={"task_drop": ac["drop"]}, met=ac["met"],
                                why=f"NNCF reverted {len(ac['reverted'])} operation(s)"))
    return Repair(search="NNCF's accuracy control (quantize_with_accuracy_control): operations ranked by their effect "
                         "on the task metric, reverted to float until the drop is within the budget",
                  budget={"task_drop": ac["max_drop"]}, met=ac["met"], float_modules=floats, steps=steps,
                  ranked_on=f"the {ac['metric']} of {ac['images']} labeled images ({key})")


def _accuracy_line(ac: dict) -> str:
    of = f" of {ac['quantized_ops']} quantized" if ac.get("quantized_ops") else ""
    return (f"{ac['metric']} {ac['final']:.2f} points on {ac['images']} labeled images (fp32 IR {ac['fp32']:.2f}, fully "
            f"quantized {ac['quantized']:.2f}); budget {ac['max_drop']:g} points {'met' if ac['met'] else 'NOT met'}; "
            f"{len(ac['reverted'])}{of} operation(s) reverted to float")


@register_target
class OpenVINOTarget(Target):
    name = "openvino"
    order = 70
    title = "OpenVINO"
    backend = "openvino"
    help = "Convert the ONNX graph to OpenVINO IR (NAME.xml + NAME.bin, fp32 or NNCF int8); parity and latency here."
    Options = OpenVINOOptions
    runner_options = OpenVINORunnerOptions
    Record = OpenVINORecord
    multiple = True
    from_onnx_file = True
    formats = (
        Format(kind="openvino", suffix=".xml", precision="fp32", companions=(".bin",),
               runs_on="x86 and ARM CPUs, Intel GPUs and NPUs (OpenVINO Runtime)", options={"quantize": "none"}),
        Format(kind="openvino-int8", suffix=".int8.xml", precision="int8", companions=(".int8.bin",),
               runs_on="x86 CPUs (fast int8 on AVX512-VNNI / AVX-VNNI / AMX), Intel GPUs and NPUs",
               options={"quantize": "int8"}),
    )
    build_modules = ("openvino",)  # nncf only for int8: its absence fails the int8 build, not fp32
    run_modules = ("openvino",)
    install = INSTALL_HINT
    extra = "openvino"

    @classmethod
    def versions(cls) -> dict[str, str | None]:
        return {**super().versions(), "nncf": version_of("nncf")}

    @classmethod
    def requires(cls, options, ctx) -> list[Requirement]:
        return fp32_graph_requirement(ctx)

    @classmethod
    def searches_budget(cls, options) -> bool:
        """A budget on the task metric alone is NNCF's accuracy control; one with tensor metrics is the
        pipeline's float-set search (through the ignored scope)."""
        budget = options.budget or {}
        return options.quantize == "int8" and bool(budget) and all(k in TASK_BUDGETS for k in budget)

    def build(self, ctx, options: OpenVINOOptions, art) -> None:
        import openvino as ov


        int8 = options.quantize == "int8"
        art.dynamic = ctx.dynamic
        art.compare_to = ("openvino" if ctx.find("openvino") else "onnx") if int8 else None
        source = fp32_graph(ctx, equalize=int8 and options.equalize == "on")
        if source is None:
            raise BuildFailed("no fp32 ONNX graph to start from")
        core = ov.Core()
        if options.device.split(":")[0].split(".")[0] not in (*core.available_devices, *VIRTUAL_DEVICES):
            raise BuildFailed(f"OpenVINO device {options.device!r} is not available here "
                              f"(available: {', '.join(core.available_devices)})")
        notes = []
        t0 = time.perf_counter()
        with ctx.status(f"Converting {Path(source).name} to OpenVINO IR"), quiet():
            try:
                model = ov.convert_model(str(source))
            except Exception as exc:
                why = f"OpenVINO could not convert the ONNX graph: {_failing_op(exc)}"
                op = refused_op(str(exc), REFUSALS)
                if op:  # an ONNX operator its frontend has no rule for: the module it came from
                    import onnx

                    graph = onnx.load(str(source), load_external_data=False).graph
                    raise UnsupportedOp(op, locate_onnx(graph, op), why) from None
                raise BuildFailed(why) from None
        convert_s = time.perf_counter() - t0
        annotated = annotate_modules(model, source)
        facts: dict = {}
        if int8:
            model, facts = self._quantize(ctx, options, model, notes, art)
        elif options.budget or options.preset != "performance" or options.float_modules:
            notes.append("preset, budget and float modules apply to --quantize int8 only; ignored for the fp32 IR")
        precision = "f32"
        # compile here, with the run's threads, before anything is written: a graph the plugin cannot
        # compile fails the build, by name, and leaves no IR behind
        try:
            with quiet():
                compiled = compile_model(core, model, options.device, ctx.threads, precision)
            runtime = runtime_precisions(compiled) if options.device.startswith("CPU") else {}
        except Exception as exc:
            raise BuildFailed(f"OpenVINO could not compile the IR for {options.device}: "
                              f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from None
        del compiled
        save_ir(model, art.path)
        versions = self.versions()
        record = OpenVINORecord(
            quantize=options.quantize, openvino=versions.get("openvino"), nncf=versions.get("nncf") if int8 else None,
            source=str(source), device=options.device, inference_precision=precision,
            convert_s=round(convert_s, 2), runtime_precisions=runtime, modules_recorded=annotated,
            **ir_facts(model),
            build_s=round(time.perf_counter() - t0, 2), notes=notes, **facts)
        if int8:
            record.fake_quantize = record.op_counts.get("FakeQuantize", 0)
            if not record.fake_quantize:
                art.failures.append("NNCF inserted no FakeQuantize node: the IR is not quantized")
        spec = ctx.runner_spec(type(self), art.path, [art.path.with_suffix(".bin")], device=options.device,
                               inference_precision=precision)
        art.finish(record, spec)

    def _quantize(self, ctx, options: OpenVINOOptions, model, notes: list[str], art):
        """NNCF post-training quantization (accuracy-controlled when the budget is a task metric and
        the run has labeled data)."""
        try:
            with quiet():
                import nncf
        except Exception as exc:
            raise BuildFailed(f"int8 needs nncf, which is not importable here ({type(exc).__name__}); "
                              f"{INSTALL_HINT}") from None
        name = ctx.input_name
        with ctx.status(f"Reading {options.calib_size} calibration batches"):
            calib = ctx.calibration(options.calib_size, options.calib_folder)
        calibration = nncf.Dataset(calib, lambda x: {name: x})
        preset = {"performance": nncf.QuantizationPreset.PERFORMANCE,
                  "mixed": nncf.QuantizationPreset.MIXED}[options.preset]
        budget = dict(options.budget or {})
        labeled = ctx.task_data.task if ctx.task_data is not None else None
        resolve_budget(budget, labeled)  # a task-metric budget without (matching) labeled data is bad input, as for quantize
        # a budget on the task metric alone: NNCF's accuracy control (otherwise the pipeline searches it)
        task_keys = [k for k in TASK_BUDGETS if k in budget] if type(self).searches_budget(options) else []
        facts = {"preset": options.preset, "calib_size": len(calib),
                 "calib_source": ctx.calib_spec(options.calib_folder) or "photos:calib"}
        ignored = {}
        if options.float_modules:
            facts["float_modules"] = float_operations(model, options.float_modules)
            names = sorted({n for ops in facts["float_modules"].values() for n in ops})
            ignored = {"ignored_scope": nncf.IgnoredScope(names=names, validate=False)}
        t0 = time.perf_counter()
        if task_keys:
            max_drop = resolve_budget({task_keys[0]: budget[task_keys[0]]}, labeled)["task_drop"]  # checks the task
            with ctx.status(f"Quantizing with NNCF, accuracy control ({task_keys[0]} <= {max_drop:g})"):
                quantized, facts["accuracy_control"] = self._accuracy_control(ctx, nncf, model, calibration, preset,
                                                                              len(calib), max_drop, ignored)
            art.repair = _repair_of(facts["accuracy_control"], model, task_keys[0])
            if not facts["accuracy_control"]["met"]:
                art.failures.append(f"accuracy budget {task_keys[0]}={max_drop:g} not met: "
                                    f"{facts['accuracy_control']['drop']:.2f} points below the fp32 IR")
        else:
            with ctx.status(f"Quantizing with NNCF ({options.preset}, {len(calib)} calibration batches)"), \
                    quiet(), _nncf_log():
                quantized = nncf.quantize(model, calibration, preset=preset, subset_size=len(calib), **ignored)
        facts["quantize_s"] = round(time.perf_counter() - t0, 2)
        if facts.get("float_modules"):
            facts["float_tensors"] = float_inputs(quantized, facts["float_modules"])
        return quantized, facts

    @staticmethod
    def _accuracy_control(ctx, nncf, model, calibration, preset, subset_size: int, max_drop: float, ignored: dict):
        """``nncf.quantize_with_accuracy_control`` with the task metric (in points) on the labeled data."""
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        td, name = ctx.task_data, ctx.input_name
        items = [(x, labels) for _, x, labels in td.batches()]

        def metric(compiled, data) -> tuple[float, list[float]]:
            port = compiled.output(td.output)
            total, per_item = TaskAccumulator(td.task, td.num_classes, td.output, td.classes), []
            for x, labels in data:
                logits = compiled({name: x})[port]
                one = TaskAccumulator(td.task, td.num_classes, td.output, td.classes)
                one.update(logits, labels)
                total.update(logits, labels)
                per_item.append(100.0 * (one.result().value or 0.0))
            return 100.0 * (total.result().value or 0.0), per_item

        validation = nncf.Dataset(items, lambda item: {name: item[0]})
        with quiet(), _nncf_log() as log:
            quantized = nncf.quantize_with_accuracy_control(
                model, calibration, validation, metric, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
                preset=preset, subset_size=subset_size, **ignored,
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(num_ranking_workers=1))
            import openvino as ov

            compile_f32 = lambda m: ov.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})  # noqa: E731
            fp32, final = metric(compile_f32(model), items)[0], metric(compile_f32(quantized), items)[0]
        reverted, quantized_ops = _reverted(log)
        first = next((m for m in log if m.startswith("Metric of quantized model:")), None)
        fully = float(first.rsplit(":", 1)[1]) if first else final
        drop = fp32 - final
        return quantized, {"metric": PRIMARY[td.task],
                           "max_drop": max_drop, "fp32": round(fp32, 4), "quantized": round(fully, 4),
                           "final": round(final, 4), "drop": round(drop, 4), "met": drop <= max_drop + 1e-9,
                           "reverted": reverted, "quantized_ops": quantized_ops,
                           "images": td.count}

    @classmethod
    def operator_profile(cls, spec, feed, threads: int, runs: int) -> dict:
        return openvino_profile(spec.artifact, feed, threads, spec.options, runs)

    @classmethod
    def runner(cls, spec, threads):
        return OpenVINORunner(spec.artifact, threads, spec.input_names, spec.output_names,
                              spec.options.get("device", "CPU"), spec.options.get("inference_precision", "f32"))
