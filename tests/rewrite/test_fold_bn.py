import copy

import pytest
import torch
from torch import nn

from edgeexport.rewrite import apply_rewrites
from edgeexport.zoo import create_model


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("name,shape,left", [("lraspp_mobilenetv3_small", (1, 3, 64, 96), 0),
                                             ("pyconvresnet18", (1, 3, 64, 64), 0),  # incl. BN after PyConv concat
                                             ("pyconvsegnet50", (1, 3, 65, 65), 1),  # aux head runs in training only
                                             ("hetconv_resnet34_p4", (1, 3, 64, 64), 0)])  # BN after HetConv's Add
def test_fold_is_exact_and_removes_batchnorms(name, shape, left):
    model = create_model(name, weights="init")
    _randomize_bn(model)
    folded, counts = apply_rewrites(model, ["fold_bn"])
    assert counts["fold_bn"] > 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == left
    x = torch.randn(shape)
    with torch.no_grad():
        a, b = model(x), folded(x)
    a, b = (a["out"], b["out"]) if isinstance(a, dict) else (a, b)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_shared_batchnorm_is_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.c1(x)) + self.bn(self.c2(x))

    m = Shared().eval()
    _randomize_bn(m)
    r, counts = apply_rewrites(m, ["fold_bn"])
    assert counts["fold_bn"] == 0 and isinstance(r.bn, nn.BatchNorm2d)


def test_refuses_training_mode():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError):
        copy.deepcopy(m) and apply_rewrites(m, ["fold_bn"])
