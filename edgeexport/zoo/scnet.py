"""SCNet: ResNet bottlenecks with self-calibrated convolutions.

Liu et al., "Improving Convolutional Networks with Self-Calibrated Convolutions", CVPR 2020
(seed 004). An SCBottleneck splits its input into two half-width paths with two 1x1
convolutions. Path ``a`` is a plain 3x3 convolution (``k1``). Path ``b`` is the
self-calibrated convolution: a low-resolution view of the input (``k2``: average pool with
rate 4, 3x3 conv) is brought back to full size and added to the input, and its sigmoid
gates a 3x3 convolution of the input (``k3``); the gated map goes through a last 3x3
convolution (``k4``, strided in the first block of a stage). Both paths are concatenated
and projected back by a 1x1 convolution, with a ResNet shortcut.

The up-sampling takes its output size from the tensor it is added to (the average pool
floors odd sizes, so a scale factor of 4 would not give the input size back); the graph
is therefore valid for any input size whose stride-16 map is at least 4x4 (inputs of
about 49 px or more).

Module names follow the authors' code (``conv1_a``, ``k1``, ``conv1_b``,
``scconv.k2/k3/k4`` ...) so their published checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import ResNetLayout
from edgeexport.zoo.registry import register_model

PAPER = "Liu et al., Improving Convolutional Networks with Self-Calibrated Convolutions, CVPR 2020"

# ---------------------------------------------------------------- blocks


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


def _conv_bn(cin, cout, stride=1, relu=False, pool=0) -> nn.Sequential:
    """[AvgPool] -> 3x3 conv -> BN [-> ReLU] as a Sequential (the reference's k1 ... k4 layouts)."""
    layers: list[nn.Module] = [nn.AvgPool2d(pool, stride=pool)] if pool else []
    layers += [conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SCConv(nn.Module):
    """Self-calibrated 3x3 convolution: ``k4(k3(x) * sigmoid(x + up(k2(x))))``.

    ``k2`` works at ``1 / pooling_r`` resolution (keys ``k2.1``, ``k2.2`` after the pool);
    ``k4`` carries the block's stride.
    """

    def __init__(self, planes: int, stride: int = 1, pooling_r: int = 4):
        super().__init__()
        self.k2 = _conv_bn(planes, planes, pool=pooling_r)
        self.k3 = _conv_bn(planes, planes)
        self.k4 = _conv_bn(planes, planes, stride=stride, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Explicit size, not scale_factor=pooling_r: the pool floors odd sizes.
        context = F.interpolate(self.k2(x), size=x.shape[-2:])
        gate = torch.sigmoid(x + context)
        return self.k4(self.k3(x) * gate)


class SCBottleneck(nn.Module):
    """Two half-width paths (plain 3x3 / self-calibrated), concatenated, 1x1 (x4), residual."""

    expansion = 4
    pooling_r = 4  # rate of the average pool in SCConv's k2 path

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        half = planes // 2
        self.conv1_a = conv1x1(inplanes, half)
        self.bn1_a = nn.BatchNorm2d(half)
        self.k1 = _conv_bn(half, half, stride=stride, relu=True)
        self.conv1_b = conv1x1(inplanes, half)
        self.bn1_b = nn.BatchNorm2d(half)
        self.scconv = SCConv(half, stride, self.pooling_r)
        self.conv3 = conv1x1(2 * half, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def residual_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        a = self.k1(self.relu(self.bn1_a(self.conv1_a(x))))
        b = self.scconv(self.relu(self.bn1_b(self.conv1_b(x))))
        out = self.bn3(self.conv3(torch.cat((a, b), dim=1)))
        return self.relu(out + identity)


# ---------------------------------------------------------------- classifier


class SCNet(ResNetLayout):
    """The ResNet-50/101 layout (7x7 stem, max-pool, strided 1x1 shortcuts) with SCBottlenecks."""

    def __init__(self, layers, num_classes: int = 1000):
        super().__init__(SCBottleneck, SCBottleneck.expansion, layers, num_classes)


# ---------------------------------------------------------------- builders

_CLS = dict(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
            family="scnet", paper=PAPER, resize="center_crop",
            min_hw=97, notes="module names as github.com/backseason/SCNet; inputs of at least 97 px: the last "
                             "stage's SCConv pools the stride-32 map by 4, as in the authors' code")


@register_model(published_params=25_560_000, **_CLS)
def scnet50(num_classes: int = 1000) -> SCNet:
    return SCNet([3, 4, 6, 3], num_classes)


@register_model(published_params=44_570_000, **_CLS)
def scnet101(num_classes: int = 1000) -> SCNet:
    return SCNet([3, 4, 23, 3], num_classes)
