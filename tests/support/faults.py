"""The quantization-hostile corpus: the trained PyConvResNet-18 with function-preserving faults that int8 finds
hard, each the failure the field knows (Nagel et al., ICCV 2019; Bondarenko et al., EMNLP 2021 for the outliers
of residual adds; the calibration literature for rare spikes). Every fault leaves the float function as it was
(within fp32 rounding, checked by :func:`check_function`); only what int8 does with it changes.

* ``wide_channel``: one channel of ``layer4.0.bn1``'s output 200x wider than the others, the next convolution's
  weights on it 200x smaller (the DFQ paper's MobileNetV2 case). Per-tensor activation scales starve every other
  channel; equalization undoes it.
* ``outlier_weight``: the mirror: ``layer4.1.bn1``'s channel 200x narrower, the next convolution's weights on it
  200x larger, so every filter of ``layer4.1.conv2`` holds one weight 200x its others. Per-channel weight
  scales are set by that one weight; equalization undoes it.
* ``residual_100x``: ``layer3.1``'s residual add takes the block's output branch and its shortcut scaled 100x
  (``(branch + 100 * shortcut) - 99 * shortcut``): the add's two inputs differ 100x in range, and its output's
  int8 scale leaves the branch a few levels. Equalization cannot reach it; keeping the block in float can.
* ``rare_spikes``: ``layer3``'s output plus a spike term that is non-zero on about 0.1% of its values and 50x
  their size, subtracted again (``(t + s) - s``): the range of ``t + s`` is set by rare spikes. Min/max
  calibration spends the levels on them; a percentile or entropy calibration clips them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

FACTOR = 200.0
CASES = ("wide_channel", "outlier_weight", "residual_100x", "rare_spikes")


def trained_pyconvresnet18():
    """The shipped trained PyConvResNet-18 (shapes task), or None where its weights are not here."""
    from edgeexport.zoo import create_model
    from edgeexport.zoo.pretrained import find_trained

    w = find_trained("pyconvresnet18", "shapes")
    if not w.available():
        return None
    model = create_model("pyconvresnet18", num_classes=w.num_classes).eval()
    model.load_state_dict(w.state_dict())
    return model


def _rescale_channel(bn: nn.BatchNorm2d, consumer: nn.Conv2d, channel: int, factor: float) -> None:
    """``bn``'s output channel times ``factor``, the consumer's weights on it divided by ``factor`` (ReLU between:
    positive-homogeneous, so the function is unchanged)."""
    with torch.no_grad():
        bn.weight[channel] *= factor
        bn.bias[channel] *= factor
        consumer.weight[:, channel] /= factor


class ScaledResidual(nn.Module):
    """A PyConvResNet basic block whose residual add takes the shortcut 100x: ``relu((branch + 100 * shortcut)
    - 99 * shortcut)``, the block's function within fp32 rounding."""

    def __init__(self, block: nn.Module, scale: float = 100.0):
        super().__init__()
        self.block, self.scale = block, scale

    def forward(self, x):
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        branch = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x)))))
        return torch.relu((branch + self.scale * identity) - (self.scale - 1) * identity)


class Spikes(nn.Module):
    """``t + s - s`` after ``inner``, with ``s = gain * relu(t - threshold)``: where ``t`` passes ``threshold`` (set
    at its 99.9th percentile on the photographs), ``t + s`` spikes ``gain`` times over."""

    def __init__(self, inner: nn.Module, threshold: float, gain: float = 50.0):
        super().__init__()
        self.inner, self.gain = inner, gain
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x):
        t = self.inner(x)
        s = self.gain * torch.relu(t - self.threshold)
        return (t + s) - s


def _photos(side: int = 128, count: int = 4) -> torch.Tensor:
    """The bundled calibration photographs, ImageNet-normalised as the zoo's models expect."""
    import numpy as np

    from edgeexport.images import Preprocess, photos

    pre = Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.from_numpy(np.stack([pre(im, side, side) for _, im in photos("calib")[:count]])).float()


def faulted(case: str, model: nn.Module) -> nn.Module:
    """A copy of the trained PyConvResNet-18 ``model`` with the fault ``case`` (one of :data:`CASES`)."""
    m = copy.deepcopy(model).eval()
    if case == "wide_channel":
        _rescale_channel(m.layer4[0].bn1, m.layer4[0].conv2, 3, FACTOR)
    elif case == "outlier_weight":
        _rescale_channel(m.layer4[1].bn1, m.layer4[1].conv2, 7, 1 / FACTOR)
    elif case == "residual_100x":
        m.layer3[1] = ScaledResidual(m.layer3[1])
    elif case == "rare_spikes":
        with torch.no_grad():
            t = m.layer3(m.layer2(m.layer1(m.relu(m.bn1(m.conv1(_photos()))))))
        m.layer3 = Spikes(m.layer3, float(torch.quantile(t.flatten()[::7], 0.999)))
    else:
        raise ValueError(f"unknown fault {case!r}; one of {', '.join(CASES)}")
    return m


def check_function(clean: nn.Module, broken: nn.Module, side: int = 128) -> float:
    """The largest difference between the two models' logits on photographs, relative to the logits' scale."""
    x = _photos(side, 2)
    with torch.no_grad():
        a, b = clean(x), broken(x)
    return float((a - b).abs().max() / a.abs().max())
