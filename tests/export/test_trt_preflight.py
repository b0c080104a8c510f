"""TensorRT pre-flight (runs anywhere) and the refusal when TensorRT is missing."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeexport.targets.tensorrt import tensorrt_available
from edgeexport.targets.tensorrt.preflight import preflight, summarize
from edgeexport.rewrite import apply_rewrites
from edgeexport.source import NamedOutputs
from edgeexport.zoo import create_model
from tests.conftest import assert_one_line_error

TRT_OK, TRT_REASON = tensorrt_available()


def _graph(nodes, inits=(), inputs=None, outputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)))


@pytest.mark.parametrize("name,shape", [("lraspp_mobilenetv3_small", (1, 3, 64, 96)), ("pyconvresnet18", (1, 3, 64, 64)),
                                        ("pyconvsegnet50", (1, 3, 97, 97))])
def test_zoo_graphs_would_parse(name, shape, tmp_path):
    model, _ = apply_rewrites(create_model(name, weights="init"), ["adaptive_pool"])
    out = "out" if "seg" in name or "lraspp" in name else "logits"
    wrapped = NamedOutputs(model, [out], "dict" if out == "out" else "tensor")
    p = tmp_path / "m.onnx"
    torch.onnx.export(wrapped, (torch.zeros(shape),), str(p), dynamo=False, input_names=["input"],
                      output_names=[out], opset_version=17, dynamic_axes={"input": {2: "h", 3: "w"}})
    res = summarize(preflight(onnx.load(str(p))))
    assert res["parses"], res["errors"]


def test_unsupported_ops_and_restrictions_are_named():
    w = numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w")
    zp = numpy_helper.from_array(np.array(3, np.uint8), "zp")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    nodes = [
        helper.make_node("MaxUnpool", ["x", "idx"], ["u"], name="unpool", kernel_shape=[2, 2]),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize_cubic", mode="cubic",
                         coordinate_transformation_mode="tf_crop_and_resize"),
        helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="quant_u8"),
        helper.make_node("Conv", ["x", "dyn_w"], ["c"], name="conv_dynamic_weights"),
        helper.make_node("QLinearAdd", ["a", "b"], ["y"], name="ms_op", domain="com.microsoft"),
    ]
    findings = preflight(_graph(nodes, [w, zp, sc]))
    by_node = {(f.node, f.severity) for f in findings}
    assert ("unpool", "error") in by_node and ("quant_u8", "error") in by_node
    assert ("conv_dynamic_weights", "error") in by_node and ("ms_op", "error") in by_node
    msgs = " ".join(f.message for f in findings if f.node == "resize_cubic")
    assert "tf_crop_and_resize" in msgs
    assert not summarize(findings)["parses"]


def test_int64_beyond_int32_is_a_warning():
    big = numpy_helper.from_array(np.array([2 ** 40], np.int64), "ends")
    f = preflight(_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], [big]))
    assert [x.severity for x in f] == ["warning"] and "INT32" in f[0].message


@pytest.mark.skipif(TRT_OK, reason="TensorRT is installed here; the refusal path does not apply")
def test_trt_command_refuses_cleanly_after_the_preflight(cli, tmp_path):
    code, out, err = cli("trt", "mobilenetv3_small", "--shape", "1x3x64x64", "-o", tmp_path)
    assert_one_line_error(code, err, "TensorRT is not available")
    assert "pip install" in err
    assert "TensorRT pre-flight" in out and "would parse" in out
    assert not list(tmp_path.glob("*.engine"))


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT cannot run here: {TRT_REASON}")
def test_trt_engine_builds_and_matches(cli, tmp_path):  # pragma: no cover - needs an NVIDIA GPU with TensorRT
    code, out, err = cli("trt", "mobilenetv3_small", "--shape", "1x3x64x64", "--precision", "fp16", "-o", tmp_path, "--runs", "5")
    assert code == 0, err
    assert (tmp_path / "mobilenetv3_small.fp16.engine").exists() and (tmp_path / "mobilenetv3_small.fp16.engine.json").exists()
