"""The library API (`edgeexport.export`, `check`, `run`, `recipe_for`): a model held in memory, in one call,
returns the typed report; bad input is a one-line ``UserError``."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import edgeexport
from edgeexport.errors import UserError


def small_segmenter() -> nn.Module:
    """A seeded, untrained fully convolutional net: a 6-class map at half the input size."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(), nn.Conv2d(16, 6, 1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = small_segmenter()  # left in training mode: export must not change the caller's module
    before = copy.deepcopy(model.state_dict())
    out = tmp_path_factory.mktemp("api")
    report = edgeexport.export(model, (1, 3, 64, 64), targets=["onnx", "onnx-int8", "openvino", "litert"],
                               output=out, threads=1, images=2)
    return model, before, out, report


def test_export_of_a_module_in_memory(exported):
    model, before, out, report = exported
    assert isinstance(report, edgeexport.Report) and report.kind == "run"
    assert list(report.artifacts) == ["onnx", "onnx-int8", "litert", "openvino"]  # registry order
    for kind in ("onnx", "litert", "openvino"):  # fp32: faithful to the eager module
        a = report.artifacts[kind]
        assert a.status == "passed", a.why()
        assert a.worst("max_abs_scaled") <= 1e-4 and a.worst("agreement") >= 0.999
    assert report.artifacts["onnx-int8"].status in ("passed", "failed")  # seeded weights: a plumbing check
    assert report.verdict == ("passed" if not report.failed else "failed")
    fastest = report.fastest(passing=True)
    assert fastest.passed and fastest.latency.median_ms == min(
        a.latency.median_ms for a in report.artifacts.values() if a.passed)
    assert report.model.origin == "python:Sequential" and report.model.outputs == ["output"]
    assert report.model.output_tasks == {"output": "segmentation"}
    assert report.machine.threads == 1 and report.artifacts["onnx"].latency.threads == 1
    assert {p.name for p in out.iterdir()} >= {"Sequential.onnx", "Sequential.int8.onnx", "Sequential.tflite",
                                               "Sequential.xml", "Sequential.report.json", "Sequential.report.html"}
    assert edgeexport.load_report(out / "Sequential.report.json").to_json() == report.to_json()
    # the caller's module is untouched: still training, same weights
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_report_renders_three_ways(exported, tmp_path):
    _, _, _, report = exported
    assert "| onnx-int8 | onnxruntime | int8 |" in report.to_markdown()
    page = report.to_html(tmp_path / "page.html")
    assert page.is_file() and "<svg" in page.read_text() and report.to_html().startswith("<!DOCTYPE html>")
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report.table())
    text = console.export_text()
    assert f"verdict: {report.verdict}" in text and "onnx-int8" in text


def test_the_recipe_is_the_saved_call(tmp_path):
    """A zoo model's call, saved as YAML, runs again through `edgeexport.run` with the same result."""
    import yaml

    recipe = edgeexport.recipe_for("mobilenetv3_small", "1x3x64x64", ["onnx"], output=tmp_path / "a", images=1,
                                   bench=False)
    path = tmp_path / "saved.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    again = edgeexport.run(path)
    assert again.artifacts["onnx"].status == "passed" and again.recipe == recipe.model_dump(mode="json")
    assert again.model.input_shape == [1, 3, 64, 64] and again.eager.latency is None  # bench=False


@pytest.mark.parametrize("example", [torch.zeros(1, 3, 40, 48), (torch.zeros(1, 3, 40, 48),), "1x3x40x48",
                                     (1, 3, 40, 48), np.zeros((1, 3, 40, 48), np.float32)])
def test_examples_give_the_shape(example):
    assert edgeexport.recipe_for(small_segmenter(), example, ["onnx"]).input_shape == [1, 3, 40, 48]


@pytest.mark.parametrize("example, needle", [
    ((torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), "one NCHW input; the example has 2"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int64), "image models take float input"),
    ((3, 224, 224), "malformed shape"),
    (object(), "expected a tensor"),
])
def test_bad_examples_are_one_line_errors(example, needle):
    with pytest.raises(UserError, match=needle):
        edgeexport.recipe_for(small_segmenter(), example, ["onnx"])


@pytest.mark.parametrize("call, needle", [
    (lambda: edgeexport.export(small_segmenter(), (1, 3, 8, 8), targets=["onnx-int4"]), "unknown artifact kind"),
    (lambda: edgeexport.export(small_segmenter(), (1, 3, 8, 8), targets=[]), "name at least one artifact kind"),
    (lambda: edgeexport.export("mobilenetv3_smal", (1, 3, 8, 8)), "unknown model"),
    (lambda: edgeexport.export(42, (1, 3, 8, 8)), "expected an nn.Module"),
    (lambda: edgeexport.export(small_segmenter(), (1, 3, 8, 8), targets={"onnx-int8": {"mode": "fp16"}}),
     "build onnx-fp16, not onnx-int8"),
    (lambda: edgeexport.export(small_segmenter(), (1, 3, 32, 32), targets=["onnx-int8"], calib=torch.zeros(2, 3, 8, 8)),
     "calib: expected images of shape"),
    (lambda: edgeexport.run({"model": "python:Sequential", "input_shape": [1, 3, 8, 8]}), "was given in memory"),
])
def test_bad_calls_are_one_line_errors(call, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=needle):
        call()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_calibration_given_as_tensors(tmp_path):
    rng = torch.Generator().manual_seed(3)
    calib = torch.rand(4, 3, 32, 32, generator=rng) * 2 - 1
    report = edgeexport.export(small_segmenter(), (1, 3, 32, 32), targets=["onnx-int8"], calib=calib,
                               output=tmp_path, images=1, bench=False)
    record = report.artifacts["onnx-int8"].record()
    assert record.calib_source == "memory:4 batches given in memory" and record.calib_size == 8


def test_check_an_artifact_built_elsewhere(tmp_path):
    """An ONNX file exported by torch.onnx directly, judged against the module: passes; against another
    module (other weights), it fails, with the report written beside it."""
    model = small_segmenter().eval()
    path = tmp_path / "mine.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 48, 48),), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"])
    report = edgeexport.check(path, model, (1, 3, 48, 48), bench=False)
    a = report.artifacts["onnx"]
    assert a.status == "passed" and a.path == str(path) and a.worst("max_abs_scaled") < 1e-5
    assert (tmp_path / "Sequential.onnx.check.report.json").is_file()
    other = small_segmenter().eval()
    with torch.no_grad():
        other[5].weight.mul_(1.5)
    assert edgeexport.check(path, other, (1, 3, 48, 48), bench=False).artifacts["onnx"].status == "failed"
    with pytest.raises(UserError, match="unknown artifact type"):
        edgeexport.check(tmp_path / "model.unknown", model, (1, 3, 48, 48))


class _RankFiveAttention(nn.Module):
    """Attention that splits qkv through a rank-5 tensor, as timm's blocks do: ncnn cannot hold it."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(dim, 3 * dim)

    def forward(self, t):
        b, n, c = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.body = nn.Sequential()
        self.body.add_module("attn", _RankFiveAttention())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


def test_a_refused_op_raises_unsupported_with_op_module_and_who_took_it(tmp_path):
    pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'edgeexport[ncnn]')")
    torch.manual_seed(0)
    with pytest.raises(edgeexport.Unsupported) as info:
        edgeexport.export(_Tokens().eval(), "1x3x32x32", targets=["ncnn"], output=tmp_path, threads=1)
    exc = info.value
    assert (exc.target, exc.op) == ("ncnn", "Tensor.reshape")  # the rank-5 reshape (pnnx also leaves the unbind)
    # the run built only what ncnn needs; the other targets were tried in a scratch folder and took the model
    from edgeexport.targets import get_target

    buildable = {n for n in ("onnx", "openvino", "litert", "executorch", "coreml")
                 if get_target(n).build_availability()[0]}
    assert exc.supported_by == sorted(buildable) and "onnx" in buildable
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".xml", ".tflite", ".pte", ".mlpackage")]
    assert exc.module == "body.attn (_RankFiveAttention)"
    assert str(exc).startswith("ncnn cannot convert") and "\n" not in str(exc)
    cell = exc.report.artifacts["ncnn"]
    assert cell.status == "unsupported" and (cell.op, cell.module) == (exc.op, exc.module) and cell.path is None
    assert list(exc.report.artifacts) == ["ncnn"]  # what the probe built is not part of the user's run
    assert not list(tmp_path.glob("*ncnn*"))
