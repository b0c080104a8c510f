"""Per-layer divergence (``edgeexport diff``): a fault put into one module of the artifact only is named, on
every CPU runtime, as the first layer where the artifact departs from eager PyTorch."""
import copy
import importlib.util

import numpy as np
import pytest
import torch

import edgeexport
from edgeexport.divergence import align, eager_taps
from edgeexport.runners.base import Tap
from edgeexport.zoo import create_model

SHAPE = (1, 3, 64, 64)
RUNTIMES = [pytest.param(t, marks=pytest.mark.skipif(importlib.util.find_spec(m) is None, reason=f"{m} is not installed"))
            for t, m in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("litert", "ai_edge_litert"),
                         ("ncnn", "ncnn"))]


def _faulty(model: torch.nn.Module, module: str, factor: float = 1.05) -> torch.nn.Module:
    """A copy of ``model`` whose ``module`` has its weights scaled: what a converter bug would do to one layer."""
    bad = copy.deepcopy(model)
    with torch.no_grad():
        dict(bad.named_modules())[module].weight.mul_(factor)
    return bad


def _diff(model, faulty_module, target, tmp_path, **kw):
    bad = _faulty(model, faulty_module)
    built = edgeexport.export(bad, SHAPE, targets=[target], output=tmp_path, threads=1, images=1, bench=False, **kw)
    art = built.artifacts[target]
    assert art.error is None and art.path, art.why()
    rep = edgeexport.diff(art.path, model, SHAPE, output=tmp_path / "diff", threads=1, **kw)
    return rep.artifacts[target].layers


@pytest.mark.parametrize("target", RUNTIMES)
@pytest.mark.parametrize("name,module", [("mobilenetv3_small", "features.4.block.1.0"),
                                         ("pyconvresnet18", "layer2.0.conv1.conv2_2")])
def test_a_fault_in_one_layer_is_the_first_divergent_layer(name, module, target, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    layers = _diff(model, module, target, tmp_path)
    assert layers.note is None and len(layers.layers) >= 20, layers.note
    assert layers.first_divergent == module, [(r.module, r.snr_db) for r in layers.layers[:40]]
    first = layers.record(module)
    assert first.snr_db < layers.threshold_db
    before = [r for r in layers.layers if r.depth < first.depth]
    assert len(before) >= 5 and min(r.snr_db for r in before) > 60  # the layers before it match eager
    if target in ("onnx", "openvino"):  # runtimes with a profiler: time per layer, by the same module paths
        assert layers.profiler and sum(1 for r in layers.layers if r.ms is not None) >= 10
    assert layers.paired_by == ("value" if target == "ncnn" else "module path")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
@pytest.mark.parametrize("target", RUNTIMES)
def test_a_fault_in_a_public_architecture_is_named(target, tmp_path):
    from edgeexport.source import load_model

    model = load_model("timm:mobilenetv4_conv_small").model.eval()
    module = "blocks.2.0.pw_exp.conv"
    layers = _diff(model, module, target, tmp_path)
    assert layers.first_divergent == module, [(r.module, r.snr_db) for r in layers.layers[:40]]


def test_a_tensor_a_converter_fused_is_compared_at_the_fused_boundary():
    """conv -> BN -> ReLU computed by the runtime as one tensor named after the conv: compared with the ReLU's
    output and recorded as the conv, fused with the other two; a faithful runtime gives no divergent layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1)).eval()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        fused = model[:3](x).numpy()
        out = model(x).numpy()
    taps = [Tap("blob1", "0", "Convolution", fused[0], layout="chw"),  # ncnn: batchless, named after the conv
            Tap("blob2", "3", "Convolution", out.transpose(0, 2, 3, 1), layout="nhwc")]
    diff = align(taps, eager_taps(model, x))
    assert [(r.module, r.fused_with) for r in diff.layers] == [("0", ["1", "2"]), ("3", [])]
    assert all(r.snr_db > 100 for r in diff.layers) and diff.first_divergent is None
    taps[0].array = taps[0].array * 1.1  # the fused kernel is wrong: it is the first divergent layer
    assert align(taps, eager_taps(model, x)).first_divergent == "0"


def test_a_failed_verdict_comes_with_its_per_layer_diff(tmp_path):
    """A graph that computes something else (tests.support.models:export_differs adds 0.5 while exported)
    fails parity, and the run's report already says at which module."""
    rep = edgeexport.export("tests.support.models:export_differs", SHAPE, targets=["onnx"], output=tmp_path,
                            threads=1, images=1, bench=False)
    art = rep.artifacts["onnx"]
    assert art.status == "failed"
    assert art.layers is not None and art.layers.first_divergent is not None, art.layers
    page = (tmp_path / "ExportDiffers.report.html").read_text() if (tmp_path / "ExportDiffers.report.html").exists() \
        else next(tmp_path.glob("*.report.html")).read_text()
    assert "Where it departs from eager" in page


def test_diff_command_names_the_layer_in_one_table(cli, tmp_path):
    model = create_model("mobilenetv3_small").eval()
    bad = _faulty(model, "features.4.block.1.0")
    built = edgeexport.export(bad, SHAPE, targets=["onnx"], output=tmp_path, threads=1, images=1, bench=False)
    code, out, err = cli("diff", built.artifacts["onnx"].path, "mobilenetv3_small", "--shape", "1x3x64x64",
                         "-o", tmp_path / "d", "--json")
    assert code == 1, err  # it departs from eager
    layers = __import__("json").loads(out)["artifacts"]["onnx"]["layers"]
    assert layers["first_divergent"] == "features.4.block.1.0" and layers["seconds"] < 30
    # time per layer from ONNX Runtime's profiler, by the same module paths
    assert layers["profiler"].startswith("onnxruntime") and layers["total_ms"] > 0
    timed = [r for r in layers["layers"] if r["ms"] is not None]
    assert len(timed) >= 30 and 0 < sum(r["ms"] for r in timed) <= layers["total_ms"]
    code, out, err = cli("diff", built.artifacts["onnx"].path, "mobilenetv3_small", "--shape", "1x3x64x64",
                         "-o", tmp_path / "d")
    assert "first divergent layer: features.4.block.1.0" in out


def test_layouts_are_reconciled():
    from edgeexport.divergence.align import conform

    a = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert np.array_equal(conform(Tap("t", "m", "op", a.transpose(0, 2, 3, 1), "nhwc"), a.shape), a)
    assert np.array_equal(conform(Tap("t", "m", "op", a[0], "chw"), a.shape), a)
    assert conform(Tap("t", "m", "op", a.reshape(1, 4, 3, 2), "nchw"), a.shape) is None  # not the same tensor


def test_an_int8_graph_keeps_its_module_paths_and_a_named_module_stays_float(cli, tmp_path):
    """ONNX Runtime's quantizer rewrites every node: the int8 build copies each node's module scope back, so
    its diff pairs by module path, and each layer's int8 error is measured where it happens. The repair on
    ONNX Runtime, by module path: every node of the named module stays float in the int8 graph (its weights are
    not int8), the build records which, and a module that is not there is one line."""
    import onnx

    module = "features.2.block.1.1"  # the BatchNorm folded into the first expansion's depthwise conv
    # the dynamo exporter's graph: a conv keeps the scope of the BatchNorm folded into it (TorchScript's does not)
    rep = edgeexport.export("mobilenetv3_small", SHAPE, {"onnx": {"exporter": "dynamo"},
                                                         "onnx-int8": {"float_modules": [module], "plans": ["all"],
                                                                       "calib_size": 2}},
                            output=tmp_path, threads=1, images=1, bench=False)
    art = rep.artifacts["onnx-int8"]
    assert art.build["scopes_kept"] > 50
    kept = art.build["float_modules"][module]
    assert kept and set(kept) <= set(art.build["excluded"])
    graph = onnx.load(str(art.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.name in kept and n.op_type == "Conv"):
        weight = producers.get(node.input[1])
        assert weight is None or weight.op_type != "DequantizeLinear", node.name  # float weights, not int8
    layers = edgeexport.diff(art.path, "mobilenetv3_small", SHAPE, output=tmp_path / "d", threads=1
                             ).artifacts["onnx-int8"].layers
    assert layers.paired_by == "module path" and len(layers.layers) >= 60
    assert layers.threshold_db == 12.0 and all(r.snr_db < 80 for r in layers.layers[5:])  # int8 error, everywhere
    assert sum(1 for r in layers.layers if r.ms is not None) >= 20
    assert layers.record(module).module == "features.2.block.1.0"  # the diff names the conv it was folded into
    code, _, err = cli("quantize", "mobilenetv3_small", "--mode", "int8", "--shape", "1x3x64x64",
                       "--float-module", "features.99", "--no-bench", "-o", tmp_path / "bad")
    assert code == 2 and "features.99" in err and not list((tmp_path / "bad").glob("*.int8.onnx"))
