"""ONNX export (dynamo or TorchScript exporter), checking and onnxsim simplification."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from edgeexport.errors import EdgeExportError
from edgeexport.util import atomic_path, quiet

DYNAMIC_AXES = {"none": (), "batch": (0,), "hw": (2, 3), "all": (0, 2, 3)}
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}


class ExportFailed(EdgeExportError):
    """The exporter could not produce a valid graph for this model."""


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


def export_onnx(module: torch.nn.Module, sample: torch.Tensor, path: Path, *, input_name: str,
                output_names: list[str], opset: int, dynamic: str, exporter: str) -> dict:
    """Export ``module`` (returning a tuple) to ``path`` atomically; return build facts."""
    import onnx

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
            raise ExportFailed(f"{exporter} exporter failed: {type(exc).__name__}: "
                               f"{detail[0][:300] if detail else ''}") from exc
        onnx.save(model, str(tmp))
    return {"exporter": exporter, "opset": opset, "dynamic": dynamic, "export_s": round(time.perf_counter() - t0, 2),
            "nodes": len(model.graph.node), "exporter_log_lines": len(log.getvalue().splitlines())}


def simplify_onnx(path: Path, check_feed: dict[str, np.ndarray], tolerance: float = 1e-5) -> dict:
    """Simplify ``path`` in place with onnxsim, keeping the original when onnxsim fails or
    when the simplified graph's outputs differ from the original's on ``check_feed``."""
    import onnx

    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

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
