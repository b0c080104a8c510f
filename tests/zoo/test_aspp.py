"""DeepLabV3 (ASPP) on MobileNetV3-Large and PyConvResNet-50: layout, output stride, sizes, ONNX parity."""
import pytest
import torch
from torch import nn

import edgeexport.zoo.aspp  # noqa: F401  (registers aspp_*)
from edgeexport.zoo import build_model, get_entry
from edgeexport.zoo.aspp import ASPP, ASPPPooling
from tests.support.onnx_check import assert_onnx_matches

NAMES = ["aspp_mobilenetv3_large", "aspp_pyconvresnet50"]


@pytest.mark.parametrize("name,hw", [("aspp_mobilenetv3_large", (520, 520)), ("aspp_pyconvresnet50", (473, 473))])
def test_metadata(name, hw):
    meta = get_entry(name).meta
    assert meta.task == "segmentation" and meta.output_names == ("out",) and meta.num_classes == 21
    assert meta.input_size == (3, *hw) and meta.dynamic_hw and meta.size_multiple == 1


def test_mobilenetv3_layout_and_count_equal_torchvision_deeplabv3():
    m = build_model("aspp_mobilenetv3_large", aux_loss=True)
    # torchvision deeplabv3_mobilenet_v3_large (aux_loss=True, 21 classes) has 11,029,328 parameters
    assert sum(p.numel() for p in m.parameters()) == 11_029_328
    keys = m.state_dict().keys()
    for k in ("backbone.0.0.weight", "backbone.16.1.running_var", "classifier.0.convs.0.0.weight",
              "classifier.0.convs.3.1.bias", "classifier.0.convs.4.1.weight", "classifier.0.project.0.weight",
              "classifier.1.weight", "classifier.2.running_mean", "classifier.4.bias", "aux_classifier.0.weight",
              "aux_classifier.4.weight"):
        assert k in keys, k
    assert not any(k.startswith("backbone.17") for k in keys)
    plain = build_model("aspp_mobilenetv3_large")
    assert not any(k.startswith("aux_classifier") for k in plain.state_dict())
    assert plain.classifier[4].out_channels == 21


def test_aspp_branches():
    aspp = ASPP(32, (12, 24, 36), channels=16)
    assert len(aspp.convs) == 5 and isinstance(aspp.convs[4], ASPPPooling)
    assert aspp.convs[0][0].kernel_size == (1, 1)
    assert [b[0].dilation[0] for b in aspp.convs[1:4]] == [12, 24, 36]
    assert [b[0].padding[0] for b in aspp.convs[1:4]] == [12, 24, 36]
    assert aspp.project[0].in_channels == 5 * 16
    y = aspp.eval()(torch.randn(2, 32, 7, 5))
    assert y.shape == (2, 16, 7, 5)


@pytest.mark.parametrize("output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18))])
def test_pyconv_output_stride_and_rates(output_stride, rates):
    m = build_model("aspp_pyconvresnet50", num_classes=3, output_stride=output_stride, channels=16)
    assert m.classifier[0].rates == rates
    with torch.no_grad():
        feats = m.backbone(torch.zeros(1, 3, 65, 71))
    assert feats["out"].shape[1:] == (2048, -(-65 // output_stride), -(-71 // output_stride))


def test_mobilenetv3_output_stride_16():
    m = build_model("aspp_mobilenetv3_large", channels=16)
    with torch.no_grad():
        feats = m.backbone(torch.zeros(1, 3, 65, 71))
    assert feats["out"].shape[1:] == (960, 5, 5)


@pytest.mark.parametrize("name", NAMES)
def test_logits_at_input_size_aux_in_training_only(name):
    m = build_model(name, num_classes=4, aux_loss=True, channels=16)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 57, 83))
    assert list(out) == ["out"] and out["out"].shape == (1, 4, 57, 83)
    m.train()
    out = m(torch.randn(2, 3, 49, 41))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 4, 49, 41)


def test_mobilenetv3_onnx_dynamic_hw_matches_eager(tmp_path):
    m = build_model("aspp_mobilenetv3_large")  # registered widths: 256-channel ASPP, 21 classes
    assert_onnx_matches(m, ("out",), "dict", tmp_path, (96, 96), [(65, 81), (120, 57), (33, 33)])
    assert isinstance(m.classifier[0].convs[4][0], nn.AdaptiveAvgPool2d)  # global: no rewrite needed


@pytest.mark.slow
def test_pyconvresnet50_onnx_dynamic_hw_matches_eager(tmp_path):
    m = build_model("aspp_pyconvresnet50", num_classes=5, channels=32)  # full trunk, narrow ASPP
    assert_onnx_matches(m, ("out",), "dict", tmp_path, (64, 64), [(57, 71), (81, 40)])
