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

from edgeexport.errors import BackendMissing, BuildFailed, EdgeExportError, UnsupportedOp
from edgeexport.provenance import locate_in_torch, refused_op
from edgeexport.runners.base import Runner
from edgeexport.targets.registry import register_target
from edgeexport.targets.base import BuildRecord, Format, Target, TargetOptions
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


def _quantize_pt2e(module, sample, calibration):
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
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


def lower(module, sample, out: Path, *, quantize: str | None = None, calibration: list | None = None) -> dict:
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
            if quantize == "int8":
                module = _quantize_pt2e(module, sample, calibration or [sample])
            program = torch.export.export(module, (sample,))
            if quantize != "int8":
                # Weights computed from parameters in forward (HetConv's dense / grouped forms, folded
                # BatchNorm) become constants, so XNNPACK can take the convolutions that use them.
                from executorch.exir.passes.constant_prop_pass import constant_prop_pass

                program = constant_prop_pass(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, total = _delegation(edge)
            et = edge.to_executorch()
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
            "delegated_nodes": delegated, "graph_nodes": total, "lower_s": round(time.perf_counter() - t0, 1)}


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


# ---------------------------------------------------------------- the target


class ExecuTorchOptions(TargetOptions):
    quantize: Literal["none", "int8"] = Field("none", description="int8: PT2E with the XNNPACK quantizer")
    calib_size: int = Field(8, ge=1, le=1024, description="calibration batches")


class ExecuTorchRecord(BuildRecord):
    backend: str
    quantize: str
    executorch: str
    delegated_nodes: int
    graph_nodes: int
    lower_s: float


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
                info = lower(ctx.torch_model(), ctx.sample(), art.path, quantize="int8" if int8 else None,
                             calibration=calib)
            except ExecuTorchLoweringFailed as exc:
                if getattr(exc, "op", None):
                    raise UnsupportedOp(exc.op, locate_in_torch(ctx.torch_model(), ctx.sample(), exc.op),
                                        str(exc)) from None
                raise BuildFailed(str(exc)) from None
        art.finish(ExecuTorchRecord(**info, build_s=info["lower_s"]), ctx.runner_spec(type(self), art.path))

    @classmethod
    def runner(cls, spec, threads):
        return ExecuTorchRunner(spec.artifact, threads, spec.input_names, spec.output_names)
