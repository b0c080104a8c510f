"""The report as one self-contained HTML page, rendered from the report alone (its JSON suffices).

Everything a reader needs to see *why* a verdict is what it is: the verdict and the artifact
table, every timed latency sample of every artifact on one axis, per artifact the error
histogram against eager and the worst image (input, eager mask, artifact mask, where they
disagree) or the top-5 lists, for int8 the layers that lose precision, the plans measured and
the nodes left in float, and, when int8 is not faster than its fp32 graph, which operators take
the time. Then the environment, the recipe and the commands to reproduce.

The page is offline by construction: CSS inline, figures as inline SVG (:mod:`~edgeexport.report.figures`)
or data-URI images, no script, no web font, no remote reference. The same module renders a matrix of
reports (:func:`render_matrix`: ``make bench``'s zoo matrix and ``edgeexport matrix``'s page).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from edgeexport.report.figures import (divergence_figure, histogram_figure, latency_figure, layer_figure, matrix_figure, plans_figure,
                                       profile_figure)
from edgeexport.report.images import legend, overlay_uri
from edgeexport.report.status import STATUS_TEXT
from edgeexport.report.text import TASK_LABELS, metrics_text, fastest_line, headers, size_text, summary_rows, task_label
from edgeexport.targets import list_targets
from edgeexport.util import atomic_path, fmt, format_shape, one_line

if TYPE_CHECKING:  # pragma: no cover
    from edgeexport.report.schema import ArtifactResult, Report

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
STATUS_CLASS = {"passed": "passed", "failed": "failed", "not_run": "notrun", "skipped": "skipped",
                "build_failed": "failed", "error": "failed", "reference": "reference"}


# ---------------------------------------------------------------- entry points


def write_html(report: Report, path: Path) -> Path:
    path = Path(path)
    text = render(report, str(path.with_name(path.name.replace(".report.html", ".report.json"))))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_html_safely(report: Report, path: Path, log=None) -> Path | None:
    """:func:`write_html`, but a page that cannot be rendered (matplotlib or Jinja2 missing, e.g. on a
    device verifying a bundle) costs a warning, never the run whose JSON is already written."""
    try:
        return write_html(report, path)
    except Exception as exc:
        if os.environ.get("EDGEEXPORT_DEBUG"):
            raise
        msg = f"no HTML report ({Path(path).name}): {one_line(exc, 200)}"
        (log or (lambda m: warnings.warn(m, stacklevel=2)))(msg)
        return None


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = lambda v, spec=".3g": fmt(v, spec)
    return env


def render(report: Report, json_path: str | None = None) -> str:
    """The page for one report (a pipeline run, or a bundle's ``verify``); ``json_path``: where its JSON is."""
    return _env().get_template("report.html.j2").render(**page_context(report, json_path))


def render_matrix(reports: dict[str, Report], links: dict[str, str] | None = None, title: str = "Zoo matrix",
                  intro: str = "", cells: dict | None = None, kinds: list[str] | None = None) -> str:
    """One page for many reports (a row per model, a cell per artifact kind: ``kinds``, default every kind
    the reports have). ``cells``: extra per-cell lines and titles, ``{(model, kind): {"lines": [...],
    "title": ..., "text": ...}}`` (a matrix's nodes, cache states)."""
    ctx = matrix_context(reports, links or {}, title, intro, kinds)
    for row in ctx["rows"]:
        for kind, c in row["cells"].items():
            extra = (cells or {}).get((row["name"], kind)) or {}
            c["lines"] = c["lines"] + extra.get("lines", [])
            c["title"] = extra.get("title") or c["title"]
            c["text"] = extra.get("text") or c["text"]
    return _env().get_template("matrix.html.j2").render(**ctx)


def write_matrix(reports: dict[str, Report], path: Path, links: dict[str, str] | None = None, **kw) -> Path:
    path = Path(path)
    text = render_matrix(reports, links, **kw)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def relative_link(target: Path, page: Path) -> str:
    """A relative URL from ``page``'s folder to ``target`` (the page works wherever the folder is moved)."""
    from urllib.parse import quote

    return quote(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent).replace(os.sep, "/"))


# ---------------------------------------------------------------- images


def segmentation_views(report: Report, a: ArtifactResult) -> list[dict]:
    images = report.views.get("images") or {}
    classes = report.views.get("classes")
    out = []
    for v in a.views.get("segmentation") or []:
        img = images.get(v["image"])
        eager = img["eager"].get(v["output"]) if img else None
        if eager is None:
            continue
        overlay, count = overlay_uri(eager, v["artifact"])
        labeled = img["source"] == "eval_data"
        share = 100 * count / max(v["pixels"], 1)
        caption = (f"{count:,} of {v['pixels']:,} pixels ({share:.2f}%) differ from eager" if share >= 0.01 else
                   f"{count:,} of {v['pixels']:,} pixels differ from eager (boxed)" if count else
                   "every pixel agrees with eager")
        if labeled and v.get("eager_value") is not None and v.get("artifact_value") is not None:
            label = TASK_LABELS.get(v.get("metric"), v.get("metric"))
            caption += (f"; {label} on this image: eager {100 * v['eager_value']:.2f}, "
                        f"{a.name} {100 * v['artifact_value']:.2f}")
        why = ("the labeled image where it loses the most against eager" if labeled
               else "the photograph where its mask differs most from eager's")
        out.append({"output": v["output"], "name": img["name"], "why": why, "input": img["input"],
                    "label": img.get("label"), "eager": eager, "artifact": v["artifact"], "overlay": overlay,
                    "caption": caption, "legend": legend(classes, [img.get("label"), eager, v["artifact"]])})
    return out


def classification_views(report: Report, a: ArtifactResult) -> list[dict]:
    images = report.views.get("images") or {}
    classes = report.views.get("classes")
    name = lambda c: classes[c] if classes and c < len(classes) else f"class {c}"  # noqa: E731
    out = []
    for v in a.views.get("classification") or []:
        img = images.get(v["image"], {})
        eager_set, art_set = {c[0] for c in v["eager"]}, {c[0] for c in v["artifact"]}
        rows = []
        for i in range(max(len(v["eager"]), len(v["artifact"]))):
            e = v["eager"][i] if i < len(v["eager"]) else None
            g = v["artifact"][i] if i < len(v["artifact"]) else None
            rows.append({"rank": i + 1,
                         "eager": e and {"name": name(e[0]), "p": e[1], "logit": e[2] if len(e) > 2 else None,
                                         "odd": e[0] not in art_set},
                         "artifact": g and {"name": name(g[0]), "p": g[1], "logit": g[2] if len(g) > 2 else None,
                                            "odd": g[0] not in eager_set}})
        out.append({"output": v["output"], "name": img.get("name", v["image"]), "input": img.get("input"),
                    "rows": rows, "top1_agree": v["top1_agree"], "overlap": v["top5_overlap"]})
    return out


# ---------------------------------------------------------------- page context


def verdict_summary(report: Report) -> list[str]:
    counts: dict[str, list[str]] = {}
    for a in report.artifacts.values():
        counts.setdefault(a.status, []).append(a.name)
    parts = []
    for st in ("passed", "failed", "build_failed", "error", "not_run", "skipped"):
        kinds = counts.get(st)
        if kinds:
            which = f" ({', '.join(kinds)})" if st != "passed" else ""
            parts.append(f"{len(kinds)} {STATUS_TEXT[st].lower()}{which}")
    return parts


def anchor(name: str) -> str:
    return "art-" + re.sub(r"[^a-zA-Z0-9_-]", "-", name)


def table_context(report: Report) -> dict:
    hs = headers(report)
    arts = [None] + list(report.artifacts.values())
    out = []
    for row, a in zip(summary_rows(report), arts):
        out.append({"cells": row, "status": STATUS_CLASS.get(a.status, "skipped") if a else "reference",
                    "anchor": anchor(a.name) if a else None, "title": (a.reason or a.error or "") if a else ""})
    return {"headers": hs, "rows": out, "status_col": hs.index("parity")}


def _facts(a: ArtifactResult) -> list[tuple[str, str]]:
    out = []
    if a.path:
        out.append(("artifact", f"{a.path} ({size_text(a.size_bytes)})"))
    if a.runner:
        out.append(("runs with", f"{a.backend} ({a.runner.target} runner)"))
    lat = a.latency
    if lat:
        txt = (f"median {lat.median_ms:.3g} ms over {lat.runs} runs ({lat.threads} threads), "
               f"p90 {lat.p90_ms:.3g}, min {lat.min_ms:.3g}, max {lat.max_ms:.3g}")
        if a.ratio_to_eager is not None:
            txt += f"; {a.ratio_to_eager:.2f}x eager"
        if a.ratio_to_fp32 is not None:
            txt += f", {a.ratio_to_fp32:.2f}x its fp32 graph"
        out.append(("latency", txt))
    elif a.latency_note and a.latency_note != a.reason:
        out.append(("latency", a.latency_note))
    if a.required_by:
        out.append(("built because", f"{a.required_by} needs it"))
    t = a.task
    if t:
        txt = f"{TASK_LABELS[t.metric]} {100 * t.value:.2f}" if t.value is not None else f"{TASK_LABELS[t.metric]} –"
        if t.drop_points is not None:
            txt += f" ({t.drop_points:+.2f} points against eager)"
        out.append(("task", txt))
    if a.build.get("build_s") is not None:
        out.append(("build time", f"{a.build['build_s']:.1f} s"))
    return out


def _record_tables(a: ArtifactResult) -> tuple[list[tuple[str, str]], list[dict]]:
    """The build record, generically: scalar facts, and its list-of-rows fields as tables."""
    facts, tables = [], []
    for k, v in a.build.items():
        if v in (None, [], {}, "") or k == "notes":
            continue
        if isinstance(v, list) and v and isinstance(v[0], dict):
            cols = list(dict.fromkeys(c for r in v for c in r))
            tables.append({"title": k.replace("_", " "), "columns": cols, "total": len(v),
                           "rows": [[_cell(r.get(c)) for c in cols] for r in v[:60]]})
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            facts.append((k, text if len(text) <= 300 else text[:297] + "…"))
    return facts, tables


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return fmt(v)


def parity_tables(a: ArtifactResult) -> list[dict]:
    out = []
    for chk in a.parity:
        rows = [{"cells": [o.name, o.task, fmt(o.metrics.max_abs, ".3g"), fmt(o.metrics.mean_abs, ".3g"),
                           fmt(o.metrics.max_abs_scaled, ".3g"), fmt(o.metrics.cosine, ".7f"),
                           fmt(o.metrics.snr_db, ".1f"), fmt(o.metrics.agreement, ".5f")], "passed": o.passed}
                for o in chk.outputs]
        issues = [i.message for i in chk.issues] + [f"{i.output}: {i.message}" for o in chk.outputs for i in o.issues]
        out.append({"shape": format_shape(chk.shape), "samples": chk.samples, "passed": chk.passed,
                    "limits": ", ".join(f"{k} {v:g}" for k, v in chk.tolerance.set_limits().items()), "rows": rows,
                    "issues": issues})
    return out


def comparisons(a: ArtifactResult) -> list[str]:
    return [f"against the {other} artifact, {o.name}: SNR {fmt(o.metrics.snr_db, '.1f')} dB, "
            f"max err / scale {fmt(o.metrics.max_abs_scaled, '.2e')}, agreement {fmt(o.metrics.agreement, '.4f')}"
            for other, checks in a.compared.items() if checks for o in checks[0].outputs]


def hist_caption(outputs) -> str:
    parts = []
    for o in outputs:
        h = o.hist
        if not h or not h.total:
            continue
        exact = 100 * h.under / h.total
        m = o.metrics
        parts.append(f"{o.name}: max {fmt(m.max_abs, '.3g')}, mean {fmt(m.mean_abs, '.3g')}"
                     + (f", {exact:.1f}% of elements below 1e-10" if h.under else "")
                     + f" (largest eager value {fmt(m.ref_scale, '.3g')})")
    return "; ".join(parts)


def int8_context(a: ArtifactResult) -> dict | None:
    b = a.build
    if a.precision != "int8" or not (b.get("per_layer") or b.get("plans") or b.get("float_nodes")):
        return None
    groups: dict[str, dict] = {}
    for n in b.get("float_nodes") or []:
        g = groups.setdefault(n["reason"], {"reason": n["reason"], "count": 0, "ops": {}, "nodes": []})
        g["count"] += 1
        g["ops"][n["op"]] = g["ops"].get(n["op"], 0) + 1
        g["nodes"].append(f"{n['node']} ({n['op']})")
    for g in groups.values():
        g["ops"] = ", ".join(f"{op} × {c}" for op, c in sorted(g["ops"].items(), key=lambda kv: -kv[1]))
    return {"layers": layer_figure(b.get("per_layer") or []),
            "plans": plans_figure(b.get("plans") or [], b.get("plan"), b.get("fp32_ms_during_planning")),
            "plan": b.get("plan"), "plan_choice": b.get("plan_choice"),
            "float_groups": sorted(groups.values(), key=lambda g: -g["count"]),
            "float_total": len(b.get("float_nodes") or []),
            "excluded": b.get("excluded") or {}, "budget": b.get("budget")}


def profile_context(a: ArtifactResult) -> dict | None:
    p = a.profile
    if not p:
        return None
    ops = p.get("ops") or {}
    art, base = ops.get("artifact") or {}, ops.get("baseline") or {}
    rows = []
    for n in sorted(set(art) | set(base), key=lambda k: -max(art.get(k, 0), base.get(k, 0))):
        x, y = base.get(n), art.get(n)
        rows.append({"op": n, "fp32": fmt(x, ".3f"), "int8": fmt(y, ".3f"),
                     "delta": fmt((y or 0) - (x or 0), "+.3f"), "worse": (y or 0) > (x or 0)})
    # the same operation under its int8 name (QLinearConv is Conv; OpenVINO marks int8 kernels)
    family = lambda n: n[len("QLinear"):] if n.startswith("QLinear") else n.removesuffix(" (int8)")  # noqa: E731
    fa, fb = {}, {}
    for src, dst in ((art, fa), (base, fb)):
        for n, v in src.items():
            dst[family(n)] = dst.get(family(n), 0.0) + v
    qdq = {"QuantizeLinear", "DequantizeLinear", "FakeQuantize"}
    worse = sorted([(f, fa[f] - fb.get(f, 0.0)) for f in fa if f not in qdq and fa[f] - fb.get(f, 0.0) > 0.01
                    and fa[f] > 1.05 * fb.get(f, 0.0)], key=lambda kv: -kv[1])[:5]
    totals = p.get("total_ms") or {}
    return {"figure": profile_figure(p, a.name), "rows": rows, "speedup": p["speedup"], "needed": p["needed"],
            "baseline": p["baseline"], "runs": p.get("runs"),
            "runtime": ", ".join(dict.fromkeys((p.get("runtime") or {}).values())),
            "missing": p.get("missing") or {}, "error": p.get("error"),
            "total_art": totals.get("artifact"), "total_base": totals.get("baseline"),
            "kernel_art": sum(art.values()) if art else None, "kernel_base": sum(base.values()) if base else None,
            "worse": [f"{f} (+{d:.3g} ms)" for f, d in worse],
            "qdq_ms": sum(v for n, v in art.items() if n in qdq) or None}


def _per_class(report: Report, a: ArtifactResult) -> list[dict]:
    t, et = a.task, report.eager.task if report.eager else None
    if not t or not t.per_class_iou:
        return []
    names = t.classes or [str(i) for i in range(len(t.per_class_iou))]
    eager_iou = (et.per_class_iou if et else None) or []
    out = []
    for i, (n, v) in enumerate(zip(names, t.per_class_iou)):
        e = eager_iou[i] if i < len(eager_iou) else None
        if v is None and e is None:
            continue
        out.append({"name": n, "eager": fmt(e, ".3f"), "artifact": fmt(v, ".3f"),
                    "delta": fmt(None if v is None or e is None else 100 * (v - e), "+.1f"),
                    "bad": v is not None and e is not None and e - v > 0.01})
    return out


def artifact_context(report: Report, a: ArtifactResult) -> dict:
    main = a.parity[0].outputs if a.parity else []
    facts, tables = _record_tables(a)
    parity = parity_tables(a)
    issues = [i for p in parity for i in p["issues"]]
    headline = a.error or "; ".join(a.failures) or (a.task.issue if a.task else None) or "; ".join(issues[:2])
    record = a.record()
    return {
        "headline": headline if a.status in ("failed", "build_failed", "error") else None,
        "terminal": record.terminal() if record is not None else [],
        "kind": a.name, "anchor": anchor(a.name), "backend": a.backend, "precision": a.precision,
        "status": STATUS_CLASS.get(a.status, "skipped"), "status_text": STATUS_TEXT.get(a.status, a.status),
        "error": a.error, "reason": a.reason, "failures": a.failures,
        "notes": a.notes, "task_issue": a.task.issue if a.task else None, "facts": _facts(a),
        "hist": histogram_figure(main), "hist_caption": hist_caption(main),
        "segmentation": segmentation_views(report, a), "classification": classification_views(report, a),
        "views_error": a.views.get("error"), "parity": parity,
        "comparisons": comparisons(a), "int8": int8_context(a), "profile": profile_context(a),
        "record_facts": facts, "record_tables": tables, "per_class": _per_class(report, a),
    }


def _prune(d, stages: bool = False):
    """The recipe without its unset (None / empty) fields; under ``stages`` a default stage's ``null`` is kept
    (``onnx: null`` turns the fp32 export off when nothing needs it)."""
    if isinstance(d, dict):
        on_by_default = {t.name for t in list_targets() if t.default_stage} if stages else set()
        return {k: _prune(v, k == "stages") for k, v in d.items()
                if k in on_by_default or (v is not None and v != {} and v != [])}
    if isinstance(d, list):
        return [_prune(v) for v in d]
    return d


def reproduce(report: Report, json_path: str | None) -> dict:
    """One shell block (comment lines say what each command does) and the recipe."""
    import yaml

    lines = []
    if report.command:
        lines += ["# the command that wrote this report", report.command]
    recipe = _prune(report.recipe) if report.recipe else None
    if recipe:
        lines += ["# " + ("or " if lines else "") + "the same run from the recipe below, saved as recipe.yaml",
                  "edgeexport run recipe.yaml"]
    name = report.model.name if report.model else "NAME"
    where = json_path or f"{(recipe or {}).get('output', '.')}/{name}.report.json"
    lines += ["# this page again, from the JSON beside it", f"edgeexport report {where} --html"]
    bundles = [b for a in report.artifacts.values() if (b := a.bundle_path())]
    if bundles:
        lines += ["# parity and latency of an artifact on the target device, from its bundle (no torch needed)"]
        lines += [f"edgeexport verify {b}" for b in bundles]
    return {"commands": "\n".join(lines),
            "recipe": yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=110) if recipe else None}


def environment(report: Report) -> dict:
    m = report.machine
    rows = [("CPU", m.cpu), ("cores", m.cores), ("logical CPUs", m.logical_cpus),
            ("threads for every backend", m.threads), ("OS", m.os), ("Python", m.python),
            ("edgeexport", report.edgeexport), ("report written", report.created),
            ("run took", f"{report.elapsed_s:.0f} s" if report.elapsed_s is not None else None)]
    return {"machine": [(k, v) for k, v in rows if v is not None], "versions": list(report.versions.items())}


def page_context(report: Report, json_path: str | None = None) -> dict:
    m = report.model
    ed, et = report.eval_data, report.eager.task if report.eager else None
    data_line = None
    if ed and et:
        where = ed.get("path") or ed.get("spec")
        data_line = (f"labeled data: {where} ({ed['task']}, {ed['images_used']} images at "
                     f"{format_shape(ed['input_shape'])}); eager {task_label(report)} {100 * et.value:.2f}")
    inputs = report.inputs
    return {
        "title": f"edgeexport report: {m.name}",
        "model": m, "shape": format_shape(m.input_shape), "verdict": report.verdict,
        "summary": verdict_summary(report), "table": table_context(report), "fastest": fastest_line(report),
        "latency": latency_figure(report), "threads": report.machine.threads,
        "model_line": f"{m.origin}, weights: {m.weights}" + (f", {m.params:,} parameters" if m.params is not None else ""),
        "outputs": ", ".join(f"{o} ({m.output_tasks.get(o, '?')})" for o in m.outputs), "data_line": data_line,
        "inputs_line": f"{inputs.source}: {', '.join(inputs.images)}" if inputs else None,
        "artifacts": [artifact_context(report, a) for a in report.artifacts.values()],
        "layers": layers_context(report),
        "repairs": repairs_context(report),
        "env": environment(report), "reproduce": reproduce(report, json_path),
    }


# ---------------------------------------------------------------- the matrix page


def matrix_context(reports: dict[str, Report], links: dict[str, str], title: str, intro: str,
                   kinds: list[str] | None = None) -> dict:
    kinds = kinds or list(dict.fromkeys(a.kind for rep in reports.values() for a in rep.artifacts.values()))
    rows = []
    for name, rep in reports.items():
        cells = {}
        for a in rep.artifacts.values():
            if a.kind not in kinds:
                continue
            lines = []
            if a.ratio_to_eager is not None:
                lines.append(f"{a.ratio_to_eager:.2f}x eager")
            if a.ratio_to_fp32 is not None:
                lines.append(f"{a.ratio_to_fp32:.2f}x fp32")
            if a.task and a.task.drop_points is not None:
                lines.append(f"{a.task.drop_points:+.2f} pts")
            elif a.precision != "fp32" and a.worst("snr_db") is not None:
                lines.append(f"SNR {a.worst('snr_db'):.1f} dB")
            cells[a.kind] = {"kind": a.kind, "precision": a.precision,
                             "status": STATUS_CLASS.get(a.status, "skipped"), "text": STATUS_TEXT.get(a.status, a.status),
                             "lines": lines, "x_eager": a.ratio_to_eager,
                             "title": a.error or a.reason or "; ".join(a.failures)}
        eager = rep.eager.latency if rep.eager else None
        rows.append({"name": name, "link": links.get(name), "verdict": rep.verdict, "cells": cells,
                     "shape": format_shape(rep.model.input_shape) if rep.model else "–",
                     "eager_ms": eager.median_ms if eager else None})
    first = next(iter(reports.values()), None)
    return {"title": title, "intro": intro, "kinds": kinds, "rows": rows, "figure": matrix_figure(rows),
            "env": _matrix_env(first) if first else None,
            "passed": sum(r["verdict"] == "passed" for r in rows), "total": len(rows)}


def _matrix_env(report: Report) -> dict:
    env = environment(report)
    env["machine"] = [(k, v) for k, v in env["machine"] if k not in ("run took", "report written")]
    return env


def repairs_context(report: Report) -> list[dict]:
    """The page's float-set section: one row per artifact built with an accuracy budget."""
    rows = []
    for a in report.artifacts.values():
        r = a.repair
        if r is None:
            continue
        steps = [f"{i}. {s.change}: "
                 f"{s.error or metrics_text(s.metrics)} ({'met' if s.met else 'missed'})" for i, s in enumerate(r.steps)]
        rows.append({"kind": a.name, "met": r.met, "budget": ", ".join(f"{k}={v:g}" for k, v in r.budget.items()),
                     "modules": r.float_modules, "builds": len(r.steps), "int8_ms": fmt(r.int8_ms, ".2f"),
                     "repaired_ms": fmt(r.repaired_ms, ".2f"), "cost": fmt(r.cost, ".2f") + ("x" if r.cost else ""),
                     "seconds": fmt(r.seconds, ".0f"), "search": r.search, "ranked_on": r.ranked_on, "steps": steps})
    return rows


def layers_context(report: Report) -> dict | None:
    """The page's per-layer section: the overlaid SNR-by-depth curves and one row per diffed artifact."""
    diffed = [a for a in report.artifacts.values() if a.layers is not None]
    if not diffed:
        return None
    rows = []
    for a in diffed:
        d = a.layers
        first = d.record(d.first_divergent) if d.first_divergent else None
        rows.append({"kind": a.name, "first": d.first_divergent, "note": d.note,
                     "snr": fmt(first.snr_db if first else None, ".1f"), "worst": d.worst[:4],
                     "paired": f"{len(d.layers)} / {d.eager_modules}" + (" by value" if d.paired_by == "value" else ""),
                     "seconds": fmt(d.seconds, ".1f"),
                     "timed": (f"{sum(r.ms or 0 for r in d.layers):.3g} of {d.total_ms:.3g}"
                               if d.total_ms else "no profiler")})
    image = report.inputs.images[0] if report.inputs and report.inputs.images else "the first evaluation image"
    return {"figure": divergence_figure([(a.name, a.layers) for a in diffed]), "rows": rows, "image": image}
