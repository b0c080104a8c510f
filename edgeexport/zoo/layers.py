"""Small building blocks shared by several model families."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, as a Sequential (keys .0/.1)."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, dilation=1,
                 norm_layer=nn.BatchNorm2d, activation=nn.ReLU):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            norm_layer(cout),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class FeatureTaps(nn.ModuleDict):
    """Run children in order and return the outputs of the named ones.

    State-dict compatible with torchvision's ``IntermediateLayerGetter``: children keep
    their names, and children after the last tap are dropped.
    """

    def __init__(self, model: nn.Module, taps: dict[str, str]):
        names = [n for n, _ in model.named_children()]
        if not set(taps) <= set(names):
            raise ValueError(f"taps {sorted(set(taps) - set(names))} are not children of the model")
        layers = OrderedDict()
        remaining = dict(taps)
        for name, module in model.named_children():
            layers[name] = module
            remaining.pop(name, None)
            if not remaining:
                break
        super().__init__(layers)
        self.taps = dict(taps)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.taps:
                out[self.taps[name]] = x
        return out


def init_resnet_style(model: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BatchNorm, as the ResNet family initialises."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
