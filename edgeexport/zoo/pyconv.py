"""Pyramidal convolution: PyConvResNet classifiers and the PyConvSegNet segmentation model.

Duta et al., "Pyramidal Convolution: Rethinking Convolutional Neural Networks for Visual
Recognition", 2020 (seed 000). A PyConv splits the output channels of a convolution
into pyramid levels with growing kernels (3, 5, 7, 9) and growing group counts, so the
cost stays close to a 3x3 convolution while the receptive field grows.

PyConvResNet puts PyConvs in ResNet bottlenecks (4 levels in stage 1 down to 1 in
stage 4), downsamples in every stage including the first (no stem max-pool) and uses
max-pool + 1x1 projections on strided shortcuts. PyConvSegNet puts a PyConv head
(local block, global block on 9x9 adaptive pooling, merge) on a dilated PyConvResNet.

Module names follow the authors' code (``conv2_1`` ... ``conv2_4``, ``layer0``,
``pyconvhead.local_context`` ...) so their published checkpoints load.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import init_resnet_style
from edgeexport.zoo.registry import register_model

PAPER = "Duta et al., Pyramidal Convolution: Rethinking CNNs for Visual Recognition, 2020"

# ---------------------------------------------------------------- blocks


def conv(cin, cout, kernel_size=3, stride=1, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2 * dilation, dilation=dilation,
                     groups=groups, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class PyConv(nn.Module):
    """A pyramid of grouped convolutions over the same input, concatenated on channels.

    ``splits`` are the fractions of ``planes`` that each level produces (e.g. 1/4 each for
    four levels, or 1/4, 1/4, 1/2 for three), matching the reference PyConv2/3/4 layouts.
    Levels are stored as ``conv2_1`` ... ``conv2_n``.
    """

    def __init__(self, cin, planes, kernels, groups, splits, stride=1):
        super().__init__()
        if not len(kernels) == len(groups) == len(splits):
            raise ValueError("kernels, groups and splits must have one entry per pyramid level")
        self.levels = len(kernels)
        for i, (k, g, s) in enumerate(zip(kernels, groups, splits), start=1):
            setattr(self, f"conv2_{i}", conv(cin, int(planes * s), k, stride=stride, groups=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, f"conv2_{i}")(x) for i in range(1, self.levels + 1)], dim=1)


_SPLITS = {2: (1 / 2, 1 / 2), 3: (1 / 4, 1 / 4, 1 / 2), 4: (1 / 4,) * 4}


def get_pyconv(cin, planes, kernels, groups, stride=1) -> nn.Module:
    if len(kernels) == 1:
        return conv(cin, planes, kernels[0], stride=stride, groups=groups[0])
    return PyConv(cin, planes, kernels, groups, _SPLITS[len(kernels)], stride=stride)


class PyConvBlock(nn.Module):
    """Bottleneck: 1x1 -> PyConv -> 1x1 (x4), residual."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, pyconv_kernels=(3,), pyconv_groups=(1,)):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = get_pyconv(planes, planes, pyconv_kernels, pyconv_groups, stride=stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class PyConvBasicBlock2(nn.Module):
    """Basic block of PyConvResNet-18/34: PyConv -> 1x1, residual."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, pyconv_kernels=(3,), pyconv_groups=(1,)):
        super().__init__()
        self.conv1 = get_pyconv(inplanes, planes, pyconv_kernels, pyconv_groups, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv1x1(planes, planes * self.expansion)
        self.bn2 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def residual_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


# ---------------------------------------------------------------- classifier

_STAGES = (  # planes, pyconv kernels, pyconv groups
    (64, (3, 5, 7, 9), (1, 4, 8, 16)),
    (128, (3, 5, 7), (1, 4, 8)),
    (256, (3, 5), (1, 4)),
    (512, (3,), (1,)),
)


class PyConvResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, dropout=0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        for i, ((planes, kernels, groups), n) in enumerate(zip(_STAGES, layers), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, planes, n, kernels, groups))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dp = nn.Dropout(dropout, inplace=True) if dropout > 0 else None
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_resnet_style(self)

    def _make_layer(self, block, planes, blocks, kernels, groups, stride=2):
        out = planes * block.expansion
        if stride != 1 and self.inplanes != out:
            downsample = nn.Sequential(nn.MaxPool2d(3, stride=stride, padding=1), conv1x1(self.inplanes, out),
                                       nn.BatchNorm2d(out))
        elif self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out), nn.BatchNorm2d(out))
        elif stride != 1:
            downsample = nn.MaxPool2d(3, stride=stride, padding=1)
        else:
            downsample = None
        layers = [block(self.inplanes, planes, stride, downsample, kernels, groups)]
        self.inplanes = out
        layers += [block(self.inplanes, planes, pyconv_kernels=kernels, pyconv_groups=groups) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        if self.dp is not None:
            x = self.dp(x)
        return self.fc(x)


# ---------------------------------------------------------------- segmentation


def _dilate(layer: nn.Module, rate: int) -> None:
    """Turn a strided stage into a dilated one in place, as the authors' backbone builder does.

    Every pyramid level gets dilation ``rate`` with its padding scaled to keep the size;
    strided shortcuts (max-pool / 1x1) get stride 1.
    """
    for name, m in layer.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Conv2d) and (leaf.startswith("conv2_") or (leaf == "conv2" and m.kernel_size[0] > 1)):
            k = m.kernel_size[0]
            m.dilation, m.padding, m.stride = (rate, rate), (k // 2 * rate,) * 2, (1, 1)
        elif name.endswith("downsample.0"):
            m.stride = (1, 1) if isinstance(m, nn.Conv2d) else 1


class PyConvLevels4(PyConv):
    """The four-level PyConv of the segmentation head (kernels 3/5/7/9, groups 1/4/8/16)."""

    def __init__(self, cin, planes):
        super().__init__(cin, planes, (3, 5, 7, 9), (1, 4, 8, 16), _SPLITS[4])


def _cbr(cin, cout, k=1):
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LocalPyConvBlock(nn.Module):
    def __init__(self, inplanes, planes, reduction=4):
        super().__init__()
        mid = inplanes // reduction
        self.layers = nn.Sequential(*_cbr(inplanes, mid), PyConvLevels4(mid, mid), nn.BatchNorm2d(mid),
                                    nn.ReLU(inplace=True), *_cbr(mid, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GlobalPyConvBlock(nn.Module):
    """Adaptive average pooling to ``bins`` x ``bins``, a PyConv over the pooled map, upsampled back."""

    def __init__(self, inplanes, planes, bins=9):
        super().__init__()
        self.features = nn.Sequential(nn.AdaptiveAvgPool2d(bins), *_cbr(inplanes, planes), PyConvLevels4(planes, planes),
                                      nn.BatchNorm2d(planes), nn.ReLU(inplace=True), *_cbr(planes, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.features(x), x.shape[-2:], mode="bilinear", align_corners=True)


class MergeLocalGlobal(nn.Module):
    def __init__(self, inplanes, planes):
        super().__init__()
        self.features = nn.Sequential(*_cbr(inplanes, planes, 3))

    def forward(self, local_context, global_context):
        return self.features(torch.cat((local_context, global_context), dim=1))


class PyConvHead(nn.Module):
    def __init__(self, inplanes, planes, local_planes=512, global_planes=512, bins=9):
        super().__init__()
        self.local_context = LocalPyConvBlock(inplanes, local_planes, reduction=4)
        self.global_context = GlobalPyConvBlock(inplanes, global_planes, bins)
        self.merge_context = MergeLocalGlobal(local_planes + global_planes, planes)

    def forward(self, x):
        return self.merge_context(self.local_context(x), self.global_context(x))


class PyConvSegNet(nn.Module):
    """PyConv head on a dilated PyConvResNet; logits upsampled to the input size.

    In training mode the auxiliary head on stage 3 is evaluated too and returned as ``aux``.
    """

    def __init__(self, depth=50, num_classes=150, output_stride=8, dropout=0.1):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, not {output_stride}")
        backbone = PyConvResNet(PyConvBlock, _DEPTHS[depth])
        self.layer0 = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu)
        self.layer1, self.layer2, self.layer3, self.layer4 = (backbone.layer1, backbone.layer2, backbone.layer3,
                                                              backbone.layer4)
        if output_stride == 8:
            _dilate(self.layer3, 2)
            _dilate(self.layer4, 4)
        else:
            _dilate(self.layer4, 2)
        self.output_stride = output_stride
        self.pyconvhead = PyConvHead(2048, 256)
        self.aux = nn.Sequential(*_cbr(1024, 256, 3), nn.Dropout2d(dropout), nn.Conv2d(256, num_classes, 1))
        self.cls = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(256, num_classes, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        stage3 = self.layer3(self.layer2(self.layer1(self.layer0(x))))
        out = self.cls(self.pyconvhead(self.layer4(stage3)))
        result = OrderedDict(out=F.interpolate(out, size, mode="bilinear", align_corners=True))
        if self.training:
            result["aux"] = F.interpolate(self.aux(stage3), size, mode="bilinear", align_corners=True)
        return result


# ---------------------------------------------------------------- builders

_DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
_CLS = dict(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
            family="pyconv", paper=PAPER, resize="center_crop")
_SEG = dict(task="segmentation", input_size=(3, 473, 473), output_names=("out",), num_classes=150,
            family="pyconv", paper=PAPER,
            notes="ADE20K layout (150 classes); the 9x9 global pooling is exported through an exact MatMul rewrite")


@register_model(published_params=5_910_000, **_CLS)
def pyconvresnet18(num_classes=1000):
    return PyConvResNet(PyConvBasicBlock2, _DEPTHS[18], num_classes)


@register_model(published_params=11_090_000, **_CLS)
def pyconvresnet34(num_classes=1000):
    return PyConvResNet(PyConvBasicBlock2, _DEPTHS[34], num_classes)


@register_model(published_params=24_850_000, **_CLS)
def pyconvresnet50(num_classes=1000):
    return PyConvResNet(PyConvBlock, _DEPTHS[50], num_classes)


@register_model(published_params=42_310_000, **_CLS)
def pyconvresnet101(num_classes=1000):
    return PyConvResNet(PyConvBlock, _DEPTHS[101], num_classes)


@register_model(published_params=56_640_000, **_CLS)
def pyconvresnet152(num_classes=1000):
    return PyConvResNet(PyConvBlock, _DEPTHS[152], num_classes)


@register_model(**_SEG)
def pyconvsegnet50(num_classes=150, output_stride=8):
    return PyConvSegNet(50, num_classes, output_stride)


@register_model(**_SEG)
def pyconvsegnet101(num_classes=150, output_stride=8):
    return PyConvSegNet(101, num_classes, output_stride)
