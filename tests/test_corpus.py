"""The public-architecture corpus (``recipes/corpus``), fast subset: models nobody here wrote, with their own
seeded initialisation and BatchNorm settled on photographs, through the targets where they bring something
the zoo lacks (dict outputs, re-parameterisation, attention for ncnn), and a converter's refusal that names
the op and the module. The whole corpus x every target runs in ``make bench`` (BENCHMARKS.md)."""
import importlib.util
import json

import pytest

from edgeexport.libraries import is_library_spec
from tests.conftest import assert_one_line_error
from tests.support.corpus import corpus, entry, stages_for

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed (pip install 'edgeexport[timm]')")


def _run(row: str, kinds: list[str], tmp_path, **fields):
    from edgeexport import pipeline

    recipe = entry(row).recipe(stages=stages_for(kinds), output=str(tmp_path), bench={"enabled": False}, **fields)
    return pipeline.run(recipe, log=lambda m: None)


def _fp32_metrics(art) -> list:
    return [o.metrics for p in art.parity for o in p.outputs]


def test_the_corpus_is_public_architectures_from_both_libraries():
    entries = corpus()
    specs = [e.recipe().model for e in entries]
    assert len(entries) >= 16 and len(set(specs)) == len(specs)
    assert all(is_library_spec(s) for s in specs)
    assert {s.split(":")[0] for s in specs} == {"timm", "torchvision"}
    assert all(e.brings for e in entries) and all(e.recipe().settle_bn for e in entries)


def test_dict_outputs_keep_their_names_through_every_fp32_target(tmp_path):
    """torchvision's DeepLabV3 returns {"out", "aux"}: every artifact keeps both names, and both match."""
    kinds = ["onnx", "openvino", "ncnn"]  # LiteRT's and ExecuTorch's: tests/targets/test_litert.py, tests/export
    rep = _run("tv_deeplabv3_mnv3", kinds, tmp_path, input_shape="1x3x64x64")
    assert rep.model.outputs == ["out", "aux"]
    assert "BatchNorm statistics of 54 layers settled on" in " ".join(rep.model.preparation)
    for kind in kinds:
        art = rep.artifacts[kind]
        assert art.status == "passed", (kind, art.why())
        assert [o.name for o in art.parity[0].outputs] == ["out", "aux"], kind
        assert all(m.max_abs_scaled <= 1e-3 and m.agreement >= 0.99 for m in _fp32_metrics(art)), kind


def test_reparameterisable_blocks_are_fused_and_the_fused_graph_matches_the_unfused_model(tmp_path):
    rep = _run("timm_mobileone_s0", ["onnx", "ncnn", "openvino-int8"], tmp_path, input_shape="1x3x96x96")
    assert any("reparameterize" in p for p in rep.model.preparation), rep.model.preparation
    for kind in ("onnx", "ncnn"):
        assert rep.artifacts[kind].status == "passed", rep.artifacts[kind].why()
    onnx = json.loads(rep.model_dump_json())["artifacts"]["onnx"]
    assert onnx["build"]["rewrites"]["reparameterize"] >= 10  # every MobileOne block, not one
    # int8 on seeded weights is a plumbing check: built, run, and close to the fp32 model, if not within tolerance
    int8 = rep.artifacts["openvino-int8"]
    assert int8.built and int8.parity and int8.error is None
    assert all(m.cosine >= 0.5 for m in _fp32_metrics(int8)), _fp32_metrics(int8)


def test_vision_transformer_attention_converts_for_ncnn_in_its_rank_4_form(tmp_path):
    rep = _run("timm_vit_tiny", ["ncnn"], tmp_path)
    art = rep.artifacts["ncnn"]
    assert art.status == "passed", art.why()
    assert art.build["rewrites"]["rank4"] == 12  # one per transformer block
    assert all(m.max_abs_scaled <= 1e-3 for m in _fp32_metrics(art))


def test_a_refused_op_exits_2_naming_the_op_the_module_and_who_took_it(cli, tmp_path):
    """EdgeNeXt's cross-covariance attention unbinds a rank-5 tensor ncnn cannot hold: one line with the op and
    the module path, exit 2, and no ncnn files left behind; the report keeps the cell as unsupported. (Which
    other targets take a refused model is tested on a small model in tests/test_api.py: here it is skipped.)"""
    code, out, err = cli("ncnn", "--model", "timm:edgenext_xx_small", "--settle-bn", "--shape", "1x3x64x64",
                         "--images", "1", "--no-bench", "--no-probe", "-o", tmp_path)
    assert_one_line_error(code, err)
    line = err.strip()
    assert "ncnn cannot convert timm:edgenext_xx_small: unsupported torch.unbind at stages." in line
    assert line.endswith(".xca (CrossCovarianceAttn); the other targets were not tried (--no-probe)")
    assert not list(tmp_path.glob("*ncnn*")) and not list(tmp_path.glob("*.tmp*"))
    rep = json.loads((tmp_path / "edgenext_xx_small.report.json").read_text())
    cell = rep["artifacts"]["ncnn"]
    assert cell["status"] == "unsupported" and cell["op"] == "torch.unbind" and ".xca" in cell["module"]
    assert cell["taken_by"] is None and list(rep["artifacts"]) == ["ncnn"]
