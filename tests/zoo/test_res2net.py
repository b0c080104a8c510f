"""Res2Net-50 26w4s against timm's implementation (fixture made by timm itself), odd sizes, ONNX export."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgeexport.zoo.res2net  # noqa: F401  (registers res2net50_26w_4s)
from edgeexport.source import NamedOutputs
from edgeexport.weights import damp_residual_branches
from edgeexport.zoo import build_model, create_model, get_entry
from tests.support.reference import Reference

NAME = "res2net50_26w_4s"


@pytest.fixture(scope="module")
def ref():
    return Reference("timm_res2net50_26w_4s")


@pytest.fixture(scope="module")
def model(ref, tmp_path_factory):
    ckpt = ref.save_checkpoint(tmp_path_factory.mktemp("res2net") / "timm.pth")
    return create_model(NAME, weights=str(ckpt))


def test_param_count_matches_timm():
    params = sum(p.numel() for p in build_model(NAME).parameters())
    assert params == 25_699_120 == get_entry(NAME).meta.published_params  # 25.70M


def test_state_dict_layout_equals_timm(ref):
    own = {k: list(v.shape) for k, v in build_model(NAME).state_dict().items()}
    assert list(own) == list(ref.manifest)  # same keys in the same order
    assert own == ref.manifest
    for k in ("layer1.0.convs.0.weight", "layer1.0.bns.2.running_var", "layer1.0.downsample.0.weight",
              "layer4.0.downsample.1.bias", "fc.weight"):
        assert k in own


def test_outputs_equal_timm_with_its_checkpoint(ref, model):
    with torch.no_grad():
        y = model(torch.from_numpy(ref.inputs)).numpy()
    scale = np.abs(ref.outputs).max()
    assert np.abs(y - ref.outputs).max() <= 1e-4 * scale
    assert (y.argmax(1) == ref.outputs.argmax(1)).all()


def test_timm_reference_is_not_degenerate(ref):
    assert ref.outputs.std() > 0.1
    assert np.abs(ref.outputs[0] - ref.outputs[1]).max() > 0.1  # the two photos give different logits


def test_base_width_and_stage_entry_pooling():
    m = build_model(NAME)
    widths = [m.layer1[0].convs[0].out_channels, m.layer2[0].convs[0].out_channels,
              m.layer3[0].convs[0].out_channels, m.layer4[0].convs[0].out_channels]
    assert widths == [26, 52, 104, 208] and len(m.layer1[0].convs) == 3
    for layer, stride in ((m.layer1, 1), (m.layer2, 2), (m.layer3, 2), (m.layer4, 2)):
        entry = layer[0]
        assert entry.stage_entry and isinstance(entry.pool, torch.nn.AvgPool2d)
        assert entry.pool.kernel_size == 3 and entry.pool.stride == stride and entry.pool.padding == 1
        assert entry.convs[0].stride == (stride, stride)
        assert all(not b.stage_entry and isinstance(b.pool, torch.nn.Identity) for b in layer[1:])


def test_blocks_define_residual_norm():
    m = build_model(NAME)
    blocks = [b for b in m.modules() if hasattr(b, "convs")]
    assert len(blocks) == 16
    assert all(b.residual_norm() is b.bn3 for b in blocks)
    assert damp_residual_branches(m) == 16


@pytest.mark.parametrize("hw", [(97, 75), (33, 47)])
def test_odd_input_sizes(model, hw):
    with torch.no_grad():
        y = model(torch.randn(1, 3, *hw))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_onnx_export_matches_eager_and_timm_at_two_sizes(ref, model, tmp_path):
    wrapped = NamedOutputs(model, ["logits"], "tensor").eval()
    path = tmp_path / "res2net.onnx"
    torch.onnx.export(wrapped, (torch.zeros(1, 3, 96, 96),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {2: "h", 3: "w"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # At the export size, on timm's photos: equal to timm's logits.
    got = np.concatenate([sess.run(None, {"input": ref.inputs[i:i + 1]})[0] for i in range(2)])
    assert np.abs(got - ref.outputs).max() <= 1e-4 * np.abs(ref.outputs).max()
    # At an odd size: equal to eager.
    x = torch.nn.functional.interpolate(torch.from_numpy(ref.inputs[:1]), size=(97, 75), mode="bilinear")
    with torch.no_grad():
        want = model(x).numpy()
    got, = sess.run(None, {"input": x.numpy()})
    assert got.shape == want.shape == (1, 1000)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
