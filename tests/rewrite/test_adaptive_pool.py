import numpy as np
import pytest
import torch

from edgeexport.rewrite import apply_rewrites
from edgeexport.rewrite.adaptive_pool import AdaptiveAvgPool2dMatmul
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner


@pytest.mark.parametrize("size,hw", [(9, (60, 60)), (9, (61, 37)), (9, (9, 9)), (9, (5, 7)), ((4, 3), (30, 31)),
                                     (6, (13, 13)), ((2, None), (11, 8))])
def test_matmul_pooling_equals_adaptive_pooling(size, hw):
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    ref = torch.nn.AdaptiveAvgPool2d(size)(x)
    assert torch.allclose(AdaptiveAvgPool2dMatmul(size)(x), ref, atol=1e-12)


def test_rewrite_keeps_global_pooling_and_state_dict():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(3))
    r, counts = apply_rewrites(m, ["adaptive_pool"])
    assert counts == {"adaptive_pool": 1}
    assert isinstance(r[1], torch.nn.AdaptiveAvgPool2d) and isinstance(r[2], AdaptiveAvgPool2dMatmul)
    assert isinstance(m[2], torch.nn.AdaptiveAvgPool2d)  # the original is untouched
    assert r.state_dict().keys() == m.state_dict().keys()


def test_torchscript_exporter_takes_the_rewrite_with_dynamic_sizes(tmp_path):
    """TorchScript's exporter refuses 9x9 pooling of a 60x60 map; the rewrite exports, for any size."""
    m = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(9)).eval()
    x = torch.randn(1, 8, 60, 60)
    with pytest.raises(Exception, match="not factor of input size"):
        torch.onnx.export(m, (x,), str(tmp_path / "a.onnx"), dynamo=False)
    r, _ = apply_rewrites(m, ["adaptive_pool"])
    p = tmp_path / "b.onnx"
    torch.onnx.export(r, (x,), str(p), dynamo=False, input_names=["input"], output_names=["y"],
                      dynamic_axes={"input": {2: "h", 3: "w"}})
    with OnnxRuntimeRunner(p) as run:
        for hw in [(60, 60), (61, 43), (9, 9)]:
            xi = torch.randn(1, 8, *hw)
            got = run.infer({"input": xi.numpy()})["y"]
            assert np.abs(got - m(xi).numpy()).max() < 1e-5


def test_static_export_folds_to_constant_pooling_matrices(tmp_path):
    """With static shapes the matrices are constants: after onnxsim only MatMul remains (every target takes it)."""
    import onnx
    import onnxsim

    m, _ = apply_rewrites(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(9)).eval(), ["adaptive_pool"])
    p = tmp_path / "s.onnx"
    torch.onnx.export(m, (torch.randn(1, 8, 60, 60),), str(p), dynamo=False, input_names=["input"],
                      output_names=["y"])
    simplified, ok = onnxsim.simplify(onnx.load(str(p)))
    ops = [n.op_type for n in simplified.graph.node]
    assert ok and ops.count("MatMul") == 2 and set(ops) <= {"MatMul", "Constant"}  # P_h @ x @ P_w^T, constants
