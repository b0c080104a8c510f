"""The ``reparameterize`` rewrite calls a block's own hook, and only a hook: a method of the block's class.
A submodule named ``fuse`` or ``reparameterize`` (a neck's fusion layers) is part of the model, not a hook;
a hook that raises leaves its block unfused, says so, and does not fail the export."""
import importlib.util

import pytest
import torch
from torch import nn

import edgeexport
from edgeexport.rewrite import apply_rewrites
from edgeexport.rewrite.reparameterize import reparameterization_hook

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (pip install 'edgeexport[timm]')")


class Neck(nn.Module):
    """BiFPN / PANet style: the fusion layers are an nn.ModuleList attribute named ``fuse``."""

    def __init__(self, c):
        super().__init__()
        self.fuse = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)])

    def forward(self, x):
        for layer in self.fuse:
            x = torch.relu(layer(x))
        return x


class Head(nn.Module):
    """A layer that happens to be called ``reparameterize`` (a VAE-style head)."""

    def __init__(self, c, classes):
        super().__init__()
        self.reparameterize = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        return self.reparameterize(x)


class BrokenHook(nn.Module):
    """A block whose hook exists but raises halfway, after changing itself."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)

    def switch_to_deploy(self):
        self.conv = nn.Identity()  # a half-done fuse: must not survive
        raise RuntimeError("branch shapes differ")


def _timm_block(c):
    from edgeexport.libraries import _import

    _import("timm")
    from timm.models.byobnet import MobileOneBlock

    block = MobileOneBlock(c, c, 3, num_conv_branches=2)
    for m in block.modules():  # trained-looking BatchNorm statistics, so fusing them is not a no-op
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return block


def user_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), _timm_block(8), Neck(8), BrokenHook(8),
                         Head(8, 5)).eval()


def test_a_hook_is_a_method_of_the_class_not_an_attribute():
    assert reparameterization_hook(Neck(4)) is None  # a ModuleList named fuse is callable, and no hook
    assert reparameterization_hook(Head(4, 2)) is None
    assert reparameterization_hook(BrokenHook(4)) == "switch_to_deploy"

    class Fuses(nn.Module):
        def fuse(self):
            return nn.Identity()

    assert reparameterization_hook(Fuses()) == "fuse"


@needs_timm
def test_only_real_hooks_run_and_a_raising_hook_leaves_its_block_as_it_was():
    model = user_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    notes: list[str] = []
    fused, counts = apply_rewrites(model, ["reparameterize"], notes=notes)
    assert counts == {"reparameterize": 1}  # timm's MobileOneBlock, nothing else
    block = fused[1]
    assert block.reparam_conv is not None and not hasattr(block, "conv_kxk")  # its branches are gone
    assert isinstance(fused[2].fuse, nn.ModuleList) and len(fused[2].fuse) == 2  # the neck's layers untouched
    assert isinstance(fused[3].conv, nn.Conv2d)  # the raising hook's half-done change did not survive
    assert isinstance(fused[4].reparameterize, nn.Conv2d)
    assert len(notes) == 1 and notes[0].startswith("reparameterize: 3 (BrokenHook) left unfused: its "
                                                   "switch_to_deploy() raised RuntimeError: branch shapes differ")
    with torch.no_grad():
        after = fused(x)
    assert (before - after).abs().max() < 1e-4 * before.abs().max()
    assert before.std() > 0.05 * before.abs().max()  # not a constant output that agrees vacuously


@needs_timm
def test_the_export_of_such_a_model_passes_and_its_report_says_what_was_left(tmp_path):
    rep = edgeexport.export(user_model(), (1, 3, 64, 64), targets=["onnx"], output=tmp_path, task="segmentation", settle_bn=True)
    onnx = rep.artifacts["onnx"]
    assert onnx.status == "passed", onnx.notes
    assert onnx.record().rewrites["reparameterize"] == 1
    prep = rep.model.preparation
    assert "rewrite reparameterize: 1 module(s) of the copy the targets convert" in prep, prep
    assert any("BrokenHook" in p and "left unfused" in p for p in prep), prep
    assert onnx.worst("snr_db") > 60
