"""ONNX Runtime's taps and profiler names, on hand-made graphs: what `diff` reads from a Q/DQ graph is what the
next node reads (the dequantized tensor), and profiled node names find their module."""
import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeexport.runners.onnxruntime import OnnxRuntimeRunner, profiled_module, tap_outputs


def _qdq_graph() -> onnx.ModelProto:
    """x -> Conv ("conv", module "body.0") -> QuantizeLinear -> DequantizeLinear -> Relu ("relu", "body.1")."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [1.0, -1.0])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])  # coarse: rounding is visible
    zp = helper.make_tensor("z", TensorProto.UINT8, [], [128])
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv")
    conv.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'body', 'body.0']")
    conv.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value="['M', 'Sequential', 'Conv2d']")
    relu = helper.make_node("Relu", ["c_dq"], ["y"], name="relu")
    relu.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'body', 'body.1']")
    relu.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value="['M', 'Sequential', 'ReLU']")
    nodes = [conv, helper.make_node("QuantizeLinear", ["c", "s", "z"], ["c_q"], name="c_QuantizeLinear"),
             helper.make_node("DequantizeLinear", ["c_q", "s", "z"], ["c_dq"], name="c_DequantizeLinear"), relu]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [w, scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_quantized_tensor_is_tapped_as_the_next_node_reads_it(tmp_path):
    model = _qdq_graph()
    marked = tap_outputs(onnx.ModelProto.FromString(model.SerializeToString()))
    assert [(n, m, op) for n, m, op in marked] == [("c_dq", "body.0", "Conv"), ("y", "body.1", "Relu")]
    onnx.save(model, tmp_path / "g.onnx")
    x = np.array([[[[0.2, 0.7], [-1.3, 3.0]]]], np.float32)
    with OnnxRuntimeRunner(tmp_path / "g.onnx", threads=1) as r:
        taps = {t.name: t for t in r.taps({"input": x} if "input" in r.input_names else {"x": x})}
    conv = taps["c_dq"]
    assert conv.module == "body.0"
    expected = np.round(np.concatenate([x, -x], 1) / 0.5) * 0.5  # the rounding to the 0.5 grid is in the tap
    np.testing.assert_allclose(conv.array, expected)


def test_profiled_node_names_find_their_module():
    modules = {"node_Conv_7": "features.1.0", "relu_3": "features.1.2"}
    assert profiled_module(modules, "node_Conv_7_token_42") == "features.1.0"  # a fused int8 node
    assert profiled_module(modules, "relu_3_DequantizeLinear") == "features.1.2"  # a Q/DQ node of that tensor
    assert profiled_module(modules, "node_Conv_7_nchwc") == "features.1.0"
    assert profiled_module(modules, "Transpose_token_3") is None
