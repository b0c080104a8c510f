import pytest
import torch

from edgeexport.rewrite import apply_rewrites
from edgeexport.zoo import build_model
from edgeexport.zoo.pyconv import PyConv, PyConvSegNet


def test_pyconv_levels_split_channels_and_keep_size():
    m = PyConv(64, 64, (3, 5, 7, 9), (1, 4, 8, 16), (0.25,) * 4)
    y = m(torch.randn(2, 64, 15, 17))
    assert y.shape == (2, 64, 15, 17)
    assert [getattr(m, f"conv2_{i}").kernel_size[0] for i in range(1, 5)] == [3, 5, 7, 9]
    assert [getattr(m, f"conv2_{i}").groups for i in range(1, 5)] == [1, 4, 8, 16]


def test_reference_module_names():
    keys = build_model("pyconvresnet50").state_dict().keys()
    assert "layer1.0.conv2.conv2_4.weight" in keys and "layer1.0.downsample.1.weight" in keys
    seg = build_model("pyconvsegnet50").state_dict().keys()
    for k in ("layer0.0.weight", "pyconvhead.local_context.layers.3.conv2_1.weight",
              "pyconvhead.global_context.features.1.weight", "pyconvhead.merge_context.features.0.weight",
              "aux.0.weight", "cls.1.weight"):
        assert k in seg


@pytest.mark.parametrize("stride", [8, 16])
def test_segnet_output_stride(stride):
    m = PyConvSegNet(50, num_classes=4, output_stride=stride).eval()
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.setdefault("c5", o))
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 129, 129))
    assert out["out"].shape == (1, 4, 129, 129)
    assert feats["c5"].shape[-1] == -(-129 // stride)  # ceil division: padded strided convs


def test_segnet_aux_head_in_training_only():
    m = PyConvSegNet(50, num_classes=3).train()
    out = m(torch.randn(2, 3, 65, 65))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 3, 65, 65)
    m.eval()
    with torch.no_grad():
        assert set(m(torch.randn(1, 3, 65, 65))) == {"out"}


def test_segnet_global_pooling_rewrite_is_exact():
    m = PyConvSegNet(50, num_classes=5).eval()
    r, counts = apply_rewrites(m, ["adaptive_pool"])
    assert counts == {"adaptive_pool": 1}
    x = torch.randn(1, 3, 97, 121)
    with torch.no_grad():
        a, b = m(x)["out"], r(x)["out"]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
