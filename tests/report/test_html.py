"""The HTML report: every section for a small classification and a small segmentation run, offline
(no remote reference), every embedded image decodes, and a real browser (headless Chromium) loads it
from a file:// URL without console errors and draws a page that is not blank."""
import base64
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgeexport import pipeline
from edgeexport.pipeline import views
from edgeexport.report import images
from edgeexport.recipe import Recipe
from edgeexport.report.html import render, render_matrix

BENCH = {"runs": 4, "warmup": 1}
INT8 = {"mode": "int8", "calib_size": 2}
ONNX = {"exporter": "torchscript"}  # the faster exporter: these tests are about the page, not the export


def _run(out: Path, **fields) -> tuple[dict, Path]:
    with pytest.MonkeyPatch.context() as mp:
        # int8 at these sizes may or may not be 1.25x faster here; make the operator breakdown certain
        mp.setattr(views, "MIN_INT8_SPEEDUP", 1e9)
        rep = pipeline.run(Recipe.from_dict({"output": str(out), "bench": BENCH, **fields}))
    name = fields["model"]
    return rep, out / f"{name}.report.html"


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """lraspp_mobilenetv3_small at 96x96, fp32 + int8, task metrics on 4 labeled images."""
    from edgeexport.datasets import get_dataset
    from edgeexport.datasets.labeled import from_builtin, write_folder

    base = tmp_path_factory.mktemp("seg")
    data = write_folder(from_builtin(get_dataset("shapes_seg"), "eval", 0, 4, (96, 96)), base / "data")
    return _run(base / "out", model="lraspp_mobilenetv3_small", input_shape=[1, 3, 96, 96],
                inputs={"images": 2, "eval_data": str(data)}, stages={"onnx": ONNX, "quantize": [INT8]})


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    """mobilenetv3_small at 64x64, the fp32 ONNX graph only (top-5 views)."""
    return _run(tmp_path_factory.mktemp("cls"), model="mobilenetv3_small", input_shape=[1, 3, 64, 64],
                inputs={"images": 2}, stages={"onnx": ONNX})


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section[^>]*id="([^"]+)"', page))


def embedded_images(page: str) -> tuple[list[bytes], list[str]]:
    """Raster data URIs (anywhere: src=, url()) and inline SVG figures."""
    rasters = [base64.b64decode(m) for m in re.findall(r"data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)", page)]
    svgs = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return rasters, svgs


def assert_offline_and_decodable(page: str) -> None:
    from PIL import Image

    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(\s*['\"]?([^'\")]*)", page)
    assert not [r for r in refs if re.match(r"\s*(https?:)?//", r)], "remote reference in the page"
    assert "<script" not in page.lower() and "@import" not in page and "@font-face" not in page
    rasters, svgs = embedded_images(page)
    for data in rasters:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert min(im.size) >= 1
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg") and len(root) > 0


def test_segmentation_page_has_every_section(seg):
    rep, path = seg
    page = path.read_text()
    kinds = list(rep.artifacts)
    assert kinds == ["onnx", "onnx-int8"]
    assert {"artifacts", "latency", "environment", "reproduce", "art-onnx", "art-onnx-int8"} <= sections(page)
    # the verdict comes before any table of numbers, and the artifact table has the task metric and its drop
    assert page.index('id="verdict"') < page.index("<table")
    header = re.search(r'<table class="summary">.*?</thead>', page, flags=re.S).group(0)
    assert "mIoU" in header and "drop pts" in header
    assert 'class="st passed"' in page or 'class="st failed"' in page
    # latency: one figure with every sample (kept in the JSON)
    for a in rep.artifacts.values():
        assert len(a.latency.samples_ms) == a.latency.runs == BENCH["runs"]
    assert len(rep.eager.latency.samples_ms) == BENCH["runs"]
    latency = page[page.index('id="latency"'):page.index('id="art-onnx"')]
    assert "<svg" in latency
    # per artifact: the error histogram, and the worst labeled image with input, masks and disagreement
    for kind in kinds:
        sec = page[page.index(f'id="art-{kind}"'):]
        sec = sec[:sec.index("</section>")]
        assert "Error against eager" in sec and "<svg" in sec
        for alt in ("input", "ground truth", "eager mask", f"{kind} mask", "disagreement"):
            alt = f'alt="{alt}"'
            assert alt in sec, (kind, alt)
    int8 = page[page.index('id="art-onnx-int8"'):]
    assert "int8: where precision is lost" in int8 and "int8 plans measured" in int8 and "(chosen)" in int8
    assert "Left in float" in int8 and "Why is int8 not faster?" in int8 and "QLinearConv" in int8
    assert "edgeexport run recipe.yaml" in page and "edgeexport report " in page and "onnxruntime" in page
    assert_offline_and_decodable(page)


def test_segmentation_views_in_the_json_are_compact_and_true(seg):
    rep, path = seg
    int8 = rep.artifacts["onnx-int8"]
    v = int8.views["segmentation"][0]
    img = rep.views["images"][v["image"]]
    eager, got = images.decode_mask(img["eager"][v["output"]]), images.decode_mask(v["artifact"])
    assert eager.shape == got.shape == (96, 96)
    assert (eager != got).mean() == pytest.approx(v["disagreement"], abs=1e-6)
    # the worst image is the one with the largest per-image drop (ties: the most pixels that differ)
    assert v["eager_value"] - v["artifact_value"] >= -1e-9 or v["disagreement"] > 0
    hist = int8.parity[0].outputs[0].hist
    assert hist.total == 2 * 21 * 96 * 96 and sum(hist.counts) + hist.under == hist.total
    prof = int8.profile
    assert prof["baseline"] == "onnx" and prof["ops"]["artifact"] and prof["ops"]["baseline"]
    assert "QLinearConv" in prof["ops"]["artifact"] and "Conv" in prof["ops"]["baseline"]
    assert 0 < sum(prof["ops"]["artifact"].values()) < 50 * int8.latency.median_ms
    js = path.with_name(path.name.replace(".html", ".json"))
    assert js.stat().st_size < 400_000 and path.stat().st_size < 1_500_000


def test_classification_page_shows_top5_side_by_side(cls):
    rep, path = cls
    page = path.read_text()
    v = rep.artifacts["onnx"].views["classification"][0]
    assert len(v["eager"]) == len(v["artifact"]) == 5 and v["top1_agree"]
    sec = page[page.index('id="art-onnx"'):]
    assert "worst photograph" in sec and "<th>eager</th>" in sec and "<th>onnx</th>" in sec
    assert "Why is int8 not faster?" not in page  # no int8 artifact
    assert_offline_and_decodable(page)


def test_not_run_here_is_visibly_distinct_from_passed(cls):
    rep = cls[0]
    extra = rep.artifacts["onnx"].model_copy(update=dict(
        name="coreml", kind="coreml", target="coreml", backend="coreml", precision="fp16", latency=None,
        ratio_to_eager=None, views={}, status="not_run", parity=[],
        reason="not run on this machine: CoreML predicts on macOS only"))
    page = render(rep.model_copy(update={"artifacts": {**rep.artifacts, "coreml": extra}}))
    row = re.search(r"<tr>\s*<td><a href=\"#art-coreml\">coreml</a>.*?</tr>", page, flags=re.S).group(0)
    assert 'class="st notrun"' in row and "not run here" in row and "passed" not in row
    assert "CoreML predicts on macOS only" in page[page.index('id="art-coreml"'):]
    assert ".notrun.st" in page  # styled apart from passed (hatched, grey, italic)


def test_report_command_rerenders_from_the_json(cli, seg, tmp_path):
    rep, path = seg
    js = tmp_path / "copy.report.json"
    shutil.copy(path.with_name(path.name.replace(".html", ".json")), js)
    code, out, err = cli("report", js, "--html")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == f"report: {tmp_path / 'copy.report.html'}"
    page = (tmp_path / "copy.report.html").read_text()
    assert sections(page) == sections(path.read_text())
    code, _, err = cli("report", tmp_path / "nothing.json")
    assert code == 2 and "no such report" in err


def test_matrix_page(seg, cls, tmp_path):
    page = render_matrix({"lraspp_mobilenetv3_small": seg[0], "mobilenetv3_small": cls[0]},
                         {"mobilenetv3_small": "zoo/mobilenetv3_small/mobilenetv3_small.report.html"})
    assert page.count('<tr class="model">') == 2 and "onnx-int8" in page
    assert 'href="zoo/mobilenetv3_small/mobilenetv3_small.report.html"' in page
    assert_offline_and_decodable(page)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium); "
                                              "the browser check of the HTML report needs a real browser")
def test_chromium_loads_the_page_without_errors(seg, tmp_path):
    from PIL import Image

    _, path = seg
    shot = tmp_path / "page.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           f"--screenshot={shot}", "--window-size=1280,2400", path.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    log = res.stdout + res.stderr
    console = [ln for ln in log.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, "\n".join(console)
    assert shot.exists(), log[-2000:]
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[:2] == (2400, 1280)
    colours = np.unique(rgb.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200  # text, coloured verdict cells, figures and the photographs
    assert (rgb != rgb[0, 0]).any(axis=2).mean() > 0.2  # not one uniform colour


def test_openvino_operator_profile(cls, tmp_path):
    """The 'why is int8 not faster' breakdown for OpenVINO artifacts: per-run layer times from its counters."""
    ov = pytest.importorskip("openvino")
    onnx_path = cls[1].with_name("mobilenetv3_small.onnx")
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "m.xml"), compress_to_fp16=False)
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)}
    from edgeexport.targets.openvino import openvino_profile

    p = openvino_profile(str(tmp_path / "m.xml"), x, 2, {"inference_precision": "f32"})
    assert p["runtime"].startswith("openvino") and "Convolution" in p["ops"]
    # per-run kernel times (not the plugin's running averages, which carry the first run's cost)
    assert 0 < sum(p["ops"].values()) < 3 * p["total_ms"] + 1.0
