"""CoreML: real conversion with coremltools; prediction only on macOS (reported as not run elsewhere)."""
import json
import platform

import pytest

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install 'edgeexport[coreml]')")

ON_MAC = platform.system() == "Darwin"


def test_convert_validate_and_report_not_run_off_macos(cli, tmp_path):
    code, out, err = cli("coreml", "lraspp_mobilenetv3_small", "--shape", "1x3x64x96", "--images", "1", "--runs", "3",
                         "-o", tmp_path, "--json")
    assert code == 0, err
    rep = json.loads(out)
    art = rep["artifacts"]["coreml"]
    assert art["kind"] == "coreml" and (tmp_path / "lraspp_mobilenetv3_small.mlpackage").is_dir()
    b = art["build"]
    assert b["inputs"] == {"input": [1, 3, 64, 96]} and b["outputs"] == ["out"]
    assert b["validation_problems"] == [] and b["ops"].get("conv", 0) > 10
    if ON_MAC:  # pragma: no cover
        assert art["status"] == "passed"
    else:
        assert art["status"] == "not_run"
        assert art["reason"].startswith("not run on this machine") and "macOS" in art["reason"]
        assert "passed" not in out.split('"status": "not_run"')[0][-50:]
    md = (tmp_path / "lraspp_mobilenetv3_small.report.md").read_text()
    assert "not run here" in md or ON_MAC
    # the module map `diff` pairs CoreML's intermediate tensors by: every conv's output names its module
    from edgeexport.targets.coreml import _mil_outputs, recorded_modules
    from edgeexport.zoo import create_model

    spec = ct.utils.load_spec(str(tmp_path / "lraspp_mobilenetv3_small.mlpackage"))
    modules, kinds = recorded_modules(spec), _mil_outputs(spec)
    convs = [n for n, k in kinds.items() if k == "conv"]
    named = dict(create_model("lraspp_mobilenetv3_small").named_modules())
    assert b["modules_recorded"] == len(modules) and sum(n in modules for n in convs) >= 0.9 * len(convs)
    assert {type(named[modules[n]]).__name__ for n in convs if n in modules} <= {"Conv2d", "BatchNorm2d"}


@pytest.mark.skipif(not ON_MAC, reason="CoreML predicts on macOS only: its intermediate tensors cannot be read here")
def test_diff_names_a_faulty_module_on_coreml(tmp_path):  # pragma: no cover (macOS)
    import edgeexport
    from tests.divergence.test_diff import _faulty
    from edgeexport.zoo import create_model

    model, module = create_model("mobilenetv3_small"), "features.4.block.1.0"
    built = edgeexport.export(_faulty(model, module), (1, 3, 64, 64), {"coreml": {"precision": "fp32"}},
                              output=tmp_path, threads=1, images=1, bench=False)
    layers = edgeexport.diff(built.artifacts["coreml"].path, model, (1, 3, 64, 64), output=tmp_path / "d",
                             threads=1).artifacts["coreml"].layers
    assert layers.first_divergent == module


def test_weight_compression_shrinks_the_package(cli, tmp_path):
    code, _, err = cli("coreml", "mobilenetv3_small", "--shape", "1x3x64x64", "--compress", "int8",
                       "--precision", "fp32", "--images", "1", "-o", tmp_path)
    assert code == 0, err
    code, _, err = cli("coreml", "mobilenetv3_small", "--shape", "1x3x64x64", "--precision", "fp32", "--images", "1",
                       "-o", tmp_path)
    assert code == 0, err
    from edgeexport.util import file_size

    small = file_size(tmp_path / "mobilenetv3_small.int8.mlpackage")
    full = file_size(tmp_path / "mobilenetv3_small.fp32.mlpackage")
    assert small < 0.4 * full


def test_bad_compress_value(cli, tmp_path):
    from tests.conftest import assert_one_line_error

    code, _, err = cli("coreml", "mobilenetv3_small", "--compress", "zip", "-o", tmp_path)
    assert_one_line_error(code, err, "compress")


def test_aliases_are_dropped_before_conversion():
    """coremltools has no converter for ``aten.alias`` ("Unsupported fx node alias", Swin); an alias is its
    input, so the pass rewires its users and the program computes the same."""
    import torch

    from edgeexport.targets.coreml import _drop_aliases

    class Aliased(torch.nn.Module):
        def forward(self, x):
            return torch.ops.aten.alias.default(x + 1) * 3

    x = torch.randn(2, 3)
    program = torch.export.export(Aliased(), (x,)).run_decompositions({})
    count = lambda p: sum(n.target == torch.ops.aten.alias.default for n in p.graph.nodes)  # noqa: E731
    assert count(program) == 1
    program = _drop_aliases(program)
    assert count(program) == 0
    torch.testing.assert_close(program.module()(x), Aliased()(x))
