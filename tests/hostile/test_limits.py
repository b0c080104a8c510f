"""Bounded resources and one validation layer: numbers are finite and in range, images are measured before they
are decoded, a runtime that crashes on an artifact does so in a child process, and every refusal is exit 2
with one line, before anything is built."""
from __future__ import annotations

import random

import pytest

from tests.hostile.support import GIB, listing, run_fresh, run_here, unchanged

QUANTIZE = ["quantize", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32", "--no-bench", "--images", "1",
            "--task", "classification", "--mode", "int8", "-o", "out"]


def test_a_tiny_png_of_huge_aspect_is_refused_before_decoding(folder, home):
    from PIL import Image

    (folder / "imgs").mkdir()
    Image.new("L", (100_000, 1)).save(folder / "imgs" / "long.png")
    assert (folder / "imgs" / "long.png").stat().st_size < 1000
    res = run_fresh(["onnx", "tiny", "--model", "tinynet:build", "--shape", "1x3x224x224", "--input-folder", "imgs",
                     "--no-bench", "-o", "out", "--task", "classification"], home=home, cwd=folder)
    res.one_line_error("a 100000x1 image")
    assert res.max_rss is None or res.max_rss < 2 * GIB
    assert not (folder / "out").exists()


def test_a_decompression_bomb_image_is_refused_by_its_pixel_count(folder):
    from PIL import Image

    (folder / "imgs").mkdir()
    Image.new("L", (9000, 9000)).save(folder / "imgs" / "big.png")  # 81 MP, a few KB on disk
    res = run_here(["onnx", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32", "--input-folder", "imgs",
                    "--no-bench", "-o", "out", "--task", "classification"])
    res.one_line_error("megapixels")
    assert "DecompressionBomb" not in res.stderr


@pytest.mark.parametrize("budget, needle", [
    ("snr_db=inf", "finite number"), ("snr_db=nan", "finite number"), ("agreement=2", "outside [0, 1]"),
    ("agreement=-1", "outside [0, 1]"), ("top1_drop=0.5", "needs labeled data"),
])
def test_budgets_are_finite_in_range_and_measurable_before_anything_is_built(folder, budget, needle):
    run_here([*QUANTIZE, "--budget", budget]).one_line_error(needle)
    assert not any(p.is_file() for p in (folder / "out").rglob("*")) if (folder / "out").exists() else True


@pytest.mark.parametrize("module", ["", "+", "a++b", "../x", "body.0;rm"])
def test_float_module_paths_are_validated(folder, module):
    run_here([*QUANTIZE, "--float-module", module]).one_line_error("is not a module path")


@pytest.mark.parametrize("flag, value", [("--runs", "0"), ("--runs", "-5"), ("--threads", "100000"),
                                         ("--threads", "0")])
def test_verify_threads_and_runs_are_bounded(bundle, flag, value):
    run_here(["verify", bundle, flag, value]).one_line_error(f"{flag} {value}")


def test_a_runtime_that_crashes_on_an_artifact_costs_one_line(folder):
    """Random bytes named .pte abort ExecuTorch's loader (C++ terminate: its error message is not UTF-8 and the
    binding cannot decode it); it happens in a child process. Seeded bytes: some random files instead fail
    with a clean error, whose message happens to decode."""
    (folder / "r.pte").write_bytes(random.Random(0).randbytes(3000))
    res = run_here(["diff", folder / "r.pte", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32"])
    res.one_line_error("ExecuTorch crashed loading")


def test_a_native_parser_says_nothing_on_the_terminal(folder):
    """ncnn prints its parser's complaints on file descriptor 2: they become the one error line, not noise."""
    pytest.importorskip("ncnn")
    (folder / "m.ncnn.param").write_text("7767517\n2 2\nInput in0 0 1 in0\nBogusLayer x 1 1 in0 out0 0=1\n")
    (folder / "m.ncnn.bin").write_bytes(b"\0" * 16)
    res = run_here(["check", folder / "m.ncnn.param", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32"])
    res.one_line_error("BogusLayer")


@pytest.mark.parametrize("body, needle", [
    ("num_classes: " + "9" * 5000, None),
    ("bench: {runs: 100000000}", "runs"),
    ("bench: {threads: 100000}", "threads"),
    ("bench: {budget_s: .inf}", None),
    ("tolerances: {fp32: {max_abs_scaled: .nan}}", None),
    ("x" * (2 << 20), "MiB"),
])
def test_recipe_numbers_and_sizes_are_bounded(folder, body, needle):
    (folder / "r.yaml").write_text("model: tinynet:build\ninput_shape: [1, 3, 32, 32]\n" + body + "\n")
    before = listing(folder)
    run_here(["run", folder / "r.yaml"]).one_line_error(needle)
    assert unchanged(before, listing(folder))


def test_a_deeply_nested_report_is_bad_input(folder):
    (folder / "x.report.json").write_text("[" * 100_000 + "]" * 100_000)
    run_here(["report", folder / "x.report.json"]).one_line_error("not a JSON report")
