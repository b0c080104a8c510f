"""The int8 graph preparations are exact: ONNX Runtime computes the same before and after."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeexport.quantize import prep

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _model(nodes, inits, out_shape, in_shape=(1, 8, 6, 6)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(v if isinstance(v, np.ndarray) and v.dtype == np.int64
                                                   else np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(m)
    return m


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _hardswish_net():
    """conv -> HardSwish (as exporters inline it: x * HardSigmoid(x)) -> squeeze-excite gate."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c1"], ["hs"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c1", "hs"], ["act"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["act"], ["pooled"], name="gap"),
             helper.make_node("Conv", ["pooled", "w2", "b2"], ["c2"], name="se_fc"),
             helper.make_node("HardSigmoid", ["c2"], ["gate"], name="se_gate", alpha=0.2, beta=0.4),
             helper.make_node("Mul", ["act", "gate"], ["y"], name="excite")]
    inits = {"w1": RNG.normal(0, 0.5, (8, 8, 3, 3)), "b1": RNG.normal(0, 1, 8),
             "w2": RNG.normal(0, 0.5, (8, 8, 1, 1)), "b2": RNG.normal(0, 1, 8)}
    return _model(nodes, inits, (1, 8, 6, 6))


def test_decompose_hardsigmoid_is_exact_and_folds_the_gate_into_its_conv():
    m = _hardswish_net()
    x = RNG.normal(0, 2, (1, 8, 6, 6)).astype(np.float32)
    before = _run(m, x)
    assert prep.decompose_hardsigmoid(m) == 2
    onnx.checker.check_model(m)
    ops = _ops(m)
    assert "HardSigmoid" not in ops
    # HardSwish: Mul, Add, Clip (three ops with int8 kernels / removable); the SE gate: a bare Clip
    assert ops.count("Clip") == 2 and ops.count("Add") == 1 and ops.count("Mul") == 3
    after = _run(m, x)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert np.abs(before).max() > 0.1 and (before > 0).any() and (before == 0).any()  # both Clip sides exercised


def _qdq_scalar_mul(c: float):
    s1, z1, s2, z2 = 0.05, 128, 0.01, 128
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["xq"], name="q1"),
             helper.make_node("DequantizeLinear", ["xq", "s1", "z1"], ["xd"], name="dq1"),
             helper.make_node("Mul", ["xd", "c"], ["m"], name="scale"),
             helper.make_node("QuantizeLinear", ["m", "s2", "z2"], ["mq"], name="q2"),
             helper.make_node("DequantizeLinear", ["mq", "s2", "z2"], ["md"], name="dq2"),
             helper.make_node("Relu", ["md"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
                          [numpy_helper.from_array(np.float32(s1), "s1"), numpy_helper.from_array(np.uint8(z1), "z1"),
                           numpy_helper.from_array(np.float32(s2), "s2"), numpy_helper.from_array(np.uint8(z2), "z2"),
                           numpy_helper.from_array(np.float32(c), "c")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), s1, z1, s2


def test_absorb_scalar_muls_moves_the_factor_into_the_dequantize_scale():
    m, s1, z1, s2 = _qdq_scalar_mul(1 / 6)
    x = RNG.normal(0, 2, (1, 4, 5, 5)).astype(np.float32)
    before = _run(m, x)
    assert prep.absorb_scalar_muls(m) == 1
    onnx.checker.check_model(m)
    assert _ops(m) == ["QuantizeLinear", "DequantizeLinear", "Relu"]
    after = _run(m, x)
    xq = np.clip(np.round(x / s1) + z1, 0, 255)
    np.testing.assert_allclose(after, np.maximum((xq - z1) * s1 / 6, 0), rtol=1e-6, atol=1e-7)
    assert np.abs(after - before).max() <= s2 / 2 + 1e-6  # the dropped re-quantization: at most half a step
    assert after.max() > 0


@pytest.mark.parametrize("c", [-0.5, 0.0])
def test_absorb_scalar_muls_leaves_non_positive_factors(c):
    m, *_ = _qdq_scalar_mul(c)
    assert prep.absorb_scalar_muls(m) == 0 and "Mul" in _ops(m)


def test_reduce_mean_to_gap_and_densify_are_exact():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="grouped", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c", "axes"], ["y"], name="mean", keepdims=1)]
    m = _model(nodes, {"w": RNG.normal(0, 1, (8, 2, 3, 3)), "axes": np.array([2, 3], np.int64)}, (1, 8, 1, 1))
    x = RNG.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)
    before = _run(m, x)
    assert prep.densify_grouped_convs(m) == 1 and prep.reduce_mean_to_gap(m) == 1
    assert _ops(m) == ["Conv", "GlobalAveragePool"]
    np.testing.assert_allclose(_run(m, x), before, rtol=1e-5, atol=1e-5)


def test_fold_bn_after_concat_is_exact():
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
             helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("BatchNormalization", ["cat", "g", "beta", "mu", "var"], ["y"], name="bn")]
    inits = {"wa": RNG.normal(0, 1, (4, 8, 3, 3)), "ba": RNG.normal(0, 1, 4), "wb": RNG.normal(0, 1, (6, 8, 1, 1)),
             "g": RNG.normal(1, 0.3, 10), "beta": RNG.normal(0, 1, 10), "mu": RNG.normal(0, 1, 10),
             "var": RNG.uniform(0.5, 2, 10)}
    m = _model(nodes, inits, (1, 10, 6, 6))
    x = RNG.normal(0, 1, (1, 8, 6, 6)).astype(np.float32)
    before = _run(m, x)
    assert prep.fold_bn_after_concat(m) == 1
    assert _ops(m) == ["Conv", "Conv", "Concat"]
    np.testing.assert_allclose(_run(m, x), before, rtol=1e-4, atol=1e-4)
