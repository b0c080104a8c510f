"""The masked adaptive max pooling rewrite: exact at sizes the bins do not divide, dynamic H/W in ONNX."""
import numpy as np
import pytest
import torch
from torch import nn

from edgeexport.rewrite.adaptive_pool import AdaptiveMaxPool2dMasked, bin_mask, rewrite_adaptive_max_pool
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner


@pytest.mark.parametrize("size", [2, 4, 3, (2, 5), (None, 3), (4, None)])
@pytest.mark.parametrize("hw", [(7, 9), (11, 5), (13, 6), (4, 4), (3, 2), (1, 1), (60, 61)])
def test_masked_pooling_equals_adaptive_max_pooling(size, hw):
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    assert torch.equal(AdaptiveMaxPool2dMasked(size)(x), nn.AdaptiveMaxPool2d(size)(x))


def test_unbatched_input_and_negative_maps():
    x = -1000 - torch.rand(5, 7, 9)  # all values far below zero: the fill must not win any bin
    assert torch.equal(AdaptiveMaxPool2dMasked(4)(x), nn.AdaptiveMaxPool2d(4)(x))
    c = torch.full((1, 2, 11, 5), -3.5)
    assert torch.equal(AdaptiveMaxPool2dMasked(4)(c), nn.AdaptiveMaxPool2d(4)(c))


def test_bins_are_torch_adaptive_bins():
    # 7 rows in 4 bins: [0, 2), [1, 4), [3, 6), [5, 7) -- unequal and overlapping
    assert bin_mask(7, 4).int().tolist() == [[1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0],
                                             [0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert bin_mask(3, 4).sum(1).min() >= 1  # more bins than rows: never empty


def test_rewrite_covers_global_pooling_keeps_indices_and_state_dict():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveMaxPool2d(1), nn.AdaptiveMaxPool2d(4),
                      nn.AdaptiveMaxPool2d(2, return_indices=True), nn.AdaptiveAvgPool2d(3))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(1, 3, 9, 7)
    with torch.no_grad():
        ref = m[1](m[0](x))
    # global pooling too: ExecuTorch has no adaptive_max_pool2d kernel; it becomes a plain amax
    assert rewrite_adaptive_max_pool(m) == 2
    assert isinstance(m[1], AdaptiveMaxPool2dMasked) and isinstance(m[2], AdaptiveMaxPool2dMasked)
    assert isinstance(m[3], nn.AdaptiveMaxPool2d) and isinstance(m[4], nn.AdaptiveAvgPool2d)
    assert m[1].output_size == (1, 1) and m[2].output_size == (4, 4)
    with torch.no_grad():
        assert torch.equal(m[1](m[0](x)), ref)
    assert m.state_dict().keys() == before.keys()


def _export(m, x, path, dynamic=True):
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["y"],
                      dynamic_axes={"input": {2: "h", 3: "w"}} if dynamic else None)


def test_rewrite_exports_with_dynamic_sizes_and_is_bit_exact(tmp_path):
    """Exported as is, adaptive max pooling needs a static size; the rewrite takes dynamic H/W."""
    m = nn.Sequential(nn.AdaptiveMaxPool2d(4)).eval()
    with pytest.raises(Exception, match="input size not accessible"):
        _export(m, torch.randn(1, 3, 8, 8), tmp_path / "plain.onnx")
    rewrite_adaptive_max_pool(m)
    _export(m, torch.randn(1, 3, 8, 8), tmp_path / "masked.onnx")
    g = torch.Generator().manual_seed(0)
    with OnnxRuntimeRunner(tmp_path / "masked.onnx") as run:
        for hw in [(8, 8), (12, 12), (7, 9), (11, 5), (13, 6), (3, 2), (1, 1)]:
            x = torch.randn(1, 3, *hw, generator=g)
            got = run.infer({"input": x.numpy()})["y"]
            assert np.array_equal(got, nn.AdaptiveMaxPool2d(4)(x).numpy()), hw  # bit-exact: a max selects


def test_torchscript_exporter_refuses_non_dividing_sizes_without_the_rewrite(tmp_path):
    m = nn.Sequential(nn.AdaptiveMaxPool2d(4)).eval()
    with pytest.raises(Exception, match="not factor of input size"):
        _export(m, torch.randn(1, 3, 7, 9), tmp_path / "a.onnx", dynamic=False)
    rewrite_adaptive_max_pool(m)
    _export(m, torch.randn(1, 3, 7, 9), tmp_path / "b.onnx", dynamic=False)
    x = torch.randn(1, 3, 7, 9)
    with OnnxRuntimeRunner(tmp_path / "b.onnx") as run:
        assert np.array_equal(run.infer({"input": x.numpy()})["y"], nn.AdaptiveMaxPool2d(4)(x).numpy())
