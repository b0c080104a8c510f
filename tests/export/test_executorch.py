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


@pytest.mark.parametrize("form", ["dense", "grouped"])
def test_computed_weights_become_constants_that_xnnpack_takes(form, tmp_path):
    """HetConv computes its conv weights from its parameters in forward; lowered as they are, those
    convolutions fell back to ExecuTorch's portable kernels (hetconv_resnet34 ran 150x slower than eager)."""
    import numpy as np
    import torch

    from edgeexport.targets.executorch import lower
    from edgeexport.targets.executorch import ExecuTorchRunner
    from edgeexport.zoo.hetconv import HetConv

    torch.manual_seed(0)
    model = torch.nn.Sequential(HetConv(16, 16, part=4, form=form), torch.nn.ReLU(),
                                HetConv(16, 32, part=4, stride=2, form=form)).eval()
    x = torch.randn(1, 16, 20, 20)
    build = lower(model, x, tmp_path / "het.pte")
    portable = build["graph_nodes"] - build["delegated_nodes"]
    if form == "dense":
        assert build["graph_nodes"] == build["delegated_nodes"] == 1  # one delegate, nothing portable
    else:  # only the channel permutations (index_select, one before and one after each layer) stay portable
        assert portable == 4
    with ExecuTorchRunner(tmp_path / "het.pte", 2, ["input"], ["out"]) as r:
        got = r.infer({"input": x.numpy()})["out"]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
