"""Res2Net: hierarchical multi-scale residual bottlenecks.

Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", TPAMI 2019 (seed 003).
The 3x3 convolution of a ResNet bottleneck is replaced by ``scale`` groups of ``width``
channels: the first group is convolved, and every further group is added to the previous
group's output before its own 3x3 convolution, so later groups see ever larger receptive
fields; the last group is passed through unchanged, and all groups are concatenated
before the 1x1 expansion.

The published models (and timm) differ from that description in the first block of each
stage (the block with a strided or projected shortcut): there the groups are not chained
(each is convolved on its own, with the stage's stride), and the pass-through group goes
through ``AvgPool2d(3, stride, padding=1)`` so it matches the convolved groups' size.
The group width is ``floor(planes * base_width / 64)`` (26 for the ``26w`` models).

Module names, key order and shapes follow timm's ``res2net50_26w_4s`` (``convs.i``,
``bns.i``, ``downsample.0/1``), so its checkpoints load strictly and give the same outputs.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from edgeexport.zoo.layers import ResNetLayout
from edgeexport.zoo.registry import register_model

PAPER = "Gao et al., Res2Net: A New Multi-scale Backbone Architecture, TPAMI 2019"

# ---------------------------------------------------------------- blocks


class Bottle2neck(nn.Module):
    """1x1 -> ``scale`` hierarchical 3x3 groups -> 1x1 (x4), residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 26, scale: int = 4):
        super().__init__()
        if scale < 2:
            raise ValueError(f"scale must be at least 2, not {scale}")
        width = planes * base_width // 64
        self.width, self.scale = width, scale
        # First block of a stage: groups are convolved independently and the last one is pooled.
        self.stage_entry = stride > 1 or downsample is not None
        self.conv1 = nn.Conv2d(inplanes, width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, padding=1, bias=False) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale - 1))
        # count_include_pad stays True, as in the published weights' training.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if self.stage_entry else nn.Identity()
        self.conv3 = nn.Conv2d(width * scale, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        groups = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs: list[torch.Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            y = groups[i] if i == 0 or self.stage_entry else outs[-1] + groups[i]
            outs.append(self.relu(bn(conv(y))))
        outs.append(self.pool(groups[-1]))
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return self.relu(out + identity)


# ---------------------------------------------------------------- classifier


class Res2Net(ResNetLayout):
    """The ResNet-50 layout (7x7 stem, max-pool, strided 1x1 shortcuts) with Bottle2neck blocks."""

    def __init__(self, layers, num_classes: int = 1000, base_width: int = 26, scale: int = 4):
        block = partial(Bottle2neck, base_width=base_width, scale=scale)
        super().__init__(block, Bottle2neck.expansion, layers, num_classes)


# ---------------------------------------------------------------- builders


@register_model(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
                family="res2net", paper=PAPER, resize="center_crop", published_params=25_699_120,
                params_tolerance=0.0, notes="state dict compatible with timm res2net50_26w_4s (25.70M)")
def res2net50_26w_4s(num_classes: int = 1000) -> Res2Net:
    return Res2Net([3, 4, 6, 3], num_classes, base_width=26, scale=4)
