"""Parameter counts at the default number of classes equal the published ones."""
import pytest

from edgeexport.zoo import build_model, get_entry, list_models

PUBLISHED = [n for n in list_models() if get_entry(n).meta.published_params]


def test_published_counts_cover_the_foundation():
    assert {"lraspp_mobilenetv3_large", "pyconvresnet18", "pyconvresnet34", "pyconvresnet50", "pyconvresnet101",
            "pyconvresnet152"} <= set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_param_count_matches_publication(name):
    meta = get_entry(name).meta
    params = sum(p.numel() for p in build_model(name).parameters())
    if meta.params_tolerance == 0:
        assert params == meta.published_params
    else:  # published as e.g. 24.85M: equal after rounding to 0.01M
        assert round(params / 1e6, 2) == round(meta.published_params / 1e6, 2), params


def test_exact_torchvision_count():
    assert sum(p.numel() for p in build_model("lraspp_mobilenetv3_large").parameters()) == 3_221_538
