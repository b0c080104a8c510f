"""Small user models for end-to-end tests (``--model tests.support.models:NAME``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySegmenter(nn.Module):
    """Two outputs in a dict: ``out`` (5-class logits at input size) and ``aux`` (stride-4 logits)."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.head = nn.Conv2d(64, num_classes, 1)
        self.aux = nn.Conv2d(32, num_classes, 1)

    def forward(self, x):
        f = self.stem(x)
        g = F.interpolate(self.pool(f), f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(torch.cat([f, g], 1))
        return {"out": F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False), "aux": self.aux(f)}


def tiny_segmenter(num_classes: int = 5):
    return TinySegmenter(num_classes).eval()


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        f = self.features(x)
        return self.fc(f.mean((2, 3))), f


def tiny_classifier(num_classes: int = 10):
    return TinyClassifier(num_classes).eval()


class ExportDiffers(nn.Module):
    """Computes something else while being exported: its ONNX graph must fail parity."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if torch.onnx.is_in_onnx_export():
            y = y + 0.5
        return y


def export_differs():
    return ExportDiffers().eval()


def not_a_module():
    return 42


class OutlierNet(nn.Module):
    """One activation channel is 500x larger than the others (and scaled back by the next conv).

    Per-tensor int8 activations spend their whole range on the outlier channel and flatten the
    others, so the output SNR collapses unless that part of the graph stays in float: the case
    the accuracy-aware loop has to solve.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.b.weight[0] *= 500.0
            self.b.bias[0] *= 500.0
            self.c.weight[:, 0] /= 500.0

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def outlier_net():
    return OutlierNet().eval()


class Overflow16(nn.Module):
    """An intermediate activation above fp16's 65504 (the output itself is small)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        big = self.a(x) * 1e5 + 1e5
        return torch.relu(big - 1e5) / 1e5


def overflow16():
    return Overflow16().eval()


class ConvStack(nn.Module):
    """Twelve conv + BN + ReLU layers at 32 channels: enough activations for calibration tests, few enough that
    entropy calibration (a KL search per activation) stays quick."""

    def __init__(self, depth: int = 12, num_classes: int = 10):
        super().__init__()
        torch.manual_seed(3)
        layers, c = [], 3
        for i in range(depth):
            layers += [nn.Conv2d(c, 32, 3, 2 if i in (0, 3, 6) else 1, 1), nn.BatchNorm2d(32), nn.ReLU()]
            c = 32
        self.features = nn.Sequential(*layers)
        for m in self.features:
            if isinstance(m, nn.BatchNorm2d):  # spread statistics, so activations are not all alike
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def conv_stack():
    return ConvStack().eval()


class Fragile(nn.Module):
    """A small feature extractor (32 maps at stride 4) with one convolution int8 cannot carry, for the
    float-set search.

    ``features.2``'s filters each hold one weight 40x the others, on an input channel that is nearly zero
    (``features.0`` leaves channel 0 at 0.001): eager hardly notices it, but int8 weights, scaled per output
    channel to that one weight, keep about 3 levels for all the others. Keeping ``features.2`` in float repairs
    the model; every other layer quantizes well.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        with torch.no_grad():
            first, fragile = self.features[0], self.features[2]
            first.weight[0].zero_()
            first.bias[0] = 1e-3
            fragile.weight[:, 0, 1, 1] = 40 * fragile.weight.abs().amax(dim=(1, 2, 3))

    def forward(self, x):
        return self.features(x)


def fragile():
    return Fragile().eval()
