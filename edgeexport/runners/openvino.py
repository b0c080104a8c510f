"""OpenVINO Runtime: the runner of OpenVINO IRs, their module map (which module of the user's model each
operation comes from, recorded in the IR at build time), intermediate tensors for ``diff`` and the CPU
plugin's performance counters. The target that builds IRs is :mod:`edgeexport.targets.openvino`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeexport.bench import median_ops
from edgeexport.provenance import onnx_scopes
from edgeexport.runners.base import Runner, Tap


def compile_model(core, model, device: str, threads: int | None, inference_precision: str | None):
    """Compile for ``device`` with the run's thread count (the CPU plugin's, also under AUTO / HETERO)
    and an explicit inference precision (the CPU plugin would otherwise pick bf16 where it can)."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if inference_precision:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(threads)
    elif threads and "CPU" in core.available_devices:
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": int(threads)})
    return core.compile_model(model, device, config)


MODULE_KEY = "edgeexport_modules"  # the model's runtime info: {ONNX tensor name: module path of the user's model}


def annotate_modules(model, source) -> int:
    """Record in the model's runtime info (kept in the IR) the module path each ONNX tensor comes from, as the
    ONNX node that computes it records it; OpenVINO keeps the ONNX tensor names on its ops' outputs, so an op
    of the IR finds its module by the names of its output. Returns how many tensors got one."""
    import json

    import onnx

    scope_of = onnx_scopes(onnx.load(str(source), load_external_data=False).graph)
    names = {n for op in model.get_ops() for port in op.outputs() for n in port.get_names()}
    recorded = {n: p for n, p in scope_of.items() if n in names}
    model.set_rt_info(json.dumps(recorded, separators=(",", ":")), MODULE_KEY)
    return len(recorded)


def recorded_modules(model) -> dict[str, str]:
    import json

    try:
        return json.loads(str(model.get_rt_info(MODULE_KEY).astype(str)))
    except Exception:  # noqa: BLE001 (an IR written elsewhere, or before edgeexport recorded modules)
        return {}


def op_modules(model) -> dict[str, str | None]:
    """The module of the user's model each operation of an IR (by friendly name) comes from, by the map
    :func:`annotate_modules` recorded. An operation whose output has no ONNX name (the Convolution an ONNX Conv
    with a bias becomes, before its bias Add) belongs to the module of its consumers when they agree."""
    recorded = recorded_modules(model)
    paths: dict[str, str | None] = {}
    for op in reversed(model.get_ordered_ops()):  # consumers first
        if op.get_type_name() in ("Parameter", "Constant", "Result"):
            continue
        found = [recorded[n] for port in op.outputs() for n in port.get_names() if n in recorded]
        if not found:
            users = {paths.get(t.get_node().get_friendly_name()) for port in op.outputs()
                     for t in port.get_target_inputs()}
            found = [users.pop()] if len(users) == 1 else []
        paths[op.get_friendly_name()] = found[0] if found else None
    return paths


TAP_SKIP = {"Parameter", "Constant", "Result", "ShapeOf", "Convert", "FakeQuantize"}


def openvino_taps(runner: "OpenVINORunner", feed) -> list[Tap]:
    """Every float op output of the IR for ``feed`` (the model is read again with each one added as an
    output; the artifact is not changed), attributed by the module paths recorded at build time (an IR without
    them is paired by value)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(runner.path))
    modules = recorded_modules(model)
    picked = []
    for op in model.get_ordered_ops():
        if op.get_type_name() in TAP_SKIP or op.get_output_size() != 1:
            continue
        port = op.output(0)
        if port.get_element_type() not in (ov.Type.f32, ov.Type.f16):
            continue
        module = next((modules[n] for n in port.get_names() if n in modules), None)
        picked.append((op.get_friendly_name(), module, op.get_type_name(), port))
    for j, (*_, port) in enumerate(picked):  # a name of our own for each, to find it among the outputs
        port.get_tensor().add_names({f"edgeexport.tap.{j}"})
    model.add_outputs([p for *_, p in picked])
    compiled = compile_model(core, model, runner.device, runner.threads, runner.inference_precision)
    res = compiled.create_infer_request().infer(
        {n: np.ascontiguousarray(feed[n][:1], dtype=np.float32) for n in runner.input_names})
    index = {n: i for i, o in enumerate(model.outputs) for n in o.get_names()}  # the compiled model's order
    taps = [Tap(name, module, op, np.array(res[index[f"edgeexport.tap.{j}"]], dtype=np.float32))
            for j, (name, module, op, _) in enumerate(picked) if f"edgeexport.tap.{j}" in index]
    return taps


class OpenVINORunner(Runner):
    backend = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, input_names=(), output_names=(),
                 device: str = "CPU", inference_precision: str | None = "f32"):
        super().__init__(threads)
        self.path, self.device, self.inference_precision = Path(path), device, inference_precision
        self._inputs, self._outputs = list(input_names), list(output_names)
        self.compiled = self.request = None

    def _activate(self) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = compile_model(core, core.read_model(str(self.path)), self.device, self.threads,
                                      self.inference_precision)
        self._ports = {}
        for port in self.compiled.outputs:
            for n in port.get_names():
                self._ports[n] = port
        self._inputs = self._inputs or [p.get_any_name() for p in self.compiled.inputs]
        self._outputs = self._outputs or [p.get_any_name() for p in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()

    def _infer(self, feed):
        res = self.request.infer({n: np.ascontiguousarray(feed[n], dtype=np.float32) for n in self._inputs})
        # the request reuses its output tensors: copy
        return {n: np.array(res[self._ports[n]], dtype=np.float32, copy=True) for n in self._outputs}

    def _deactivate(self) -> None:
        self.request = self.compiled = None

    def _taps(self, feed):
        return openvino_taps(self, feed)

    def describe(self) -> dict:
        import openvino as ov

        d = {**super().describe(), "runtime": f"openvino {ov.get_version()}", "device": self.device,
             "artifact": str(self.path)}
        if self.compiled is not None and self.device.startswith("CPU"):
            d["inference_precision"] = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
            d["threads_used"] = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        return d


def openvino_profile(path: str, feed: dict, threads: int, options: dict, runs: int = 10) -> dict:
    """OpenVINO's performance counters (``PERF_COUNT``): real time per layer type, ms per run (median).

    The CPU plugin reports each layer's *average* time over every inference since compilation (in whole
    microseconds); one run's time is recovered as ``n * avg_n - (n - 1) * avg_(n-1)``.
    """
    import openvino as ov

    core = ov.Core()
    config = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads)}
    device = options.get("device", "CPU")
    if options.get("inference_precision") and device.startswith("CPU"):
        config["INFERENCE_PRECISION_HINT"] = options["inference_precision"]
    model = core.read_model(str(path))
    module_of = {k: v for k, v in op_modules(model).items() if v is not None}
    compiled = core.compile_model(model, device, config)
    req = compiled.create_infer_request()
    x = [np.ascontiguousarray(v) for v in feed.values()]

    def cumulative(n: int) -> dict[str, tuple[str, float]]:
        out = {}
        for info in req.get_profiling_info():
            if info.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            kind = info.node_type + (" (int8)" if any(t in info.exec_type.upper() for t in ("I8", "U8")) else "")
            out[info.node_name] = (kind, n * info.real_time.total_seconds() * 1e3)
        return out

    warmup = 2
    for _ in range(warmup):
        req.infer(x)
    prev = cumulative(warmup)
    per_run: list[dict[str, float]] = []
    per_module: list[dict[str, float]] = []
    totals = []
    for n in range(warmup + 1, warmup + runs + 1):
        t0 = time.perf_counter()
        req.infer(x)
        totals.append((time.perf_counter() - t0) * 1e3)
        cur = cumulative(n)
        ops: dict[str, float] = {}
        mods: dict[str, float] = {}
        for node, (kind, total) in cur.items():
            ms = max(0.0, total - prev.get(node, (kind, 0.0))[1])
            ops[kind] = ops.get(kind, 0.0) + ms
            module = module_of.get(node) or module_of.get(node.split("/")[0])
            if module is not None:
                mods[module] = mods.get(module, 0.0) + ms
        per_run.append(ops)
        per_module.append(mods)
        prev = cur
    return {"runtime": f"openvino {ov.get_version().split('-')[0]} performance counters",
            "ops": median_ops(per_run), "modules": median_ops(per_module),
            "total_ms": round(float(np.median(totals)), 4)}
