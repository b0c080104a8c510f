"""Pre-flight: will TensorRT's ONNX parser take this graph? Runs anywhere (no TensorRT needed).

The rules are onnx-tensorrt's operator support matrix (docs/operators.md: unsupported
operators and per-operator restrictions), updated for TensorRT 10 (HardSwish,
LayerNormalization, cubic Resize). Findings are "error" (the parser would reject the node)
or "warning" (it parses, but TensorRT casts or clamps something).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

UNSUPPORTED = {
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear", "Hardmax",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "Multinomial", "NegativeLogLikelihoodLoss", "QLinearConv",
    "QLinearMatMul", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
    "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer",
    "TfIdfVectorizer", "Unique", "Optional", "OptionalGetElement", "OptionalHasElement", "STFT", "DFT",
    "BlackmanWindow", "HammingWindow", "HannWindow", "MelWeightMatrix", "Bernoulli", "ImageDecoder",
}
RESIZE_MODES = {"nearest", "linear", "cubic"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
NEEDS_INITIALIZER = {"Conv": (1, "weights W"), "ConvTranspose": (1, "weights W"), "Slice": (3, "axes"),
                     "Squeeze": (1, "axes"), "TopK": (1, "K"), "CumSum": (1, "axis")}
INT32_MAX = 2 ** 31 - 1


@dataclass
class Finding:
    severity: str  # error | warning
    node: str
    op: str
    message: str


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def preflight(model: onnx.ModelProto) -> list[Finding]:
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    found: list[Finding] = []

    def add(sev, node, msg):
        found.append(Finding(sev, node.name or node.output[0], node.op_type, msg))

    def constant(name: str) -> bool:
        if name in inits:
            return True
        p = producers.get(name)
        return p is not None and (p.op_type == "Constant" or (p.op_type == "DequantizeLinear" and p.input[0] in inits))

    for node in g.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            add("error", node, f"custom-domain op {node.domain}.{op} has no TensorRT parser importer (needs a plugin)")
            continue
        if op in UNSUPPORTED:
            add("error", node, f"{op} is not supported by TensorRT's ONNX parser")
        if op in NEEDS_INITIALIZER:
            idx, what = NEEDS_INITIALIZER[op]
            if len(node.input) > idx and node.input[idx] and not constant(node.input[idx]):
                add("error", node, f"{what} must be an initializer (constant) for TensorRT")
        if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
            ks = _attr(node, "kernel_shape")
            if ks is not None and len(ks) not in (2, 3):
                add("error", node, f"{len(ks)}D {op}: TensorRT takes 2D or 3D only")
        if op == "Resize":
            mode = _attr(node, "mode", b"nearest")
            coord = _attr(node, "coordinate_transformation_mode", b"half_pixel")
            mode, coord = (m.decode() if isinstance(m, bytes) else m for m in (mode, coord))
            if mode not in RESIZE_MODES:
                add("error", node, f"Resize mode {mode!r} unsupported (supported: {', '.join(sorted(RESIZE_MODES))})")
            if coord not in RESIZE_COORDS:
                add("error", node, f"Resize coordinate_transformation_mode {coord!r} unsupported")
        if op in ("QuantizeLinear", "DequantizeLinear"):
            zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if zp is not None and zp in inits:
                arr = numpy_helper.to_array(inits[zp])
                if inits[zp].data_type == onnx.TensorProto.UINT8:
                    add("error", node, "uint8 quantization: TensorRT takes signed int8 Q/DQ only "
                                       "(build the int8 graph for TensorRT: symmetric int8)")
                elif np.any(arr != 0):
                    add("error", node, "zero point must be 0 (TensorRT quantization is symmetric)")
        if op == "Einsum":
            eq = _attr(node, "equation", b"")
            if b"..." in (eq if isinstance(eq, bytes) else eq.encode()):
                add("error", node, "Einsum with ellipsis is not supported")
        if op == "Range" and not all(constant(i) for i in node.input):
            for i in node.input:
                t = _dtype(model, i)
                if t in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                    add("error", node, "Range with floating-point inputs needs them to be initializers")
                    break
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.INT64:
            arr = numpy_helper.to_array(init)
            if arr.size and (arr.max() > INT32_MAX or arr.min() < -INT32_MAX - 1):
                found.append(Finding("warning", init.name, "initializer",
                                     "INT64 values beyond INT32 range: TensorRT clamps them to +-INT32_MAX "
                                     "(common in Slice ends = INT64_MAX; harmless there)"))
        if init.data_type == onnx.TensorProto.DOUBLE:
            found.append(Finding("warning", init.name, "initializer", "DOUBLE is cast down to FLOAT by TensorRT"))
    return found


def _dtype(model, name):
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    for i in model.graph.initializer:
        if i.name == name:
            return i.data_type
    return None


def summarize(findings: list[Finding]) -> dict:
    errors = [asdict(f) for f in findings if f.severity == "error"]
    warnings = [asdict(f) for f in findings if f.severity == "warning"]
    return {"parses": not errors, "errors": errors, "warnings": warnings[:20], "warning_count": len(warnings)}
