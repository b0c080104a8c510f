from pathlib import Path

import pytest

from edgeexport.errors import UserError
from edgeexport.parity import DEFAULT_TOLERANCES
from edgeexport.recipe import Recipe
from edgeexport.zoo import list_models

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")) + sorted(
    (Path(__file__).resolve().parents[1] / "recipes" / "budget").glob("*.yaml"))


def test_every_model_has_a_recipe():
    names = {p.stem for p in RECIPES}
    for model in list_models(include_aliases=True):
        if model == "lraspp_mobilenetv3_large":  # its recipe is the alias's, lraspp_mobilenetv3.yaml
            continue
        assert model in names, f"recipes/{model}.yaml is missing"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = Recipe.from_yaml(path)
    assert r.model == path.stem
    assert r.input_shape and len(r.input_shape) == 4
    assert r.stages.onnx is not None


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_its_path_and_the_known_keys(tmp_path):
    p = write(tmp_path, "model: pyconvresnet18\nstages:\n  onnx:\n    simplfy: true\n")
    with pytest.raises(UserError) as e:
        Recipe.from_yaml(p)
    msg = str(e.value)
    assert "stages.onnx.simplfy" in msg and "unknown key" in msg and "simplify" in msg


def test_top_level_unknown_key(tmp_path):
    with pytest.raises(UserError, match="modle: unknown key"):
        Recipe.from_yaml(write(tmp_path, "model: x\nmodle: x\n"))


@pytest.mark.parametrize("text,needle", [
    ("dynamic: sideways\nmodel: a", "dynamic"),
    ("model: a\ninput_shape: 1x3x520", "input_shape"),
    ("model: a\nstages:\n  onnx:\n    opset: 3", "stages.onnx.opset"),
    ("model: a\ntolerances:\n  fp64: {}", "tolerances"),
    ("input_shape: 1x3x8x8", "model: required key is missing"),
    ("- just\n- a list", "a recipe is a mapping"),
    ("model: [unclosed", "malformed YAML"),
])
def test_invalid_recipes(tmp_path, text, needle):
    with pytest.raises(UserError, match=None) as e:
        Recipe.from_yaml(write(tmp_path, text))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_recipe(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "nope.yaml")


def test_tolerance_override_merges_with_defaults():
    r = Recipe.from_dict({"model": "x", "tolerances": {"fp32": {"min_agreement": 0.5}}})
    t = r.tolerance("fp32")
    assert t.min_agreement == 0.5
    assert t.max_abs_scaled == DEFAULT_TOLERANCES["fp32"].max_abs_scaled
    assert r.tolerance("int8") == DEFAULT_TOLERANCES["int8"]


def test_shape_accepts_string_or_list():
    assert Recipe.from_dict({"model": "x", "input_shape": "2x3x64x32"}).input_shape == [2, 3, 64, 32]
    assert Recipe.from_dict({"model": "x", "input_shape": [1, 3, 8, 8]}).input_shape == [1, 3, 8, 8]


def test_a_dumped_recipe_keeps_its_limits():
    """Re-reading a recipe's dump (as the matrix does for every cell) must not turn default limits off."""
    r = Recipe.from_dict({"model": "lraspp_mobilenetv3", "tolerances": {"int8": {"max_task_drop": 0.5}}})
    again = Recipe.from_dict(r.model_dump(mode="json"))
    for labeled in (False, True):
        assert again.tolerance("int8", labeled=labeled) == r.tolerance("int8", labeled=labeled)
    assert again.tolerance("int8").min_snr_db == 20.0 and again.tolerance("int8").max_task_drop == 0.5
