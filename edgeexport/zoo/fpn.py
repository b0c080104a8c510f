"""Feature-pyramid necks: PANet and NAS-FPN on MobileNetV3-Large, producing P3 .. P7.

Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018, and Ghiasi et
al., "NAS-FPN: Learning Scalable Feature Pyramid Architecture for Object Detection", CVPR 2019
(seed 001).

Backbone: the (non-dilated) MobileNetV3-Large of :mod:`edgeexport.zoo.mobilenetv3`, tapped at
the end of each stride: C3 = ``features.6`` (stride 8, 40 channels), C4 = ``features.12``
(stride 16, 112 channels), C5 = ``features.16`` (stride 32, the 960-channel last conv).

* PANet: FPN (1x1 laterals, top-down nearest up-sampling and sums, 3x3 output convs) then
  the bottom-up augmentation path: N3 = P3, N(i+1) = conv3x3(P(i+1) + conv3x3/s2(N(i))) with
  ReLU. P6 = conv3x3/s2(N5), P7 = conv3x3/s2(ReLU(P6)) (RetinaNet's extra levels).
* NAS-FPN: 1x1 laterals on C3..C5, P6 and P7 by 1x1 conv + 2x2 max pooling, then ``stack``
  repetitions of the searched 7-cell pyramid (the layout of mmdetection's ``NASFPN``): global
  pooling cells ``x2 + sigmoid(gap(x2)) * x1`` and sum cells ``x1 + x2``, each followed (but for
  the two whose result is summed at once) by ReLU -> conv3x3 -> BN.

Sizes. Every strided layer pads, so a level of stride s has ``ceil(H/s)`` rows for any input
height: the backbone, the stride-2 3x3 convs and ``ceil_mode`` max pooling all round up.
Resizing between levels never looks at the sizes in Python (mmdetection's cells branch on them
and pad), so one graph serves every input size (``dynamic_hw=True``, ``size_multiple=1``):

* down by 2^k: ``max_pool2d(kernel=stride=2^k, ceil_mode=True)``, which lands on ``ceil(H/s)``;
* up by 2: ``F.interpolate(size=target.shape[-2:], mode="nearest")``. For ceil-consistent sizes
  (``n_in = ceil(n_out/2)``) PyTorch and ONNX Runtime agree exactly, and the source row is
  ``floor(dst/2)``; up by 4 (P6 -> P4 in NAS-FPN) is two such steps through the intermediate
  size ``ceil(n_out/2)``. A single nearest resize by a non-power-of-two ratio (e.g. 50 -> 198)
  rounds ``dst * 50/198`` differently in PyTorch and ONNX Runtime for some sizes, so it is avoided.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import ConvBNAct, FeatureTaps, init_resnet_style
from edgeexport.zoo.mobilenetv3 import MobileNetV3, _large_config
from edgeexport.zoo.registry import register_model

PAPER_PANET = "Liu et al., Path Aggregation Network for Instance Segmentation, CVPR 2018"
PAPER_NASFPN = "Ghiasi et al., NAS-FPN: Learning Scalable Feature Pyramid Architecture for Object Detection, CVPR 2019"
LEVELS = ("p3", "p4", "p5", "p6", "p7")

# ---------------------------------------------------------------- resizing between levels


def upsample_to(x: torch.Tensor, size, steps: int = 1) -> torch.Tensor:
    """Nearest up-sampling by ``2**steps`` to ``size`` (the finer level's H, W), one factor 2 at a time."""
    h, w = size[0], size[1]
    for k in range(steps - 1, -1, -1):
        # size of the level 2**k finer than x's target: ceil(h / 2**k); ``h`` stays a traced shape value
        target = (h, w) if k == 0 else ((h + 2 ** k - 1) // 2 ** k, (w + 2 ** k - 1) // 2 ** k)
        x = F.interpolate(x, size=target, mode="nearest")
    return x


def downsample(x: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Max pooling by ``2**steps``, rounding up (a level of stride s has ceil(H/s) rows)."""
    k = 2 ** steps
    return F.max_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)


def resize_level(x: torch.Tensor, src: int, dst: int, like: torch.Tensor) -> torch.Tensor:
    """Move ``x`` from pyramid level ``src`` to level ``dst``; ``like`` is any tensor at level ``dst``."""
    if src == dst:
        return x
    if src > dst:
        return upsample_to(x, like.shape[-2:], src - dst)
    return downsample(x, dst - src)


# ---------------------------------------------------------------- blocks


class MergingCell(nn.Module):
    """A NAS-FPN merging cell: resize both inputs to the output level, combine, then ReLU -> conv3x3 -> BN.

    ``op`` is ``"sum"`` (``x1 + x2``) or ``"gp"`` (global pooling: ``x2 + sigmoid(gap(x2)) * x1``).
    """

    def __init__(self, channels: int, levels: tuple[int, int, int], op: str, out_conv: bool = True):
        super().__init__()
        if op not in ("sum", "gp"):
            raise ValueError(f"op must be 'sum' or 'gp', not {op!r}")
        self.levels, self.op = tuple(levels), op
        self.global_pool = nn.AdaptiveAvgPool2d(1) if op == "gp" else None
        self.conv_out = (nn.Sequential(nn.ReLU(), *ConvBNAct(channels, channels, 3, activation=None))
                         if out_conv else None)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        l1, l2, lo = self.levels
        x1, x2 = resize_level(x1, l1, lo, like), resize_level(x2, l2, lo, like)
        if self.global_pool is not None:
            x = x2 + torch.sigmoid(self.global_pool(x2)) * x1
        else:
            x = x1 + x2
        return x if self.conv_out is None else self.conv_out(x)

    def extra_repr(self) -> str:
        return f"op={self.op!r}, levels=P{self.levels[0]}+P{self.levels[1]}->P{self.levels[2]}"


def nasfpn_stage(channels: int) -> nn.ModuleDict:
    """The searched 7-cell pyramid; keys ``<op>_<in1><in2>_<out>`` as mmdetection's."""
    C = MergingCell
    return nn.ModuleDict(OrderedDict(
        gp_64_4=C(channels, (6, 4, 4), "gp"),                   # gp(P6, P4) -> P4_1
        sum_44_4=C(channels, (4, 4, 4), "sum"),                 # sum(P4_1, P4) -> P4_2
        sum_43_3=C(channels, (4, 3, 3), "sum"),                 # sum(P4_2, P3) -> P3 out
        sum_34_4=C(channels, (3, 4, 4), "sum"),                 # sum(P3 out, P4_2) -> P4 out
        gp_43_5=C(channels, (4, 3, 5), "gp", out_conv=False),   # gp(P4 out, P3 out) -> t5
        sum_55_5=C(channels, (5, 5, 5), "sum"),                 # sum(P5, t5) -> P5 out
        gp_54_7=C(channels, (5, 4, 7), "gp", out_conv=False),   # gp(P5 out, P4_2) -> t7
        sum_77_7=C(channels, (7, 7, 7), "sum"),                 # sum(P7, t7) -> P7 out
        gp_75_6=C(channels, (7, 5, 6), "gp"),                   # gp(P7 out, P5 out) -> P6 out
    ))


class PANetNeck(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], channels: int = 256):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, channels, 1, activation=None) for c in in_channels)
        self.fpn_out = nn.ModuleList(ConvBNAct(channels, channels, 3, activation=None) for _ in in_channels)
        self.down = nn.ModuleList(ConvBNAct(channels, channels, 3, stride=2) for _ in in_channels[1:])
        self.fuse = nn.ModuleList(ConvBNAct(channels, channels, 3) for _ in in_channels[1:])
        self.p6 = ConvBNAct(channels, channels, 3, stride=2, activation=None)
        self.p7 = nn.Sequential(nn.ReLU(), *ConvBNAct(channels, channels, 3, stride=2, activation=None))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):  # top-down
            lat[i - 1] = lat[i - 1] + upsample_to(lat[i], lat[i - 1].shape[-2:])
        p = [conv(x) for conv, x in zip(self.fpn_out, lat)]
        n = [p[0]]
        for i in range(1, len(p)):  # bottom-up path augmentation
            n.append(self.fuse[i - 1](p[i] + self.down[i - 1](n[-1])))
        p6 = self.p6(n[-1])
        return n + [p6, self.p7(p6)]


class NASFPNNeck(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], channels: int = 256, stack: int = 2):
        super().__init__()
        self.lateral = nn.ModuleList(ConvBNAct(c, channels, 1, activation=None) for c in in_channels)
        self.extra = nn.ModuleList(
            nn.Sequential(*ConvBNAct(channels, channels, 1, activation=None), nn.MaxPool2d(2, 2, ceil_mode=True))
            for _ in range(2))
        self.stages = nn.ModuleList(nasfpn_stage(channels) for _ in range(stack))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = [conv(f) for conv, f in zip(self.lateral, feats)]
        for extra in self.extra:
            p.append(extra(p[-1]))
        p3, p4, p5, p6, p7 = p
        for s in self.stages:
            p4_1 = s["gp_64_4"](p6, p4, p4)
            p4_2 = s["sum_44_4"](p4_1, p4, p4)
            p3 = s["sum_43_3"](p4_2, p3, p3)
            p4 = s["sum_34_4"](p3, p4_2, p4)
            p5 = s["sum_55_5"](p5, s["gp_43_5"](p4, p3, p5), p5)
            p7 = s["sum_77_7"](p7, s["gp_54_7"](p5, p4_2, p7), p7)
            p6 = s["gp_75_6"](p7, p5, p6)
        return [p3, p4, p5, p6, p7]


# ---------------------------------------------------------------- model


class PyramidNet(nn.Module):
    """Backbone taps C3, C4, C5 -> neck -> ``OrderedDict(p3=..., ..., p7=...)`` (strides 8 .. 128)."""

    strides = (8, 16, 32, 64, 128)

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        init_resnet_style(self.neck)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.backbone(x)
        return OrderedDict(zip(LEVELS, self.neck([c["c3"], c["c4"], c["c5"]])))


def mobilenetv3_large_taps() -> tuple[FeatureTaps, tuple[int, int, int]]:
    """MobileNetV3-Large features tapped at the last module of strides 8, 16 and 32."""
    features = MobileNetV3(*_large_config(dilated=False)).features
    strided = [i for i, b in enumerate(features) if getattr(b, "is_strided", False)]  # -> strides 4, 8, 16, 32
    pos = (strided[-2] - 1, strided[-1] - 1, len(features) - 1)
    taps = FeatureTaps(features, {str(pos[0]): "c3", str(pos[1]): "c4", str(pos[2]): "c5"})
    return taps, tuple(features[i].out_channels for i in pos)


# ---------------------------------------------------------------- builders

_FEAT = dict(task="features", input_size=(3, 512, 512), output_names=LEVELS, size_multiple=1, dynamic_hw=True,
             family="fpn")


@register_model(paper=PAPER_PANET, **_FEAT,
                notes="PANet neck (FPN + bottom-up path) on MobileNetV3-Large C3/C4/C5; P3..P7, 256 channels")
def panet_mobilenetv3(channels: int = 256) -> PyramidNet:
    backbone, cins = mobilenetv3_large_taps()
    return PyramidNet(backbone, PANetNeck(cins, channels))


@register_model(paper=PAPER_NASFPN, **_FEAT,
                notes="NAS-FPN neck (7 merging cells, stacked twice) on MobileNetV3-Large C3/C4/C5; P3..P7, "
                      "256 channels")
def nasfpn_mobilenetv3(channels: int = 256, stack: int = 2) -> PyramidNet:
    backbone, cins = mobilenetv3_large_taps()
    return PyramidNet(backbone, NASFPNNeck(cins, channels, stack))
