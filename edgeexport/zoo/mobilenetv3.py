"""MobileNetV3 (large / small) and the Lite R-ASPP segmentation head.

Howard et al., "Searching for MobileNetV3", ICCV 2019 (seed 002). Inverted residual
blocks with optional squeeze-and-excitation and hard-swish; for segmentation the last
stage is dilated (output stride 16) and LR-ASPP combines the stride-16 features, gated
by a global-pooling branch, with a stride-8 low-level classifier.

Module names and tensor shapes follow torchvision, so a torchvision state dict for
``mobilenet_v3_large`` / ``mobilenet_v3_small`` / ``lraspp_mobilenet_v3_large`` loads
strictly and gives the same outputs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import ConvBNAct, FeatureTaps, make_divisible
from edgeexport.zoo.registry import register_model

PAPER = "Howard et al., Searching for MobileNetV3, ICCV 2019"

# ---------------------------------------------------------------- blocks


class SqueezeExcitation(nn.Module):
    """SE gate with hard-sigmoid, as in MobileNetV3 (keys fc1 / fc2)."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return s * x


@dataclass(frozen=True)
class BlockConfig:
    cin: int
    kernel: int
    expanded: int
    cout: int
    use_se: bool
    hardswish: bool
    stride: int
    dilation: int = 1


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk, maybe dilated) -> SE -> project (1x1), residual when shapes match."""

    def __init__(self, cfg: BlockConfig, norm_layer):
        super().__init__()
        if cfg.stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, not {cfg.stride}")
        self.use_res_connect = cfg.stride == 1 and cfg.cin == cfg.cout
        act = nn.Hardswish if cfg.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.cin:
            layers.append(ConvBNAct(cfg.cin, cfg.expanded, 1, norm_layer=norm_layer, activation=act))
        stride = 1 if cfg.dilation > 1 else cfg.stride
        layers.append(ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, stride=stride, dilation=cfg.dilation,
                                groups=cfg.expanded, norm_layer=norm_layer, activation=act))
        if cfg.use_se:
            layers.append(SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8)))
        layers.append(ConvBNAct(cfg.expanded, cfg.cout, 1, norm_layer=norm_layer, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cfg.cout
        self.is_strided = cfg.stride > 1

    def residual_norm(self) -> nn.Module | None:
        """The BatchNorm closing the residual branch (see ``weights.damp_residual_branches``)."""
        return self.block[-1][1] if self.use_res_connect else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


def _large_config(dilated: bool) -> tuple[list[BlockConfig], int]:
    d = 2 if dilated else 1
    B = BlockConfig
    cfg = [
        B(16, 3, 16, 16, False, False, 1), B(16, 3, 64, 24, False, False, 2), B(24, 3, 72, 24, False, False, 1),
        B(24, 5, 72, 40, True, False, 2), B(40, 5, 120, 40, True, False, 1), B(40, 5, 120, 40, True, False, 1),
        B(40, 3, 240, 80, False, True, 2), B(80, 3, 200, 80, False, True, 1), B(80, 3, 184, 80, False, True, 1),
        B(80, 3, 184, 80, False, True, 1), B(80, 3, 480, 112, True, True, 1), B(112, 3, 672, 112, True, True, 1),
        B(112, 5, 672, 160, True, True, 2, d), B(160, 5, 960, 160, True, True, 1, d),
        B(160, 5, 960, 160, True, True, 1, d),
    ]
    return cfg, 1280


def _small_config(dilated: bool) -> tuple[list[BlockConfig], int]:
    d = 2 if dilated else 1
    B = BlockConfig
    cfg = [
        B(16, 3, 16, 16, True, False, 2), B(16, 3, 72, 24, False, False, 2), B(24, 3, 88, 24, False, False, 1),
        B(24, 5, 96, 40, True, True, 2), B(40, 5, 240, 40, True, True, 1), B(40, 5, 240, 40, True, True, 1),
        B(40, 5, 120, 48, True, True, 1), B(48, 5, 144, 48, True, True, 1), B(48, 5, 288, 96, True, True, 2, d),
        B(96, 5, 576, 96, True, True, 1, d), B(96, 5, 576, 96, True, True, 1, d),
    ]
    return cfg, 1024


# ---------------------------------------------------------------- models


class MobileNetV3(nn.Module):
    def __init__(self, config: list[BlockConfig], last_channel: int, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
        layers: list[nn.Module] = [ConvBNAct(3, config[0].cin, 3, stride=2, norm_layer=norm_layer,
                                             activation=nn.Hardswish)]
        layers += [InvertedResidual(c, norm_layer) for c in config]
        last_in = config[-1].cout
        layers.append(ConvBNAct(last_in, 6 * last_in, 1, norm_layer=norm_layer, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, last_channel), nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True), nn.Linear(last_channel, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class LRASPPHead(nn.Module):
    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low, high = features["low"], features["high"]
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """Lite R-ASPP: returns ``{"out": logits}`` at the input resolution."""

    def __init__(self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128):
        super().__init__()
        self.backbone = backbone
        self.classifier = LRASPPHead(low_channels, high_channels, num_classes, inter_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        out = self.classifier(features)
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return OrderedDict(out=out)


def _lraspp(config_fn, num_classes: int) -> LRASPP:
    config, last_channel = config_fn(dilated=True)
    features = MobileNetV3(config, last_channel).features
    # Stage boundaries: the stem, every strided block, and the last conv (torchvision's rule).
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "is_strided", False)] + [len(features) - 1]
    low_pos, high_pos = stages[-4], stages[-1]  # C2 at output stride 8, C5 at 16
    backbone = FeatureTaps(features, {str(low_pos): "low", str(high_pos): "high"})
    return LRASPP(backbone, features[low_pos].out_channels, features[high_pos].out_channels, num_classes)


# ---------------------------------------------------------------- builders

_SEG = dict(task="segmentation", input_size=(3, 520, 520), output_names=("out",), num_classes=21,
            family="mobilenetv3", paper=PAPER)
_CLS = dict(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
            family="mobilenetv3", paper=PAPER, resize="center_crop")


@register_model(aliases=("lraspp_mobilenetv3",), published_params=3_221_538, params_tolerance=0.0, **_SEG,
                notes="state dict compatible with torchvision lraspp_mobilenet_v3_large")
def lraspp_mobilenetv3_large(num_classes: int = 21) -> LRASPP:
    return _lraspp(_large_config, num_classes)


@register_model(**_SEG, notes="LR-ASPP on the dilated MobileNetV3-Small (low: C2 stride 8, high: C5 stride 16)")
def lraspp_mobilenetv3_small(num_classes: int = 21) -> LRASPP:
    return _lraspp(_small_config, num_classes)


@register_model(published_params=5_483_032, params_tolerance=0.0, **_CLS)
def mobilenetv3_large(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(*_large_config(dilated=False), num_classes=num_classes)


@register_model(published_params=2_542_856, params_tolerance=0.0, **_CLS)
def mobilenetv3_small(num_classes: int = 1000) -> MobileNetV3:
    return MobileNetV3(*_small_config(dilated=False), num_classes=num_classes)
