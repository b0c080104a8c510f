"""Trained reference weights: selected like torchvision's weight enums, loaded without pickle, metrics reproducible."""
import pytest

from edgeexport.errors import UserError
from edgeexport.zoo.pretrained import TRAINED, find_trained
from edgeexport.zoo.registry import resolve_weights


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


SHIPPED = [w for w in TRAINED.values() if w.shipped]
QUALITY = {"segmentation": 0.70, "classification": 0.95}  # eager quality the shipped reference weights keep


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda w: w.spec)
def test_shipped_weights_are_safetensors_with_their_recipe_and_metrics(entry):
    assert entry.available(), f"{entry.path()} is missing from the package"
    head = entry.path().read_bytes()[:8]
    assert head[:2] != b"PK" and head[:1] != b"\x80"  # neither a zip (torch.save) nor a raw pickle
    meta = entry.metadata()
    assert meta["recipe"] == entry.recipe.to_dict()  # trained by the recipe the registry names
    ev = meta["eval"]
    assert ev["split"] == "eval" and ev["images"] >= 40
    assert ev["value"] >= QUALITY[ev["task"]], ev


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda w: w.spec)
def test_shipped_weights_reproduce_their_eager_metric(entry):
    """The stored metric is measured again on the same evaluation images: the weights, the offline
    generator and the metric all still agree with what was trained."""
    import torch

    from edgeexport.images import Preprocess
    from edgeexport.training import evaluate
    from edgeexport.zoo import create_model, get_meta

    stored = entry.metadata()["eval"]
    count = stored["images"]
    model = create_model(entry.model, weights=entry.spec)
    meta = get_meta(entry.model, entry.num_classes)
    with torch.inference_mode():
        got = evaluate(model, entry.dataset, Preprocess(meta.mean, meta.std, meta.resize), tuple(meta.input_size[1:]),
                       count)
    assert got["images"] == count and got["metric"] == stored["metric"]
    assert got["value"] == pytest.approx(stored["value"], abs=2e-3)  # thread-count rounding at most
