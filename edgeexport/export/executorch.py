"""ExecuTorch programs (``NAME.pte``) lowered to XNNPACK, fp32 or int8 (PT2E).

fp32: ``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner.
int8: PT2E quantization with the XNNPACK quantizer (symmetric int8, per-channel weights),
calibrated on the same calibration photographs as the ONNX int8 path, then lowered the same way.
"""
from __future__ import annotations

import operator
import time
from pathlib import Path

import torch

from edgeexport.errors import BackendMissing, EdgeExportError
from edgeexport.util import quiet

INSTALL_HINT = "pip install 'edgeexport[executorch]'"


class ExecuTorchLoweringFailed(EdgeExportError):
    pass


def require_executorch():
    try:
        with quiet():
            import executorch.exir  # noqa: F401
    except ImportError:
        raise BackendMissing("ExecuTorch", "executorch is not installed", INSTALL_HINT) from None


def _quantize_pt2e(module: torch.nn.Module, sample: torch.Tensor, calibration: list[torch.Tensor]):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:  # older stacks
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(module, (sample,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


def lower(module: torch.nn.Module, sample: torch.Tensor, out: Path, *, quantize: str | None = None,
          calibration: list[torch.Tensor] | None = None) -> dict:
    """Export, (quantize), lower to XNNPACK and write ``out`` atomically."""
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
            raise ExecuTorchLoweringFailed(f"ExecuTorch lowering failed: {type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
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
