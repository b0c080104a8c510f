"""Parity bundles: written on the build host, verified with only the artifact's runtime."""
import json
import shutil

import pytest

from edgeexport.report import load_report, report_from_dict
from tests.conftest import assert_one_line_error
from tests.support.fresh import fresh_python


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    from typer.testing import CliRunner

    from edgeexport.cli import app

    out = tmp_path_factory.mktemp("bundle")
    r = CliRunner()
    res = r.invoke(app, ["onnx", "lraspp_mobilenetv3_small", "--shape", "1x3x64x64", "--exporter", "torchscript",
                         "--no-bench", "--images", "2", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    res = r.invoke(app, ["bundle", "lraspp_mobilenetv3_small", "--artifact", str(out / "lraspp_mobilenetv3_small.onnx"),
                         "--shape", "1x3x64x64", "--images", "2"])
    assert res.exit_code == 0, res.stderr
    return out / "lraspp_mobilenetv3_small.onnx.bundle"


def test_bundle_contents(onnx_bundle):
    names = sorted(p.name for p in onnx_bundle.iterdir())
    assert names == ["inputs.npz", "lraspp_mobilenetv3_small.onnx", "manifest.json", "reference.npz"]
    m = json.loads((onnx_bundle / "manifest.json").read_text())
    assert m["artifact"]["backend"] == "onnxruntime" and len(m["artifact"]["sha256"]) == 64
    # how to run it is recorded as data, with file names relative to the bundle
    assert m["runner"]["target"] == "onnx" and m["runner"]["artifact"] == "lraspp_mobilenetv3_small.onnx"
    assert m["runner"]["input_names"] == ["input"] and m["runner"]["output_names"] == ["out"]
    assert m["input_shapes"] == [[1, 3, 64, 64], [1, 3, 64, 64]] and m["outputs"] == {"out": [1, 21, 64, 64]}
    assert m["tolerance"]["max_abs_scaled"] == 1e-4 and m["build_host_versions"]["torch"]


def test_verify_without_torch_in_a_subprocess(onnx_bundle, tmp_path):
    """Block `import torch` entirely: verifying an ONNX bundle must not need it."""
    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgeexport.cli import main\n"
            f"main(['verify', {str(bundle)!r}, '--runs', '3'])")
    assert "passed" in fresh_python(code, timeout=300)
    rep = load_report(bundle / "verify.report.json")
    art = rep.artifacts["onnx"]
    assert rep.kind == "verify" and art.parity[0].passed and art.parity[0].samples == 2 and art.latency.median_ms > 0


def test_tampered_bundle_is_refused(onnx_bundle, tmp_path, cli):
    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    art = bundle / "lraspp_mobilenetv3_small.onnx"
    art.write_bytes(art.read_bytes()[:-10] + b"0123456789")
    code, _, err = cli("verify", bundle)
    assert_one_line_error(code, err, "does not match its hash")
    code, _, err = cli("verify", tmp_path)
    assert_one_line_error(code, err, "not a parity bundle")


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_a_manifest_cannot_point_outside_the_bundle(onnx_bundle, tmp_path, cli, where):
    """A bundle that names a file outside itself (with that file's hash) is refused, not verified."""
    from edgeexport.bundle import sha256

    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "lraspp_mobilenetv3_small.onnx", outside)
    m = json.loads((bundle / "manifest.json").read_text())
    name = str(outside) if where == "absolute" else "../elsewhere.onnx"
    m["artifact"]["file"] = m["runner"]["artifact"] = name
    m["artifact"]["sha256"] = sha256(outside)
    (bundle / "lraspp_mobilenetv3_small.onnx").unlink()
    (bundle / "manifest.json").write_text(json.dumps(m))
    code, out, err = cli("verify", bundle)
    assert_one_line_error(code, err, "not a file inside the bundle")
    assert not (bundle / "verify.report.json").exists()


def test_executorch_bundle_end_to_end(tmp_path, cli):
    pytest.importorskip("executorch")
    # a small user model (two outputs): lowering a zoo model to XNNPACK is what tests/export times already
    model = ["--model", "tests.support.models:tiny_classifier", "--shape", "1x3x32x32"]
    code, _, err = cli("executorch", "tiny", *model, "--images", "1", "--no-bench", "-o", tmp_path)
    assert code == 0, err
    code, out, err = cli("bundle", "tiny", *model, "--artifact", tmp_path / "tiny.pte", "--images", "1")
    assert code == 0, err
    code, out, err = cli("verify", tmp_path / "tiny.executorch.bundle", "--runs", "3", "--json")
    assert code == 0, err
    verified = report_from_dict(json.loads(out)).artifacts["executorch"]
    assert verified.status == "passed" and [o.name for o in verified.parity[0].outputs] == ["output0", "output1"]


def test_coreml_bundle_is_not_run_off_macos(tmp_path, cli):
    pytest.importorskip("coremltools")
    import platform

    if platform.system() == "Darwin":  # pragma: no cover
        pytest.skip("on macOS the CoreML bundle runs; this checks the refusal elsewhere")
    code, _, err = cli("coreml", "mobilenetv3_small", "--shape", "1x3x64x64", "--images", "1",
                       "--compute-units", "cpu_and_ne", "-o", tmp_path)
    assert code == 0, err
    report = load_report(tmp_path / "mobilenetv3_small.report.json")
    assert report.artifacts["coreml"].runner.options == {"compute_units": "cpu_and_ne"}
    code, _, err = cli("bundle", "mobilenetv3_small", "--artifact", tmp_path / "mobilenetv3_small.mlpackage",
                       "--shape", "1x3x64x64", "--images", "1", "--option", "compute_units=cpu_and_ne")
    assert code == 0, err
    bundle = tmp_path / "mobilenetv3_small.coreml.bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runner"]["options"] == {"compute_units": "cpu_and_ne"}  # verify on a Mac uses the same units
    assert manifest["artifact"]["precision"] == "fp16"  # from the format table, not guessed
    code, out, err = cli("verify", bundle)
    assert_one_line_error(code, err, "macOS")
    rep = load_report(bundle / "verify.report.json")
    assert rep.artifacts["coreml"].status == "not_run" and rep.verdict == "passed"  # not run is not a pass...
    assert "not run on this machine" in rep.artifacts["coreml"].reason  # ...and says so
    assert rep.fastest(passing=True) is None


def test_the_devices_figures_come_home(onnx_bundle, tmp_path, cli):
    """``report --merge HOST DEVICE...``: per artifact, the host's row and each device's (its verify report), each
    naming its machine (CPU, ISA flags) and runtime version; the device's figures are the ones it measured."""
    bundle = tmp_path / "b"
    shutil.copytree(onnx_bundle, bundle)
    code, _, err = cli("verify", bundle, "--runs", "3")
    assert code == 0, err
    device = json.loads((bundle / "verify.report.json").read_text())
    device["machine"].update(cpu="Cortex-A78AE", machine="aarch64", isa=["NEON", "NEON-dotprod"], os="Linux 5.15")
    (tmp_path / "jetson.report.json").write_text(json.dumps(device))
    host = onnx_bundle.parent / "lraspp_mobilenetv3_small.report.json"
    code, out, err = cli("report", "--merge", host, tmp_path / "jetson.report.json", "-o", tmp_path / "merged.md")
    assert code == 0, err
    rows = [ln.split(" | ") for ln in (tmp_path / "merged.md").read_text().splitlines() if ln.startswith("| onnx ")]
    assert [r[1].split(":")[0] for r in rows] == ["host", "device 1"], rows
    assert "Cortex-A78AE (aarch64; NEON, NEON-dotprod; Linux 5.15)" in rows[1][1] and "onnxruntime " in rows[1][2]
    dev = report_from_dict(device).artifacts["onnx"]
    assert rows[1][5] == f"{dev.worst('snr_db'):.2f}" and rows[1][7] == f"{dev.latency.median_ms:.3f}"
    assert rows[0][7] == "–"  # the host ran with --no-bench: no latency, and none is made up
    # a report of another model does not merge
    other = dict(device, model={**device["model"], "name": "mobilenetv3_small"})
    (tmp_path / "other.report.json").write_text(json.dumps(other))
    code, _, err = cli("report", "--merge", host, tmp_path / "other.report.json")
    assert_one_line_error(code, err, "only reports of the same model merge")
