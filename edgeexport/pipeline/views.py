"""What the report shows that the checks do not otherwise keep: the worst image of each artifact
(input photograph, masks, top-5 lists) and, for int8 artifacts that are not faster than their fp32
graph, a per-operator-type time breakdown from the runtime's own profiler.

Everything is stored compactly in the report JSON, which the page is rendered from alone (images as
data URIs, :mod:`edgeexport.report.images`; profiles as ``{op_type: ms per run}``).
"""
from __future__ import annotations

import numpy as np

from edgeexport.report.images import jpeg_uri, mask_uri, photo_of
from edgeexport.targets import get_target
from edgeexport.util import one_line

MIN_INT8_SPEEDUP = 1.25  # an int8 artifact slower than this against its fp32 graph gets an operator breakdown
PROFILE_RUNS = 10


# ---------------------------------------------------------------- worst images


def _image_entry(ctx, key: str, name: str, source: str, photo: np.ndarray | None, label=None) -> dict:
    """The report-level entry of one image (shared by every artifact that picks it)."""
    images = ctx.views.setdefault("images", {})
    if key not in images:
        images[key] = {"name": name, "source": source, "input": jpeg_uri(photo) if photo is not None else None,
                       "label": mask_uri(label) if label is not None else None, "eager": {}}
    return images[key]


def collect_safely(ctx, art, preds: list | None) -> None:
    """:func:`collect`; a failure here is noted on the page, never fatal."""
    try:
        collect(ctx, art, preds)
    except Exception as exc:
        art.views = {"error": one_line(exc, 200)}


def collect(ctx, art, preds: list | None) -> None:
    """The error views of one checked artifact: its worst labeled image (segmentation, when there is
    labeled data), else its worst photograph per segmentation output, and the top-5 lists of its worst
    photograph per classification output. ``preds``: its predicted classes on the labeled data."""
    views: dict = {}
    classes = (ctx.task_data.classes if ctx.task_data is not None else None) or ctx.handle.class_names
    if classes:
        ctx.views.setdefault("classes", list(classes))
    td = ctx.task_data
    if td is not None and td.task == "segmentation" and preds and getattr(ctx, "eager_preds", None):
        views["segmentation"] = [_worst_labeled(ctx, art, preds)]
    main = art.parity[0] if art.parity else None
    n = ctx.shape[0]
    for o in (main.outputs if main else []):
        w = o.worst
        if w is None:
            continue
        b, j = divmod(w["index"], n)
        batches = ctx.refs.batches[tuple(main.shape)]
        if b >= len(batches):
            continue
        names, x = batches[b]
        name = names[j] if j < len(names) else f"sample {w['index']}"
        photo = None if ctx.recipe.inputs.source == "random" else photo_of(x[j], *_norm(ctx))
        key = f"photos:{name}"
        if o.task == "segmentation" and "segmentation" not in views:
            entry = _image_entry(ctx, key, name, ctx.recipe.inputs.source, photo)
            entry["eager"].setdefault(o.name, mask_uri(w["ref"]))
            views.setdefault("segmentation_photos", []).append(
                {"output": o.name, "image": key, "artifact": mask_uri(w["got"]),
                 "disagreement": round(w["disagreement"], 6), "pixels": int(w["ref"].size)})
        elif o.task == "classification":
            _image_entry(ctx, key, name, ctx.recipe.inputs.source, photo if photo is None else _small(photo))
            views.setdefault("classification", []).append(
                {"output": o.name, "image": key, "eager": w["ref"], "artifact": w["got"],
                 "top1_agree": w["top1_agree"], "top5_overlap": round(w["top5_overlap"], 3)})
    if "segmentation_photos" in views and "segmentation" not in views:
        views["segmentation"] = views.pop("segmentation_photos")
    views.pop("segmentation_photos", None)
    art.views = views


def _norm(ctx):
    return ctx.handle.meta.mean, ctx.handle.meta.std


def _small(photo: np.ndarray) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(photo)
    im.thumbnail((160, 160), Image.BILINEAR)
    return np.asarray(im)


def _worst_labeled(ctx, art, preds: list) -> dict:
    """The labeled image where the artifact loses the most against eager (per-image mIoU), ties broken by
    the pixels where their masks differ."""
    td, eager = ctx.task_data, ctx.eager_preds
    e_pi, a_pi = ctx.eager_task.per_image, art.task.per_image
    differ = [float((e != a).mean()) for e, a in zip(eager, preds)]

    def drop(i):
        d = (e_pi[i] - a_pi[i]) if i < len(e_pi) and i < len(a_pi) else 0.0
        return 0.0 if d != d else d  # NaN (no labeled pixel) counts as no drop

    i = max(range(len(preds)), key=lambda k: (round(drop(k), 9), differ[k]))
    n = td.shape[0]
    b, j = divmod(i, n)
    name = td.names[b][j]
    key = f"eval:{name}"
    entry = _image_entry(ctx, key, name, "eval_data", td.images[b][j], td.labels[b][j])
    entry["eager"].setdefault(td.output, mask_uri(eager[i]))
    val = lambda v: None if v is None or v != v else round(float(v), 5)  # noqa: E731
    return {"output": td.output, "image": key, "artifact": mask_uri(preds[i]), "disagreement": round(differ[i], 6),
            "pixels": int(np.asarray(preds[i]).size), "metric": ctx.eager_task.primary,
            "eager_value": val(e_pi[i] if i < len(e_pi) else None),
            "artifact_value": val(a_pi[i] if i < len(a_pi) else None)}


# ---------------------------------------------------------------- why is int8 not faster


def baseline_of(ctx, art):
    """The fp32 graph an int8 artifact is measured against: the one it is compared with, else the
    fp32 artifact of the same target, else the fp32 ONNX graph."""
    if art.compare_to and ctx.find(art.compare_to) is not None:
        return ctx.find(art.compare_to)
    same = next((a for a in ctx.artifacts if a.target == art.target and a.precision == "fp32" and a.error is None
                 and a is not art), None)
    return same or next((a for a in ctx.artifacts if a.error is None and a.precision == "fp32"
                         and get_target(a.target).default_stage), None)


def profile_slow_int8(ctx) -> None:
    """For every int8 artifact less than MIN_INT8_SPEEDUP x faster than its fp32 graph: time per operator
    type of both graphs, from the runtime's own profiler (``Target.operator_profile``)."""
    for art in ctx.artifacts:
        if art.precision != "int8" or art.latency is None or art.error is not None or art.runner is None:
            continue
        base = baseline_of(ctx, art)
        if base is None or base.latency is None or base.runner is None:
            continue
        speedup = base.latency.median_ms / art.latency.median_ms
        if speedup >= MIN_INT8_SPEEDUP:
            continue
        prof = {"speedup": round(speedup, 3), "needed": MIN_INT8_SPEEDUP, "baseline": base.kind,
                "runs": PROFILE_RUNS}
        with ctx.status(f"Profiling {art.kind} and {base.kind} per operator (int8 is only {speedup:.2f}x faster)"):
            try:
                for role, a in (("artifact", art), ("baseline", base)):
                    p = operator_profile(a, ctx.refs.feed(), ctx.threads)
                    if p is None:
                        prof.setdefault("missing", {})[role] = f"no operator profiler for {a.backend} here"
                        continue
                    prof.setdefault("runtime", {})[role] = p["runtime"]
                    prof.setdefault("ops", {})[role] = p["ops"]
                    prof.setdefault("total_ms", {})[role] = p["total_ms"]
            except Exception as exc:  # a profiler failure is a note, never a failed run
                prof["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        art.profile = prof


def operator_profile(art, feed: dict, threads: int) -> dict | None:
    """Time per operator type from the artifact's runtime's own profiler (None: its target has none)."""
    return get_target(art.runner.target).operator_profile(art.runner, feed, threads, PROFILE_RUNS)
