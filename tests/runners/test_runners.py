"""Every runner follows the same lifecycle and speaks named arrays."""
import numpy as np
import pytest
import torch

from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.runners.torch_eager import TorchRunner
from edgeexport.source import NamedOutputs


class TwoOut(torch.nn.Module):
    def forward(self, x):
        return {"double": x * 2, "sum": x.sum(dim=1, keepdim=True)}


@pytest.fixture
def onnx_path(tmp_path):
    m = NamedOutputs(TwoOut(), ["double", "sum"], "dict")
    p = tmp_path / "two.onnx"
    torch.onnx.export(m, (torch.zeros(1, 3, 4, 4),), str(p), dynamo=False, input_names=["input"],
                      output_names=["double", "sum"], dynamic_axes={"input": {0: "batch"}})
    return p


def test_torch_runner_lifecycle():
    r = TorchRunner(NamedOutputs(TwoOut(), ["double", "sum"], "dict"), ["input"], ["double", "sum"], threads=1)
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(RuntimeError, match="before activate"):
        r.infer({"input": x})
    before = torch.get_num_threads()
    with r:
        assert torch.get_num_threads() == 1
        out = r.infer({"input": x})
    assert torch.get_num_threads() == before
    assert set(out) == {"double", "sum"} and np.allclose(out["double"], 2) and np.allclose(out["sum"], 3)
    assert r.describe()["backend"] == "torch"


def test_onnxruntime_runner_names_and_threads(onnx_path):
    with OnnxRuntimeRunner(onnx_path, threads=1) as r:
        assert r.input_names == ["input"] and r.output_names == ["double", "sum"]
        out = r.infer({"input": np.ones((3, 3, 4, 4), np.float32)})
        with pytest.raises(KeyError, match="missing inputs"):
            r.infer({"x": np.ones((1, 3, 4, 4), np.float32)})
        d = r.describe()
    assert out["double"].shape == (3, 3, 4, 4) and np.allclose(out["sum"], 3)
    assert d["backend"] == "onnxruntime" and d["threads"] == 1 and d["artifact"].endswith("two.onnx")
    assert not r.is_active and r.session is None


def test_runner_from_a_spec(onnx_path):
    from edgeexport.targets import RunnerSpec, make_runner

    spec = RunnerSpec(target="onnx", artifact=str(onnx_path), output_names=["double", "sum"],
                      options={"optimization": "basic"})
    r = make_runner(spec, threads=1)
    assert isinstance(r, OnnxRuntimeRunner) and r.optimization == "basic" and r.threads == 1
    assert RunnerSpec.model_validate_json(spec.model_dump_json()) == spec  # data, so a bundle can record it


def test_registry_imports_no_backend_until_asked():
    """Importing edgeexport, its CLI and every target module loads no optional backend (checked in a
    fresh interpreter: sys.modules shows what really was imported)."""
    from tests.support.fresh import fresh_python

    code = ("import sys, edgeexport.cli, edgeexport.pipeline\n"
            "from edgeexport.targets import list_targets\n"
            "names = [t.name for t in list_targets()]\n"
            "heavy = ('tensorrt', 'coremltools', 'executorch', 'onnxruntime', 'openvino', 'ncnn', 'pnnx', "
            "'ai_edge_litert', 'litert_torch', 'nncf', 'tensorflow', 'ray')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy), len(names))")
    loaded, count = fresh_python(code).strip().rsplit(" ", 1)
    assert loaded == "[]" and int(count) >= 5
