"""ONNX Runtime (CPU execution provider): the runner every ONNX artifact of any precision runs with,
the reference runner when the user gives an fp32 ``.onnx`` file instead of a PyTorch model, and its
operator profiler. It lives with the runners, not with a target, because all of those use it.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing import Annotated, Literal, Optional

from edgeexport.bench import median_ops
from edgeexport.runners.base import Runner

OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")
Provider = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9]{0,40}ExecutionProvider$")]


class OrtRunnerOptions(BaseModel):
    """What an ONNX Runtime runner spec may set (see ``Target.runner_options``): execution providers, in order,
    and the graph optimization level."""

    model_config = ConfigDict(extra="forbid", strict=True)

    providers: Optional[Annotated[list[Provider], Field(min_length=1, max_length=8)]] = None
    optimization: Literal[OPTIMIZATION_LEVELS] = "all"


def session_options(threads: int | None, optimization: str = "all"):
    """Session options: ``threads`` intra-op threads, one inter-op thread, sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = dict(zip(OPTIMIZATION_LEVELS, (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)))[optimization]
    so.log_severity_level = 3
    return so


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 optimization: str = "all"):
        super().__init__(threads)
        self.path = Path(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization = optimization
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(self.path), session_options(self.threads, self.optimization),
                                            providers=self.providers)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _deactivate(self) -> None:
        self.session = None

    def _infer(self, feed):
        arrays = self.session.run(self._outputs, {n: np.ascontiguousarray(feed[n]) for n in self._inputs})
        return {n: np.asarray(a) for n, a in zip(self._outputs, arrays)}

    def _taps(self, feed):
        return onnx_taps(self, feed)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {**super().describe(), "runtime": f"onnxruntime {ort.__version__}", "device": "cpu",
                "providers": self.providers, "artifact": str(self.path)}


def ort_profile(path: str, feed: dict, threads: int, optimization: str = "all", runs: int = 10) -> dict:
    """ONNX Runtime's profiler (``enable_profiling``): kernel time per operator type, ms per run (median)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeexport-prof-") as tmp:
        so = session_options(threads, optimization)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        x = {n: np.ascontiguousarray(feed[n]) for n in names}
        sess.run(None, x)  # warm-up (also profiled: excluded below by counting runs)
        for _ in range(runs):
            sess.run(None, x)
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
    windows = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events
                     if ev.get("cat") == "Session" and ev.get("name") == "model_run")[-runs:]  # not the warm-up
    per_run: list[dict[str, float]] = [{} for _ in windows]
    per_module: list[dict[str, float]] = [{} for _ in windows]
    modules = node_modules(path)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            i = next((k for k, (a, b) in enumerate(windows) if a <= ev["ts"] <= b), None)
            if i is not None:
                op = ev.get("args", {}).get("op_name", "?")
                per_run[i][op] = per_run[i].get(op, 0.0) + ev["dur"] / 1e3
                module = profiled_module(modules, ev["name"][:-len("_kernel_time")])
                if module is not None:
                    per_module[i][module] = per_module[i].get(module, 0.0) + ev["dur"] / 1e3
    return {"runtime": f"onnxruntime {ort.__version__} profiler", "ops": median_ops(per_run),
            "modules": median_ops(per_module),
            "total_ms": round(float(np.median([b - a for a, b in windows])) / 1e3, 4) if windows else None}


def node_modules(path) -> dict[str, str]:
    """Node name -> module path of the user's model, for the nodes of an ONNX file that record one. ONNX
    Runtime's optimised graph keeps a node's name, or (its NCHWc kernels) names it after its output tensor
    with ``_nchwc``: both are keys, the suffix is dropped by :func:`profiled_module`."""
    import onnx

    from edgeexport.provenance import onnx_scopes

    return onnx_scopes(onnx.load(str(path), load_external_data=False).graph)


def profiled_module(modules: dict[str, str], node: str) -> str | None:
    """The module of a node as ONNX Runtime's profiler names it: the graph's name, or that name with what its
    optimiser appends (``_nchwc`` kernels, ``_token_N`` of a fused int8 node, a Q/DQ node named after the tensor
    it quantizes)."""
    import re

    for name in (node, node.removesuffix("_nchwc"), re.sub(r"_token_\d+$", "", node),
                 re.sub(r"_(Dequantize|Quantize)Linear$", "", node)):
        if name in modules:
            return modules[name]
    return None


QDQ = ("QuantizeLinear", "DequantizeLinear")


def tap_outputs(model) -> list[tuple[str, str | None, str]]:
    """Mark every float tensor a node of ``model`` (an ONNX ModelProto, changed in place) computes as a graph
    output; returns (tensor, module path or None, op type) for each, in graph order."""
    import onnx

    from edgeexport.provenance import onnx_node_scope

    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (shapes are optional: only the types are needed, and the outputs keep theirs)
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    existing = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def as_seen(out: str) -> str:
        """What the nodes after a Q/DQ pair read: the dequantized tensor (a Clip that quantization's saturation
        replaced, the rounding of the activation), not the float value before QuantizeLinear."""
        q = [c for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"]
        dq = [c for c in consumers.get(q[0].output[0], []) if c.op_type == "DequantizeLinear"] if len(q) == 1 else []
        return dq[0].output[0] if dq and len(consumers.get(out, [])) == 1 else out

    marked = []
    for node in model.graph.node:
        if node.op_type in QDQ:
            continue  # their tensors are tapped as the outputs of the nodes they quantize
        scope = onnx_node_scope(node)
        for out in node.output:
            if not out or types.get(out) not in float_types:
                continue
            seen = as_seen(out)
            if seen not in existing:
                model.graph.output.append(onnx.helper.make_tensor_value_info(seen, types.get(seen, types[out]), None))
                existing.add(seen)
            marked.append((seen, scope[0] if scope else None, node.op_type))
    return marked


def onnx_taps(runner: OnnxRuntimeRunner, feed) -> list:
    """Every float tensor of the runner's graph for ``feed``: the graph is loaded again with each node's
    outputs marked as graph outputs (the artifact on disk is not changed)."""
    import onnx
    import onnxruntime as ort

    from edgeexport.runners.base import Tap

    model = onnx.load(str(runner.path))
    marked = tap_outputs(model)
    session = ort.InferenceSession(model.SerializeToString(), session_options(runner.threads, runner.optimization),
                                   providers=runner.providers)
    names = [m[0] for m in marked]
    arrays = session.run(names, {n: np.ascontiguousarray(feed[n]) for n in runner.input_names})
    return [Tap(name, module, op, np.asarray(a, np.float32)) for (name, module, op), a in zip(marked, arrays)]
