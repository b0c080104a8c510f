"""Task metrics of every artifact on the user's labeled data (--eval-data), end to end.

The eager mIoU / top-1 in the report is recomputed here independently (plain torch + numpy on
the folder's files), so a wrong resize, a lost ignore label or a shifted class index fails.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SEG = ("lraspp_mobilenetv3_small", 9, "1x3x96x96")


def _miou(conf: np.ndarray) -> float:
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    present = union > 0  # classes in the labels or the predictions (mmsegmentation's nanmean convention)
    return float(np.mean(inter[present] / union[present]))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    from typer.testing import CliRunner

    from edgeexport.cli import app

    tmp = tmp_path_factory.mktemp("taskeval")
    runner = CliRunner()
    data = tmp / "val"
    res = runner.invoke(app, ["data", "shapes_seg", "--split", "eval", "--count", "4", "--seed", "11",
                              "--size", "96x96", "-o", str(data)], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    model, classes, shape = SEG
    out = tmp / "out"
    res = runner.invoke(app, ["onnx", model, "--num-classes", str(classes), "--shape", shape, "--eval-data", str(data),
                              "--runs", "2", "-o", str(out)], catch_exceptions=False)
    report = json.loads((out / f"{model}.report.json").read_text())
    return data, out, res, report


def test_eager_miou_is_recomputed_independently(seg_run):
    from edgeexport.zoo import create_model, get_meta

    data, _, _, report = seg_run
    model_name, classes, _ = SEG
    model = create_model(model_name, num_classes=classes)
    meta = get_meta(model_name, classes)
    mean, std = np.asarray(meta.mean, np.float32), np.asarray(meta.std, np.float32)
    conf = np.zeros((classes, classes), np.int64)
    stems = sorted(p.stem for p in (data / "images").iterdir())
    assert len(stems) == 4
    for stem in stems:
        image = np.asarray(Image.open(next((data / "images").glob(stem + ".*"))).convert("RGB"), np.float32) / 255
        mask = np.asarray(Image.open(data / "masks" / f"{stem}.png"))
        assert mask.shape == image.shape[:2] == (96, 96)  # written at the input size: no resize needed
        x = torch.from_numpy(((image - mean) / std).transpose(2, 0, 1)[None].copy())
        with torch.no_grad():
            pred = model(x)["out"].argmax(1)[0].numpy()
        keep = mask != 255
        np.add.at(conf, (mask[keep].astype(int), pred[keep]), 1)
    eager = report["eager"]["task"]
    assert eager["metric"] == "miou" and eager["images"] == 4
    assert eager["value"] == pytest.approx(_miou(conf), abs=1e-6)
    assert eager["pixel_accuracy"] == pytest.approx(np.trace(conf) / conf.sum(), abs=1e-6)
    assert len(eager["per_class_iou"]) == classes


def test_artifact_carries_its_metric_and_drop_everywhere(seg_run):
    _, out, res, report = seg_run
    assert res.exit_code == 0, res.stdout + res.stderr
    onnx = report["artifacts"]["onnx"]
    task = onnx["task"]
    assert task["metric"] == "miou" and task["images"] == 4
    assert abs(task["drop_points"]) < 0.1 and task["issue"] is None  # an fp32 graph loses nothing
    assert task["drop_points"] == pytest.approx(100 * (report["eager"]["task"]["value"] - task["value"]))
    assert report["eval_data"]["task"] == "segmentation" and report["eval_data"]["images_used"] == 4
    # terminal table and Markdown report show the metric and the drop beside the tensor metrics
    header = next(line for line in res.stdout.splitlines() if "artifact" in line and "backend" in line)
    assert "mIoU" in header and "drop pts" in header and "SNR dB" in header
    md = (out / f"{SEG[0]}.report.md").read_text()
    assert "| mIoU | drop pts |" in md and f"- task: mIoU {100 * task['value']:.2f}" in md
    assert "per-class IoU: background" in md


def test_task_tolerance_rule():
    from edgeexport.metrics import TaskMetrics
    from edgeexport.parity import Tolerance
    from edgeexport.pipeline import task_issue

    eager = TaskMetrics(task="segmentation", output="out", images=4, miou=0.8)
    worse = TaskMetrics(task="segmentation", output="out", images=4, miou=0.7925)
    better = TaskMetrics(task="segmentation", output="out", images=4, miou=0.81)
    assert task_issue(worse, eager, Tolerance(max_task_drop=1.0)) is None  # 0.75 points
    assert task_issue(worse, eager, Tolerance(max_task_drop=0.5)) == \
        "miou 79.25 is 0.75 points below eager, limit 0.5"
    assert task_issue(better, eager, Tolerance(max_task_drop=0.0)) is None
    assert task_issue(worse, eager, Tolerance()) is None  # no limit set


def test_int8_is_judged_by_the_task_metric_when_data_is_labeled():
    from edgeexport.recipe import Recipe

    r = Recipe.from_dict({"model": "lraspp_mobilenetv3"})
    labeled, unlabeled = r.tolerance("int8", labeled=True), r.tolerance("int8", labeled=False)
    assert labeled.max_task_drop is not None and labeled.min_snr_db is None and labeled.min_agreement is None
    assert unlabeled.min_snr_db is not None
    # a recipe's own tensor limit still applies with labeled data
    r = Recipe.from_dict({"model": "lraspp_mobilenetv3", "tolerances": {"int8": {"min_snr_db": 25}}})
    assert r.tolerance("int8", labeled=True).min_snr_db == 25


@pytest.mark.parametrize("spec, needle", [
    ("shapes_cls", "classification set; the model's task is segmentation"),
    ("nosuch_folder_xyz", "does not exist"),
])
def test_eval_data_mismatch_is_a_one_line_error(cli, tmp_path, spec, needle):
    from tests.conftest import assert_one_line_error

    model, classes, shape = SEG
    code, _, err = cli("onnx", model, "--num-classes", classes, "--shape", shape, "--eval-data", spec,
                       "--no-bench", "-o", tmp_path)
    assert_one_line_error(code, err, needle)
    assert not list(Path(tmp_path).glob("*.onnx"))
