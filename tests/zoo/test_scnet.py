"""SCNet-50/101: published parameter counts, the authors' module names, odd sizes, ONNX export."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgeexport.zoo.scnet  # noqa: F401  (registers scnet50 / scnet101)
from edgeexport.source import NamedOutputs
from edgeexport.weights import damp_residual_branches, recalibrate_batchnorm
from edgeexport.zoo import build_model, get_entry
from edgeexport.zoo.scnet import SCBottleneck, SCConv


@pytest.fixture(scope="module")
def scnet50():
    """SCNet-50 with damped residual branches and BatchNorm statistics from a small random batch."""
    m = build_model("scnet50")
    damp_residual_branches(m)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        recalibrate_batchnorm(m, [torch.randn(2, 3, 128, 128)])
    return m.eval()


@pytest.mark.parametrize("name,published", [("scnet50", 25_564_584), ("scnet101", 44_565_416)])
def test_param_count_matches_publication(name, published):
    params = sum(p.numel() for p in build_model(name).parameters())
    assert params == published
    meta = get_entry(name).meta
    assert round(params / 1e6, 2) == round(meta.published_params / 1e6, 2)  # 25.56M / 44.57M


def test_reference_module_names(scnet50):
    keys = list(scnet50.state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "fc.weight", "fc.bias", "layer2.0.scconv.k4.1.running_var"]:
        assert k in keys, k
    # The authors' modules, in their order (the order a published checkpoint lists them in).
    block = [k[len("layer2.0."):-len(".weight")] for k in keys if k.startswith("layer2.0.") and k.endswith(".weight")]
    assert block == ["conv1_a", "bn1_a", "k1.0", "k1.1", "conv1_b", "bn1_b", "scconv.k2.1", "scconv.k2.2",
                     "scconv.k3.0", "scconv.k3.1", "scconv.k4.0", "scconv.k4.1", "conv3", "bn3",
                     "downsample.0", "downsample.1"]
    m101 = build_model("scnet101").state_dict()
    assert "layer3.22.scconv.k4.0.weight" in m101 and "layer3.23.conv1_a.weight" not in m101
    assert "layer3.1.downsample.0.weight" not in m101


def test_blocks_define_residual_norm():
    for name, n in [("scnet50", 16), ("scnet101", 33)]:
        m = build_model(name)
        blocks = [b for b in m.modules() if isinstance(b, SCBottleneck)]
        assert len(blocks) == n
        assert all(b.residual_norm() is b.bn3 for b in blocks)
        assert damp_residual_branches(m) == n


@pytest.mark.parametrize("stride,hw,out", [(1, (13, 11), (13, 11)), (2, (13, 11), (7, 6)), (1, (5, 4), (5, 4))])
def test_scconv_keeps_size_at_sizes_the_pool_floors(stride, hw, out):
    m = SCConv(8, stride=stride, pooling_r=4).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 8, *hw))
    assert y.shape == (2, 8, *out)
    assert m.k2[0].kernel_size == 4 and m.k2[0].stride == 4


@pytest.mark.parametrize("hw", [(97, 113), (128, 101)])
def test_odd_input_sizes(scnet50, hw):
    # The stride-32 map must be at least 4x4 (the last stage pools it by 4): inputs of 97 px or more.
    with torch.no_grad():
        y = scnet50(torch.randn(1, 3, *hw))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def _export(model, path, shape):
    wrapped = NamedOutputs(model, ["logits"], "tensor").eval()
    torch.onnx.export(wrapped, (torch.zeros(shape),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {2: "h", 3: "w"}})
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_export_matches_eager_at_two_sizes(scnet50, tmp_path):
    sess = _export(scnet50, tmp_path / "scnet50.onnx", (1, 3, 128, 128))
    g = torch.Generator().manual_seed(1)
    for hw in [(128, 128), (97, 113)]:
        x = torch.randn(1, 3, *hw, generator=g)
        with torch.no_grad():
            want = scnet50(x).numpy()
        got, = sess.run(None, {"input": x.numpy()})
        assert got.shape == want.shape == (1, 1000)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), hw
