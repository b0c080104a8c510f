"""LiteRT: litert-torch conversion (fp32), ai-edge-quantizer static int8, the interpreter runner
(XNNPACK, thread count, names), conversion failures as one-line artifact errors.

Figures the bounds come from (2 photographs, default (untrained) weights, 8 calibration batches):
mobilenetv3_small 1x3x64x64: fp32 max error 2e-6 of the logit scale; int8 logit SNR 12.4 dB, cosine
0.971. lraspp_mobilenetv3_small 1x3x96x96: int8 SNR 18.7 dB, argmax agreement 0.85 (the untrained
model's logits are nearly flat, so argmax flips easily).
"""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install 'edgeexport[litert]')")

from edgeexport import pipeline  # noqa: E402
from edgeexport.recipe import Recipe  # noqa: E402
from edgeexport.targets import get_target  # noqa: E402


def _context(model, shape, out, images=2):
    recipe = Recipe.from_dict({"model": model, "input_shape": shape, "output": str(out), "stages": {"onnx": None},
                               "inputs": {"images": images}, "bench": {"enabled": False}})
    return pipeline.prepare(recipe, log=lambda m: None)


def _build(ctx, **options):
    t = get_target("litert")
    art = pipeline.build(ctx, t, t.Options(**options))
    ctx.artifacts.append(art)
    pipeline.check_artifact(ctx, art)
    return art


def _metrics(art):
    return art.parity[0].outputs[0].metrics


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    ctx = _context("mobilenetv3_small", [1, 3, 64, 64], tmp_path_factory.mktemp("cls"))
    return ctx, _build(ctx), _build(ctx, quantize="int8")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    ctx = _context("lraspp_mobilenetv3_small", [1, 3, 96, 96], tmp_path_factory.mktemp("seg"))
    return ctx, _build(ctx), _build(ctx, quantize="int8")


def test_fp32_classifier_matches_eager_on_photos(cls):
    ctx, fp32, _ = cls
    assert fp32.error is None and fp32.parity_status == "passed", fp32.error
    assert fp32.path.name == "mobilenetv3_small.tflite" and fp32.kind == "litert"
    m = _metrics(fp32)
    assert m.max_abs_scaled <= 2e-5 and m.agreement == 1.0
    rec = fp32.record
    assert rec.inputs == {"input": "float32"} and rec.outputs == {"logits": "float32"}  # float I/O, our names
    assert rec.xnnpack_partitions == 1 and rec.outside_xnnpack == {} and rec.int8_ops == 0
    from ai_edge_litert.interpreter import Interpreter

    assert list(Interpreter(model_path=str(fp32.path)).get_input_details()[0]["shape"]) == [1, 3, 64, 64]  # NCHW


def test_fp32_segmenter_matches_eager_and_is_not_degenerate(seg):
    ctx, fp32, _ = seg
    assert fp32.error is None and fp32.parity_status == "passed", fp32.error
    m = _metrics(fp32)
    assert m.max_abs_scaled <= 2e-5 and m.agreement >= 0.999
    from edgeexport.targets.litert import LiteRTRunner

    feed = ctx.refs.feed()
    with LiteRTRunner(fp32.path, 2, ["input"], ctx.handle.output_names) as r:
        got = r.infer(feed)["out"]
    ref = ctx.refs.outputs(ctx.shape)[0]["out"]
    assert got.shape == ref.shape == (1, 21, 96, 96)
    assert len(np.unique(ref.argmax(1))) > 1 and len(np.unique(got.argmax(1))) > 1  # more than one class


def _plain_interpreter(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def test_int8_file_really_is_int8(cls, seg):
    for ctx, fp32, int8 in (cls, seg):
        assert int8.error is None and int8.kind == "litert-int8", int8.error
        assert int8.path.name.endswith(".int8.tflite") and int8.record.fp32_from == fp32.path.name
        it = _plain_interpreter(int8.path)
        weighted = [o for o in it._get_ops_details()
                    if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
        assert weighted and all(o["operand_types"][0] == np.int8 and o["operand_types"][1] == np.int8
                                and o["result_types"][0] == np.int8 for o in weighted)  # int8 activations and weights
        dtypes = int8.record.tensor_dtypes
        assert dtypes["int8"] > 2 * dtypes.get("float32", 0)
        assert int8.path.stat().st_size < 0.4 * fp32.path.stat().st_size
        # float input and output, like the fp32 file; XNNPACK takes the whole graph (ai-edge-litert 2.3 has
        # no int8 HardSwish: kept float, else 19 HardSwish ops between 20 partitions)
        assert int8.record.inputs == {"input": "float32"} and set(int8.record.outputs.values()) == {"float32"}
        assert int8.record.xnnpack_partitions == 1 and int8.record.outside_xnnpack == {}
        assert set(int8.record.kept_float_for_xnnpack) <= {"HARD_SWISH"}


def test_int8_agrees_with_eager(cls, seg):
    _, _, int8 = cls
    m = _metrics(int8)
    assert m.snr_db >= 9 and m.cosine >= 0.94  # measured 12.4 dB, 0.971 (untrained default weights)
    assert "litert" in int8.compared  # also compared with the fp32 file
    _, _, int8 = seg
    m = _metrics(int8)
    assert m.snr_db >= 15 and m.agreement >= 0.8


def _threads_after(path, threads):
    from edgeexport.targets.litert import LiteRTRunner

    before = len(os.listdir("/proc/self/task"))
    with LiteRTRunner(path, threads, ["input"], ["logits"]) as r:
        out = r.infer({"input": np.zeros((1, 3, 64, 64), np.float32)})
        started = len(os.listdir("/proc/self/task")) - before
        assert r.describe()["threads"] == threads and r.input_names == ["input"] and r.output_names == ["logits"]
    assert set(out) == {"logits"} and out["logits"].shape == (1, 1000) and out["logits"].dtype == np.float32
    return started


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_runner_honours_the_thread_count(cls):
    _, fp32, _ = cls
    # XNNPACK's thread pool: the calling thread plus threads - 1 workers, started at the first inference
    assert _threads_after(fp32.path, 1) == 0
    assert _threads_after(fp32.path, 3) == 2


class DictOutputs(torch.nn.Module):
    """Two outputs whose names sort the other way round from their order."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return {"zeta": self.fc(f.mean((2, 3))), "alpha": f}


def dict_outputs():
    return DictOutputs().eval()


class Erfinv(torch.nn.Module):
    def forward(self, x):
        return torch.special.erfinv(x.clamp(-0.5, 0.5))


def erfinv_model():
    return Erfinv().eval()


def test_outputs_are_mapped_by_name_not_file_order(tmp_path):
    ctx = _context("tests.targets.test_litert:dict_outputs", [1, 3, 32, 32], tmp_path)
    assert ctx.handle.output_names == ["zeta", "alpha"]
    art = _build(ctx)
    assert art.error is None and art.parity_status == "passed", art.error
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_path=str(art.path)).get_signature_list()["serving_default"]
    assert sig == {"inputs": ["input"], "outputs": ["alpha", "zeta"]}  # the file orders them by name
    assert {o.name for o in art.parity[0].outputs} == {"zeta", "alpha"}


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
def test_positional_and_full_integer_files_run(tmp_path):
    """A file converted without edgeexport's names (litert-torch's args_0 / output_0, ...) is mapped by
    position; a full-integer file (int8 input and output) gets its input quantized, outputs dequantized."""
    import litert_torch
    from ai_edge_quantizer import quantizer, recipe

    from edgeexport.targets.litert import LiteRTRunner, quiet_fds

    class Tuple(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = DictOutputs()

        def forward(self, x):
            out = self.inner(x)
            return out["zeta"], out["alpha"]

    model, x = Tuple().eval(), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    with quiet_fds():
        content = litert_torch.convert(model, (x,)).model_content()
    (tmp_path / "pos.tflite").write_bytes(content)
    with LiteRTRunner(tmp_path / "pos.tflite", 1, ["input"], ["zeta", "alpha"]) as r:
        got = r.infer({"input": x.numpy()})
    for name, want in zip(["zeta", "alpha"], ref):
        np.testing.assert_allclose(got[name], want.numpy(), atol=1e-5 * float(want.abs().max()))
    with quiet_fds():
        q = quantizer.Quantizer(bytearray(content), recipe.static_wi8_ai8())
        calib = q.calibrate({"serving_default": [{"args_0": torch.rand(1, 3, 32, 32).numpy()} for _ in range(4)]})
        (tmp_path / "full.int8.tflite").write_bytes(q.quantize(calib, enable_progress_report=False).quantized_model)
    with LiteRTRunner(tmp_path / "full.int8.tflite", 1, ["input"], ["zeta", "alpha"]) as r:
        assert r.signature.get_input_details()["args_0"]["dtype"] == np.int8
        got = r.infer({"input": x.numpy()})
    for name, want in zip(["zeta", "alpha"], ref):
        want = want.numpy()
        assert got[name].dtype == np.float32 and got[name].shape == want.shape
        snr = 10 * np.log10((want ** 2).sum() / ((want - got[name]) ** 2).sum())
        assert snr > 15, (name, snr)


def test_an_op_without_a_lowering_is_unsupported_naming_it_and_its_module(tmp_path):
    ctx = _context("tests.targets.test_litert:erfinv_model", [1, 3, 8, 8], tmp_path, images=1)
    art = _build(ctx)
    assert art.error is None and art.parity_status == "unsupported"
    assert art.unsupported == {"op": "aten.erfinv", "module": "the model's own forward (Erfinv)"}
    assert art.not_run_reason == ("unsupported: aten.erfinv at the model's own forward (Erfinv): LiteRT conversion failed: "
                                  "litert-torch has no lowering for aten.erfinv (aten.erfinv.default)")
    assert art.runner is None and not (tmp_path / "erfinv_model.tflite").exists()
    assert not [p for p in tmp_path.iterdir() if ".tflite" in p.name]  # no partial file either


class OddResize(torch.nn.Module):
    """SCNet's context path: pool by 4, then nearest resize back (14 -> 3 -> 14: a non-integer scale)."""

    def forward(self, x):
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 4), size=x.shape[-2:]) + x


def test_nearest_resize_at_a_non_integer_scale_picks_pytorchs_pixels(tmp_path):
    """litert-torch's RESIZE_NEAREST_NEIGHBOR uses half-pixel centres (PyTorch's nearest-exact): left as
    it is, 3 -> 14 copies other rows than PyTorch (errors of 1-2 here, 4-9% of SCNet's logit scale)."""
    from edgeexport.targets.litert import LiteRTRunner, convert_fp32

    x = torch.randn(1, 4, 14, 14)
    content, replaced = convert_fp32(OddResize().eval(), x, ["input"], ["out"])
    assert replaced == 1
    (tmp_path / "odd.tflite").write_bytes(content)
    with LiteRTRunner(tmp_path / "odd.tflite", 1, ["input"], ["out"]) as r:
        got = r.infer({"input": x.numpy()})["out"]
    np.testing.assert_allclose(got, OddResize()(x).numpy(), atol=1e-5)
