"""ExecuTorch: XNNPACK lowering, fp32 and PT2E int8, run with ExecuTorch's Python runtime."""
import json

import pytest

pytest.importorskip("executorch", reason="executorch is not installed (pip install 'edgeexport[executorch]')")


def test_fp32_program_matches_eager(cli, tmp_path):
    code, out, err = cli("executorch", "lraspp_mobilenetv3_small", "--shape", "1x3x64x96", "--images", "2",
                         "--runs", "3", "-o", tmp_path, "--json")
    assert code == 0, err
    art = json.loads(out)["artifacts"][0]
    assert art["kind"] == "executorch" and (tmp_path / "lraspp_mobilenetv3_small.pte").exists()
    m = art["parity"]["checks"][0]["outputs"][0]["metrics"]
    assert art["parity"]["status"] == "passed" and m["max_abs_scaled"] <= 1e-4 and m["agreement"] >= 0.999
    assert art["build"]["delegated_nodes"] >= 1
    assert art["latency"]["threads"] == json.loads(out)["eager"]["latency"]["threads"]


def test_int8_program_builds_and_runs(cli, tmp_path):
    code, out, err = cli("executorch", "pyconvresnet18", "--quantize", "int8", "--shape", "1x3x64x64",
                         "--images", "2", "--calib-size", "4", "--no-bench", "-o", tmp_path, "--json")
    art = json.loads(out)["artifacts"][0]
    assert art["error"] is None and art["kind"] == "executorch-int8", err
    assert (tmp_path / "pyconvresnet18.int8.pte").exists()
    assert art["parity"]["checks"][0]["outputs"][0]["metrics"]["snr_db"] > 10
    assert code in (0, 1)
