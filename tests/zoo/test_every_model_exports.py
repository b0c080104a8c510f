"""Every registered zoo model goes through the pipeline's preparation and rewrites and exports to ONNX with
parity, at a small input: a rewrite that breaks any model of the zoo fails here (issue 25: the
re-parameterisation rewrite took PANet's ``fuse`` ModuleList for a hook, and nothing exported every model).

The rewrites are those of ``edgeexport onnx NAME`` (the ONNX stage's defaults) together with those of the
model's own recipe (``recipes/NAME.yaml``), so both ways a user exports a zoo model are covered. One image, no
timing, the smallest input the architecture takes comfortably, and the TorchScript exporter: the rewrites and the
preparation are the same for both exporters, and the dynamo exporter (the default) takes 2.5x as long on the
whole zoo (436 s against 170 s on 2 cores), which the suite's 10-minute budget cannot hold. The dynamo path is
exported per target and per family elsewhere (tests/test_cli.py, tests/targets/, tests/zoo/)."""
import math

import pytest
import yaml

import edgeexport
from edgeexport.rewrite import DEFAULT_REWRITES
from edgeexport.zoo import get_entry, list_models
from tests.conftest import ROOT

SIDE = 64  # small, but every stride-32 backbone keeps a 2x2 map


def small_shape(name: str) -> tuple[int, int, int, int]:
    meta = get_entry(name).meta
    side = max(SIDE, meta.min_hw)
    side = math.ceil(side / meta.size_multiple) * meta.size_multiple
    return (1, 3, side, side)


def rewrites_of(name: str) -> list[str]:
    recipe = ROOT / "recipes" / f"{name}.yaml"
    own = yaml.safe_load(recipe.read_text())["stages"]["onnx"].get("rewrites", []) if recipe.exists() else []
    return list(dict.fromkeys([*DEFAULT_REWRITES, *own]))


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports_to_onnx_with_parity(name, tmp_path):
    rep = edgeexport.export(name, small_shape(name), targets={"onnx": {"rewrites": rewrites_of(name), "exporter": "torchscript"}},
                            output=tmp_path, images=1, bench=False)
    onnx = rep.artifacts["onnx"]
    assert onnx.status == "passed", (onnx.status, onnx.error, onnx.notes)
    assert (tmp_path / f"{name}.onnx").is_file()
    assert onnx.worst("snr_db") > 60, onnx.parity  # fp32 ONNX Runtime against eager: float rounding only
