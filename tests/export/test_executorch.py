"""ExecuTorch: XNNPACK lowering, fp32 and PT2E int8, run with ExecuTorch's Python runtime."""
import json

import pytest

from tests.conftest import assert_one_line_error

pytest.importorskip("executorch", reason="executorch is not installed (pip install 'edgeexport[executorch]')")


def test_fp32_program_matches_eager(cli, tmp_path):
    code, out, err = cli("executorch", "lraspp_mobilenetv3_small", "--shape", "1x3x64x96", "--images", "2",
                         "--runs", "3", "-o", tmp_path, "--json")
    assert code == 0, err
    art = json.loads(out)["artifacts"]["executorch"]
    assert art["kind"] == "executorch" and (tmp_path / "lraspp_mobilenetv3_small.pte").exists()
    m = art["parity"][0]["outputs"][0]["metrics"]
    assert art["status"] == "passed" and m["max_abs_scaled"] <= 1e-4 and m["agreement"] >= 0.999
    assert art["build"]["delegated_nodes"] >= 1
    assert art["latency"]["threads"] == json.loads(out)["eager"]["latency"]["threads"]
    # no per-layer diff on this runtime, and it says why instead of pretending
    code, _, err = cli("diff", tmp_path / "lraspp_mobilenetv3_small.pte", "lraspp_mobilenetv3_small",
                       "--shape", "1x3x64x96", "-o", tmp_path / "diff")
    assert_one_line_error(code, err, "XNNPACK delegate")


def test_dict_outputs_keep_their_names(cli, tmp_path):
    code, out, err = cli("executorch", "seg", "--model", "tests.support.models:tiny_segmenter", "--shape", "1x3x32x32",
                         "--images", "1", "--no-bench", "-o", tmp_path, "--json")
    assert code == 0, err
    rep = json.loads(out)
    art = rep["artifacts"]["executorch"]
    assert rep["model"]["outputs"] == ["out", "aux"] and art["status"] == "passed"
    assert [o["name"] for o in art["parity"][0]["outputs"]] == ["out", "aux"]
    assert [o["shape"] for o in art["parity"][0]["outputs"]] == [[1, 5, 32, 32], [1, 5, 8, 8]]


# PT2E int8 top-1 on the trained PyConvResNet-18: tests/quantize/test_hostile_corpus.py (TestExecuTorch, its clean
# model), which builds that artifact anyway


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


def test_pads_of_zero_width_are_dropped_and_others_kept():
    """XNNPACK refuses a zero-width quantized pad when the method loads (Swin pads windows by size % window);
    the pass drops exactly the pads that pad nothing, and the program computes the same."""
    import torch
    import torch.nn.functional as F

    from edgeexport.targets.executorch import _drop_identity_pads

    class Pads(torch.nn.Module):
        def forward(self, x):
            return F.pad(F.pad(x, (0, 0, 0, 0)) * 2, (1, 0, 0, 2))

    x = torch.randn(1, 2, 3, 4)
    graph = torch.export.export(Pads(), (x,)).module()
    pads = lambda g: [n.args[1] for n in g.graph.nodes if "pad" in str(n.target)]  # noqa: E731
    assert len(pads(graph)) == 2
    graph = _drop_identity_pads(graph)
    assert pads(graph) == [[1, 0, 0, 2]]
    torch.testing.assert_close(graph(x), Pads()(x))


def test_etdump_times_the_xnnpack_operators(tmp_path):
    """ExecuTorch's own profiler: the XNNPACK delegate's events, per operator type, within the run's time."""
    import numpy as np
    import torch

    from edgeexport.targets.executorch import etdump_profile, lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
    lower(model, torch.randn(1, 3, 32, 32), tmp_path / "m.pte")
    feed = {"input": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    prof = etdump_profile(str(tmp_path / "m.pte"), feed, 1, ["input"], runs=5)
    convs = {k: v for k, v in prof["ops"].items() if k.startswith("Convolution")}
    assert convs and all(v > 0 for v in convs.values()), prof
    assert sum(prof["ops"].values()) <= prof["total_ms"] * 1.05 and "etdump" in prof["runtime"]
