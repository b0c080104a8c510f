"""The float-set search: an int8 artifact that misses its accuracy budget keeps, on every int8 target, the
modules that break it in float, and the report says which ones and what they cost."""
import importlib.util
import json

import pytest

import edgeexport
from edgeexport.divergence import LayerDiff, LayerRecord
from edgeexport.errors import UserError
from edgeexport.pipeline.repair import group, rank, shortfall
from edgeexport.provenance import match_modules, within
from tests.support.models import fragile

SHAPE = (1, 3, 64, 64)
BUDGET = {"snr_db": 25.0}
INT8 = [pytest.param(kind, marks=pytest.mark.skipif(importlib.util.find_spec(m) is None, reason=f"{m} is not installed"))
        for kind, m in (("onnx-int8", "onnxruntime"), ("openvino-int8", "nncf"), ("litert-int8", "ai_edge_quantizer"),
                        ("executorch-int8", "executorch"))]


def _record(module, shape, snr, depth, fused=()):
    return LayerRecord(module=module, cls="Conv2d", op="Conv", tensor=module, shape=list(shape), snr_db=snr,
                       max_abs_scaled=0.0, cosine=1.0, fused_with=list(fused), depth=depth)


def test_rank_takes_the_layer_that_loses_most_over_its_input():
    """A squeeze-and-excitation branch (1x1 maps) is not the input of the layer after it: the projection after it
    is charged against the block's last full-size map, and a fused conv + BN + act is one group."""
    diff = LayerDiff(precision="int8", threshold_db=12.0, layers=[
        _record("b.0.0", (1, 8, 16, 16), 30.0, 0, fused=["b.0.1", "b.0.2"]),
        _record("b.se.fc1", (1, 8, 1, 1), 45.0, 1),  # high SNR on a small branch
        _record("b.se.fc2", (1, 8, 1, 1), 44.0, 2),
        _record("b.proj", (1, 8, 16, 16), 28.0, 3),  # 2 dB below b.0.0 (not 16 below fc2)
        _record("c.conv", (1, 8, 8, 8), 20.0, 4),  # 8 dB below b.proj
    ])
    modules = {"b", "b.0", "b.0.0", "b.0.1", "b.0.2", "b.se", "b.se.fc1", "b.se.fc2", "b.proj", "c", "c.conv"}
    ranked = rank(diff, [], modules)
    assert [m for m, _ in ranked] == ["c.conv", "b.proj", "b.se.fc2"]
    assert "loses 8.0 dB" in ranked[0][1]
    assert [m for m, _ in rank(diff, ["c"], modules)][0] == "b.proj"  # already in float: skipped
    # the conv + BN + act container when it holds nothing else, else the members as one group
    assert group("b.0.0", ["b.0.1", "b.0.2"], modules) == "b.0"
    assert group("f.2", ["f.3"], {"f", "f.0", "f.1", "f.2", "f.3"}) == "f.2+f.3"
    assert group("f.2", [], {"f.2"}) == "f.2"


def test_groups_match_either_member_and_unknown_modules_are_bad_input():
    ops = {"conv": "f.3", "relu": "f.3", "other": "f.0"}  # a conv that carries its folded BatchNorm's scope
    assert match_modules(["f.2+f.3"], ops) == {"f.2+f.3": ["conv", "relu"]}
    assert within("f.3.0", ["f.2+f.3"]) == "f.2+f.3" and within("f.30", ["f.3"]) is None
    with pytest.raises(UserError, match=r"--float-module f\.9: no operator .* modules here: f\.0, f\.3"):
        match_modules(["f.9"], ops)


def test_shortfall_orders_misses_by_how_far_they_are():
    budget = {"snr_db": 25.0, "task_drop": 0.5}
    assert shortfall({"snr_db": 26.0, "task_drop": 0.1}, budget)[0] == 0.0
    near, far = {"snr_db": 24.0, "task_drop": 0.1}, {"snr_db": 20.0, "task_drop": 0.1}
    assert shortfall(near, budget) < shortfall(far, budget)
    assert shortfall({"snr_db": 30.0}, budget)[0] == 1.0  # a metric the run cannot measure misses


# how each target names the tensor features.2 reads (the output of features.1's ReLU, or of the conv it is fused to)
READS = {"onnx-int8": "features.1/Relu", "openvino-int8": "features.1/Relu", "litert-int8": "features.1#",
         "executorch-int8": "relu"}


@pytest.mark.parametrize("kind", INT8)
def test_the_fragile_module_is_kept_in_float_on_every_int8_target(kind, tmp_path):
    """``Fragile``'s ``features.2`` has one outlier weight per filter: int8 keeps about 3 levels for the others
    (about 17 dB at the output). Every int8 target misses a 25 dB budget as built, and its search puts that conv
    back in float (ONNX Runtime's own node loop, the diff-guided search elsewhere), meets the budget, records
    the set and prices it against the all-int8 build."""
    rep = edgeexport.export(fragile(), SHAPE, {kind: {"budget": BUDGET, "equalize": "off"}}, output=tmp_path, threads=1,
                            images=2,
                            bench=False)
    art = rep.artifacts[kind]
    r = art.repair
    assert art.error is None and r is not None, art.why()
    first = r.steps[0]
    assert first.float_modules == [] and not first.met and first.metrics["snr_db"] < 20  # the fault is real
    assert r.met and art.status == "passed" and not art.failures
    assert any(within("features.2", [m]) for m in r.float_modules)  # the fragile conv itself
    assert len(r.float_modules) <= 2, r.float_modules  # at most its consumer too (its input re-quantized)
    # the float set reads float tensors: features.2's input is not rounded to int8 on the way in (no Q/DQ pair, no
    # FakeQuantize, no int8 producer), so its 40x weight meets the tiny input channel in float
    reads = [t for ts in art.build["float_tensors"].values() for t in ts]
    assert any(READS[kind] in t for t in reads), art.build["float_tensors"]
    if kind != "onnx-int8":  # (ONNX Runtime's node loop records nodes, in float_nodes, not modules)
        ops = [op for ops in art.build["float_modules"].values() for op in ops]
        assert any("conv" in op.lower() for op in ops), ops  # the convolution, not only its bias add
    assert art.parity[0].worst("snr_db") >= BUDGET["snr_db"]  # the artifact on disk is the repaired one
    assert r.int8_ms > 0 and r.repaired_ms > 0 and r.cost == pytest.approx(r.repaired_ms / r.int8_ms)
    assert r.ranked_on
    # the report carries it: JSON, Markdown and the HTML page
    saved = json.loads((tmp_path / "Fragile.report.json").read_text())["artifacts"][kind]["repair"]
    assert saved["float_modules"] == r.float_modules and saved["met"] is True
    md = (tmp_path / "Fragile.report.md").read_text()
    assert "accuracy budget snr_db=25 met" in md and "kept in float: " + ", ".join(r.float_modules) in md
    assert "Kept in float to meet a budget" in (tmp_path / "Fragile.report.html").read_text()


def test_a_budget_already_met_keeps_nothing_in_float(tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    rep = edgeexport.export(fragile(), SHAPE, {"litert-int8": {"budget": {"snr_db": 10.0}}}, output=tmp_path,
                            threads=1, images=1, bench=False)
    r = rep.artifacts["litert-int8"].repair
    assert r.met and r.float_modules == [] and len(r.steps) == 1 and r.int8_ms is None and r.cost is None


def test_a_float_set_a_target_chose_itself_is_priced(tmp_path):
    """NNCF's accuracy control picks its own float operations: the pipeline prices them by building the same
    artifact with nothing kept in float beside it, timing both interleaved, and leaves the artifact as it was."""
    pytest.importorskip("nncf")
    from edgeexport import pipeline
    from edgeexport.pipeline.repair import price_repair
    from edgeexport.recipe import Recipe
    from edgeexport.targets import Repair, get_target

    recipe = Recipe.from_dict({"model": "tests.support.models:fragile", "input_shape": list(SHAPE),
                               "output": str(tmp_path), "inputs": {"images": 1}, "bench": {"enabled": False},
                               "stages": {"onnx": {}, "openvino": [{"quantize": "int8",
                                                                    "float_modules": ["features.2"]}]}})
    ctx = pipeline.prepare(recipe)
    for target_cls, options, required_by in pipeline.plan(ctx):
        art = pipeline.build(ctx, target_cls, options, required_by)
        ctx.artifacts.append(art)
    target, options = get_target("openvino"), recipe.stages.openvino[0]
    art.repair = Repair(search="chosen by the target", budget={"snr_db": 20.0}, met=True, float_modules=["features.2"])
    before = art.path.read_bytes()
    price_repair(ctx, target, options, art)
    assert art.repair.int8_ms > 0 and art.repair.repaired_ms > 0
    assert art.path.read_bytes() == before and art.record.float_modules  # the artifact is untouched
    assert not list(tmp_path.glob(".repair-*"))  # the all-int8 build was scratch


def test_a_task_budget_without_labeled_data_is_bad_input_before_any_build(cli, tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    code, _, err = cli("litert", "mobilenetv3_small", "--quantize", "int8", "--shape", "1x3x64x64",
                       "--budget", "miou_drop=0.5", "-o", tmp_path)
    assert code == 2 and "--budget miou_drop=0.5 needs labeled data" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.tflite")) and not list(tmp_path.glob("*.onnx"))
