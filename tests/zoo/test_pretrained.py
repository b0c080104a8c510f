"""Trained reference weights: selected like torchvision's weight enums, loaded without pickle, metrics reproducible."""
import pytest

from edgeexport.errors import UserError
from edgeexport.zoo.pretrained import TRAINED, find_trained, resolve_weights


def test_weight_specs_resolve_through_aliases():
    entry = resolve_weights("lraspp_mobilenetv3_large", "lraspp_mobilenetv3:shapes")
    assert entry is find_trained("lraspp_mobilenetv3_large", "shapes")
    assert resolve_weights("lraspp_mobilenetv3_large", "shapes") is entry
    assert entry.spec == "lraspp_mobilenetv3_large:shapes" and entry.dataset == "shapes_seg"
    assert entry.num_classes == 9 and entry.classes[0] == "background"
    assert resolve_weights("pyconvresnet18", "ckpt.pth") is None  # a file name, not a tag
    assert resolve_weights("pyconvresnet18", None) is None


@pytest.mark.parametrize("spec, needle", [("pyconvresnet18:shapes", "are for pyconvresnet18"),
                                          ("lraspp_mobilenetv3:imagenet", "unknown weights")])
def test_wrong_weight_specs(spec, needle):
    with pytest.raises(UserError, match=needle):
        resolve_weights("lraspp_mobilenetv3_large", spec)


def test_every_entry_has_a_recipe_and_a_place():
    assert {w.model for w in TRAINED.values()} >= {"lraspp_mobilenetv3_large", "lraspp_mobilenetv3_small",
                                                   "pyconvresnet18", "pyconvresnet50"}
    for w in TRAINED.values():
        assert w.recipe.model == w.model and w.recipe.steps > 0
        assert w.path().suffix == ".safetensors"
        if not w.shipped:
            assert "train" in w.how_to_get()


def test_missing_cache_weights_are_a_clear_error(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("EDGEEXPORT_CACHE", str(tmp_path))
    from tests.conftest import assert_one_line_error

    code, _, err = cli("onnx", "pyconvresnet50", "--weights", "pyconvresnet50:shapes", "-o", tmp_path)
    assert_one_line_error(code, err, "edgeexport train pyconvresnet50")
