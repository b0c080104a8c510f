"""Parity: how far an artifact's outputs are from eager PyTorch's, per output, with a verdict.

Metrics (accumulated over every sample of a check):

* ``max_abs``      largest absolute difference
* ``mean_abs``     mean absolute difference
* ``max_abs_scaled`` ``max_abs / max|ref|`` (error relative to the logit scale)
* ``max_rel``      largest elementwise ``|d| / max(|ref|, 1e-3 * max|ref|)`` (floored so that
                   near-zero references do not explode it)
* ``cosine``       cosine similarity of the flattened outputs
* ``snr_db``       ``10 log10(sum ref^2 / sum d^2)`` (capped at 200 dB for identical outputs)
* ``agreement``    segmentation: fraction of pixels whose argmax class matches;
                   classification: top-1 agreement (and ``top5_agreement``: mean overlap of
                   the top-5 sets)

A reference whose outputs are degenerate (constant, or one class for every pixel of every
segmentation sample) makes the comparison vacuous; that is reported as a failure of its own.
Problems are structured (:class:`ParityIssue`), like Optimum's validation errors.

For the report's error views each output also keeps a compact histogram of the absolute
error (quarter-decade bins, serialised as ``hist``) and, for segmentation and classification
outputs, the sample that disagrees most with the reference (argmax maps or top-5 lists, in
``OutputParity.worst``; not serialised).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import ConfigDict, Field, computed_field

from edgeexport.errors import UserError
from edgeexport.util import Data

SNR_CAP_DB = 200.0
HIST_LO, HIST_STEP, HIST_BINS = -10.0, 0.25, 64  # |error| bins: 1e-10 .. 1e6, four per decade


class Tolerance(Data):
    """Limits for one precision. ``None`` disables a limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_abs_scaled: float | None = None
    min_cosine: float | None = None
    min_snr_db: float | None = None
    min_agreement: float | None = None
    max_task_drop: float | None = None  # points of mIoU / top-1 below eager, on labeled data

    def limits(self) -> dict[str, tuple[str, float]]:
        """metric -> (comparison, limit) for the tensor limits that are set."""
        out = {}
        if self.max_abs_scaled is not None:
            out["max_abs_scaled"] = ("<=", self.max_abs_scaled)
        if self.min_cosine is not None:
            out["cosine"] = (">=", self.min_cosine)
        if self.min_snr_db is not None:
            out["snr_db"] = (">=", self.min_snr_db)
        if self.min_agreement is not None:
            out["agreement"] = (">=", self.min_agreement)
        return out

    def set_limits(self) -> dict[str, float]:
        """The limits that are set, by field name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_scaled=1e-4, min_cosine=0.99999, min_agreement=0.999, max_task_drop=0.1),
    "fp16": Tolerance(max_abs_scaled=2e-2, min_cosine=0.999, min_snr_db=35.0, min_agreement=0.99, max_task_drop=0.1),
    "int8": Tolerance(min_cosine=0.99, min_snr_db=20.0, min_agreement=0.9, max_task_drop=1.0),
}
# how to get past a constant reference (what users without trained weights hit)
UNTRAINED = (" (untrained weights? give trained ones with --weights, or re-estimate BatchNorm on calibration "
             "images with --settle-bn)")
HIGHER_IS_WORSE = ("max_abs", "mean_abs", "max_abs_scaled", "max_rel")  # the other metrics: lower is worse
# With labeled data, int8 is judged by the task metric (users judge it by mIoU / top-1, not logit SNR):
# its tensor limits apply only when a recipe sets them.
TASK_JUDGED = ("int8",)


class ParityIssue(Data):
    kind: str  # shape_mismatch | missing_output | non_finite | degenerate_reference | tolerance_exceeded
    output: str
    message: str
    metric: str | None = None
    value: float | None = None
    limit: float | None = None


class Metrics(Data):
    """How one output of an artifact differs from the reference's (non-finite values are None)."""

    max_abs: float | None = None
    mean_abs: float | None = None
    max_abs_scaled: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    snr_db: float | None = None
    agreement: float | None = None  # argmax agreement (segmentation) / top-1 agreement (classification)
    top5_agreement: float | None = None  # classification: mean overlap of the top-5 sets
    ref_scale: float | None = None  # largest |reference| value
    ref_spread: float | None = None  # max - min of the reference
    ref_classes: int | None = None  # classes the reference predicts

    def get(self, metric: str):
        """A metric by name (the names tolerances and budgets use)."""
        return getattr(self, metric, None)


class Histogram(Data):
    """|error| histogram, trimmed to its occupied bins: bin i spans 10^(lo + i*step) .. 10^(lo + (i+1)*step);
    ``under``: errors below 10^-10 (exact matches included)."""

    lo: float
    step: float
    counts: list[int]
    under: int
    total: int


class _Accumulator:
    """Running sums for one output over many samples."""

    def __init__(self, task: str):
        self.task = task
        self.n = 0
        self.sum_abs = 0.0
        self.max_abs = 0.0
        self.max_ref = 0.0
        self.max_rel = 0.0
        self.ref2 = self.got2 = self.dot = self.err2 = 0.0
        self.agree = self.total = 0
        self.top5 = 0.0
        self.ref_classes: set[int] = set()
        self.ref_min, self.ref_max = math.inf, -math.inf
        self.nonfinite = 0
        self.hist = np.zeros(HIST_BINS, np.int64)
        self.hist_under = 0  # below 1e-10, exact matches included
        self.images = 0  # samples along the batch axis seen so far
        self.worst: dict | None = None  # the image that disagrees most with the reference

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        r = ref.astype(np.float64, copy=False)
        g = got.astype(np.float64, copy=False)
        self.nonfinite += int(np.size(g) - np.isfinite(g).sum())
        d = np.abs(r - g)
        self.n += r.size
        self.sum_abs += float(np.nansum(d))
        self.max_abs = max(self.max_abs, float(np.nanmax(d)) if d.size else 0.0)
        scale = float(np.abs(r).max()) if r.size else 0.0
        self.max_ref = max(self.max_ref, scale)
        floor = max(1e-3 * scale, 1e-12)
        self.max_rel = max(self.max_rel, float(np.nanmax(d / np.maximum(np.abs(r), floor))) if d.size else 0.0)
        self.ref2 += float((r * r).sum())
        self.got2 += float(np.nansum(g * g))
        self.dot += float(np.nansum(r * g))
        self.err2 += float(np.nansum(d * d))
        self.ref_min, self.ref_max = min(self.ref_min, float(r.min())), max(self.ref_max, float(r.max()))
        self._histogram(d)
        first = self.images
        self.images += r.shape[0] if r.ndim else 1
        if self.task == "segmentation" and r.ndim == 4 and r.shape[1] > 1:
            ra, ga = r.argmax(1), g.argmax(1)
            self.agree += int((ra == ga).sum())
            self.total += ra.size
            self.ref_classes.update(np.unique(ra).tolist())
            differ = (ra != ga).reshape(len(ra), -1).mean(1)
            j = int(differ.argmax())
            if self.worst is None or differ[j] > self.worst["disagreement"]:
                self.worst = {"index": first + j, "disagreement": float(differ[j]),
                              "ref": ra[j].astype(np.uint8 if r.shape[1] <= 256 else np.int32),
                              "got": ga[j].astype(np.uint8 if r.shape[1] <= 256 else np.int32)}
        elif self.task == "classification" and r.ndim == 2 and r.shape[1] > 1:
            ra, ga = r.argmax(1), g.argmax(1)
            self.agree += int((ra == ga).sum())
            self.total += ra.size
            self.ref_classes.update(ra.tolist())
            k = min(5, r.shape[1])
            rt, gt = np.argsort(-r, 1)[:, :k], np.argsort(-g, 1)[:, :k]
            overlaps = [len(set(a) & set(b)) / k for a, b in zip(rt.tolist(), gt.tolist())]
            self.top5 += sum(overlaps)
            scores = [(int(ra[j] == ga[j]), overlaps[j], -float(d[j].max())) for j in range(len(ra))]
            j = min(range(len(ra)), key=lambda i: scores[i])
            if self.worst is None or scores[j] < self.worst["score"]:
                self.worst = {"index": first + j, "score": scores[j], "top1_agree": bool(scores[j][0]),
                              "top5_overlap": overlaps[j], "ref": _top(r[j], k), "got": _top(g[j], k)}

    def _histogram(self, d: np.ndarray) -> None:
        d = d[np.isfinite(d)].ravel()
        above = d[d >= 10.0 ** HIST_LO]
        self.hist_under += int(d.size - above.size)
        if above.size:
            k = np.floor((np.log10(above) - HIST_LO) / HIST_STEP).astype(np.int64)
            self.hist += np.bincount(np.clip(k, 0, HIST_BINS - 1), minlength=HIST_BINS)

    def histogram(self) -> Histogram:
        nz = np.flatnonzero(self.hist)
        a, b = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
        return Histogram(lo=HIST_LO + a * HIST_STEP, step=HIST_STEP, counts=self.hist[a:b].tolist(),
                         under=self.hist_under, total=int(self.hist.sum()) + self.hist_under)

    def metrics(self) -> dict[str, float | int | None]:
        cos_den = math.sqrt(self.ref2 * self.got2)
        snr = SNR_CAP_DB if self.err2 == 0 else min(SNR_CAP_DB, 10 * math.log10(max(self.ref2, 1e-300) / self.err2))
        m = {
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / max(self.n, 1),
            "max_abs_scaled": self.max_abs / self.max_ref if self.max_ref > 0 else (0.0 if self.max_abs == 0 else math.inf),
            "max_rel": self.max_rel,
            "cosine": self.dot / cos_den if cos_den > 0 else (1.0 if self.err2 == 0 else 0.0),
            "snr_db": snr,
            "agreement": self.agree / self.total if self.total else None,
            "ref_scale": self.max_ref,
            "ref_spread": self.ref_max - self.ref_min,
        }
        if self.task == "classification" and self.total:
            m["top5_agreement"] = self.top5 / self.total
        if self.task in ("segmentation", "classification"):
            m["ref_classes"] = len(self.ref_classes)
        return m


class OutputParity(Data):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str
    task: str
    shape: list[int]
    metrics: Metrics
    issues: list[ParityIssue] = []
    hist: Histogram | None = None
    # the sample that disagrees most (argmax maps / top-5), for the report's views; not written to JSON
    worst: dict[str, Any] | None = Field(None, exclude=True)

    @computed_field
    @property
    def passed(self) -> bool:
        return not self.issues


class ParityResult(Data):
    """Parity of one artifact at one input shape."""

    shape: list[int]
    samples: int
    precision: str
    tolerance: Tolerance
    outputs: list[OutputParity] = []
    issues: list[ParityIssue] = []  # issues not tied to a single output
    sample_names: list[str] = []

    @computed_field
    @property
    def passed(self) -> bool:
        return not self.issues and all(o.passed for o in self.outputs)

    def worst(self, metric: str):
        """The worst value of ``metric`` over the outputs (the smallest SNR, the largest error; None when no
        output has it)."""
        values = [o.metrics.get(metric) for o in self.outputs if o.metrics.get(metric) is not None]
        return (max if metric in HIGHER_IS_WORSE else min)(values) if values else None

    def all_issues(self) -> list[ParityIssue]:
        return self.issues + [i for o in self.outputs for i in o.issues]


def _top(logits: np.ndarray, k: int) -> list[list]:
    """[[class, softmax probability, logit], ...] of the ``k`` largest logits."""
    z = logits.astype(np.float64) - float(np.max(logits))
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-logits)[:k]
    return [[int(c), float(f"{p[c]:.4g}"), float(f"{logits[c]:.5g}")] for c in order]


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _check(acc: _Accumulator, name: str, tol: Tolerance) -> list[ParityIssue]:
    m = acc.metrics()
    issues = []
    if acc.nonfinite:
        issues.append(ParityIssue(kind="non_finite", output=name,
                                  message=f"{acc.nonfinite} non-finite values in the artifact's output"))
    if m["ref_spread"] <= 1e-12 * max(1.0, m["ref_scale"]):
        issues.append(ParityIssue(kind="degenerate_reference", output=name,
                                  message="eager output is constant; the comparison would prove nothing" + UNTRAINED))
    elif acc.task == "segmentation" and m.get("ref_classes", 2) < 2:
        issues.append(ParityIssue(kind="degenerate_reference", output=name, message="eager output predicts one "
                                  "class for every pixel; the comparison would prove nothing" + UNTRAINED))
    for metric, (op, limit) in tol.limits().items():
        value = m.get(metric)
        if value is None:
            continue
        bad = value > limit if op == "<=" else value < limit
        if bad or (isinstance(value, float) and math.isnan(value)):
            issues.append(ParityIssue(kind="tolerance_exceeded", output=name,
                                      message=f"{metric} = {value:.4g}, limit {op} {limit:g}", metric=metric,
                                      value=float(value) if math.isfinite(value) else None, limit=float(limit)))
    return issues


class ParityCheck:
    """Accumulates reference / candidate output pairs for one artifact at one shape."""

    def __init__(self, shape, precision: str, tolerance: Tolerance, tasks: dict[str, str]):
        self.shape, self.precision, self.tolerance, self.tasks = list(shape), precision, tolerance, tasks
        self._acc: dict[str, _Accumulator] = {}
        self._shapes: dict[str, list[int]] = {}
        self._issues: list[ParityIssue] = []
        self.samples = 0
        self.sample_names: list[str] = []

    def add(self, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], names=()) -> None:
        self.samples += 1
        self.sample_names += list(names)
        for name, ref in reference.items():
            if name not in candidate:
                if not any(i.kind == "missing_output" and i.output == name for i in self._issues):
                    self._issues.append(ParityIssue(kind="missing_output", output=name,
                                                    message=f"artifact has no output {name!r}; it has "
                                                            f"{sorted(candidate)}"))
                continue
            got = candidate[name]
            if tuple(got.shape) != tuple(ref.shape):
                if not any(i.kind == "shape_mismatch" and i.output == name for i in self._issues):
                    self._issues.append(ParityIssue(kind="shape_mismatch", output=name,
                                                    message=f"shape {list(got.shape)} != eager {list(ref.shape)}"))
                continue
            acc = self._acc.setdefault(name, _Accumulator(self.tasks.get(name, "features")))
            self._shapes[name] = list(ref.shape)
            acc.add(ref, got)

    def result(self) -> ParityResult:
        outputs = [OutputParity(name=name, task=acc.task, shape=self._shapes[name], metrics=Metrics(**_finite(acc.metrics())),
                                issues=_check(acc, name, self.tolerance), hist=acc.histogram(), worst=acc.worst)
                   for name, acc in self._acc.items()]
        return ParityResult(shape=self.shape, samples=self.samples, precision=self.precision, tolerance=self.tolerance,
                            outputs=outputs, issues=list(self._issues), sample_names=self.sample_names)


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], tasks: dict[str, str],
            precision: str = "fp32", tolerance: Tolerance | None = None, input_shape=()) -> ParityResult:
    """One-shot comparison of two sets of named outputs."""
    check = ParityCheck(input_shape, precision, tolerance or DEFAULT_TOLERANCES[precision], tasks)
    check.add(reference, candidate)
    return check.result()


# ---------------------------------------------------------------- accuracy budgets

TASK_BUDGETS = {"miou_drop": "segmentation", "top1_drop": "classification"}


def resolve_budget(budget: dict | None, labeled_task: str | None) -> dict | None:
    """An accuracy budget with ``miou_drop`` / ``top1_drop`` checked against the run's labeled data (its
    task, None without labeled data) and mapped to ``task_drop``; tensor budgets pass unchanged."""
    if not budget:
        return None
    out = {}
    for key, value in budget.items():
        if key in TASK_BUDGETS:
            need = TASK_BUDGETS[key]
            if labeled_task is None:
                raise UserError(f"--budget {key}={value:g} needs labeled data (--eval-data)")
            if labeled_task != need:
                raise UserError(f"--budget {key} is a {need} metric; the labeled data is {labeled_task}")
            out["task_drop"] = value
        else:
            out[key] = value
    return out


def meets(acc: dict, budget: dict[str, float], missing_ok: bool = False) -> bool:
    """Every metric in ``budget`` reached (``*_drop`` metrics are upper bounds, the others lower
    bounds). A metric the outputs do not have (agreement of a feature map) fails an explicit
    budget, and is skipped for the tolerance floor (``missing_ok``)."""
    def ok(k, v):
        if acc.get(k) is None:
            return missing_ok
        return acc[k] <= v if k.endswith("_drop") else acc[k] >= v

    return all(ok(k, v) for k, v in budget.items())


def accuracy_key(acc: dict) -> tuple:
    """Ranks graphs by accuracy: the task metric's drop when there is labeled data, then logit SNR."""
    drop = acc.get("task_drop")
    return (-drop if drop is not None else 0.0, acc.get("snr_db") or -math.inf)


def shortfall(acc: dict, budget: dict[str, float]) -> tuple:
    """How far ``acc`` is from the budget (0 when met), each limit's miss relative to the limit, summed; then
    the most accurate. What picks the artifact to keep when no step meets the budget."""
    miss = 0.0
    for k, v in budget.items():
        got = acc.get(k)
        if got is None:
            miss += 1.0
            continue
        gap = got - v if k.endswith("_drop") else v - got
        miss += max(0.0, gap) / max(abs(v), 1.0)
    return (miss, tuple(-x for x in accuracy_key(acc)))


def budget_missed(budget: dict[str, float], acc: dict, floats: list[str]) -> str:
    """The one line a search that missed its budget ends with: the best it reached, and the float set that
    reached it."""
    limits = ", ".join(f"{k}={v:g}" for k, v in budget.items())
    reached = ", ".join(f"{k} {acc[k]:.4g}" for k in budget if acc.get(k) is not None) or "nothing measured"
    kept = f"{len(floats)} module(s) in float: {', '.join(floats)}" if floats else "nothing in float"
    return f"accuracy budget {limits} not met: the best graph reached {reached} with {kept}"
