"""HetConv: heterogeneous-kernel convolutions, and HetConv-ResNet-34.

Singh et al., "HetConv: Heterogeneous Kernel-Based Convolutions for Deep CNNs", CVPR 2019
(seed 003). In a HetConv with part ``P`` every filter uses 3x3 kernels on 1/P of its input
channels and 1x1 kernels on the others; filter ``n`` uses a 3x3 kernel on input channel
``i`` when ``(i - n) % P == 0`` (the seed's rule, a shifted pattern), and sums the results.

:class:`HetConv` keeps one canonical set of parameters, the same state dict whatever
``form`` computes it:

* ``weight3`` ``(S3, 3, 3)``: the 3x3 kernels, listed filter by filter, input channel
  ascending (``S3`` is the number of 3x3 positions; when ``P`` divides ``in_channels`` it
  is ``out * in / P`` and ``weight3.view(out, in // P, 3, 3)[n, k]`` is the kernel of filter
  ``n`` on input channel ``n % P + P * k``);
* ``weight1`` ``(S1,)``: the 1x1 kernels in the same order (``S1 = out * in - S3``);
* ``bias`` ``(out,)``, optional (off in the classifiers, a BatchNorm follows).

So the parameter count is exactly the paper's, ``9 * S3 + S1`` (plus the bias): no
zero-padded or masked entries are stored. The ``form`` attribute picks how the layer is computed:

* ``"reference"``: the seed's way, ``out * in`` single-channel convolutions summed. Exact by
  definition, but its ONNX graph has thousands of nodes; only usable at small channel
  counts. Kept as the ground truth for the other forms.
* ``"dense"``: one dense 3x3 convolution whose weight holds the 3x3 kernels and the 1x1
  kernels zero-padded to 3x3 (centre tap). Exact for every shape and stride.
* ``"grouped"``: a grouped 3x3 convolution with ``P`` groups plus a pointwise 1x1
  convolution holding the 1x1 kernels (zero where the 3x3 kernel sits), summed. Filters
  with residue ``r = n % P`` use 3x3 kernels exactly on the input channels with residue
  ``r``, so after permuting the input channels by residue (channel ``r + P*k`` goes to
  ``r * in/P + k``), group ``r`` of the grouped convolution computes the 3x3 part of the
  filters ``r, r + P, ...``; the output is permuted back. This needs equal-size groups, i.e.
  ``in_channels % P == 0`` and ``out_channels % P == 0`` (a permutation is skipped when it
  is the identity: ``in == P`` for the input, ``out == P`` for the output, or ``P == 1``). Otherwise the
  layer falls back to the dense form (see :attr:`HetConv.effective_form`). It costs
  ``out * in * (9 / P + 1)`` multiply-adds per pixel against ``9 * out * in`` for dense
  (the extra ``out * in / P`` over the reference are the pointwise zeros).

The convolution weights of the dense and grouped forms are computed from the canonical
parameters with gather / slice / concat / reshape / transpose only, which the ONNX exporter
folds into plain initializers (so quantizers see ordinary ``Conv`` weights); the channel
permutations export as one ``Gather`` each. A following eval-mode BatchNorm can be folded
into the canonical parameters with :meth:`HetConv.fold_batchnorm` (exact in every form).
The module traces with ``torch.fx`` in every form.

``hetconv_resnet34_p4`` is the paper's ResNet-34 experiment (ImageNet): torchvision's
ResNet-34 with every 3x3 convolution of the basic blocks replaced by HetConv with P = 4
(the 7x7 stem, the 1x1 projection shortcuts and the classifier stay). It was chosen over
the VGG-16 form because it is much lighter to build, export and test (VGG-16's fully
connected layers alone hold 123.6M parameters, 16x this whole model) and its global
pooling makes it valid at any input size, where VGG's 7x7 adaptive pooling needs a rewrite. All its widths are
multiples of 4, so every HetConv runs in the grouped form by default.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeexport.zoo.layers import ResNetLayout
from edgeexport.zoo.registry import register_model

PAPER = "Singh et al., HetConv: Heterogeneous Kernel-Based Convolutions for Deep CNNs, CVPR 2019"
FORMS = ("reference", "dense", "grouped")
_CENTRE = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)  # a 1x1 kernel as a 3x3 one

# ---------------------------------------------------------------- HetConv


def _constant(array: np.ndarray) -> torch.Tensor:
    """A tensor of shape-derived constants; when tracing for export it becomes a graph constant, as meant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.from_numpy(array)


def hetconv_mask(out_channels: int, in_channels: int, part: int) -> np.ndarray:
    """Boolean ``(out, in)`` array: True where filter ``n`` uses a 3x3 kernel on channel ``i``."""
    n = np.arange(out_channels)[:, None]
    i = np.arange(in_channels)[None, :]
    return (i - n) % part == 0


def grouped_form_is_exact(in_channels: int, out_channels: int, part: int) -> bool:
    """Whether the grouped form (P equal groups after a channel permutation) can express the layer."""
    return in_channels % part == 0 and out_channels % part == 0


class HetConv(nn.Module):
    """Heterogeneous 3x3 / 1x1 convolution with part ``P`` (``part``); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, part: int = 4, stride: int = 1, bias: bool = False,
                 form: str = "grouped"):
        super().__init__()
        if part < 1 or part > in_channels:
            raise ValueError(f"part must be in [1, in_channels={in_channels}], not {part}")
        self.in_channels, self.out_channels, self.part, self.stride = in_channels, out_channels, part, stride
        mask = hetconv_mask(out_channels, in_channels, part)
        self.n3 = int(mask.sum())
        self.n1 = mask.size - self.n3
        self.weight3 = nn.Parameter(torch.empty(self.n3, 3, 3))
        self.weight1 = nn.Parameter(torch.empty(self.n1))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.form = form
        self._cache: dict[str, torch.Tensor] = {}
        self.reset_parameters()

    # -- form

    @property
    def form(self) -> str:
        return self._form

    @form.setter
    def form(self, value: str) -> None:
        if value not in FORMS:
            raise ValueError(f"HetConv form must be one of {FORMS}, not {value!r}")
        self._form = value

    @property
    def grouped_is_exact(self) -> bool:
        return grouped_form_is_exact(self.in_channels, self.out_channels, self.part)

    @property
    def effective_form(self) -> str:
        """The form actually computed: ``grouped`` falls back to ``dense`` when groups would be unequal."""
        if self.form == "grouped" and not self.grouped_is_exact:
            return "dense"
        return self.form

    def reset_parameters(self) -> None:
        # Kaiming-normal (fan_out, ReLU) as the ResNet family, counting only the taps that exist:
        # each input channel feeds out/P 3x3 kernels and the rest 1x1 kernels.
        fan_out = (9 * self.n3 + self.n1) / self.in_channels
        std = math.sqrt(2.0 / fan_out)
        with torch.no_grad():
            self.weight3.normal_(0.0, std)
            self.weight1.normal_(0.0, std)
            if self.bias is not None:
                self.bias.zero_()

    # -- index tables (shape-only constants, computed once with numpy so tracing sees constants)

    def _index(self, name: str, like) -> torch.Tensor:
        t = self._cache.get(name)
        if t is None:
            t = self._cache[name] = _constant(self._make_index(name))
        if isinstance(like, torch.Tensor) and t.device != like.device:  # (like is a proxy under torch.fx)
            t = self._cache[name] = t.to(like.device)
        return t.to(like.device)  # no-op in eager; keeps torch.fx traces free of control flow

    def _make_index(self, name: str) -> np.ndarray:
        out, cin, p = self.out_channels, self.in_channels, self.part
        mask = hetconv_mask(out, cin, p).reshape(-1)
        pos3 = np.cumsum(mask) - 1  # position in weight3 where mask holds
        pos1 = np.cumsum(~mask) - 1  # position in weight1 elsewhere
        if name == "dense":  # rows of cat([weight3, weight1 as centre-tap 3x3]) for every (n, i)
            return np.where(mask, pos3, self.n3 + pos1).astype(np.int64)
        if name == "perm_in":  # channel r + P*k -> position r*in/P + k
            return np.arange(cin).reshape(cin // p, p).T.reshape(-1).astype(np.int64)
        if name == "unperm_out":  # grouped output position of filter n is (n % P) * out/P + n // P
            n = np.arange(out)
            return ((n % p) * (out // p) + n // p).astype(np.int64)
        raise KeyError(name)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # -- weights of each form (differentiable functions of the canonical parameters)

    def dense_weight(self) -> torch.Tensor:
        """``(out, in, 3, 3)`` weight of the equivalent dense 3x3 convolution."""
        centre = _constant(_CENTRE).to(dtype=self.weight1.dtype, device=self.weight1.device)
        table = torch.cat([self.weight3, self.weight1[:, None, None] * centre], dim=0)
        w = table.index_select(0, self._index("dense", table))
        return w.reshape(self.out_channels, self.in_channels, 3, 3)

    def grouped_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(grouped 3x3 weight ``(out, in/P, 3, 3)`` in group-major filter order, pointwise ``(out, in, 1, 1)``)."""
        out, cin, p = self.out_channels, self.in_channels, self.part
        if not self.grouped_is_exact:
            raise ValueError(f"the grouped form needs in_channels ({cin}) and out_channels ({out}) divisible by "
                             f"part ({p})")
        w3 = self.weight3.reshape(out // p, p, cin // p, 3, 3).transpose(0, 1).reshape(out, cin // p, 3, 3)
        if self.n1 == 0:
            return w3, None
        # Filter n = P*j + r has its 1x1 kernels on channels P*k + q, q != r, in weight1 as [n, k, q - (q > r)]:
        # insert a zero at q = r for each residue r (slices and concatenations, folded by the exporter).
        w1 = self.weight1.reshape(out // p, p, cin // p, p - 1)
        zero = w1.new_zeros(out // p, cin // p, 1)
        rows = [torch.cat([w1[:, r, :, :r], zero, w1[:, r, :, r:]], dim=-1) for r in range(p)]
        return w3, torch.stack(rows, dim=1).reshape(out, cin, 1, 1)

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """Fold an eval-mode BatchNorm that follows this layer into it (the caller replaces ``bn``).

        Every kernel of filter ``n`` is scaled by ``gamma_n / sqrt(var_n + eps)``, so the fold is
        exact in every form; a bias is added if the layer had none.
        """
        if bn.num_features != self.out_channels or bn.running_mean is None:
            raise ValueError("fold_batchnorm needs a BatchNorm2d with running statistics over the output channels")
        scale = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        mask = hetconv_mask(self.out_channels, self.in_channels, self.part)
        filters3 = torch.from_numpy(np.nonzero(mask)[0]).to(scale.device)  # filter of each weight3 row
        filters1 = torch.from_numpy(np.nonzero(~mask)[0]).to(scale.device)
        self.weight3.mul_(scale[filters3].to(self.weight3.dtype)[:, None, None])
        self.weight1.mul_(scale[filters1].to(self.weight1.dtype))
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0)
        if self.bias is None:
            self.bias = nn.Parameter(bias.to(self.weight3.dtype))
        else:
            self.bias.copy_(bias)

    # -- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        form = self.effective_form
        if form == "dense":
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, 1)
        if form == "grouped":
            return self._forward_grouped(x)
        return self._forward_reference(x)

    def _forward_grouped(self, x: torch.Tensor) -> torch.Tensor:
        p = self.part
        w3, w1 = self.grouped_weights()
        xp = x if self.in_channels == p or p == 1 else x.index_select(1, self._index("perm_in", x))
        y = F.conv2d(xp, w3, None, self.stride, 1, groups=p)
        if not (self.out_channels == p or p == 1):
            y = y.index_select(1, self._index("unperm_out", y))
        if w1 is not None:
            y = y + F.conv2d(x, w1, None, self.stride)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        mask = hetconv_mask(self.out_channels, self.in_channels, self.part)
        channels = [x[:, i:i + 1] for i in range(self.in_channels)]
        k3 = k1 = 0
        outs = []
        for n in range(self.out_channels):
            acc = None
            for i in range(self.in_channels):
                if mask[n, i]:
                    y = F.conv2d(channels[i], self.weight3[k3].view(1, 1, 3, 3), None, self.stride, 1)
                    k3 += 1
                else:
                    y = F.conv2d(channels[i], self.weight1[k1].view(1, 1, 1, 1), None, self.stride)
                    k1 += 1
                acc = y if acc is None else acc + y
            outs.append(acc)
        y = torch.cat(outs, dim=1)
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, part={self.part}, stride={self.stride}, form={self.form}"
        if self.effective_form != self.form:
            s += f" (computed {self.effective_form})"
        return s + (", bias=True" if self.bias is not None else "")


# ---------------------------------------------------------------- HetConv-ResNet


class HetBasicBlock(nn.Module):
    """ResNet basic block with both 3x3 convolutions replaced by HetConv."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 part: int = 4, form: str = "grouped"):
        super().__init__()
        self.conv1 = HetConv(inplanes, planes, part, stride, form=form)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = HetConv(planes, planes, part, 1, form=form)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def residual_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class HetResNet(ResNetLayout):
    """torchvision's ResNet layout (module names included) with HetConv basic blocks.

    HetConv initialises itself (Kaiming on the taps that exist); ``init_resnet_style`` only
    touches the stem, shortcuts and BatchNorms.
    """

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 1000, part: int = 4, form: str = "grouped"):
        def block(inplanes, planes, stride, downsample):
            return HetBasicBlock(inplanes, planes, stride, downsample, part, form)

        super().__init__(block, 1, layers, num_classes)


# ---------------------------------------------------------------- builders


@register_model(task="classification", input_size=(3, 224, 224), output_names=("logits",), num_classes=1000,
                family="hetconv", paper=PAPER, resize="center_crop",
                notes="ResNet-34 with HetConv (P=4) in place of every 3x3 block convolution; 7,740,200 parameters "
                      "(ResNet-34: 21,797,672); grouped form by default (exact, see edgeexport.rewrite.hetconv)")
def hetconv_resnet34_p4(num_classes: int = 1000, form: str = "grouped") -> HetResNet:
    return HetResNet((3, 4, 6, 3), num_classes, part=4, form=form)
