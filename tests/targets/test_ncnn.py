"""ncnn through pnnx: fp32 parity with eager on real photographs (classification and segmentation),
fp16 weights and runtime options, batches, blob mapping, and unsupported operators named at build time."""
import struct

import numpy as np
import pytest

pytest.importorskip("pnnx", reason="pnnx is not installed (pip install 'edgeexport[ncnn]')")
pytest.importorskip("ncnn", reason="ncnn is not installed (pip install 'edgeexport[ncnn]')")

import torch  # noqa: E402

from edgeexport import pipeline  # noqa: E402
from edgeexport.recipe import Recipe  # noqa: E402
from edgeexport.targets import RunnerSpec, make_runner  # noqa: E402
from edgeexport.targets.ncnn import FP16_OPTIONS, NcnnConversionFailed, NcnnRunner, convert  # noqa: E402

FP16_TAG = struct.pack("<I", 0x01306B47)  # what ncnn's .bin puts before each fp16 weight blob
# Measured: mobilenetv3_small 1.6e-6..2e-6, lraspp_mobilenetv3_small 5e-7 of the logit scale (fp32 weights,
# fp16 paths off); fp16: 2e-3 / 7e-4 of the scale, SNR 55-61 dB.
FP32_BOUND, FP16_BOUND, FP16_SNR = 2e-5, 1e-2, 40.0


def _run(model, shape, stages, tmp):
    """Prepare, build and check (no timing); the context keeps the photographs and eager's outputs."""
    recipe = Recipe.from_dict({"model": model, "input_shape": shape, "output": str(tmp), "inputs": {"images": 2},
                               "bench": {"enabled": False}, "stages": {"onnx": None, "ncnn": stages}})
    ctx = pipeline.prepare(recipe)
    for target_cls, options, required_by in pipeline.plan(ctx):
        art = pipeline.build(ctx, target_cls, options, required_by)
        ctx.artifacts.append(art)
        pipeline.check_artifact(ctx, art)
    return ctx, {a.kind: a for a in ctx.artifacts}


def _metrics(art):
    return art.parity[0].outputs[0].metrics


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    return (out, *_run("mobilenetv3_small", [1, 3, 64, 64], [{"precision": "fp32"}, {"precision": "fp16"}], out))


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    return (out, *_run("lraspp_mobilenetv3_small", [2, 3, 96, 96], [{}], out))


def test_fp32_classification_matches_eager(cls):
    out, ctx, arts = cls
    art = arts["ncnn"]
    assert art.error is None and art.parity_status == "passed", art.error
    m = _metrics(art)
    assert m.max_abs_scaled <= FP32_BOUND and m.agreement == 1.0, m
    assert art.record.weights == "fp32" and art.record.layers["Convolution"] > 0
    assert art.runner.options["blobs"] == {"input": "in0", "logits": "out0"}
    assert not any(art.runner.options[k] for k in FP16_OPTIONS)
    assert any("ncnn2table/ncnn2int8" in n for n in art.record.notes)
    # only the two pairs, nothing pnnx wrote beside them, no temporaries
    assert sorted(p.name for p in out.iterdir()) == [f"mobilenetv3_small{s}" for s in (
        ".fp16.ncnn.bin", ".fp16.ncnn.param", ".ncnn.bin", ".ncnn.param")]


def test_fp16_stores_fp16_weights_and_runs_with_fp16_on(cls):
    out, ctx, arts = cls
    fp32, fp16 = arts["ncnn"], arts["ncnn-fp16"]
    assert fp16.error is None and fp16.parity_status == "passed", fp16.error
    b32, b16 = (out / "mobilenetv3_small.ncnn.bin").read_bytes(), (out / "mobilenetv3_small.fp16.ncnn.bin").read_bytes()
    assert len(b16) < 0.55 * len(b32) and b16.count(FP16_TAG) > 20 and b32.count(FP16_TAG) == 0
    assert fp16.runner.files == [str(out / "mobilenetv3_small.fp16.ncnn.bin")]
    assert all(fp16.runner.options[k] is True for k in FP16_OPTIONS) and fp16.record.weights == "fp16"
    with make_runner(fp16.runner, 1) as r:
        assert all(r.describe()[k] for k in FP16_OPTIONS)
    m = _metrics(fp16)
    assert m.agreement == 1.0 and m.snr_db >= FP16_SNR and m.max_abs_scaled <= FP16_BOUND, m
    assert m.max_abs_scaled > 10 * _metrics(fp32).max_abs_scaled  # fp16 really is in the arithmetic


def test_segmentation_batch_of_two_matches_eager(seg):
    out, ctx, arts = seg
    art = arts["ncnn"]
    assert art.error is None and art.parity_status == "passed", art.error
    m = _metrics(art)
    assert m.max_abs_scaled <= FP32_BOUND and m.agreement >= 0.9999, m
    (_, x), = ctx.refs.batches[(2, 3, 96, 96)]
    ref = ctx.refs.outputs((2, 3, 96, 96))[0]["out"]
    with make_runner(art.runner, 2) as r:
        got = r.infer({"input": x})["out"]
    assert got.shape == ref.shape == (2, 21, 96, 96) and got.dtype == np.float32  # NCHW, the batch axis back
    assert len(np.unique(ref.argmax(1))) > 1 and len(np.unique(got.argmax(1))) > 1  # not a constant map
    assert np.abs(got - ref).max() <= FP32_BOUND * np.abs(ref).max()
    assert not np.allclose(got[0], got[1])  # each item is its own photograph


def test_spec_without_options_runs_by_the_param_file(cls):
    """`edgeexport bundle` records no runtime options: blobs come from the param file, fp16 from the format."""
    out, ctx, arts = cls
    for kind, fp16 in (("ncnn", False), ("ncnn-fp16", True)):
        spec = RunnerSpec(target="ncnn", artifact=arts[kind].runner.artifact, files=arts[kind].runner.files,
                          output_names=["logits"])
        x = ctx.refs.feed()
        with make_runner(spec, 1) as r, make_runner(arts[kind].runner, 1) as recorded:
            assert all(r.describe()[k] is fp16 for k in FP16_OPTIONS)
            np.testing.assert_array_equal(r.infer(x)["logits"], recorded.infer(x)["logits"])


class _TwoOutputs(torch.nn.Module):
    """The first output also feeds the second: output blobs must still map by index."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.b(y).mean((2, 3)), y


def test_outputs_map_in_order(tmp_path):
    torch.manual_seed(0)
    model, x = _TwoOutputs().eval(), torch.rand(3, 3, 12, 10)
    info = convert(model, x, tmp_path / "two.ncnn.param", fp16=False)
    assert info["inputs"] == ["in0"] and info["outputs"] == ["out0", "out1"]
    blobs = {"input": "in0", "pooled": "out0", "features": "out1"}
    with NcnnRunner(tmp_path / "two.ncnn.param", None, 1, ["input"], ["pooled", "features"], blobs=blobs,
                    item_shapes={"pooled": [2], "features": [4, 12, 10]}) as r:
        got = r.infer({"input": x.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in model(x)]
    assert got["pooled"].shape == (3, 2) and got["features"].shape == (3, 4, 12, 10)
    for g, e in zip((got["pooled"], got["features"]), ref):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * np.abs(e).max())


class _Erfinv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return (torch.erfinv(torch.tanh(self.conv(x)) * 0.5),)


def test_unsupported_operator_is_one_line_naming_it(tmp_path):
    with pytest.raises(NcnnConversionFailed) as exc:
        convert(_Erfinv().eval(), torch.rand(1, 3, 8, 8), tmp_path / "bad.ncnn.param", fp16=False)
    msg = str(exc.value)
    assert "\n" not in msg and "aten::erfinv" in msg and msg.startswith("ncnn has no layer for"), msg
    assert list(tmp_path.iterdir()) == []  # nothing under the final names, no temporaries


def _pooled():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveMaxPool2d((3, 2)))


def _hetconv():
    from edgeexport.zoo.hetconv import HetConv

    return torch.nn.Sequential(HetConv(8, 8, part=4, form="grouped"), torch.nn.ReLU())


@pytest.mark.parametrize("make, onnx_form, op, channels", [(_pooled, "adaptive_max_pool", "torch.where", 3),
                                                            (_hetconv, None, "torch.index_select", 8)])
def test_the_default_rewrites_avoid_what_ncnn_lacks(make, onnx_form, op, channels, tmp_path):
    """The ONNX max-pool rewrite (and HetConv's grouped form) leave ops ncnn lacks; this target's defaults do not."""
    from edgeexport.rewrite import apply_rewrites
    from edgeexport.targets.ncnn import NcnnOptions

    torch.manual_seed(0)
    model, x = make().eval(), torch.rand(1, channels, 13, 11)
    leftover, _ = apply_rewrites(model, [onnx_form] if onnx_form else [])
    with pytest.raises(NcnnConversionFailed, match=op):
        convert(leftover, x, tmp_path / "bad.ncnn.param", fp16=False)
    fixed, _ = apply_rewrites(model, NcnnOptions().rewrites)
    convert(fixed, x, tmp_path / "ok.ncnn.param", fp16=False)
    with NcnnRunner(tmp_path / "ok.ncnn.param", None, 1, ["input"], ["y"], blobs={"input": "in0", "y": "out0"}) as r:
        got = r.infer({"input": x.numpy()})["y"]
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
