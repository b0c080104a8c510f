import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeexport.targets.onnx import ExportFailed, export_onnx, simplify_onnx
from edgeexport.source import NamedOutputs
from tests.support.models import tiny_classifier


@pytest.fixture
def exported(tmp_path):
    m = NamedOutputs(tiny_classifier(), ["logits", "features"], "sequence")
    p = tmp_path / "m.onnx"
    info = export_onnx(m, torch.randn(1, 3, 32, 32), p, input_name="input", output_names=["logits", "features"],
                       opset=17, dynamic="batch", exporter="torchscript")
    return p, info


def feed():
    return {"input": np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)}


def test_export_facts_and_names(exported):
    p, info = exported
    assert info["exporter"] == "torchscript" and info["nodes"] > 0
    m = onnx.load(str(p))
    assert [o.name for o in m.graph.output] == ["logits", "features"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(p.parent.glob(".*tmp*"))


def test_simplify_applies_when_outputs_match(exported):
    p, _ = exported
    info = simplify_onnx(p, feed())
    assert info["applied"] and info["nodes_after"] <= info["nodes_before"]


def test_simplify_keeps_original_when_outputs_differ(exported, monkeypatch):
    import onnxsim

    p, _ = exported
    original = p.read_bytes()

    def corrupting(model, **kw):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        init = m.graph.initializer[0]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
        return m, True

    monkeypatch.setattr(onnxsim, "simplify", corrupting)
    info = simplify_onnx(p, feed())
    assert not info["applied"] and "differ" in info["reason"]
    assert p.read_bytes() == original
    assert sorted(x.name for x in p.parent.iterdir()) == ["m.onnx"]


def test_simplify_keeps_original_when_onnxsim_fails(exported, monkeypatch):
    import onnxsim

    p, _ = exported

    def boom(model, **kw):
        raise RuntimeError("no luck")

    monkeypatch.setattr(onnxsim, "simplify", boom)
    info = simplify_onnx(p, feed())
    assert not info["applied"] and "onnxsim failed: RuntimeError: no luck" in info["reason"]


def test_export_failure_is_reported_and_leaves_nothing(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return (torch.linalg.eigvals(x[0, 0]).real,)  # no ONNX symbolic

    with pytest.raises(ExportFailed, match="torchscript exporter failed"):
        export_onnx(Bad(), torch.randn(1, 1, 4, 4), tmp_path / "bad.onnx", input_name="input",
                    output_names=["y"], opset=17, dynamic="none", exporter="torchscript")
    assert list(tmp_path.iterdir()) == []
