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


class ResNetLayout(nn.Module):
    """torchvision's ResNet layout around any residual block: 7x7 stem + max-pool, four stages
    (64/128/256/512 planes, stride 1 then 2), strided 1x1 projection shortcuts, global pool, fc.

    ``block(inplanes, planes, stride, downsample)`` builds one block; ``expansion`` is its output
    width over ``planes``. Module names (``conv1``, ``bn1``, ``layerN.M``, ``downsample.0/1``,
    ``fc``) are torchvision's, which SCNet, Res2Net (timm) and HetConv-ResNet checkpoints share.
    """

    def __init__(self, block, expansion: int, layers, num_classes: int = 1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            setattr(self, f"layer{i}", self._make_layer(block, expansion, planes, n, 1 if i == 1 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * expansion, num_classes)
        init_resnet_style(self)

    def _make_layer(self, block, expansion, planes, blocks, stride) -> nn.Sequential:
        out = planes * expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(out, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


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
