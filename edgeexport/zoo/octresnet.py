"""Oct-ResNet-50: ResNet-50 built from octave convolutions (alpha = 0.25).

Chen et al., "Drop an Octave: Reducing Spatial Redundancy in Convolutional Neural Networks
with Octave Convolution", ICCV 2019 (seed 003). An octave convolution splits its feature
maps into a high-frequency part at full resolution and a low-frequency part (a fraction
``alpha`` of the channels) at half resolution, and computes four paths between them:

* H->H: a convolution at full resolution;
* H->L: a 2x2 average pool of the high part, then a convolution;
* L->L: a convolution at half resolution;
* L->H: a convolution at half resolution, then nearest up-sampling to the high part's size.

It has three forms: **first** (``alpha_in = 0``: only H->H and H->L, it creates the low
part), **normal** (``alpha_in = alpha_out = alpha``: all four paths) and **last**
(``alpha_out = 0``: only H->H and L->H, it merges the low part back). With both alphas 0
it is a plain convolution (**plain**, H->H only).

Stride 2 never uses a strided convolution (which would misalign the two resolutions): the
high input is 2x2 average-pooled first, the low input is average-pooled before L->L,
H->L pools the (already pooled) high input once more, and L->H takes the un-pooled low
input, which already has the new high resolution, so it needs no up-sampling.

Export note: the L->H up-sampling is ``F.interpolate(low, size=high.shape[-2:],
mode="nearest")`` with the size read from the high tensor, never ``scale_factor=2``. 2x2
average pooling floors odd sizes (25 -> 12), so x2 up-sampling would give 24 where the
high branch has 25; the explicit size keeps one ONNX graph valid for every input size.
The low part always has ``floor(high / 2)`` pixels, so the stride-2 paths line up too.

Layer forms in ``octresnet50`` (alpha = 0.25; ``a_in -> a_out``):

=====================  =====================================================  ==============
layer                  convolutions                                           form
=====================  =====================================================  ==============
stem                   conv1 7x7/2 + BN + ReLU + max-pool 3x3/2               plain nn.Conv2d
layer1.0               conv1 1x1 (0 -> 0.25); shortcut 1x1 (0 -> 0.25)        first
layer1.0               conv2 3x3, conv3 1x1 (0.25 -> 0.25)                    normal
layer1.1-2, layer2.*,  conv1 1x1, conv2 3x3, conv3 1x1, shortcut of x.0         normal
layer3.*               (stride 2 on conv2 and shortcut of layer2.0/layer3.0)
layer4.0               conv1 1x1 (0.25 -> 0); shortcut 1x1/2 (0.25 -> 0)      last
layer4.0               conv2 3x3/2 (pooled), conv3 1x1 (0 -> 0)               plain
layer4.1-2             conv1, conv2, conv3 (0 -> 0)                           plain
head                   global average pool + fc                               -
=====================  =====================================================  ==============

BatchNorm and ReLU act on the high and low parts separately (``bn_h`` / ``bn_l``).
Shortcuts are identity when shapes match, otherwise a 1x1 octave convolution with the
block's alphas and stride plus BatchNorm, projecting both parts. Channel counts, and hence
the parameter count, are those of ResNet-50 (25,557,032): an octave convolution has the
weights of the convolution it replaces, split into four blocks.

Inputs must be at least 29 pixels on each side (the low part of stage 3 must not vanish).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import init_resnet_style
from edgeexport.zoo.registry import register_model

PAPER = "Chen et al., Drop an Octave: Reducing Spatial Redundancy in CNNs with Octave Convolution, ICCV 2019"

Pair = tuple[torch.Tensor, "torch.Tensor | None"]

# ---------------------------------------------------------------- blocks


def split_channels(channels: int, alpha: float) -> tuple[int, int]:
    """(high, low) channel counts for a fraction ``alpha`` of low-frequency channels."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), not {alpha}")
    low = int(alpha * channels)
    return channels - low, low


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class OctConv(nn.Module):
    """Octave convolution on a ``(high, low)`` pair; ``low`` is None when ``alpha_in == 0``.

    Paths are ``h2h``, ``h2l``, ``l2h``, ``l2l`` (``None`` where the form has none).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, alpha_in: float = 0.25,
                 alpha_out: float = 0.25):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {stride}")
        hi_in, lo_in = split_channels(cin, alpha_in)
        hi_out, lo_out = split_channels(cout, alpha_out)

        def conv(a, b):
            return nn.Conv2d(a, b, kernel_size, 1, padding=kernel_size // 2, bias=False) if a and b else None

        self.h2h = conv(hi_in, hi_out)
        self.h2l = conv(hi_in, lo_out)
        self.l2h = conv(lo_in, hi_out)
        self.l2l = conv(lo_in, lo_out)
        self.stride = stride
        self.channels_out = (hi_out, lo_out)
        self.form = {(False, False): "plain", (False, True): "first", (True, False): "last",
                     (True, True): "normal"}[(lo_in > 0, lo_out > 0)]

    def forward(self, x: Pair) -> Pair:
        x_h, x_l = x
        if self.stride == 2:
            x_h = _avg_pool(x_h)
        y_h = self.h2h(x_h)
        y_l = self.h2l(_avg_pool(x_h)) if self.h2l is not None else None
        if self.l2h is not None:
            if x_l is None:
                raise ValueError(f"a {self.form} octave convolution needs a low-frequency input")
            if self.stride == 2:
                y_h = y_h + self.l2h(x_l)  # x_l already has the (pooled) high resolution
            else:
                y_h = y_h + F.interpolate(self.l2h(x_l), size=y_h.shape[-2:], mode="nearest")
            if self.l2l is not None:
                y_l = y_l + self.l2l(_avg_pool(x_l) if self.stride == 2 else x_l)
        return y_h, y_l

    def extra_repr(self) -> str:
        return f"form={self.form}, stride={self.stride}"


class OctConvBN(nn.Module):
    """Octave convolution -> BatchNorm per part (``bn_h``, ``bn_l``) -> optional ReLU per part."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, alpha_in: float = 0.25,
                 alpha_out: float = 0.25, act: bool = True):
        super().__init__()
        self.conv = OctConv(cin, cout, kernel_size, stride, alpha_in, alpha_out)
        hi, lo = self.conv.channels_out
        self.bn_h = nn.BatchNorm2d(hi)
        self.bn_l = nn.BatchNorm2d(lo) if lo else None
        self.act = act

    def forward(self, x: Pair) -> Pair:
        y_h, y_l = self.conv(x)
        y_h = self.bn_h(y_h)
        y_l = self.bn_l(y_l) if self.bn_l is not None else None
        if self.act:
            y_h = F.relu(y_h)
            y_l = F.relu(y_l) if y_l is not None else None
        return y_h, y_l


class OctBottleneck(nn.Module):
    """1x1 (``alpha_in -> alpha_out``) -> 3x3 (stride) -> 1x1 (x4), residual on both parts."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, alpha_in: float = 0.25, alpha_out: float = 0.25):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = OctConvBN(inplanes, planes, 1, 1, alpha_in, alpha_out)
        self.conv2 = OctConvBN(planes, planes, 3, stride, alpha_out, alpha_out)
        self.conv3 = OctConvBN(planes, out, 1, 1, alpha_out, alpha_out, act=False)
        needs_projection = stride != 1 or inplanes != out or alpha_in != alpha_out
        self.downsample = OctConvBN(inplanes, out, 1, stride, alpha_in, alpha_out, act=False) \
            if needs_projection else None

    def residual_norm(self) -> nn.Module:
        """The (high-frequency) BatchNorm closing the residual branch; see :meth:`residual_norms`."""
        return self.conv3.bn_h

    def residual_norms(self) -> tuple[nn.Module, ...]:
        """Every BatchNorm closing the residual branch: high, then low when there is one."""
        return tuple(bn for bn in (self.conv3.bn_h, self.conv3.bn_l) if bn is not None)

    def forward(self, x: Pair) -> Pair:
        identity_h, identity_l = x if self.downsample is None else self.downsample(x)
        y_h, y_l = self.conv3(self.conv2(self.conv1(x)))
        y_h = F.relu(y_h + identity_h)
        y_l = F.relu(y_l + identity_l) if y_l is not None else None
        return y_h, y_l


class OctStage(nn.Sequential):
    """A sequence of octave blocks passing ``(high, low)`` pairs."""

    def forward(self, x: Pair) -> Pair:
        for block in self:
            x = block(x)
        return x


# ---------------------------------------------------------------- classifier


class OctResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, alpha: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = 64
        # (planes, stride, alpha into the stage, alpha inside the stage)
        stages = [(64, 1, 0.0, alpha), (128, 2, alpha, alpha), (256, 2, alpha, alpha), (512, 2, alpha, 0.0)]
        for i, ((planes, stride, a_in, a_out), n) in enumerate(zip(stages, layers), start=1):
            setattr(self, f"layer{i}", self._make_layer(planes, n, stride, a_in, a_out))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * OctBottleneck.expansion, num_classes)
        init_resnet_style(self)

    def _make_layer(self, planes, blocks, stride, alpha_in, alpha_out) -> OctStage:
        layers = [OctBottleneck(self.inplanes, planes, stride, alpha_in, alpha_out)]
        self.inplanes = planes * OctBottleneck.expansion
        layers += [OctBottleneck(self.inplanes, planes, 1, alpha_out, alpha_out) for _ in range(1, blocks)]
        return OctStage(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        pair: Pair = (x, None)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            pair = layer(pair)
        return pair[0]  # the last stage has no low-frequency part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


# ---------------------------------------------------------------- builders


@register_model(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
                family="octconv", paper=PAPER, resize="center_crop",
                notes="alpha 0.25; first form at layer1.0, last form at layer4.0 (layer4 plain); "
                      "25,557,032 parameters (those of ResNet-50); explicit-size L->H up-sampling, "
                      "valid for odd input sizes >= 29 px")
def octresnet50(num_classes: int = 1000) -> OctResNet:
    return OctResNet((3, 4, 6, 3), num_classes, alpha=0.25)
