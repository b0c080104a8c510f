"""Per-layer error localisation: where does an int8 graph lose precision?

Both graphs (prepared fp32 and quantized QDQ) are run with every intermediate tensor as an
output (ONNX Runtime's ``qdq_loss_debug`` helpers); each fp32 tensor is compared with its
dequantized counterpart. A node's *SNR drop* is the SNR of its input (the worst of its
inputs) minus the SNR of its output: the error that node adds, as opposed to the error it
inherits. A tensor without a Q/DQ pair (read in float by a node kept in float) is compared as the
quantized graph computes it. Ranking nodes by drop is what the accuracy-aware loop uses to decide what
to keep in float.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeexport.quantize.calib import BatchReader

SNR_CAP = 120.0


def _snr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
    den = sum(float(((r.astype(np.float64) - g) ** 2).sum()) for r, g in zip(ref, got))
    if den == 0:
        return SNR_CAP
    return min(SNR_CAP, 10 * math.log10(max(num, 1e-30) / den))


def activations(model_path: Path, input_name: str, batches: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    with tempfile.TemporaryDirectory(prefix="edgeexport-debug-") as tmp:
        aug = Path(tmp) / "augmented.onnx"
        modify_model_output_intermediate_tensors(str(model_path), str(aug))
        return collect_activations(str(aug), BatchReader(input_name, batches))


def per_layer_errors(float_model: Path, qdq_model: Path, input_name: str, batches: list[np.ndarray]) -> list[dict]:
    """One row per float-graph node whose output has a quantized counterpart, in graph order."""
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    fa = activations(float_model, input_name, batches)
    qa = activations(qdq_model, input_name, batches)
    match = create_activation_matching(qa, fa)
    graph = onnx.load(str(float_model), load_external_data=False).graph
    snr: dict[str, float] = {}
    for name, d in match.items():
        if "float" in d and "post_qdq" in d and d["post_qdq"] is not None:
            snr[name] = _snr(d["float"], d["post_qdq"])
    for name, ref in fa.items():  # a tensor without a Q/DQ pair (a node kept in float reads it): as computed
        if name not in snr and name in qa and len(qa[name]) == len(ref):
            snr[name] = _snr(ref, qa[name])
    producers = {o: n for n in graph.node for o in n.output}
    memo: dict[str, float] = {}

    def tensor_snr(t: str) -> float:
        """SNR of a tensor, or of its nearest compared ancestors when it has no quantized twin."""
        if t in snr:
            return snr[t]
        if t not in memo:
            memo[t] = SNR_CAP
            node = producers.get(t)
            if node is not None:
                ins = [tensor_snr(i) for i in node.input if i in producers or i in snr]
                memo[t] = min(ins) if ins else SNR_CAP
        return memo[t]

    rows = []
    for node in graph.node:
        outs = [o for o in node.output if o in snr]
        if not outs:
            continue
        out_snr = min(snr[o] for o in outs)
        ins = [tensor_snr(i) for i in node.input if i in producers or i in snr]
        in_snr = min(ins) if ins else SNR_CAP
        rows.append({"node": node.name, "op": node.op_type, "output": outs[0], "snr_db": round(out_snr, 2),
                     "input_snr_db": round(in_snr, 2), "drop_db": round(max(0.0, in_snr - out_snr), 2)})
    return rows


def top_drops(rows: list[dict], n: int) -> list[dict]:
    return sorted(rows, key=lambda r: -r["drop_db"])[:n]
