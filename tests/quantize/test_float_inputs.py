"""A node kept in float reads float tensors: the Q/DQ pair ONNX Runtime's quantizer leaves on its input (for an
int8 producer) is bypassed for it alone, and an activation the quantizer folded into that pair comes back in
float. Another int8 consumer of the same tensor keeps its pair."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgeexport.quantize.prep import float_inputs


class Shared(nn.Module):
    """relu(a(x)) feeds two convs; b's output channel 0 is 1000x wider, and d reads it: a wide-channel tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.b.weight[0] *= 1000
            self.b.bias[0] = 1000.0  # positive: the channel survives the Relu
            self.d.weight[:, 0] /= 1000

    def forward(self, x):
        t = torch.relu(self.a(x))
        return self.d(torch.relu(self.b(t))) + 0.01 * self.c(t)[:, :4]


class Reader(CalibrationDataReader):
    def __init__(self, batches):
        self.it = iter([{"input": b} for b in batches])

    def get_next(self):
        return next(self.it, None)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("float-inputs")
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(4)]
    fp32 = tmp / "fp32.onnx"
    torch.onnx.export(Shared().eval(), (torch.from_numpy(batches[0]),), str(fp32), dynamo=False, input_names=["input"],
                      output_names=["out"])
    qdq = tmp / "qdq.onnx"
    quantize_static(str(fp32), str(qdq), Reader(batches), nodes_to_exclude=["/d/Conv", "/c/Conv"],
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True)  # per-channel weights: the wide channel costs through the activation only
    return onnx.load(str(fp32)), onnx.load(str(qdq)), batches


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _snr(ref, got):
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


def test_a_float_node_reads_the_float_tensor_and_a_shared_int8_consumer_keeps_its_pair(graphs):
    fp32, qdq, batches = graphs
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    changed = float_inputs(model, fp32.graph, {"/d/Conv", "/c/Conv"})
    assert changed == {"/d/Conv": ["/Relu_1_output_0"], "/c/Conv": ["/Relu_output_0"]}
    nodes = {n.name: n for n in model.graph.node}
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[nodes["/d/Conv"].input[0]].op_type == "Relu"  # the folded Relu, back for d alone
    relu = producers[nodes["/c/Conv"].input[0]]
    assert relu.op_type == "Relu" and producers[relu.input[0]].name == "/a/Conv"  # relu(a) as computed
    assert producers[nodes["/b/Conv"].input[0]].op_type == "DequantizeLinear"  # b is int8: it keeps its pair
    onnx.checker.check_model(model)
    x = batches[0]
    ref = _run(fp32, x)
    before, after = _snr(ref, _run(qdq, x)), _snr(ref, _run(model, x))
    assert after > before + 10, (before, after)  # measured: -1 dB before, 48 dB after  # the wide channel no longer crushes the others in d's input
