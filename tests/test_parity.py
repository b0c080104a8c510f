"""Known-answer tests for the parity metrics and verdicts."""
import math

import numpy as np
import pytest

from edgeexport.parity import DEFAULT_TOLERANCES, SNR_CAP_DB, ParityCheck, Tolerance, compare

SEG = {"out": "segmentation"}
CLS = {"logits": "classification"}


def seg_logits(rng, n=2, c=5, h=8, w=8):
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def test_identical_outputs():
    x = seg_logits(np.random.default_rng(0))
    r = compare({"out": x}, {"out": x.copy()}, SEG)
    m = r.outputs[0].metrics
    assert r.passed
    assert m.max_abs == 0 and m.mean_abs == 0 and m.max_rel == 0
    assert m.cosine == pytest.approx(1.0) and m.snr_db == SNR_CAP_DB and m.agreement == 1.0


def test_known_errors():
    ref = np.full((1, 2, 2, 2), 2.0, np.float32)
    ref[0, 1] = 1.0  # class 0 wins everywhere
    got = ref.copy()
    got[0, 0, 0, 0] += 0.5
    r = compare({"out": ref}, {"out": got}, SEG, tolerance=Tolerance())
    m = r.outputs[0].metrics
    assert m.max_abs == pytest.approx(0.5)
    assert m.mean_abs == pytest.approx(0.5 / 8)
    assert m.max_abs_scaled == pytest.approx(0.25)
    assert m.max_rel == pytest.approx(0.25)
    # SNR = 10 log10(sum ref^2 / sum err^2) = 10 log10((4*4 + 4*1) / 0.25)
    assert m.snr_db == pytest.approx(10 * math.log10(20 / 0.25))
    dot, n1, n2 = (ref * got).sum(), (ref ** 2).sum(), (got ** 2).sum()
    assert m.cosine == pytest.approx(dot / math.sqrt(n1 * n2))


def test_snr_of_uniform_noise_is_20db():
    ref = np.ones((1, 1000), np.float32)
    got = ref + np.where(np.arange(1000) % 2, 0.1, -0.1).astype(np.float32)
    m = compare({"o": ref}, {"o": got}, {"o": "features"}, tolerance=Tolerance()).outputs[0].metrics
    assert m.snr_db == pytest.approx(20.0, abs=1e-4)


def test_segmentation_agreement_counts_pixels():
    rng = np.random.default_rng(1)
    ref = seg_logits(rng, n=1, c=3, h=10, w=10)
    got = ref.copy()
    flips = [(0, 0), (3, 4), (9, 9)]
    for i, j in flips:  # make another class win at exactly three pixels
        k = (ref[0, :, i, j].argmax() + 1) % 3
        got[0, k, i, j] = ref[0, :, i, j].max() + 1
    m = compare({"out": ref}, {"out": got}, SEG, tolerance=Tolerance()).outputs[0].metrics
    assert m.agreement == pytest.approx(1 - 3 / 100)


def test_classification_top1_and_top5():
    ref = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # top-1 = 9, top-5 = {5..9}
    got = ref.copy()
    got[0, 0] = 100  # sample 0: top-1 changes, top-5 loses 5 gains 0 -> overlap 4/5
    m = compare({"logits": ref}, {"logits": got}, CLS, tolerance=Tolerance()).outputs[0].metrics
    assert m.agreement == pytest.approx(3 / 4)
    assert m.top5_agreement == pytest.approx((4 / 5 + 3) / 4)


def test_tolerance_exceeded_is_structured():
    ref = seg_logits(np.random.default_rng(2))
    got = ref + 0.01
    r = compare({"out": ref}, {"out": got}, SEG, "fp32")
    assert not r.passed
    issue = next(i for i in r.all_issues() if i.metric == "max_abs_scaled")
    assert issue.kind == "tolerance_exceeded" and issue.output == "out"
    assert issue.value > issue.limit == DEFAULT_TOLERANCES["fp32"].max_abs_scaled


def test_shape_mismatch_and_missing_output():
    ref = seg_logits(np.random.default_rng(3))
    r = compare({"out": ref, "aux": ref}, {"out": ref[:, :, :4]}, {"out": "segmentation", "aux": "segmentation"})
    kinds = {(i.kind, i.output) for i in r.all_issues()}
    assert ("shape_mismatch", "out") in kinds and ("missing_output", "aux") in kinds
    assert not r.passed


def test_degenerate_reference_fails():
    ref = np.zeros((1, 4, 6, 6), np.float32)
    ref[:, 2] = 1.0  # one class everywhere
    r = compare({"out": ref}, {"out": ref.copy()}, SEG)
    assert [i.kind for i in r.all_issues()] == ["degenerate_reference"]
    const = np.ones((2, 10), np.float32)
    r = compare({"logits": const}, {"logits": const}, CLS)
    assert any(i.kind == "degenerate_reference" for i in r.all_issues())


def test_non_finite_candidate_fails():
    ref = seg_logits(np.random.default_rng(4))
    got = ref.copy()
    got[0, 0, 0, 0] = np.nan
    r = compare({"out": ref}, {"out": got}, SEG)
    assert any(i.kind == "non_finite" for i in r.all_issues())


def test_accumulates_over_batches():
    rng = np.random.default_rng(5)
    chk = ParityCheck((1, 3, 8, 8), "fp32", DEFAULT_TOLERANCES["fp32"], SEG)
    a, b = seg_logits(rng, n=1), seg_logits(rng, n=1)
    chk.add({"out": a}, {"out": a}, ["a"])
    chk.add({"out": b}, {"out": b + 1.0}, ["b"])
    res = chk.result()
    assert res.samples == 2 and res.sample_names == ["a", "b"]
    assert res.outputs[0].metrics.max_abs == pytest.approx(1.0)
    assert res.outputs[0].metrics.mean_abs == pytest.approx(0.5)
    d = res.model_dump(mode="json")
    assert d["passed"] is False and d["outputs"][0]["issues"] and "worst" not in d["outputs"][0]
