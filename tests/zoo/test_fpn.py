"""PANet and NAS-FPN necks on MobileNetV3-Large: P3..P7 names, strides at any size, exact ONNX graphs."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgeexport.zoo.fpn  # noqa: F401  (registers panet_* and nasfpn_*)
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.zoo import build_model, get_entry
from edgeexport.zoo.fpn import LEVELS, MergingCell, PyramidNet, downsample, upsample_to
from tests.support.onnx_check import assert_onnx_matches

NAMES = ["panet_mobilenetv3", "nasfpn_mobilenetv3"]
STRIDES = dict(zip(LEVELS, PyramidNet.strides))
SMALL = dict(channels=32)  # narrow necks keep the tests fast; the structure is the same


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    meta = get_entry(name).meta
    assert meta.task == "features" and meta.output_names == ("p3", "p4", "p5", "p6", "p7")
    assert meta.num_classes is None and meta.input_size == (3, 512, 512)
    assert meta.dynamic_hw and meta.size_multiple == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(128, 128), (200, 264), (97, 131), (33, 47)])
def test_levels_names_shapes_strides(name, hw):
    m = build_model(name, **SMALL)
    with torch.no_grad():
        out = m(torch.randn(1, 3, *hw))
    assert list(out) == list(LEVELS)
    for level, t in out.items():
        s = STRIDES[level]
        assert t.shape == (1, 32, math.ceil(hw[0] / s), math.ceil(hw[1] / s)), (level, t.shape)


def test_default_widths_and_stack():
    pan = build_model("panet_mobilenetv3")
    nas = build_model("nasfpn_mobilenetv3")
    assert all(c.out_channels == 256 for c in pan.neck.lateral)
    assert len(nas.neck.stages) == 2 and list(nas.neck.stages[0]) == [
        "gp_64_4", "sum_44_4", "sum_43_3", "sum_34_4", "gp_43_5", "sum_55_5", "gp_54_7", "sum_77_7", "gp_75_6"]
    assert nas.neck.stages[0]["gp_43_5"].conv_out is None and nas.neck.stages[0]["gp_75_6"].conv_out is not None
    assert len(build_model("nasfpn_mobilenetv3", stack=3, channels=16).neck.stages) == 3
    with torch.no_grad():
        out = pan(torch.randn(1, 3, 200, 264))
    assert [tuple(t.shape[1:]) for t in out.values()] == [(256, 25, 33), (256, 13, 17), (256, 7, 9), (256, 4, 5),
                                                          (256, 2, 3)]


def test_backbone_taps_end_of_each_stride():
    m = build_model("panet_mobilenetv3", **SMALL)
    with torch.no_grad():
        c = m.backbone(torch.zeros(1, 3, 200, 264))
    assert [tuple(t.shape[1:]) for t in c.values()] == [(40, 25, 33), (112, 13, 17), (960, 7, 9)]


def test_merging_cells():
    cell = MergingCell(4, (6, 4, 4), "gp", out_conv=False)
    p6, p4 = torch.randn(1, 4, 4, 5), torch.randn(1, 4, 13, 17)
    up = p6.repeat_interleave(4, 2).repeat_interleave(4, 3)[..., :13, :17]  # source row floor(dst / 4)
    assert torch.equal(cell(p6, p4, p4), p4 + torch.sigmoid(p4.mean((2, 3), keepdim=True)) * up)
    cell = MergingCell(4, (3, 5, 5), "sum", out_conv=False)
    p3, p5 = torch.randn(1, 4, 25, 33), torch.randn(1, 4, 7, 9)
    assert torch.equal(cell(p3, p5, p5), F.max_pool2d(p3, 4, 4, ceil_mode=True) + p5)
    with pytest.raises(ValueError):
        MergingCell(4, (3, 3, 3), "max")


class _Resize(nn.Module):
    def forward(self, x, like):
        return upsample_to(x, like.shape[-2:], 2), downsample(like, 2)


def test_resizing_is_exact_in_onnx_where_one_nearest_resize_is_not(tmp_path):
    """P6 -> P4 by a single nearest resize to 198 rows from 50 disagrees between PyTorch and ONNX Runtime;
    two factor-2 steps through ceil(198 / 2) do not, and max pooling with ceil_mode lands on ceil(n / 4)."""
    path = tmp_path / "r.onnx"
    torch.onnx.export(_Resize(), (torch.randn(1, 1, 4, 5), torch.randn(1, 1, 13, 17)), str(path), dynamo=False,
                      opset_version=17, input_names=["x", "like"], output_names=["up", "down"],
                      dynamic_axes={"x": {2: "a", 3: "b"}, "like": {2: "c", 3: "d"}})
    with OnnxRuntimeRunner(path) as run:
        for n_in, n_out in [(50, 198), (58, 230), (4, 13), (7, 25), (2, 6), (1, 1), (3, 9)]:
            x = torch.arange(float(n_in)).view(1, 1, n_in, 1).expand(1, 1, n_in, 3).contiguous()
            like = torch.randn(1, 1, n_out, 11)
            got = run.infer({"x": x.numpy(), "like": like.numpy()})
            up, down = _Resize()(x, like)
            assert np.array_equal(got["up"], up.numpy()) and np.array_equal(got["down"], down.numpy())
            assert up[0, 0, :, 0].tolist() == [float(i // 4) for i in range(n_out)]
            assert down.shape[-2:] == (math.ceil(n_out / 4), math.ceil(11 / 4))


@pytest.mark.parametrize("name", NAMES)
def test_onnx_dynamic_hw_every_level_matches_eager(name, tmp_path):
    m = build_model(name)  # registered widths: 256 channels, NAS-FPN stacked twice
    errors = assert_onnx_matches(m, LEVELS, "dict", tmp_path, (128, 128), [(200, 264), (97, 131), (33, 47)])
    assert all(list(e) == list(LEVELS) for e in errors.values())
