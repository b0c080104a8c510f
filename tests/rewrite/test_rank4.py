"""Rank-4 forms of timm blocks (for ncnn): the same numbers, no tensor above rank 4, no strided slice, and
a block whose forward is not the one the form was written for is left alone."""
import importlib.util

import pytest
import torch

from edgeexport.rewrite import apply_rewrites
from edgeexport.rewrite import rank4

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (pip install 'edgeexport[timm]')")


@pytest.fixture(scope="module")
def timm():
    from edgeexport.libraries import import_torchvision

    import_torchvision()  # timm imports torchvision, which needs the stub beside this torch build
    import timm

    return timm


def _ranks(module, x) -> set[int]:
    program = torch.export.export(module, (x,))
    return {len(n.meta["val"].shape) for n in program.graph.nodes
            if isinstance(n.meta.get("val"), torch.Tensor)}


def test_vit_attention_splits_qkv_without_a_rank_5_tensor(timm):
    torch.manual_seed(0)
    block = timm.layers.Attention(48, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 10, 48)
    with torch.no_grad():
        want = block(x)
    assert 5 in _ranks(block, x)  # timm's own forward goes through [B, N, 3, heads, d]
    model, counts = apply_rewrites(torch.nn.Sequential(block), ["rank4"])
    assert counts == {"rank4": 1}
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert max(_ranks(model, x)) <= 4
    assert block.forward.__func__ is type(block).forward  # the original was copied, not edited


def test_levit_strided_downsample_is_a_strided_pooling(timm):
    from timm.models.levit import Downsample

    block = Downsample(stride=2, resolution=7).eval()
    x = torch.randn(1, 49, 16)
    model, counts = apply_rewrites(torch.nn.Sequential(block), ["rank4"])
    assert counts == {"rank4": 1}
    torch.testing.assert_close(model(x), block(x), rtol=0, atol=0)  # the same elements, picked
    program = torch.export.export(model, (x,))
    steps = [n.args[4] for n in program.graph.nodes if n.target == torch.ops.aten.slice.Tensor and len(n.args) > 4]
    assert all(s == 1 for s in steps)


def test_a_form_that_does_not_reproduce_the_block_is_not_applied(timm, monkeypatch):
    """The self-check: a form that changes the numbers (here: by 1%) leaves the block as it was."""
    good, example = rank4.FORMS["timm.layers.attention.Attention"]
    monkeypatch.setitem(rank4.FORMS, "timm.layers.attention.Attention",
                        (lambda self, x, *a, **k: good(self, x) * 1.01, example))
    block = timm.layers.Attention(32, num_heads=2).eval()
    model, counts = apply_rewrites(torch.nn.Sequential(block), ["rank4"])
    assert counts == {"rank4": 0} and "forward" not in vars(model[0])


def test_a_masked_call_falls_back_to_the_block_s_own_forward(timm):
    torch.manual_seed(1)
    block = timm.layers.Attention(32, num_heads=2).eval()
    model, _ = apply_rewrites(torch.nn.Sequential(block), ["rank4"])
    x, mask = torch.randn(1, 6, 32), torch.zeros(1, 1, 6, 6).masked_fill(torch.eye(6, dtype=torch.bool), -1e4)
    with torch.no_grad():
        torch.testing.assert_close(model[0](x, attn_mask=mask), block(x, attn_mask=mask))
        assert not torch.allclose(model[0](x, attn_mask=mask), model[0](x))  # the mask mattered
