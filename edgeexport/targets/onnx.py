"""ONNX: export (dynamo or TorchScript exporter), checking and onnxsim simplification; its artifacts
run with ONNX Runtime's CPU execution provider (:mod:`edgeexport.runners.onnxruntime`).

The ``onnx`` target builds ``NAME.onnx`` (fp32), the graph the ``quantize``, ``trt`` and
``openvino`` targets start from (:func:`edgeexport.targets.base.fp32_graph`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeexport.errors import BuildFailed, EdgeExportError, UnsupportedOp, UserError
from edgeexport.provenance import keep_scopes, locate_in_torch, refused_op
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner, OrtRunnerOptions, ort_profile
from edgeexport.targets.base import EQUALIZE_REWRITE, BuildRecord, Format, RunnerSpec, Target, TargetOptions
from edgeexport.targets.registry import register_target
from edgeexport.util import atomic_path, quiet

DYNAMIC_AXES = {"none": (), "batch": (0,), "hw": (2, 3), "all": (0, 2, 3)}
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


class ExportFailed(EdgeExportError):
    """The exporter could not produce a valid graph for this model."""

    op: str | None = None  # the operator it has no translation for, when that is the failure


# how the dynamo and TorchScript exporters say that they cannot take an operator
REFUSALS = (r"No ONNX function found for <OpOverload\(op='([\w.]+)'", r"OpOverload\(op='([\w.]+)'.*not supported",
            r"Exporting the operator '([\w:.]+)' to ONNX opset version \d+ is not supported",
            r"Unsupported FX nodes: \{'call_function': \['([\w.]+)'")


def _name_dynamic_dims(model, input_name: str, axes) -> None:
    """Give the exported input's dynamic dims readable names and carry them to every tensor."""
    inp = next(i for i in model.graph.input if i.name == input_name)
    rename = {}
    for axis in axes:
        dim = inp.type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            rename[dim.dim_param] = AXIS_NAMES[axis]
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def export_onnx(module, sample, path: Path, *, input_name: str, output_names: list[str], opset: int, dynamic: str,
                exporter: str) -> dict:
    """Export ``module`` (a torch module returning a tuple) to ``path`` atomically; return build facts."""
    import onnx
    import torch

    axes = DYNAMIC_AXES[dynamic]
    t0 = time.perf_counter()
    with atomic_path(path) as tmp, quiet() as log:
        try:
            if exporter == "dynamo":
                dyn = None
                if axes:
                    dyn = ({a: torch.export.Dim.DYNAMIC for a in axes},)
                program = torch.onnx.export(module, (sample,), dynamo=True, input_names=[input_name],
                                            output_names=output_names, opset_version=opset, dynamic_shapes=dyn,
                                            optimize=True, verbose=False)
                model = program.model_proto
                _name_dynamic_dims(model, input_name, axes)
            else:
                dyn_axes = None
                if axes:
                    dyn_axes = {input_name: {a: AXIS_NAMES[a] for a in axes}}
                    for n in output_names:
                        dyn_axes[n] = {0: "batch"} if 0 in axes else {}
                torch.onnx.export(module, (sample,), str(tmp), dynamo=False, input_names=[input_name],
                                  output_names=output_names, opset_version=opset, dynamic_axes=dyn_axes,
                                  do_constant_folding=True)
                model = onnx.load(str(tmp))
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:
            detail = str(exc).strip().splitlines()
            failed = ExportFailed(f"{exporter} exporter failed: {type(exc).__name__}: "
                                  f"{detail[0][:300] if detail else ''}")
            failed.op = refused_op(f"{exc}\n{exc.__cause__ or ''}", REFUSALS)
            raise failed from exc
        onnx.save(model, str(tmp))
    return {"exporter": exporter, "opset": opset, "dynamic": dynamic, "export_s": round(time.perf_counter() - t0, 2),
            "nodes": len(model.graph.node), "exporter_log_lines": len(log.getvalue().splitlines())}


def simplify_onnx(path: Path, check_feed: dict[str, np.ndarray], tolerance: float = 1e-5) -> dict:
    """Simplify ``path`` in place with onnxsim, keeping the original when onnxsim fails or
    when the simplified graph's outputs differ from the original's on ``check_feed``."""
    import onnx

    original = onnx.load(str(path))
    info: dict = {"nodes_before": len(original.graph.node)}
    try:
        import onnxsim

        with quiet():
            simplified, ok = onnxsim.simplify(original, check_n=0)
    except Exception as exc:
        info.update(applied=False, reason=f"onnxsim failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return info
    if not ok:
        info.update(applied=False, reason="onnxsim reported that its graph is not valid")
        return info
    tmp = path.with_name(f".{path.name}.simplified.tmp")
    info["scopes_kept"] = keep_scopes(original, simplified)  # which module each node comes from (diff, refusals)
    try:
        onnx.save(simplified, str(tmp))
        with OnnxRuntimeRunner(path) as a, OnnxRuntimeRunner(tmp) as b:
            ref, got = a.infer(check_feed), b.infer(check_feed)
        worst = 0.0
        for name, r in ref.items():
            if name not in got or got[name].shape != r.shape:
                worst = float("inf")
                break
            scale = max(float(np.abs(r).max()), 1e-12)
            worst = max(worst, float(np.abs(got[name] - r).max()) / scale)
        if worst > tolerance:
            info.update(applied=False, reason=f"simplified graph's outputs differ (max error {worst:.3g} of the "
                                              "output scale); kept the unsimplified graph")
            return info
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    info.update(applied=True, nodes_after=len(simplified.graph.node), max_error_scaled=worst)
    return info


# ---------------------------------------------------------------- the target


# The exporter a recipe or flag that names none gets: dynamo, unless this variable says "torchscript" (a test
# suite or a CI job that exports many models and checks the dynamo path on its own; the report records which).
EXPORTER_ENV = "EDGEEXPORT_EXPORTER"


def default_exporter() -> str:
    value = os.environ.get(EXPORTER_ENV) or "dynamo"
    if value not in ("dynamo", "torchscript"):
        raise UserError(f"{EXPORTER_ENV}={value!r}: expected dynamo or torchscript")
    return value


class OnnxOptions(TargetOptions):
    opset: int = Field(18, ge=11, le=23)
    exporter: Literal["dynamo", "torchscript"] = Field(default_factory=default_exporter, validate_default=True)
    simplify: bool = True
    rewrites: list[str] = Field(default_factory=lambda: ["reparameterize", "adaptive_pool", "adaptive_max_pool"],
                                description="exact export-friendly rewrites (see `edgeexport.rewrite`)")
    equalize: bool = Field(False, description="export the equalized copy (NAME.equalized.onnx): what an int8 target "
                                              "with equalize on quantizes", json_schema_extra={"cli": False})


class OnnxRecord(BuildRecord):
    exporter: str
    opset: int
    dynamic: str
    export_s: float
    nodes: int
    exporter_log_lines: int = 0
    rewrites: dict[str, int] = {}
    simplify: dict = {}


@register_target
class OnnxTarget(Target):
    name = "onnx"
    order = 0
    default_stage = True  # on in every recipe unless turned off: the graph most targets start from
    input_replaces = True  # a user's .onnx file is this artifact
    title = "ONNX Runtime"
    backend = "onnxruntime"
    help = "Export to ONNX, check it, simplify it, compare it with eager PyTorch and time both."
    Options = OnnxOptions
    runner_options = OrtRunnerOptions
    Record = OnnxRecord
    formats = (Format(kind="onnx", suffix=".onnx", precision="fp32", runs_on="any CPU (ONNX Runtime)", options={}),
               Format(kind="onnx-equalized", suffix=".equalized.onnx", precision="fp32",
                      runs_on="any CPU (ONNX Runtime)", options={"equalize": True}))
    build_modules = ("onnx", "onnxsim", "onnxscript", "onnxruntime")
    run_modules = ("onnxruntime",)
    install = "pip install edgeexport"

    def build(self, ctx, options: OnnxOptions, art) -> None:
        art.dynamic = ctx.dynamic
        rewrites = [*options.rewrites, EQUALIZE_REWRITE] if options.equalize else options.rewrites
        model = ctx.torch_model(rewrites)
        with ctx.status(f"Exporting {ctx.name} to ONNX ({options.exporter}, opset {options.opset}, "
                        f"dynamic={ctx.dynamic})"):
            try:
                facts = export_onnx(model, ctx.sample(), art.path, input_name=ctx.input_name,
                                    output_names=ctx.output_names, opset=options.opset,
                                    dynamic=ctx.dynamic, exporter=options.exporter)
            except ExportFailed as exc:
                if exc.op:
                    raise UnsupportedOp(exc.op, locate_in_torch(model, ctx.sample(), exc.op), str(exc)) from None
                raise BuildFailed(str(exc)) from None
        simplify = {"applied": False, "reason": "disabled"}
        if options.simplify:
            with ctx.status("Simplifying with onnxsim"):
                simplify = simplify_onnx(art.path, ctx.feed())
        record = OnnxRecord(**facts, rewrites=ctx.rewrite_counts(rewrites), simplify=simplify,
                            build_s=facts["export_s"])
        if not simplify["applied"] and options.simplify:
            record.notes.append(simplify["reason"])
        art.finish(record, ctx.runner_spec(type(self), art.path))

    @classmethod
    def runner(cls, spec: RunnerSpec, threads):
        return OnnxRuntimeRunner(spec.artifact, threads=threads, **spec.options)

    @classmethod
    def operator_profile(cls, spec: RunnerSpec, feed, threads: int, runs: int) -> dict:
        return ort_profile(spec.artifact, feed, threads, spec.options.get("optimization", "all"), runs)
