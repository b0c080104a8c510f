import pytest
import torch

from edgeexport.errors import UserError
from edgeexport.zoo import build_model, create_model, get_entry, get_meta, list_models, register_model, resolve_name
from edgeexport.zoo.registry import TASKS

FOUNDATION = ["lraspp_mobilenetv3_large", "lraspp_mobilenetv3_small", "mobilenetv3_large", "mobilenetv3_small",
              "pyconvresnet18", "pyconvresnet34", "pyconvresnet50", "pyconvresnet101", "pyconvresnet152",
              "pyconvsegnet50", "pyconvsegnet101"]


def test_foundation_models_are_registered():
    names = list_models()
    assert set(FOUNDATION) <= set(names)
    assert "lraspp_mobilenetv3" in list_models(include_aliases=True)
    assert resolve_name("lraspp_mobilenetv3") == "lraspp_mobilenetv3_large"


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_metadata(name):
    meta = get_entry(name).meta
    assert meta.task in TASKS
    c, h, w = meta.input_size
    assert c == 3 and h >= 32 and w >= 32
    assert meta.output_names and all(meta.output_names)
    assert len(meta.mean) == 3 and len(meta.std) == 3 and all(s > 0 for s in meta.std)
    assert meta.family and meta.paper
    if meta.task in ("classification", "segmentation"):
        assert meta.num_classes and meta.num_classes > 1
    assert meta.resize in ("resize", "center_crop")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="did you mean.*lraspp_mobilenetv3"):
        resolve_name("lraspp_mobilnetv3")
    with pytest.raises(UserError, match="edgeexport list"):
        resolve_name("qqqqqq")


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="registered twice"):
        @register_model(task="classification", input_size=(3, 32, 32), output_names=("logits",))
        def pyconvresnet18():  # noqa: F811
            pass


def test_build_is_deterministic_and_independent_of_global_rng():
    torch.manual_seed(123)
    a = build_model("mobilenetv3_small").state_dict()
    torch.manual_seed(456)
    b = build_model("mobilenetv3_small").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_num_classes_changes_head_and_meta():
    m = build_model("pyconvresnet18", num_classes=7)
    assert m.fc.out_features == 7
    meta = get_meta("pyconvresnet18", num_classes=7)
    assert meta.num_classes == 7 and meta.published_params is None


def test_create_model_weights_init_skips_recalibration():
    m = create_model("mobilenetv3_small", weights="init")
    bn = next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d))
    assert torch.all(bn.running_var == 1)
