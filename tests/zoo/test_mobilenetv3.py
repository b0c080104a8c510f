"""MobileNetV3 / LR-ASPP against torchvision's implementation (fixtures made by torchvision itself)."""
import numpy as np
import pytest
import torch

from edgeexport.zoo import create_model
from tests.support.reference import Reference

CASES = [("torchvision_lraspp_mobilenet_v3_large", "lraspp_mobilenetv3", "out"),
         ("torchvision_mobilenet_v3_large", "mobilenetv3_large", None),
         ("torchvision_mobilenet_v3_small", "mobilenetv3_small", None)]


@pytest.mark.parametrize("fixture,name,key", CASES)
def test_state_dict_layout_equals_torchvision(fixture, name, key):
    ref = Reference(fixture)
    own = {k: list(v.shape) for k, v in create_model(name, weights="init").state_dict().items()}
    assert list(own) == list(ref.manifest)  # same keys in the same order
    assert own == ref.manifest


@pytest.mark.parametrize("fixture,name,key", CASES)
def test_outputs_equal_torchvision_with_its_checkpoint(fixture, name, key, tmp_path):
    ref = Reference(fixture)
    ckpt = ref.save_checkpoint(tmp_path / "tv.pth")
    model = create_model(name, weights=str(ckpt))
    with torch.no_grad():
        y = model(torch.from_numpy(ref.inputs))
    y = (y[key] if key else y).numpy()
    scale = np.abs(ref.outputs).max()
    assert np.abs(y - ref.outputs).max() <= 1e-5 * scale
    assert (y.argmax(1) == ref.outputs.argmax(1)).all()


def test_torchvision_reference_is_not_degenerate():
    ref = Reference("torchvision_lraspp_mobilenet_v3_large")
    assert np.unique(ref.outputs.argmax(1)).size >= 5
    assert ref.outputs.std() > 0.1


def test_lraspp_returns_dict_at_input_size():
    m = create_model("lraspp_mobilenetv3_small", weights="init")
    with torch.no_grad():
        out = m(torch.zeros(1, 3, 97, 130))
    assert list(out) == ["out"] and out["out"].shape == (1, 21, 97, 130)
