"""End-to-end tests of the command line (in-process with typer's CliRunner, and one real subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.conftest import ROOT, assert_one_line_error
from tests.support.reference import Reference


def artifacts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def load_report(folder: Path, name: str):
    from edgeexport.report import load_report

    return load_report(folder / f"{name}.report.json")


def from_stdout(out: str):
    from edgeexport.report import report_from_dict

    return report_from_dict(json.loads(out))


def test_list(cli):
    code, out, _ = cli("list", "--json")
    assert code == 0
    rows = json.loads(out)
    lr = next(r for r in rows if r["name"] == "lraspp_mobilenetv3_large")
    assert lr["aliases"] == ["lraspp_mobilenetv3"] and lr["task"] == "segmentation"
    code, out, _ = cli("list")
    assert code == 0 and "pyconvsegnet50" in out


def test_info_json(cli):
    code, out, _ = cli("info", "lraspp_mobilenetv3", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["name"] == "lraspp_mobilenetv3" and d["params"] == 3_221_538
    assert d["input_shape"] == [1, 3, 520, 520] and d["outputs"] == ["out"]
    assert d["macs"] == pytest.approx(2.086e9, rel=2e-3)  # torchvision lists 2.086 G(MAC)s for this model


def test_doctor(cli):
    code, out, _ = cli("doctor", "--json")
    assert code == 0
    rows = {r["backend"]: r for r in json.loads(out)}
    assert rows["onnxruntime"]["status"] == "available" and rows["onnxruntime"]["version"]


def test_onnx_dynamic_all_end_to_end(cli, tmp_path):
    code, out, err = cli("onnx", "lraspp_mobilenetv3_small", "--shape", "1x3x96x128", "--dynamic", "all",
                         "--exporter", "torchscript", "--runs", "3", "--images", "2", "-o", tmp_path)
    assert code == 0, out + err
    assert artifacts(tmp_path) == ["lraspp_mobilenetv3_small.onnx", "lraspp_mobilenetv3_small.report.html",
                                   "lraspp_mobilenetv3_small.report.json", "lraspp_mobilenetv3_small.report.md"]
    rep = load_report(tmp_path, "lraspp_mobilenetv3_small")
    art = rep.artifacts["onnx"]
    assert rep.verdict == "passed" and art.status == "passed"
    shapes = [c.shape for c in art.parity]
    assert len(shapes) == 3 and len({tuple(s) for s in shapes}) == 3
    assert {s[0] for s in shapes} == {1, 2, 3}  # batch really varied
    for chk in art.parity:
        m = chk.outputs[0].metrics
        assert chk.passed and m.max_abs_scaled < 1e-4 and m.agreement >= 0.999
        assert m.ref_classes >= 2
    assert art.latency.median_ms > 0 and art.ratio_to_eager > 0
    assert rep.eager.latency.threads == art.latency.threads
    assert "passed (3 shapes)" in out
    md = (tmp_path / "lraspp_mobilenetv3_small.report.md").read_text()
    assert "Parity at 2x3x" in md and "| out | segmentation |" in md


def test_dynamo_export_names_dynamic_dims(cli, tmp_path):
    code, out, err = cli("onnx", "lraspp_mobilenetv3_small", "--shape", "1x3x64x96", "--dynamic", "hw",
                         "--exporter", "dynamo", "--no-bench", "--images", "1", "-o", tmp_path, "--quiet")
    assert code == 0, err
    assert out == ""
    m = onnx.load(str(tmp_path / "lraspp_mobilenetv3_small.onnx"))
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    assert [o.name for o in m.graph.output] == ["out"]


def test_user_model_with_two_named_outputs(cli, tmp_path):
    code, out, err = cli("onnx", "--model", "tests.support.models:tiny_segmenter", "--shape", "1x3x64x64",
                         "--dynamic", "hw", "--exporter", "torchscript", "--no-bench", "-o", tmp_path, "--json")
    assert code == 0, err
    rep = from_stdout(out)
    assert rep.model.outputs == ["out", "aux"]
    assert rep.model.output_tasks == {"out": "segmentation", "aux": "segmentation"}
    m = onnx.load(str(tmp_path / "tiny_segmenter.onnx"))
    assert [o.name for o in m.graph.output] == ["out", "aux"]
    for chk in rep.artifacts["onnx"].parity:
        assert [o.name for o in chk.outputs] == ["out", "aux"] and chk.passed


def test_parity_failure_exits_1_with_report(cli, tmp_path):
    code, out, err = cli("onnx", "--model", "tests.support.models:export_differs", "--shape", "1x3x32x32",
                         "--exporter", "torchscript", "--no-bench", "-o", tmp_path)
    assert code == 1
    rep = load_report(tmp_path, "export_differs")
    assert rep.verdict == "failed"
    issues = rep.artifacts["onnx"].parity[0].outputs[0].issues
    assert any(i.kind == "tolerance_exceeded" for i in issues)
    assert "FAILED" in out


def test_torchvision_checkpoint_export_matches_torchvision(cli, tmp_path):
    ref = Reference("torchvision_lraspp_mobilenet_v3_large")
    ckpt = ref.save_checkpoint(tmp_path / "lraspp_tv.pth", wrap="model")
    code, out, err = cli("onnx", "lraspp_mobilenetv3", "--weights", ckpt, "--shape", "1x3x96x128",
                         "--dynamic", "batch", "--no-bench", "-o", tmp_path / "o")
    assert code == 0, err
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(tmp_path / "o" / "lraspp_mobilenetv3.onnx") as r:
        got = r.infer({"input": ref.inputs})["out"]  # the photographs torchvision saw
    scale = np.abs(ref.outputs).max()
    assert np.abs(got - ref.outputs).max() <= 1e-4 * scale
    assert (got.argmax(1) == ref.outputs.argmax(1)).mean() >= 0.999
    assert np.unique(ref.outputs.argmax(1)).size > 1


def test_recipe_run(cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
model: pyconvresnet18
input_shape: 1x3x64x64
dynamic: batch
output: {tmp_path / 'o'}
inputs: {{images: 2}}
stages:
  onnx: {{exporter: torchscript}}
bench: {{runs: 2, warmup: 1}}
""")
    code, out, err = cli("run", recipe)
    assert code == 0, err
    rep = load_report(tmp_path / "o", "pyconvresnet18")
    m = rep.artifacts["onnx"].parity[0].outputs[0].metrics
    assert m.agreement == 1.0 and m.top5_agreement >= 0.99 and rep.recipe["dynamic"] == "batch"


@pytest.mark.slow
def test_pyconvsegnet50_at_native_473(cli, tmp_path):
    """9x9 adaptive pooling of a 60x60 map: the default (dynamo) export passes parity at 473x473."""
    code, out, err = cli("onnx", "pyconvsegnet50", "--exporter", "dynamo", "--images", "1", "--no-bench", "-o", tmp_path,
                         "--json")
    assert code == 0, err
    rep = from_stdout(out)
    chk = rep.artifacts["onnx"].parity[0]
    assert chk.shape == [1, 3, 473, 473] and chk.passed
    assert rep.artifacts["onnx"].record().rewrites["adaptive_pool"] == 1


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,needle", [
    (["onnx", "lraspp_mobilnetv3"], "did you mean lraspp_mobilenetv3"),
    (["onnx", "mobilenetv3_small", "--shape", "1x3x224"], "malformed shape"),
    (["onnx", "mobilenetv3_small", "--shape", "1x3x0x224"], "must be positive"),
    (["onnx", "mobilenetv3_small", "--shape", "1x4x64x64"], "input channels"),
    (["onnx", "mobilenetv3_small", "--weights", "/nonexistent/w.pth"], "does not exist"),
    (["onnx", "--model", "tests.support.models:not_a_module", "--shape", "1x3x8x8"], "not a torch.nn.Module"),
    (["onnx", "--model", "tests.support.models:nope", "--shape", "1x3x8x8"], "has no callable"),
    (["onnx", "--model", "no_such_pkg.mod:f", "--shape", "1x3x8x8"], "cannot import"),
    (["onnx", "--model", "tests.support.models:tiny_segmenter"], "needs an input shape"),
    (["onnx", "mobilenetv3_small", "--input-folder", "/nonexistent"], "does not exist"),
    (["info", "pyconvnet50"], "did you mean"),
    (["run", "/nonexistent/recipe.yaml"], "does not exist"),
])
def test_bad_input_one_line_exit_2(cli, tmp_path, args, needle):
    code, out, err = cli(*args, "-o", tmp_path / "o") if args[0] == "onnx" else cli(*args)
    assert_one_line_error(code, err, needle)
    assert artifacts(tmp_path / "o") == []


def test_unreadable_and_misfit_weights(cli, tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    code, _, err = cli("onnx", "mobilenetv3_small", "--weights", tmp_path / "junk.pth", "-o", tmp_path / "o")
    assert_one_line_error(code, err, "cannot read weights")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    code, _, err = cli("onnx", "mobilenetv3_small", "--weights", tmp_path / "other.pth", "-o", tmp_path / "o")
    assert_one_line_error(code, err, "does not fit the model")
    assert "missing" in err and "unexpected: fc.weight" in err
    assert artifacts(tmp_path / "o") == []


def test_output_under_a_file(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = cli("onnx", "mobilenetv3_small", "-o", tmp_path / "afile" / "sub")
    assert_one_line_error(code, err, "under a file")


def test_malformed_recipe(cli, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("model: mobilenetv3_small\nstages:\n  onnx:\n    exporter: tflite\n")
    code, _, err = cli("run", p)
    assert_one_line_error(code, err, "stages.onnx.exporter")
    p.write_text("model: mobilenetv3_small\nbench: {runs: 0}\n")
    code, _, err = cli("run", p)
    assert_one_line_error(code, err, "bench.runs")


def test_export_failure_leaves_no_partial_artifact(tmp_path, monkeypatch):
    """A crash inside the exporter: exit 1, the failure in the report, no .onnx left behind."""
    from edgeexport import pipeline
    from edgeexport.recipe import Recipe

    def broken(*a, **k):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    rep = pipeline.run(Recipe.from_dict({"model": "mobilenetv3_small", "input_shape": [1, 3, 32, 32],
                                         "output": str(tmp_path), "stages": {"onnx": {"exporter": "torchscript"}},
                                         "bench": {"enabled": False}}))
    assert rep.verdict == "failed" and "exporter exploded" in rep.artifacts["onnx"].error
    assert artifacts(tmp_path) == ["mobilenetv3_small.report.html", "mobilenetv3_small.report.json",
                                   "mobilenetv3_small.report.md"]


def test_real_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "edgeexport", "onnx", "mobilenetv3_small", "--shape", "1x3x64x64",
                         "--exporter", "torchscript", "--runs", "2", "--images", "1", "-o", str(tmp_path)],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "mobilenetv3_small" in ok.stdout and "passed" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "edgeexport", "onnx", "mobilenetv3_small", "--dynamic", "diagonal"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert_one_line_error(bad.returncode, bad.stderr, "--dynamic")
