"""SPPNet: a classifier for any input size, exported once with dynamic H/W through the masked max-pool rewrite."""
import pytest
import torch
from torch import nn

import edgeexport.zoo.spp  # noqa: F401  (registers spp_*)
from edgeexport.rewrite.adaptive_pool import AdaptiveMaxPool2dMasked, rewrite_adaptive_max_pool
from edgeexport.zoo import build_model, get_entry
from edgeexport.zoo.spp import SpatialPyramidPooling
from tests.support.onnx_check import assert_onnx_matches


def test_registered_for_any_size():
    meta = get_entry("spp_pyconvresnet18").meta
    assert meta.task == "classification" and meta.num_classes == 1000 and meta.output_names == ("logits",)
    assert meta.size_multiple == 1 and meta.dynamic_hw


@pytest.mark.parametrize("hw", [(7, 9), (11, 5), (1, 1), (4, 4), (2, 3)])
def test_pyramid_has_fixed_length(hw):
    spp = SpatialPyramidPooling((1, 2, 4))
    x = torch.randn(2, 6, *hw)
    y = spp(x)
    assert y.shape == (2, 6 * 21)
    assert torch.equal(y[:, :6], x.amax(dim=(2, 3)))  # level 1 is the global maximum
    assert torch.equal(y[:, 6:30].view(2, 6, 2, 2), nn.AdaptiveMaxPool2d(2)(x))


def test_classifier_accepts_any_size_and_names_trunk_like_pyconvresnet18():
    m = build_model("spp_pyconvresnet18", num_classes=7)
    with torch.no_grad():
        for hw in [(64, 64), (40, 150), (97, 61), (20, 20)]:
            assert m(torch.randn(1, 3, *hw)).shape == (1, 7)
    trunk = {k[len("backbone."):] for k in m.state_dict() if k.startswith("backbone.")}
    ref = build_model("pyconvresnet18").state_dict().keys()
    assert trunk == {k for k in ref if not k.startswith("fc.")}
    assert m.fc.in_features == 512 * 21


def test_rewrite_replaces_every_level_exactly():
    m = build_model("spp_pyconvresnet18", num_classes=5)
    x = torch.randn(1, 3, 160, 96)  # 5x3 feature map: neither level 2 nor 4 divides it
    with torch.no_grad():
        ref = m(x)
        assert rewrite_adaptive_max_pool(m) == 3  # the 1x1 level too: a plain amax (ExecuTorch has no kernel)
        assert all(isinstance(p, AdaptiveMaxPool2dMasked) for p in m.spp.pools)
        assert torch.equal(m(x), ref)


def test_pyramid_head_onnx_dynamic_at_non_dividing_feature_sizes(tmp_path):
    torch.manual_seed(0)  # the same head every run: unseeded, its worst error wandered around the bound
    head = nn.Sequential(nn.Conv2d(3, 8, 1), SpatialPyramidPooling((1, 2, 4)), nn.Linear(8 * 21, 4)).eval()
    # the masked max is exact; what remains is fp32 rounding in ONNX Runtime's conv and matmul (1.1e-6 at most)
    errors = assert_onnx_matches(head, ("logits",), "tensor", tmp_path, (8, 8), [(7, 9), (11, 5), (13, 6), (3, 2)],
                                 tol=2e-6, extra_rewrites=[rewrite_adaptive_max_pool])
    assert len(errors) == 5


def test_spp_model_onnx_dynamic_hw_matches_eager(tmp_path):
    m = build_model("spp_pyconvresnet18", num_classes=10)
    # feature maps 4x4 (export), 5x3, 3x5, 3x3, 5x2, 2x1: none but the export size divided by both 2 and 4
    assert_onnx_matches(m, ("logits",), "tensor", tmp_path, (128, 128),
                        [(160, 96), (96, 160), (70, 90), (150, 40), (33, 17)],
                        extra_rewrites=[rewrite_adaptive_max_pool])
