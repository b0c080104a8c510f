import pytest
import torch

from edgeexport.images import Preprocess
from edgeexport.inputs import InputSource
from edgeexport.errors import UserError
from edgeexport.weights import load_weights, read_state_dict
from edgeexport.zoo import create_model, get_meta


@pytest.fixture(scope="module")
def lraspp():
    return create_model("lraspp_mobilenetv3")


def test_default_weights_are_deterministic(lraspp):
    again = create_model("lraspp_mobilenetv3")
    a, b = lraspp.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_lraspp_outputs_are_not_degenerate(lraspp):
    meta = get_meta("lraspp_mobilenetv3")
    pre = Preprocess(meta.mean, meta.std)
    classes = set()
    for _, x in InputSource().batches((1, 3, 256, 256), 3, pre):
        with torch.no_grad():
            y = lraspp(torch.from_numpy(x))["out"]
        classes |= set(y.argmax(1).unique().tolist())
        assert y.std() > 0.1  # logits spread, not a constant map
        assert torch.isfinite(y).all()
    assert len(classes) >= 5


def test_plain_initialisation_is_degenerate_which_is_why_defaults_recalibrate():
    """The reason for re-estimating BatchNorm: a plainly initialised LR-ASPP is near-constant."""
    m = create_model("lraspp_mobilenetv3", weights="init")
    meta = get_meta("lraspp_mobilenetv3")
    (_, x), = InputSource().batches((1, 3, 128, 128), 1, Preprocess(meta.mean, meta.std))
    with torch.no_grad():
        y = m(torch.from_numpy(x))["out"]
    recal = create_model("lraspp_mobilenetv3")
    with torch.no_grad():
        z = recal(torch.from_numpy(x))["out"]
    assert len(y.argmax(1).unique()) < len(z.argmax(1).unique())


def test_strict_loading_lists_the_mismatch(tmp_path):
    m = create_model("mobilenetv3_small", weights="init")
    sd = m.state_dict()
    sd.pop("classifier.3.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["classifier.3.weight"] = torch.zeros(5, 1024)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError) as e:
        load_weights(m, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "1 missing: classifier.3.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "classifier.3.weight (5, 1024) != (1000, 1024)" in msg


def test_checkpoint_dict_and_dataparallel_prefix(tmp_path):
    m = create_model("mobilenetv3_small", weights="init")
    sd = {f"module.{k}": v for k, v in m.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 9, "optimizer": {}}, tmp_path / "ckpt.pth")
    assert set(read_state_dict(tmp_path / "ckpt.pth")) == set(m.state_dict())


def test_unreadable_and_missing_weights(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="cannot read weights"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UserError, match="no state dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a file"):
        read_state_dict(tmp_path)
