"""Atrous spatial pyramid pooling: DeepLabV3 segmentation on MobileNetV3-Large and PyConvResNet-50.

Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation" (DeepLabV3), 2017
(seed 001). ASPP looks at the backbone's last feature map through five parallel branches that
keep its size: a 1x1 convolution, three 3x3 convolutions with atrous rates r1 < r2 < r3, and
image pooling (global average, 1x1 convolution, broadcast back by bilinear up-sampling). The
concatenation is projected to 256 channels; a 3x3 convolution and a 1x1 classifier follow and
the logits are bilinearly up-sampled to the input size (``{"out": logits}``).

Backbones:

* ``aspp_mobilenetv3_large``: MobileNetV3-Large with its last stage dilated (output stride 16,
  960 channels), rates 12/24/36, as torchvision's ``deeplabv3_mobilenet_v3_large``. Module
  names follow torchvision (``backbone.N``, ``classifier.0.convs.*``, ``classifier.0.project.*``,
  ``classifier.1`` ... ``classifier.4``; ``aux_classifier`` on the stride-8 features with
  ``aux_loss=True``), so its state dict loads (with ``aux_loss=True`` when it holds the auxiliary
  head).
* ``aspp_pyconvresnet50``: PyConvResNet-50 dilated as PyConvSegNet's backbone (output stride 8:
  stage 3 dilation 2, stage 4 dilation 4; 2048 channels). The paper's rates 6/12/18 are for
  output stride 16 and are doubled at output stride 8, so the default is 12/24/36 (and 6/12/18
  with ``output_stride=16``).

Image pooling is global (``AdaptiveAvgPool2d(1)``, exported as ``GlobalAveragePool``) and every
resize takes its size from the runtime shape, so the graphs accept any input size.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import ConvBNAct, FeatureTaps, init_resnet_style
from edgeexport.zoo.mobilenetv3 import MobileNetV3, _large_config
from edgeexport.zoo.pyconv import _DEPTHS, PyConvBlock, PyConvResNet, _dilate
from edgeexport.zoo.registry import register_model

PAPER = "Chen et al., Rethinking Atrous Convolution for Semantic Image Segmentation (DeepLabV3), 2017"

# ---------------------------------------------------------------- blocks


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average -> 1x1 conv -> BN -> ReLU, broadcast back to the map's size."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Five parallel branches (1x1, three atrous 3x3, image pooling), concatenated and projected."""

    def __init__(self, cin: int, rates=(12, 24, 36), channels: int = 256, dropout: float = 0.5):
        super().__init__()
        branches: list[nn.Module] = [ConvBNAct(cin, channels, 1)]
        branches += [ConvBNAct(cin, channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(cin, channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*ConvBNAct(len(branches) * channels, channels, 1), nn.Dropout(dropout))
        self.rates = tuple(rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv-BN-ReLU -> 1x1 classifier (keys 0 .. 4 as torchvision)."""

    def __init__(self, cin: int, num_classes: int, rates=(12, 24, 36), channels: int = 256):
        super().__init__(ASPP(cin, rates, channels), *ConvBNAct(channels, channels, 3),
                         nn.Conv2d(channels, num_classes, 1))


class FCNHead(nn.Sequential):
    """Auxiliary head (training only): 3x3 conv-BN-ReLU to cin/4 channels, dropout, 1x1 classifier."""

    def __init__(self, cin: int, num_classes: int):
        mid = cin // 4
        super().__init__(*ConvBNAct(cin, mid, 3), nn.Dropout(0.1), nn.Conv2d(mid, num_classes, 1))


# ---------------------------------------------------------------- model


class DeepLabV3(nn.Module):
    """Backbone (dict with ``out`` and, with an auxiliary head, ``aux``) -> DeepLab head -> logits at input size.

    The auxiliary logits are returned in training mode only, so exported graphs have the one
    output ``out``.
    """

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int, rates=(12, 24, 36),
                 head_channels: int = 256, aux_channels: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = DeepLabHead(channels, num_classes, rates, head_channels)
        self.aux_classifier = FCNHead(aux_channels, num_classes) if aux_channels else None
        init_resnet_style(self.classifier)
        if self.aux_classifier is not None:
            init_resnet_style(self.aux_classifier)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = self.classifier(features["out"])
        result = OrderedDict(out=F.interpolate(out, size=size, mode="bilinear", align_corners=False))
        if self.training and self.aux_classifier is not None:
            aux = self.aux_classifier(features["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


def mobilenetv3_large_deeplab(num_classes: int = 21, aux_loss: bool = False, channels: int = 256) -> DeepLabV3:
    config, last_channel = _large_config(dilated=True)
    features = MobileNetV3(config, last_channel).features
    # Stage boundaries: the stem, every strided block, and the last conv (torchvision's rule).
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "is_strided", False)] + [len(features) - 1]
    aux_pos, out_pos = stages[-4], stages[-1]  # C2 at output stride 8 (40 ch), C5 at 16 (960 ch)
    taps = {str(out_pos): "out"}
    if aux_loss:
        taps[str(aux_pos)] = "aux"
    backbone = FeatureTaps(features, taps)
    return DeepLabV3(backbone, features[out_pos].out_channels, num_classes, (12, 24, 36), channels,
                     features[aux_pos].out_channels if aux_loss else None)


def pyconvresnet_deeplab(depth: int = 50, num_classes: int = 21, output_stride: int = 8, aux_loss: bool = False,
                         channels: int = 256) -> DeepLabV3:
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, not {output_stride}")
    net = PyConvResNet(PyConvBlock, _DEPTHS[depth])
    body = nn.Sequential(OrderedDict(layer0=nn.Sequential(net.conv1, net.bn1, net.relu), layer1=net.layer1,
                                     layer2=net.layer2, layer3=net.layer3, layer4=net.layer4))
    if output_stride == 8:
        _dilate(body.layer3, 2)
        _dilate(body.layer4, 4)
    else:
        _dilate(body.layer4, 2)
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    taps = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    return DeepLabV3(FeatureTaps(body, taps), 2048, num_classes, rates, channels, 1024 if aux_loss else None)


# ---------------------------------------------------------------- builders

_SEG = dict(task="segmentation", output_names=("out",), num_classes=21, family="aspp", paper=PAPER,
            size_multiple=1, dynamic_hw=True)


@register_model(input_size=(3, 520, 520), **_SEG,
                notes="DeepLabV3 (ASPP rates 12/24/36) on the dilated MobileNetV3-Large, output stride 16; "
                      "state dict compatible with torchvision deeplabv3_mobilenet_v3_large "
                      "(build with aux_loss=True for checkpoints holding aux_classifier)")
def aspp_mobilenetv3_large(num_classes: int = 21, aux_loss: bool = False, channels: int = 256) -> DeepLabV3:
    return mobilenetv3_large_deeplab(num_classes, aux_loss, channels)


@register_model(input_size=(3, 473, 473), **_SEG,
                notes="DeepLabV3 on PyConvResNet-50 dilated to output stride 8, ASPP rates 12/24/36 "
                      "(6/12/18 with output_stride=16)")
def aspp_pyconvresnet50(num_classes: int = 21, output_stride: int = 8, aux_loss: bool = False,
                        channels: int = 256) -> DeepLabV3:
    return pyconvresnet_deeplab(50, num_classes, output_stride, aux_loss, channels)
