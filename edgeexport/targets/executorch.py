"""ExecuTorch programs (``NAME.pte``) lowered to XNNPACK, fp32 or int8 (PT2E), and their runner
(ExecuTorch's Python runtime, XNNPACK thread pool sized like every other backend).

fp32: ``torch.export`` -> constant propagation -> ``to_edge_transform_and_lower`` with the XNNPACK
partitioner. int8: PT2E quantization with the XNNPACK quantizer (symmetric int8, per-channel
weights), calibrated on the same calibration images as the ONNX int8 path, then lowered the same way.
"""
from __future__ import annotations

import operator
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeexport.bench import median_ops
from edgeexport.errors import BackendMissing, BuildFailed, EdgeExportError, UnsupportedOp
from edgeexport.provenance import GROUP, locate_in_torch, match_modules, refused_op, stack_path, user_path, within
from edgeexport.runners.base import Runner, Tap
from edgeexport.targets.registry import register_target
from edgeexport.targets.base import Budget, Equalize, FloatModules, BuildRecord, Format, Target, TargetOptions, int8_model
from edgeexport.util import one_line, quiet

INSTALL_HINT = "pip install 'edgeexport[executorch]'"


# how ExecuTorch says that it cannot take an operator (no out variant / kernel, not core ATen)
REFUSALS = (r"Missing out variants?: \{?'([\w:.]+)'", r"Missing operator: \[\d+\] ([\w:.]+)",
            r"(aten[.:][\w.]+) is not (?:Aten|ATen|Core ATen) Canonical")


class ExecuTorchLoweringFailed(EdgeExportError):
    pass


def require_executorch():
    try:
        with quiet():
            import executorch.exir  # noqa: F401
    except ImportError:
        raise BackendMissing("ExecuTorch", "executorch is not installed", INSTALL_HINT) from None


def _drop_identity_pads(graph_module):
    """Remove pad nodes that pad nothing (Swin pads windows by ``size % window``, which
    is 0 at the usual sizes). XNNPACK's partitioner takes them, but its runtime refuses a zero-width
    quantized pad when the method loads ("Failed to create StaticConstantPad node"). Exact."""
    import torch

    pads = (torch.ops.aten.constant_pad_nd.default, torch.ops.aten.pad.default)
    dropped = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target in pads and not any(node.args[1]):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            dropped += 1
    if dropped:
        graph_module.recompile()
    return graph_module


def _quantize_pt2e(module, sample, calibration, float_modules=()):
    """PT2E int8 with the XNNPACK quantizer; returns the converted module, ``{module: [node names]}`` kept
    in float (``float_modules``: paths in the user's model, left out of the quantizer's annotation) and
    ``{module: [the nodes whose output it reads, left float]}``."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:  # older stacks
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = _drop_identity_pads(torch.export.export(module, (sample,)).module())
    kept: dict[str, list[str]] = {}
    if float_modules:
        paths = {n.name: stack_path(n) for n in graph.graph.nodes if n.op == "call_function"}
        users = {k: user_path(v) if v else None for k, v in paths.items()}
        kept = match_modules(float_modules, users)
        for part in {p for m in float_modules for p in m.split(GROUP)}:
            node = next((k for k, v in users.items() if within(v, [part])), None)
            if node is None:
                continue  # a group's member with no node of its own (a BatchNorm PT2E folds into its conv)
            full = paths[node]  # the module's path in the exported (wrapped) module: the quantizer's name
            full = full[:len(full) - len(user_path(full))] + part
            # a module with no config is left out of the global annotation and annotated with nothing (float);
            # set_module_name refuses None in ExecuTorch 1.5, the annotation itself skips it
            quantizer.module_name_config[full] = None
        quantizer = _FloatTensors(quantizer, float_modules)
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared), kept, getattr(quantizer, "tensors", {})


class _FloatTensors:
    """The XNNPACK quantizer, and then: the tensors a float module reads stay float. A module left out of the
    annotation still reads what its producer wrote, and the producer's output annotation quantizes that tensor
    (the wide channel the module was kept in float for is still rounded to the producer's per-tensor scale).
    XNNPACK's static int8 kernels write int8, so the producer's whole pattern (e.g. conv-bn-relu) is annotated
    float too: it reads its own input dequantized, computes and writes in float. Every other consumer of that
    tensor quantizes it on its own input edge (XNNPACK's conv, linear, add, mul and cat annotate their inputs).
    The producers left float are recorded by node name, per float module."""

    def __init__(self, quantizer, float_modules):
        self.quantizer, self.modules, self.tensors = quantizer, list(float_modules), {}

    def __getattr__(self, name):
        return getattr(self.quantizer, name)

    def transform_for_annotation(self, model):
        return self.quantizer.transform_for_annotation(model)

    def validate(self, model):
        return self.quantizer.validate(model)

    def annotate(self, model):
        model = self.quantizer.annotate(model)
        floating = {n: m for n in model.graph.nodes if n.op == "call_function"
                    and (m := within(user_path(stack_path(n) or ""), self.modules))}
        outputs, inputs = {}, {}  # the annotations taken away: node -> output qspec, node -> its input qspecs
        for node in floating:  # what the quantizer annotated without asking the module config (a max pool's sharing)
            ann = node.meta.get("quantization_annotation")
            if ann is not None:
                outputs[node], inputs[node] = ann.output_qspec, dict(ann.input_qspec_map)
                ann.output_qspec, ann.input_qspec_map = None, {}
        for node, module in floating.items():
            for src in node.all_input_nodes:
                ann = src.meta.get("quantization_annotation")
                if src not in floating and ann is not None and ann.output_qspec is not None:
                    outputs[src], ann.output_qspec = ann.output_qspec, None
                    _unquantize_pattern(src, inputs)
                    self.tensors.setdefault(module, []).append(src.name)
        _unshare(model, outputs, inputs)
        return model


def _unquantize_pattern(node, inputs: dict) -> None:
    """Clear the input annotations of ``node`` and of the annotated nodes inside its pattern (those with no
    output annotation of their own, e.g. the conv and bn under a quantized relu), so the pattern computes
    in float from dequantized inputs; what was cleared goes into ``inputs``."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        ann = n.meta.get("quantization_annotation")
        if n in seen or ann is None:
            continue
        seen.add(n)
        inputs.setdefault(n, dict(ann.input_qspec_map))  # the first record is the quantizer's own annotation
        ann.input_qspec_map = {}
        stack += [s for s in n.all_input_nodes if (a := s.meta.get("quantization_annotation")) is not None
                  and a.output_qspec is None]


def _unshare(model, outputs: dict, inputs: dict) -> None:
    """An int8 consumer whose qspec shares the observer of a tensor left float (``SharedQuantizationSpec`` of a
    node whose output annotation was taken away, or of an input edge that was cleared) gets that qspec for its own:
    it quantizes the tensor on its own edge."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    def own(qspec, depth=0):
        if not isinstance(qspec, SharedQuantizationSpec) or depth > 8:
            return qspec
        ref = qspec.edge_or_node
        if isinstance(ref, tuple):
            original = inputs.get(ref[1], {}).get(ref[0])
        else:
            original = outputs.get(ref)
        return qspec if original is None else own(original, depth + 1)

    for n in model.graph.nodes:
        ann = n.meta.get("quantization_annotation")
        if ann is None:
            continue
        ann.input_qspec_map = {k: own(q) for k, q in ann.input_qspec_map.items()}
        ann.output_qspec = own(ann.output_qspec)


def quantized_taps(module, sample, calibration, x, float_modules=()) -> list:
    """The int8 program as PT2E builds it before lowering (quantize / dequantize around reference kernels), run
    in PyTorch on ``x``: every float tensor a node computes, named by its module. What ranks the modules to keep
    in float when the XNNPACK delegate cannot return its own intermediate tensors; XNNPACK's int8 kernels
    round the same quantized values, so the ranking carries over, the exact figures need not."""
    import torch

    converted, _, _ = _quantize_pt2e(module.eval(), sample, calibration, float_modules)
    outs: dict = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            outs[n.name] = r.clone() if isinstance(r, torch.Tensor) else r  # later in-place ops (relu_) change it
            return r

    with torch.no_grad():
        Recorder(converted).run(torch.as_tensor(x))
    taps = []
    for n in converted.graph.nodes:
        path, r = stack_path(n), outs.get(n.name)
        if path and isinstance(r, torch.Tensor) and r.is_floating_point():
            taps.append(Tap(n.name, user_path(path), str(n.target).removeprefix("aten."), r.float().numpy()))
    return taps


def lower(module, sample, out: Path, *, quantize: str | None = None, calibration: list | None = None,
          float_modules=()) -> dict:
    """Export, (quantize), lower to XNNPACK and write ``out`` atomically (``module``: a torch module
    returning a tuple; ``calibration``: tensors)."""
    import torch

    require_executorch()
    from edgeexport.util import atomic_path

    t0 = time.perf_counter()
    with quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            module = module.eval()
            kept, tensors = {}, {}
            if quantize == "int8":
                module, kept, tensors = _quantize_pt2e(module, sample, calibration or [sample], float_modules)
            program = torch.export.export(module, (sample,))
            if quantize != "int8":
                # Weights computed from parameters in forward (HetConv's dense / grouped forms, folded
                # BatchNorm) become constants, so XNNPACK can take the convolutions that use them.
                from executorch.exir.passes.constant_prop_pass import constant_prop_pass

                program = constant_prop_pass(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, total = _delegation(edge)
            et = edge.to_executorch()
        except EdgeExportError:
            raise
        except Exception as exc:
            failure = ExecuTorchLoweringFailed(f"ExecuTorch lowering failed: {one_line(exc)}")
            failure.op = refused_op(str(exc), REFUSALS)
            raise failure from exc
        with atomic_path(out) as tmp:
            tmp.write_bytes(et.buffer)
    import executorch

    version = getattr(executorch, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("executorch")
    return {"backend": "xnnpack", "quantize": quantize or "none", "executorch": version,
            "delegated_nodes": delegated, "graph_nodes": total, "lower_s": round(time.perf_counter() - t0, 1),
            "float_modules": kept, "float_tensors": tensors}


def _delegation(edge) -> tuple[int, int]:
    """How many call nodes went to XNNPACK delegates vs stayed portable."""
    gm = edge.exported_program().graph_module
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    delegated = sum(1 for n in calls if "executorch_call_delegate" in str(n.target))
    return delegated, len(calls)


# ---------------------------------------------------------------- runner


class ExecuTorchRunner(Runner):
    backend = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None, input_names=("input",), output_names=()):
        super().__init__(threads)
        self.path = Path(path)
        self._inputs, self._outputs = list(input_names), list(output_names)

    def _activate(self) -> None:
        import torch

        from edgeexport.util import quiet

        self.torch = torch
        with quiet():
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

            if self.threads:
                portable_lib._unsafe_reset_threadpool(self.threads)
            self.program = Runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")

    def _taps(self, feed):
        from edgeexport.runners.base import TapsUnavailable

        raise TapsUnavailable("executorch: the XNNPACK delegate runs the lowered graph as one opaque blob; "
                              "ExecuTorch's intermediate output logging (ETDump) stops at the delegate's boundary")

    def _infer(self, feed):
        args = [self.torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self._inputs]
        outs = self.method.execute(args)
        names = self._outputs or [f"output{i}" for i in range(len(outs))]
        return {n: o.detach().numpy().astype(np.float32, copy=False) for n, o in zip(names, outs)}

    def _deactivate(self) -> None:
        self.method = self.program = None

    def describe(self) -> dict:
        from importlib.metadata import version

        return {**super().describe(), "runtime": f"executorch {version('executorch')}", "device": "cpu (xnnpack)",
                "artifact": str(self.path)}


def etdump_profile(path: str, feed: dict, threads: int, input_names, runs: int = 10) -> dict:
    """Time per operator type from ExecuTorch's ETDump: the XNNPACK delegate's own profiling events, one per
    XNNPACK operator it runs ("Convolution (NHWC, QC8) IGEMM #3"), ms per run (median over ``runs``).

    The events name XNNPACK operators, not graph nodes: without an ETRecord of the build they are not mapped
    to module paths, so there is no time per module here."""
    import re
    import tempfile

    import torch

    with quiet():
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        portable_lib._unsafe_reset_threadpool(int(threads))
        program = Runtime.get().load_program(Path(path), enable_etdump=True, debug_buffer_size=0)
        method = program.load_method("forward")
        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names]
        for _ in range(2):
            method.execute(args)
        totals = []
        for _ in range(runs):
            t0 = time.perf_counter()
            method.execute(args)
            totals.append((time.perf_counter() - t0) * 1e3)
        with tempfile.TemporaryDirectory(prefix="edgeexport-etdump-") as tmp:
            etdump = Path(tmp) / "run.etdp"
            program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
            inspector = Inspector(etdump_path=str(etdump))
    per_run: list[dict[str, float]] = [{} for _ in range(runs)]
    for block in inspector.event_blocks:
        for event in block.events:
            raw = event.perf_data.raw if event.perf_data is not None else []
            if event.delegate_debug_identifier is None or len(raw) < runs:
                continue  # the method's own events (init, execute, the delegate call around the operators)
            kind = re.sub(r"\s*#\d+$", "", str(event.name))
            for i, ms in enumerate(raw[-runs:]):
                per_run[i][kind] = per_run[i].get(kind, 0.0) + ms
    if not any(per_run):
        return None
    return {"runtime": "executorch etdump (XNNPACK delegate events)", "ops": median_ops(per_run),
            "total_ms": round(float(np.median(totals)), 4)}


# ---------------------------------------------------------------- the target


class ExecuTorchOptions(TargetOptions):
    quantize: Literal["none", "int8"] = Field("none", description="int8: PT2E with the XNNPACK quantizer")
    calib_size: int = Field(8, ge=1, le=1024, description="calibration batches")
    float_modules: FloatModules = Field(default_factory=list, description="int8: module of the model to keep in float "
                                     "(left out of the XNNPACK quantizer's annotation), by its path as `edgeexport "
                                     "diff` names it (repeatable)", json_schema_extra={"flag": "--float-module"})
    budget: Budget = Field(
        None, description="int8 accuracy budget (miou_drop=0.5, top1_drop=0.5, snr_db=25, agreement=0.99): the "
                          "smallest set of modules kept in float that meets it is searched", json_schema_extra={"parse": "budget"})
    equalize: Equalize = "auto"


class ExecuTorchRecord(BuildRecord):
    backend: str
    quantize: str
    executorch: str
    delegated_nodes: int
    graph_nodes: int
    lower_s: float
    float_modules: dict[str, list[str]] = {}  # module kept in float -> its graph nodes
    float_tensors: dict[str, list[str]] = {}  # module kept in float -> the nodes whose output it reads, left float


@register_target
class ExecuTorchTarget(Target):
    name = "executorch"
    order = 40
    title = "ExecuTorch"
    backend = "executorch"
    help = "Lower to an ExecuTorch program (NAME.pte) with the XNNPACK delegate; parity and latency here."
    Options = ExecuTorchOptions
    Record = ExecuTorchRecord
    multiple = True
    formats = (Format(kind="executorch", suffix=".pte", precision="fp32", runs_on="any CPU with the ExecuTorch runtime",
                      options={"quantize": "none"}),
               Format(kind="executorch-int8", suffix=".int8.pte", precision="int8",
                      runs_on="any CPU with the ExecuTorch runtime (XNNPACK int8 kernels)",
                      options={"quantize": "int8"}))
    build_modules = ("executorch.exir",)
    run_modules = ("executorch.runtime",)
    distributions = {"executorch.exir": "executorch", "executorch.runtime": "executorch"}
    install = INSTALL_HINT
    extra = "executorch"

    def build(self, ctx, options: ExecuTorchOptions, art) -> None:
        import torch


        int8 = options.quantize == "int8"
        with ctx.status(f"Lowering to ExecuTorch / XNNPACK ({options.quantize})"):
            calib = [torch.from_numpy(b) for b in ctx.calibration(options.calib_size)] if int8 else None
            try:
                info = lower(int8_model(ctx, options.equalize if int8 else "off"), ctx.sample(), art.path,
                             quantize="int8" if int8 else None,
                             calibration=calib, float_modules=options.float_modules if int8 else ())
            except ExecuTorchLoweringFailed as exc:
                if getattr(exc, "op", None):
                    raise UnsupportedOp(exc.op, locate_in_torch(ctx.torch_model(), ctx.sample(), exc.op),
                                        str(exc)) from None
                raise BuildFailed(str(exc)) from None
        art.finish(ExecuTorchRecord(**info, build_s=info["lower_s"]), ctx.runner_spec(type(self), art.path))

    @classmethod
    def operator_profile(cls, spec, feed, threads: int, runs: int):
        return etdump_profile(spec.artifact, feed, threads, spec.input_names, runs)

    @classmethod
    def quantized_taps(cls, ctx, options: ExecuTorchOptions, x):
        if options.quantize != "int8":
            return None
        import torch

        calib = [torch.from_numpy(b) for b in ctx.calibration(options.calib_size)]
        with quiet():
            return quantized_taps(int8_model(ctx, options.equalize), ctx.sample(), calib, x, options.float_modules)

    @classmethod
    def runner(cls, spec, threads):
        return ExecuTorchRunner(spec.artifact, threads, spec.input_names, spec.output_names)
