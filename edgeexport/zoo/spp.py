"""Spatial pyramid pooling (SPPNet): a classifier that takes images of any size.

He et al., "Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition",
ECCV 2014 / TPAMI 2015 (seed 001). The last feature map, whatever its height and width, is
max-pooled over an n x n grid for every pyramid level n (here 1, 2 and 4, 21 bins), and the
bins are concatenated into one fixed-length vector for the fully connected classifier.

Each level is an ``nn.AdaptiveMaxPool2d(n)``: bin ``i`` covers rows ``floor(i*H/n) ..
ceil((i+1)*H/n)`` (bins may overlap, never empty; the seed's ``MaxPool2d`` with a ceil kernel
and symmetric padding needs more padding than PyTorch allows for some sizes, e.g. a side of 5
at level 4). ONNX has no adaptive max pooling, so exports go through
``rewrite_adaptive_max_pool`` (:mod:`edgeexport.rewrite.adaptive_pool`), an exact masked
maximum computed from the runtime shape: one graph stays valid and exact for every input size.

The trunk is PyConvResNet-18 (:mod:`edgeexport.zoo.pyconv`, stride 32, 512 channels); its
modules keep the classifier's names under ``backbone.`` so a ``pyconvresnet18`` state dict
gives the trunk's weights.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from edgeexport.zoo.layers import init_resnet_style
from edgeexport.zoo.pyconv import _DEPTHS, PyConvBasicBlock2, PyConvResNet
from edgeexport.zoo.registry import register_model

PAPER = "He et al., Spatial Pyramid Pooling in Deep Convolutional Networks for Visual Recognition, ECCV 2014"

# ---------------------------------------------------------------- blocks


class SpatialPyramidPooling(nn.Module):
    """Adaptive max pooling to n x n for every level n, flattened (level-major, then channel) and concatenated."""

    def __init__(self, levels=(1, 2, 4)):
        super().__init__()
        self.levels = tuple(levels)
        self.pools = nn.ModuleList(nn.AdaptiveMaxPool2d(n) for n in self.levels)

    @property
    def bins(self) -> int:
        return sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.flatten(pool(x), 1) for pool in self.pools], dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


# ---------------------------------------------------------------- model


class SPPNet(nn.Module):
    """Conv trunk -> spatial pyramid pooling -> dropout -> linear classifier."""

    def __init__(self, backbone: nn.Module, channels: int, num_classes: int = 1000, levels=(1, 2, 4),
                 dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.spp = SpatialPyramidPooling(levels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * self.spp.bins, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.spp(self.backbone(x))))


def pyconvresnet_trunk(depth: int = 18) -> nn.Sequential:
    """The convolutional part of PyConvResNet (basic blocks for 18/34), named as in the classifier."""
    net = PyConvResNet(PyConvBasicBlock2, _DEPTHS[depth])
    trunk = nn.Sequential(OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, layer1=net.layer1,
                                      layer2=net.layer2, layer3=net.layer3, layer4=net.layer4))
    init_resnet_style(trunk)
    return trunk


# ---------------------------------------------------------------- builders

_CLS = dict(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
            family="spp", paper=PAPER, resize="center_crop", size_multiple=1, dynamic_hw=True)


@register_model(**_CLS, notes="PyConvResNet-18 trunk, SPP levels 1/2/4 (max), any input size; export needs the "
                "exact masked rewrite of adaptive max pooling (rewrite_adaptive_max_pool)")
def spp_pyconvresnet18(num_classes: int = 1000, levels=(1, 2, 4), dropout: float = 0.5) -> SPPNet:
    return SPPNet(pyconvresnet_trunk(18), 512, num_classes, levels, dropout)
