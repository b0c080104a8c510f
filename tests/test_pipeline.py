"""The pipeline's own stages: prepare (validation), plan (requirements), build, check, report."""
import json

import pytest

from edgeexport import pipeline
from edgeexport.errors import UserError
from edgeexport.report import SCHEMA_VERSION, ReportBuilder, load_report
from edgeexport.report.text import summary_rows
from edgeexport.recipe import Recipe

SMALL = {"model": "mobilenetv3_small", "input_shape": [1, 3, 64, 64], "inputs": {"images": 2}}


def recipe(tmp_path, **fields) -> Recipe:
    return Recipe.from_dict({**SMALL, "output": str(tmp_path), **fields})


def test_auto_extra_shapes_move_only_the_dynamic_axes():
    assert pipeline.auto_extra_shapes((1, 3, 64, 64), "none") == []
    assert pipeline.auto_extra_shapes((1, 3, 64, 64), "batch") == [(2, 3, 64, 64), (3, 3, 64, 64)]
    hw = pipeline.auto_extra_shapes((1, 3, 64, 64), "hw")
    assert hw == [(1, 3, 49, 80), (1, 3, 38, 52)]  # odd sizes, where the model allows any size
    assert all(s[:2] == (1, 3) for s in hw)
    # a model that needs multiples of 32 and at least 97 px gets such sizes
    for s in pipeline.auto_extra_shapes((1, 3, 224, 224), "all", size_multiple=32, min_hw=97):
        assert s[0] > 1 and s[2] % 32 == 0 and s[3] % 32 == 0 and min(s[2:]) >= 97


@pytest.mark.parametrize("fields, needle", [
    ({"dynamic": "hw", "parity": {"extra_shapes": [[2, 3, 64, 64]]}}, "changes axis 0, which is not dynamic (hw)"),
    ({"dynamic": "batch", "parity": {"extra_shapes": [[2, 3, 32, 64]]}}, "changes axis 2, which is not dynamic"),
    ({"dynamic": "hw", "parity": {"extra_shapes": [[1, 3, 0, 64]]}}, "is not a positive NxCxHxW shape"),
    ({"model": "scnet50", "input_shape": [1, 3, 64, 64]}, "needs H and W of at least 97; got 64x64"),
    ({"input_shape": [1, 4, 64, 64]}, "takes 3 input channels, not 4"),
    ({"input_shape": "1x3x64"}, "input_shape: "),
    ({"inputs": {"source": "folder"}}, "inputs.folder is not set"),
])
def test_prepare_rejects_bad_input_before_building(tmp_path, fields, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        pipeline.prepare(recipe(tmp_path, **fields))
    assert not list(tmp_path.iterdir())  # nothing was written


def test_plan_builds_requirements_first_and_once(tmp_path):
    ctx = pipeline.prepare(recipe(tmp_path, stages={"onnx": None, "trt": {"precision": "fp16"},
                                                    "quantize": [{"mode": "fp16"}, {"mode": "int8"}]}))
    steps = [(t.name, t.format_for(o).kind, by) for t, o, by in pipeline.plan(ctx)]
    # the recipe turned onnx off, but the others start from the fp32 graph: built, marked as required
    assert steps[0] == ("onnx", "onnx", "quantize")
    kinds = [k for _, k, _ in steps]
    assert kinds.count("onnx-fp16") == 1  # asked for by the recipe and needed by trt: built once, before trt
    assert kinds.index("onnx-fp16") < kinds.index("tensorrt-fp16")
    assert {k for _, k, _ in steps} == {"onnx", "onnx-fp16", "onnx-int8", "tensorrt-fp16"}
    by = {k: b for _, k, b in steps}
    assert by["onnx-fp16"] is None and by["tensorrt-fp16"] is None  # both are the recipe's own


def test_plan_refuses_two_option_sets_for_one_artifact(tmp_path):
    ctx = pipeline.prepare(recipe(tmp_path, stages={"quantize": [{"mode": "int8"}, {"mode": "int8", "calib_size": 2}]}))
    with pytest.raises(UserError, match="two option sets build the same artifact"):
        pipeline.plan(ctx)


def test_an_artifact_its_runtime_refuses_becomes_an_artifact_error(tmp_path):
    """A built file that crashes its runtime is a failed artifact with the runtime's message, not a crash."""
    ctx = pipeline.prepare(recipe(tmp_path, bench={"enabled": False}))
    (t, o, by), = pipeline.plan(ctx)
    art = pipeline.build(ctx, t, o, by)
    assert art.error is None and art.path.exists()
    art.path.write_bytes(art.path.read_bytes()[:200])  # truncated on its way to the device
    pipeline.check_artifact(ctx, art)
    assert art.error.startswith("onnxruntime could not run the artifact:") and art.runner is None
    ctx.artifacts.append(art)
    rep = pipeline.report_of(ctx, ReportBuilder())
    assert rep.verdict == "failed" and rep.failed == ["onnx"]
    assert rep.artifacts["onnx"].status == "build_failed"
    assert "Build failed: onnxruntime could not run the artifact" in rep.to_markdown()


def test_report_json_markdown_and_table_agree(tmp_path):
    rep = pipeline.run(recipe(tmp_path, bench={"runs": 2, "warmup": 0}))
    raw = json.loads((tmp_path / "mobilenetv3_small.report.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION and raw["verdict"] == rep.verdict == "passed"
    on_disk = load_report(tmp_path / "mobilenetv3_small.report.json")
    assert on_disk.to_json() == rep.to_json()  # the JSON holds the whole report, and reads back as it was
    a = on_disk.artifacts["onnx"]
    assert a.runner.target == "onnx" and a.record().opset == 18 and a.latency.runs == 2
    md = (tmp_path / "mobilenetv3_small.report.md").read_text()
    assert "- verdict: **passed**" in md and "## onnx (onnxruntime, fp32)" in md
    rows = summary_rows(on_disk)
    assert rows[0][0] == "eager" and rows[1][0] == "onnx" and rows[1][4] == "passed"
    err = raw["artifacts"]["onnx"]["parity"][0]["outputs"][0]["metrics"]["max_abs_scaled"]
    assert rows[1][5] == f"{err:.2e}"  # the table shows the JSON's number
    assert raw["fastest_passing"] == "onnx" and on_disk.fastest(passing=True).latency.median_ms == a.latency.median_ms
    assert "- fastest artifact that meets its tolerances: onnx (onnxruntime, fp32)" in md


def test_fastest_is_the_quickest_artifact_that_passed():
    from edgeexport.bench import LatencyStats

    builder = ReportBuilder()
    for name, status, ms in (("a", "passed", 10.0), ("b", "failed", 2.0), ("c", "not_run", None), ("d", "passed", 5.0)):
        builder.artifact(kind=name, target="onnx", backend="b", precision="int8", checked=status,
                         latency=LatencyStats.from_samples([ms], 0, 1) if ms else None)
    rep = builder.build()
    assert rep.fastest(passing=True).name == "d"  # b is faster but failed its tolerances; c did not run
    assert rep.fastest(passing=False).name == "b" and rep.fastest_passing == "d"
    only_failed = ReportBuilder()
    only_failed.artifact(kind="b", target="onnx", backend="b", precision="int8", checked="failed",
                         latency=LatencyStats.from_samples([2.0], 0, 1))
    assert only_failed.build().fastest(passing=True) is None


def test_doctor_and_targets_list_every_registered_target():
    from edgeexport.doctor import doctor, target_rows
    from edgeexport.targets import list_targets

    rows = target_rows()
    assert [r["name"] for r in rows] == [t.name for t in list_targets()]
    onnx = rows[0]
    assert onnx["name"] == "onnx" and onnx["build"]["ok"] and onnx["run"]["ok"]
    assert {f["kind"] for f in onnx["formats"]} == {"onnx", "onnx-equalized"}
    trt = next(r for r in rows if r["name"] == "trt")
    assert not trt["run"]["ok"] and trt["run"]["reason"] and trt["install"]  # no TensorRT on this machine
    d = {r["backend"]: r for r in doctor()}
    assert d["torch"]["status"] == "available" and d["torch"]["version"]
    assert d["trt (TensorRT)"]["status"] == "missing" and "tensorrt" in d["trt (TensorRT)"]["install"]
