"""Pair a runtime's tapped tensors with eager module outputs by module path, and measure each pair."""
from __future__ import annotations

import math

import numpy as np

from edgeexport.divergence.eager import ROOT, EagerTap
from edgeexport.runners.base import Tap
from edgeexport.util import Data

# Below this SNR a layer has departed from eager, by the artifact's precision. fp32 kernels that reorder
# sums stay above 60 dB through a whole network; one conv with weights 5% off gives 26 dB at that conv.
THRESHOLD_DB = {"fp32": 40.0, "fp16": 30.0, "int8": 12.0}

# Modules a converter folds into the kernel before them (conv + BatchNorm + activation as one op): a tensor
# tapped at such a kernel is compared with the eager output after them, at the fused boundary.
FUSABLE = ("BatchNorm", "ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "SiLU", "GELU", "Sigmoid", "LeakyReLU",
           "Identity", "Dropout", "DropPath", "Hardtanh", "Mish", "ELU", "Tanh", "Swish", "HardSwish",
           "LayerScale", "Affine", "FrozenBatchNorm2d", "BatchNormAct2d", "Flatten")


class LayerRecord(Data):
    module: str  # the module of the user's model
    cls: str
    op: str  # the runtime's operator that produced the tensor
    tensor: str  # the runtime's name for the tensor
    shape: list[int]
    snr_db: float
    max_abs_scaled: float
    cosine: float
    fused_with: list[str] = []  # following modules the runtime computed in the same tensor
    depth: int  # position in eager execution order (0: the first module to finish)
    ms: float | None = None  # time the runtime spent in this module, where its profiler says


class LayerDiff(Data):
    """Per-layer divergence of one artifact from eager PyTorch, on one input."""

    precision: str
    threshold_db: float
    layers: list[LayerRecord] = []
    first_divergent: str | None = None  # the earliest module whose SNR is below the threshold
    worst: list[str] = []  # the modules with the lowest SNR, worst first
    tapped: int = 0  # tensors the runtime returned
    attributed: int = 0  # ... of which carried a module path
    eager_modules: int = 0
    seconds: float | None = None  # how long the diff took
    paired_by: str = "module path"  # or "value", for runtimes whose files keep no module names (ncnn)
    profiler: str | None = None  # what timed the layers (LayerRecord.ms), where the runtime has a profiler
    total_ms: float | None = None  # one run, by that profiler
    unattributed_ms: float | None = None  # time of ops that record no module or none with a record

    def attach_times(self, modules: dict[str, float], profiler: str, total_ms: float | None) -> None:
        """Time per module (ms per run) onto the records: a record's own module and the ones fused into it."""
        covered = set()
        for r in self.layers:
            mine = [m for m in [r.module, *r.fused_with] if m in modules]
            if mine:
                r.ms = round(sum(modules[m] for m in mine), 4)
                covered.update(mine)
        self.profiler, self.total_ms = profiler, total_ms
        self.unattributed_ms = round(sum(v for m, v in modules.items() if m not in covered), 4)
    note: str | None = None

    def record(self, module: str) -> LayerRecord | None:
        """The record of ``module``, or of the layer it was fused into."""
        return next((r for r in self.layers if r.module == module), None) or \
            next((r for r in self.layers if module in r.fused_with), None)


def _metrics(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    if not np.isfinite(g).all():
        return -math.inf, math.inf, 0.0
    d = r - g
    err2, ref2 = float(d @ d), float(r @ r)
    snr = 200.0 if err2 == 0 else min(200.0, 10 * math.log10(max(ref2, 1e-300) / err2))
    scale = float(np.abs(r).max()) if r.size else 0.0
    mas = float(np.abs(d).max()) / scale if scale > 0 else (0.0 if err2 == 0 else math.inf)
    den = math.sqrt(ref2 * float(g @ g))
    cos = float(r @ g) / den if den > 0 else (1.0 if err2 == 0 else 0.0)
    return snr, mas, cos


def conform(tap: Tap, shape: tuple[int, ...]) -> np.ndarray | None:
    """The tapped array in the eager tensor's layout, or None when it is not the same tensor's shape."""
    a = tap.array
    if tap.layout == "nhwc" and a.ndim == 4:  # channels last: always moved (H, W and C may be equal)
        a = a.transpose(0, 3, 1, 2)
    if tuple(a.shape) == shape:
        return a
    if a.size != int(np.prod(shape)):
        return None
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731  (ncnn drops the batch and unit axes)
    if squeeze(a.shape) == squeeze(shape):
        return a.reshape(shape)
    return None


def _fusable(e: EagerTap) -> bool:
    return any(e.cls.startswith(c) for c in FUSABLE)


def _in_scope(module: str | None, path: str) -> bool:
    return module is not None and (path == ROOT or module == path or module.startswith(path + "."))


def attribute_by_value(runtime: list[Tap], eager: list[EagerTap], *, back: int = 12, ahead: int = 80,
                       min_cosine: float = 0.99) -> int:
    """For a runtime whose files keep no module names: give each tapped tensor the module whose eager output it
    matches best in direction (cosine, blind to scale), among modules near the last one matched in execution
    order, the earliest of equals (a fused conv + BN + ReLU kernel matches the ReLU, not the block around it).
    A wrong layer stays paired while its error is mostly magnitude, so the diff can still name it. Returns how
    many tensors were attributed."""
    order = sorted((e for e in eager if e.path != ROOT), key=lambda e: e.order)
    last, count = 0, 0
    for t in runtime:
        if t.module is not None:
            continue
        best = None
        for j in range(max(0, last - back), min(len(order), last + ahead)):
            e = order[j]
            got = conform(t, e.array.shape)
            if got is None:
                continue
            cos = _metrics(e.array, got)[2]
            need = min_cosine if j >= last else 1 - (1 - min_cosine) / 10  # going back: only a near-certain match
            if cos >= need and (best is None or cos > best[0] + 1e-6):
                best = (cos, e)
        if best is not None:
            t.module = best[1].path
            last = max(last, order.index(best[1]))
            count += 1
    return count


def align(runtime: list[Tap], eager: list[EagerTap], precision: str = "fp32", *, worst: int = 5) -> LayerDiff:
    """Pair each eager module with the last tensor the runtime computed inside that module's scope (the
    module's output), compare at the fused boundary where the runtime fused the modules that follow it, and
    keep one record per runtime tensor: the innermost module it is the output of."""
    threshold = THRESHOLD_DB.get(precision, THRESHOLD_DB["fp32"])
    named = [t for t in runtime if t.module not in (None, ROOT)]
    paired_by = "module path"
    if not named:
        attribute_by_value(runtime, eager)
        paired_by = "value"
    known = {e.path for e in eager if not e.reused}
    for t in runtime:  # a fused op named after a module called more than once: the next module it names
        if t.module is not None and t.module not in known and t.alternatives:
            t.module = next((m for m in t.alternatives if m in known), t.module)
    attributed = [(i, t) for i, t in enumerate(runtime) if t.module is not None]
    order = sorted(eager, key=lambda e: e.order)
    used: set[int] = set()
    # modules with a runtime tensor of their own output's shape in their scope (a pad or a layout transpose
    # named after a conv is not the conv's output)
    tapped = {ROOT} | {e.path for e in eager if e.path != ROOT and not e.reused and any(
        _in_scope(t.module, e.path) and conform(t, e.array.shape) is not None for _, t in attributed)}
    records: list[LayerRecord] = []
    for k, e in enumerate(order):
        if e.reused:  # called more than once: no single output of its own (it can be a fused follower)
            continue
        # the module's output: of the last tensors computed in its scope with its shape, not already another
        # module's, the one that matches (a decomposed BatchNorm leaves its partial sums in its scope too)
        mine = [(i, t, a) for i, t in attributed if _in_scope(t.module, e.path)
                and (a := conform(t, e.array.shape)) is not None]
        if not mine or mine[-1][0] in used:  # nothing, or a container whose output is its last child's
            continue
        mine = [m for m in mine if m[0] not in used][-3:]
        # the fused boundary: this module's output, or that of the normalisation / activation modules after it
        candidates = [(e, [])]
        for f in order[k + 1:k + 4]:
            if not _fusable(f) or f.array.shape != e.array.shape:
                break
            if f.path in tapped:  # the runtime kept it apart
                break
            candidates.append((f, candidates[-1][1] + ([] if f.reused else [f.path])))
        scored = [(_metrics(c.array, got), fused, i, tap) for i, tap, got in mine for c, fused in candidates]
        (snr, mas, cos), fused, i, tap = max(scored, key=lambda s: s[0][0])
        used.add(i)
        # a normalisation folded into the layer before it (the exporter gives the fused op the BatchNorm's
        # scope, and the conv has no tensor of its own): the record names that layer, fused with this one
        label = e
        if _fusable(e):
            j = k - 1
            while j >= 0 and _fusable(order[j]) and order[j].path not in tapped and order[j].array.shape == e.array.shape:
                j -= 1
            p = order[j] if j >= 0 else None
            if p is not None and not _fusable(p) and p.array.shape == e.array.shape and p.path not in tapped \
                    and not e.path.startswith(p.path + "."):
                label, fused = p, [o.path for o in order[j + 1:k + 1]] + fused
        records.append(LayerRecord(module=label.path, cls=label.cls, op=tap.op, tensor=tap.name,
                                   shape=list(e.array.shape), snr_db=round(snr, 2), max_abs_scaled=float(f"{mas:.4g}"),
                                   cosine=round(cos, 6), fused_with=fused, depth=label.order))
    records.sort(key=lambda r: r.depth)
    first = next((r.module for r in records if r.snr_db < threshold), None)
    ranked = sorted(records, key=lambda r: r.snr_db)[:worst]
    return LayerDiff(precision=precision, threshold_db=threshold, layers=records, first_divergent=first,
                     worst=[r.module for r in ranked if r.snr_db < 200.0], tapped=len(runtime),
                     attributed=len(attributed), eager_modules=len(eager), paired_by=paired_by)
