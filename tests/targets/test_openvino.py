"""The OpenVINO target: fp32 IR parity with eager on real photographs (f32 inference precision, fp32
weights really stored), NNCF int8 (FakeQuantize nodes, int8 kernels, agreement with eager), the
thread count honoured, accuracy-controlled int8 on labeled data, the CLI and a user's ONNX file.

Bounds were measured here (OpenVINO 2026.4, NNCF 3.4, default seeded weights): LR-ASPP-Small at
96x96 fp32 4e-7 of the logit scale, MobileNetV3-Small at 64x64 2e-6; int8 on the same LR-ASPP (untrained
weights) 11.3-11.8 dB SNR, 0.77-0.82 argmax agreement.
"""
import json

import numpy as np
import pytest

from edgeexport.errors import UserError

pytest.importorskip("openvino")

from edgeexport import pipeline  # noqa: E402
from edgeexport.recipe import Recipe  # noqa: E402
from edgeexport.targets import format_for_path, get_target, list_targets, make_runner  # noqa: E402
from edgeexport.targets.openvino import OpenVINOTarget, _failing_op  # noqa: E402

SEG, SEG_SHAPE = "lraspp_mobilenetv3_small", [1, 3, 96, 96]
CLS, CLS_SHAPE = "mobilenetv3_small", [1, 3, 64, 64]
FP32_BOUND = 1e-5  # max |OpenVINO - eager| / max |eager|, measured 4e-7 (seg) and 2e-6 (cls)
INT8_MIN_SNR_DB, INT8_MIN_AGREEMENT = 8.0, 0.7  # measured 11.3-11.8 dB, 0.77-0.82 (untrained weights)


def run_ctx(model, shape, out, stages, **extra):
    """Prepare, build and check (no timing); returns the context with its artifacts."""
    recipe = Recipe.from_dict({"model": model, "input_shape": shape, "output": str(out), "stages": stages,
                               "inputs": {"images": 2, **extra.pop("inputs", {})}, "bench": {"enabled": False},
                               **extra})
    ctx = pipeline.prepare(recipe)
    for target_cls, options, required_by in pipeline.plan(ctx):
        art = pipeline.build(ctx, target_cls, options, required_by)
        ctx.artifacts.append(art)
        pipeline.check_artifact(ctx, art)
    return ctx


def worst(art, key):
    values = [o.metrics.get(key) for p in art.parity for o in p.outputs]
    return max(values) if key == "max_abs_scaled" else min(values)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return run_ctx(SEG, SEG_SHAPE, tmp_path_factory.mktemp("ov-seg"),
                   {"onnx": None, "openvino": [{}, {"quantize": "int8", "budget": {"snr_db": 10}}]})


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    return run_ctx(CLS, CLS_SHAPE, tmp_path_factory.mktemp("ov-cls"), {"onnx": None, "openvino": [{}]})


def eager_and_ov(ctx, kind, threads=1):
    art = ctx.find(kind)
    feed = ctx.refs.feed()
    with make_runner(art.runner, threads) as r:
        got = r.infer(feed)
    return ctx.refs.outputs(ctx.shape)[0], got


def test_fp32_segmentation_matches_eager(seg):
    art = seg.find("openvino")
    assert art.error is None and art.parity_status == "passed"
    assert worst(art, "max_abs_scaled") < FP32_BOUND
    ref, got = eager_and_ov(seg, "openvino")
    assert got["out"].shape == (1, 21, 96, 96)
    assert len(np.unique(got["out"].argmax(1))) > 1  # not a degenerate output
    assert np.abs(got["out"] - ref["out"]).max() / np.abs(ref["out"]).max() < FP32_BOUND
    assert art.record.inference_precision == "f32" and art.record.runtime_precisions.get("f32", 0) > 0
    assert not {"bf16", "f16"} & set(art.record.runtime_precisions)  # nothing ran in reduced precision


def test_fp32_classification_matches_eager(cls):
    art = cls.find("openvino")
    assert art.error is None and art.parity_status == "passed"
    ref, got = eager_and_ov(cls, "openvino")
    assert got["logits"].shape == (1, 1000) and np.ptp(got["logits"]) > 0
    assert np.abs(got["logits"] - ref["logits"]).max() / np.abs(ref["logits"]).max() < FP32_BOUND
    assert worst(art, "max_abs_scaled") < FP32_BOUND


def test_fp32_ir_stores_fp32_weights(seg):
    import openvino as ov

    art = seg.find("openvino")
    xml, binf = art.path, art.path.with_suffix(".bin")
    assert xml.name == f"{SEG}.xml" and binf.is_file() and [str(binf)] == art.runner.files
    consts = [op for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "Constant"]
    types = {op.get_output_element_type(0).get_type_name() for op in consts}
    assert "f16" not in types  # ov.save_model's default fp16 compression is off
    params = sum(p.numel() for p in seg.handle.model.parameters())
    assert binf.stat().st_size >= 4 * params * 0.95  # 4 bytes a weight (BatchNorm folded into convolutions)
    assert art.record.constant_bytes["f32"] >= 4 * params * 0.95
    assert not list(xml.parent.glob(".*tmp*"))  # no temporaries left behind


def test_int8_ir_is_quantized_runs_and_agrees(seg):
    import openvino as ov

    art, fp32 = seg.find("openvino-int8"), seg.find("openvino")
    assert art.error is None and art.path.name == f"{SEG}.int8.xml"
    model = ov.Core().read_model(str(art.path))
    fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    assert fq > 20 and art.record.fake_quantize == fq
    assert art.record.constant_bytes.get("i8", 0) > 0.9 * fp32.record.constant_bytes["f32"] / 4  # int8 weights
    assert art.path.with_suffix(".bin").stat().st_size < 0.5 * fp32.path.with_suffix(".bin").stat().st_size
    rt = art.record.runtime_precisions
    assert rt.get("i8", 0) + rt.get("u8", 0) > 20  # the CPU plugin runs int8 kernels
    assert worst(art, "snr_db") >= INT8_MIN_SNR_DB and worst(art, "agreement") >= INT8_MIN_AGREEMENT
    ref, got = eager_and_ov(seg, "openvino-int8")
    assert len(np.unique(got["out"].argmax(1))) > 1
    assert (got["out"].argmax(1) == ref["out"].argmax(1)).mean() >= INT8_MIN_AGREEMENT
    assert art.record.preset == "performance" and art.record.calib_source == "photos:calib"
    # a budget with a tensor metric is the pipeline's float-set search (tests/pipeline), one on the task metric
    # alone NNCF's accuracy control: this build (not through a run) applied neither
    assert art.record.accuracy_control is None and art.repair is None
    assert not OpenVINOTarget.searches_budget(OpenVINOTarget.Options(quantize="int8", budget={"snr_db": 10}))
    assert OpenVINOTarget.searches_budget(OpenVINOTarget.Options(quantize="int8", budget={"miou_drop": 1}))
    assert art.compared.get("openvino")  # also compared with the fp32 IR


def test_threads_and_precision_are_honoured(seg):
    from edgeexport.util import default_threads

    art = seg.find("openvino")
    for threads in (1, 2):
        with make_runner(art.runner, threads) as r:
            used = min(threads, default_threads())  # OpenVINO runs no more threads than the CPUs it may use
            assert int(r.compiled.get_property("INFERENCE_NUM_THREADS")) == used
            assert str(r.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
            assert r.describe()["threads_used"] == used
    assert art.runner.options == {"device": "CPU", "inference_precision": "f32"}


def test_formats_and_file_names():
    t, f = format_for_path(f"out/{SEG}.int8.xml")
    assert t is OpenVINOTarget and f.kind == "openvino-int8" and f.companions == (".int8.bin",)
    t, f = format_for_path(f"out/{SEG}.xml")
    assert t is OpenVINOTarget and f.kind == "openvino"
    ours = {s for f in OpenVINOTarget.formats for s in (f.suffix, *f.companions)}
    for other in list_targets():
        if other is OpenVINOTarget:
            continue
        for f in other.formats:  # no other target writes a file our artifacts would overwrite, or claims ours
            assert not {f.suffix, *f.companions} & ours, (other.name, f)
            assert format_for_path(f"x{f.suffix}")[1] == f


def test_cli_quantize_int8(cli, tmp_path):
    code, out, err = cli("openvino", SEG, "--shape", "1x3x96x96", "--quantize", "int8", "--images", "1",
                         "--no-bench", "--json", "-o", tmp_path)
    assert out.strip(), (code, err)
    rep = json.loads(out)
    assert code == (0 if rep["verdict"] == "passed" else 1), err
    art = rep["artifacts"]["openvino-int8"]
    assert art["error"] is None and art["build"]["fake_quantize"] > 20 and art["build"]["quantize"] == "int8"
    assert (tmp_path / f"{SEG}.int8.xml").is_file() and (tmp_path / f"{SEG}.int8.bin").is_file()
    assert not (tmp_path / f"{SEG}.xml").exists()  # only what was asked for
    assert art["parity"][0]["outputs"][0]["metrics"]["snr_db"] >= INT8_MIN_SNR_DB


def test_from_a_users_onnx_file(seg, tmp_path):
    onnx_path = seg.find("onnx").path
    ctx = run_ctx(str(onnx_path), SEG_SHAPE, tmp_path, {"onnx": None, "openvino": [{}]})
    art = ctx.find("openvino")
    assert [a.kind for a in ctx.artifacts] == ["openvino"]  # nothing exported: the user's graph is the source
    assert art.error is None and art.parity_status == "passed" and art.record.source == str(onnx_path)
    assert worst(art, "max_abs_scaled") < FP32_BOUND
    assert (tmp_path / f"{SEG}.xml").is_file()


def test_accuracy_control_on_labeled_data(tmp_path):
    ctx = run_ctx(SEG, SEG_SHAPE, tmp_path, {"onnx": None, "openvino": [{"quantize": "int8", "calib_size": 2,
                                                                         "budget": {"miou_drop": 1.0}}]},
                  inputs={"images": 1, "eval_data": "shapes_seg", "eval_images": 4})
    art = ctx.find("openvino-int8")
    assert art.error is None and not art.failures
    ac = art.record.accuracy_control
    assert ac["metric"] == "miou" and ac["max_drop"] == 1.0 and ac["images"] == 4 and ac["met"]
    assert ac["drop"] == pytest.approx(ac["fp32"] - ac["final"], abs=1e-3) and ac["drop"] <= 1.0
    eager = 100 * ctx.eager_task.value  # the fp32 IR is eager within fp32 rounding
    assert ac["fp32"] == pytest.approx(eager, abs=0.05)
    assert art.task is not None and art.record.fake_quantize > 0
    md = "\n".join(art.record.markdown())
    assert "accuracy control: miou" in md and "budget 1 points met" in md
    r = art.repair  # the report's repair record: the modules of the operations NNCF reverted
    assert r.met and r.budget == {"task_drop": 1.0} and "NNCF" in r.search
    assert bool(r.float_modules) == bool(ac["reverted"]) and len(r.float_modules) <= len(ac["reverted"])


def test_int8_edge_cases(seg, tmp_path, monkeypatch):
    """Without labeled data a task budget is bad input (as for the quantize target); without nncf int8 is one
    line and the fp32 IR still builds; a device this machine lacks is one line."""
    import sys

    onnx_path = str(seg.find("onnx").path)
    ctx = pipeline.prepare(Recipe.from_dict({"model": onnx_path, "input_shape": SEG_SHAPE, "output": str(tmp_path),
                                             "inputs": {"images": 1}, "bench": {"enabled": False}}))
    t = get_target("openvino")

    def build(**opts):
        return pipeline.build(ctx, t, t.Options(**opts))

    with pytest.raises(UserError, match=r"--budget miou_drop=0.5 needs labeled data \(--eval-data\)"):
        build(quantize="int8", budget={"miou_drop": 0.5}, calib_size=2)
    assert build(device="NO_SUCH_DEVICE").error.startswith("OpenVINO device 'NO_SUCH_DEVICE' is not available here")
    monkeypatch.setitem(sys.modules, "nncf", None)  # nncf missing
    assert t.build_availability().ok
    err = build(quantize="int8").error
    assert err.startswith("int8 needs nncf") and "pip install 'edgeexport[openvino]'" in err and "\n" not in err
    assert build().error is None


def test_unsupported_operator_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["input"], ["out"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("com.example", 1)]), str(path))
    import openvino as ov

    with pytest.raises(Exception) as info:
        ov.convert_model(str(path))
    msg = _failing_op(info.value)
    assert "NoSuchOp" in msg and "\n" not in msg


def test_no_telemetry_leaves_the_process():
    """OpenVINO's converter would send usage events to Google Analytics from a forked process."""
    from tests.support.fresh import fresh_python

    code = ("import os, edgeexport.targets.openvino\n"
            "forks = []\n"
            "real = os.fork\n"
            "os.fork = lambda: forks.append(1) or real()\n"
            "import openvino as ov\n"
            "from openvino.tools.ovc import telemetry_utils\n"
            "import nncf.telemetry.wrapper as w\n"
            "print(telemetry_utils.tm.__name__, type(w.telemetry).__name__, len(forks))")
    assert fresh_python(code).split() == ["openvino.tools.ovc.telemetry_stub", "MagicMock", "0"]  # nncf: a no-op stub
