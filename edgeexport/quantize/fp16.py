"""fp16 conversion with onnxconverter-common, keeping fp32 inputs and outputs.

Before converting, every intermediate tensor of the fp32 graph is run on the evaluation
photographs and its largest magnitude recorded: values above 65504 overflow fp16 to inf,
and the report names those tensors (and keeps their producers in fp32).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx

FP16_MAX = 65504.0


def activation_peaks(fp32_path: Path, input_name: str, batches: list[np.ndarray]) -> dict[str, float]:
    from edgeexport.quantize.debug import activations

    acts = activations(fp32_path, input_name, batches)
    return {name: float(max(np.abs(a).max() for a in arrays)) for name, arrays in acts.items() if arrays}


def build_fp16(fp32_path: Path, out: Path, input_name: str, batches: list[np.ndarray]) -> dict:
    from onnxconverter_common import float16

    from edgeexport.util import atomic_path

    t0 = time.perf_counter()
    peaks = activation_peaks(fp32_path, input_name, batches)
    overflow = {k: v for k, v in peaks.items() if v > FP16_MAX}
    model = onnx.load(str(fp32_path))
    from edgeexport.quantize.prep import constants_to_initializers, name_nodes

    constants_to_initializers(model)
    name_nodes(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    big_consts = {i.name for i in model.graph.initializer
                  if i.data_type == onnx.TensorProto.FLOAT and onnx.numpy_helper.to_array(i).size
                  and float(np.abs(onnx.numpy_helper.to_array(i)).max()) > FP16_MAX}
    block_nodes = sorted({producers[t].name for t in overflow if t in producers}
                         | {n.name for n in model.graph.node if any(i in big_consts for i in n.input)})
    converted, typed_back = _convert_loadable(model, block_nodes)
    restored = _restore_fp32_initializers(converted, model)
    with atomic_path(out) as tmp:
        onnx.save(converted, str(tmp))
    top = sorted(peaks.items(), key=lambda kv: -kv[1])[:5]
    return {
        "mode": "fp16", "converter": "onnxconverter_common.float16 (keep_io_types=True)",
        "max_activation": round(top[0][1], 3) if top else None,
        "largest_activations": [{"tensor": k, "max_abs": round(v, 3)} for k, v in top],
        "fp16_overflow": [{"tensor": k, "max_abs": round(v, 1)} for k, v in sorted(overflow.items(), key=lambda kv: -kv[1])],
        "kept_fp32_for_overflow": block_nodes,
        "constants_beyond_fp16": sorted(big_consts),
        "kept_fp32_for_types": typed_back,
        "fp32_initializers_restored": restored,
        "build_s": round(time.perf_counter() - t0, 1),
    }


def _convert_loadable(model: onnx.ModelProto, block: list[str], attempts: int = 25):
    """Convert, and keep in fp32 every node the converter leaves mistyped (it misses e.g. Cast(to=FLOAT)
    nodes on shape paths and some exporter patterns), until ONNX Runtime loads the graph."""
    import re

    import onnxruntime as ort
    from onnxconverter_common import float16

    block, typed_back = list(block), []
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    for _ in range(attempts):
        with warnings.catch_warnings():  # "number truncated to 1e-07": tiny weights flush to fp16's range
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(model, keep_io_types=True, max_finite_val=FP16_MAX,
                                                         node_block_list=block or None)
        try:
            ort.InferenceSession(converted.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return converted, typed_back
        except Exception as exc:
            found = re.search(r"node \(([^)]+)\)", str(exc))
            if not found or found.group(1) in block:
                raise
            block.append(found.group(1))
            typed_back.append(found.group(1))
    raise RuntimeError(f"fp16 conversion still not loadable after keeping {len(typed_back)} nodes in fp32")


def _restore_fp32_initializers(converted: onnx.ModelProto, original: onnx.ModelProto) -> int:
    """The converter stores every initializer in fp16, even those only fp32 (blocked) nodes read
    through a Cast back to float. Restore those to their original fp32 values: a 1e5 constant
    would otherwise become 65504, and blocked convolutions would lose weight precision."""
    orig = {i.name: i for i in original.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list] = {}
    for n in converted.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    count = 0
    for init in converted.graph.initializer:
        users = consumers.get(init.name, [])
        if (init.name in orig and init.data_type == onnx.TensorProto.FLOAT16 and users
                and all(u.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT
                                                    for a in u.attribute) for u in users)):
            init.CopyFrom(orig[init.name])
            count += 1
    return count
