"""The report as one self-contained HTML page, rendered from the report JSON alone.

Everything a reader needs to see *why* a verdict is what it is: the verdict and the artifact
table, every timed latency sample of every artifact on one axis, per artifact the error
histogram against eager and the worst image (input, eager mask, artifact mask, where they
disagree) or the top-5 lists, for int8 the layers that lose precision, the plans measured and
the nodes left in float, and, when int8 is not faster than its fp32 graph, which operators take
the time. Then the environment, the recipe and the commands to reproduce.

The page is offline by construction: CSS inline, figures as inline SVG (matplotlib, Agg, no
pyplot state) or data-URI images, no script, no web font, no remote reference. The same module
renders ``make bench``'s zoo matrix (:func:`render_matrix`).
"""
from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from edgeexport.report import STATUS_TEXT, _fmt, _size, fastest_line, headers, record_of, summary_rows, task_label
from edgeexport.util import atomic_path, format_shape

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
PRECISION_COLOURS = {"fp32": "#1f77b4", "fp16": "#ff7f0e", "int8": "#2ca02c", "eager": "#222222"}
STATUS_CLASS = {"passed": "passed", "failed": "failed", "not_run": "notrun", "skipped": "skipped",
                "build_failed": "failed", "reference": "reference"}
MAX_BARS = 15


# ---------------------------------------------------------------- entry points


def write_html(report: dict, path: Path) -> Path:
    path = Path(path)
    text = render(report, str(path.with_name(path.name.replace(".report.html", ".report.json"))))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_html_safely(report: dict, path: Path, log=None) -> Path | None:
    """:func:`write_html`, but a page that cannot be rendered (matplotlib or Jinja2 missing, e.g. on a
    device verifying a bundle) costs a warning, never the run whose JSON is already written."""
    try:
        return write_html(report, path)
    except Exception as exc:
        if os.environ.get("EDGEEXPORT_DEBUG"):
            raise
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        msg = f"no HTML report ({path.name}): {type(exc).__name__}: {first}"
        (log or (lambda m: warnings.warn(m, stacklevel=2)))(msg)
        return None


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = lambda v, spec=".3g": _fmt(v, spec)
    return env


def render(report: dict, json_path: str | None = None) -> str:
    """The page for one report (a pipeline run, or a bundle's ``verify``); ``json_path``: where its JSON is."""
    return _env().get_template("report.html.j2").render(**page_context(report, json_path))


def render_matrix(reports: dict[str, dict], links: dict[str, str] | None = None, title: str = "Zoo matrix",
                  intro: str = "") -> str:
    """One page for many reports (``make bench``'s zoo matrix): a row per model, a cell per artifact kind."""
    return _env().get_template("matrix.html.j2").render(**matrix_context(reports, links or {}, title, intro))


# ---------------------------------------------------------------- figures (matplotlib, SVG)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgeexport"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML declaration or doctype inside HTML
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'(<svg[^>]*?)\swidth="([^"]*)"\sheight="[^"]*"', r'\1 class="fig" style="max-width:\2"', text,
                  count=1)
    return text


def _style(ax, grid_axis: str = "x") -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis=grid_axis, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9)


def _ms(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.3g}"


def _short(text: str, n: int = 42) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def latency_figure(report: dict) -> str | None:
    """Every timed sample of eager and of every artifact, one row each, same axis; medians marked."""
    rows = []
    e = report["eager"].get("latency")
    if e:
        rows.append(("eager" if not report["model"]["origin"].startswith("onnx:") else "reference", "eager", e, None))
    for a in report["artifacts"]:
        reason = None if a["latency"] else "build failed" if a["error"] else \
            "not run here" if a["parity"]["status"] == "not_run" else "not timed"
        rows.append((a["kind"], a["precision"], a["latency"], reason))
    timed = [r for r in rows if r[2]]
    if not timed:
        return None
    samples = [np.asarray(r[2].get("samples_ms") or [r[2]["median_ms"]], float) for r in timed]
    lo, hi = min(s.min() for s in samples), max(s.max() for s in samples)
    log = hi / max(lo, 1e-9) > 20
    fig = _figure(8.6, 0.42 * len(rows) + 1.0)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, (label, prec, lat, reason) in enumerate(rows):
        y = len(rows) - 1 - i
        if lat is None:
            ax.text(0.01, y, f"{reason or 'not timed'}", transform=ax.get_yaxis_transform(), va="center",
                    fontsize=9, color="#888888", style="italic")
            continue
        s = np.asarray(lat.get("samples_ms") or [lat["median_ms"]], float)
        colour = PRECISION_COLOURS.get(prec, "#555555")
        ax.scatter(s, y + rng.uniform(-0.22, 0.22, len(s)), s=12, alpha=0.55, color=colour, linewidths=0)
        ax.plot([lat["median_ms"]] * 2, [y - 0.34, y + 0.34], color="black", linewidth=1.6)
        note = f"{_ms(lat['median_ms'])} ms"
        if len(s) < 2:
            note += " (median only)"
        ax.text(1.01, y, note, transform=ax.get_yaxis_transform(), va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("latency per run (ms); black bar: median" + (" — log scale" if log else ""), fontsize=9)
    _style(ax)
    return _svg(fig)


def histogram_figure(outputs: list[dict]) -> str | None:
    """|artifact - eager| per output (log-spaced bins), as a share of all output elements."""
    hists = [(o["name"], o["hist"]) for o in outputs if o.get("hist") and o["hist"]["total"]]
    if not hists:
        return None
    fig = _figure(6.2, 2.3)
    ax = fig.add_subplot()
    for name, h in hists:
        counts = np.asarray(h["counts"], float)
        if not counts.size:
            continue
        edges = 10.0 ** (h["lo"] + h["step"] * np.arange(len(counts) + 1))
        ax.stairs(100 * counts / h["total"], edges, fill=len(hists) == 1, alpha=0.75 if len(hists) == 1 else 1,
                  label=name, linewidth=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("absolute error against eager", fontsize=9)
    ax.set_ylabel("% of elements", fontsize=9)
    if len(hists) > 1:
        ax.legend(fontsize=8, frameon=False)
    _style(ax, "y")
    return _svg(fig)


def layer_figure(rows: list[dict]) -> str | None:
    """The per-layer SNR drops, worst first (the int8 build's ``per_layer`` table)."""
    rows = sorted([r for r in rows if r.get("drop_db") is not None], key=lambda r: -r["drop_db"])[:MAX_BARS]
    if not rows:
        return None
    fig = _figure(8.6, 0.27 * len(rows) + 0.9)
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    drops = [r["drop_db"] for r in rows]
    ax.barh(y, drops, color="#d62728", alpha=0.8, height=0.7)
    ax.set_yticks(y, [f"{_short(r['node'])}  ({r['op']})" for r in rows], fontsize=8)
    for yy, r in zip(y, rows):
        ax.text(r["drop_db"], yy, f" {r['drop_db']:.1f} dB → {r['snr_db']:.0f} dB", va="center", fontsize=8)
    ax.set_xlim(0, max(drops) * 1.35 + 1e-9)
    ax.set_xlabel("SNR this node drops (input SNR − output SNR, dB); after the arrow: its output's SNR", fontsize=9)
    _style(ax)
    return _svg(fig)


def _label_points(ax, fig, points: list[tuple[str, float, float, bool]], gap_pt: float = 12.0) -> None:
    """Label scatter points to their right, pushing labels apart vertically where points are close
    (two plans of nearly the same latency and accuracy otherwise print over each other)."""
    fig.canvas.draw()
    to_px = ax.transData.transform
    px_per_pt = fig.dpi / 72.0
    placed: list[tuple[float, float]] = []  # label anchors in display pixels
    for text, x, y, bold in sorted(points, key=lambda t: -to_px((t[1], t[2]))[1]):  # top to bottom
        bx, by = to_px((x, y))
        dy = 0.0
        while any(abs(bx - ox) < 90 * px_per_pt and abs(by + dy * px_per_pt - oy) < gap_pt * px_per_pt
                  for ox, oy in placed):
            dy -= gap_pt
        placed.append((bx, by + dy * px_per_pt))
        ax.annotate(text, (x, y), xytext=(8, dy - 3), textcoords="offset points", fontsize=9,
                    fontweight="bold" if bold else "normal",
                    arrowprops=dict(arrowstyle="-", color="#bbbbbb", linewidth=0.6) if dy else None)


def plans_figure(plans: list[dict], chosen: str | None, fp32_ms: float | None) -> str | None:
    """Latency against accuracy of every int8 plan measured, the chosen one marked."""
    plans = [p for p in plans if p.get("ratio_to_fp32") is not None]
    if not plans:
        return None
    by_task = all(p.get("task_drop") is not None for p in plans)
    key = "task_drop" if by_task else "snr_db"
    if not all(p.get(key) is not None for p in plans):
        return None
    fig = _figure(6.2, 3.0)
    ax = fig.add_subplot()
    xs = [p["ratio_to_fp32"] for p in plans]
    ys = [p[key] for p in plans]
    for p, x, y in zip(plans, xs, ys):
        chosen_one = p["plan"] == chosen
        ax.scatter([x], [y], s=180 if chosen_one else 50, marker="*" if chosen_one else "o",
                   color="#2ca02c" if chosen_one else "#7f7f7f", zorder=3, edgecolors="black" if chosen_one else "none")
    ax.axvline(1.0, color="#1f77b4", linestyle="--", linewidth=1)
    ax.axvline(1 / 1.25, color="#999999", linestyle=":", linewidth=1)
    for x, text, colour in ((1.0, "fp32 graph", "#1f77b4"), (1 / 1.25, "1.25x faster", "#777777")):
        ax.annotate(text, (x, 0.98), xycoords=ax.get_xaxis_transform(), xytext=(3, 0), textcoords="offset points",
                    fontsize=8, color=colour, rotation=90, va="top", ha="left")
    lo, hi = min(xs + [0.8]), max(xs + [1.0])
    ax.set_xlim(lo - 0.12 * (hi - lo) - 0.02, hi + 0.25 * (hi - lo) + 0.05)
    if ys and max(ys) > min(ys):
        pad = 0.25 * (max(ys) - min(ys))
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
    if by_task:
        ax.invert_yaxis()
        ax.set_ylabel("task metric drop (points; up is better)", fontsize=9)
    else:
        ax.set_ylabel("worst-output SNR (dB)", fontsize=9)
    ax.set_xlabel("latency / fp32 graph" + (f" ({fp32_ms:.3g} ms while planning)" if fp32_ms else ""), fontsize=9)
    _label_points(ax, fig, [(p["plan"] + (" (chosen)" if p["plan"] == chosen else ""), x, y, p["plan"] == chosen)
                            for p, x, y in zip(plans, xs, ys)])
    _style(ax, "both")
    return _svg(fig)


def profile_figure(prof: dict, kind: str) -> str | None:
    """Per-operator-type time of the fp32 graph and of the int8 artifact, the biggest first."""
    ops = prof.get("ops") or {}
    a, b = ops.get("artifact") or {}, ops.get("baseline") or {}
    if not a and not b:
        return None
    names = sorted(set(a) | set(b), key=lambda k: -max(a.get(k, 0), b.get(k, 0)))[:MAX_BARS]
    fig = _figure(8.6, 0.38 * len(names) + 1.1)
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y + 0.19, [b.get(n, 0) for n in names], height=0.38, color=PRECISION_COLOURS["fp32"],
            label=f"{prof['baseline']} (fp32)")
    ax.barh(y - 0.19, [a.get(n, 0) for n in names], height=0.38, color=PRECISION_COLOURS["int8"],
            label=f"{kind} (int8)")
    ax.set_yticks(y, [_short(n, 36) for n in names], fontsize=8.5)
    ax.set_xlabel("ms per run (kernel time by operator type)", fontsize=9)
    ax.legend(fontsize=8.5, frameon=False, loc="lower right")
    _style(ax)
    return _svg(fig)


def matrix_figure(rows: list[dict]) -> str | None:
    """Latency against eager of every artifact of every model, one row per model."""
    pts = [(r["name"], c["kind"], c["precision"], c["x_eager"]) for r in rows for c in r["cells"].values()
           if c and c.get("x_eager")]
    if not pts:
        return None
    models = [r["name"] for r in rows]
    kinds = list(dict.fromkeys(p[1] for p in pts))
    markers = {"fp32": "o", "fp16": "s", "int8": "D"}
    fig = _figure(8.6, 0.34 * len(models) + 1.3)
    ax = fig.add_subplot()
    for kind in kinds:
        mine = [p for p in pts if p[1] == kind]
        ax.scatter([p[3] for p in mine], [len(models) - 1 - models.index(p[0]) for p in mine], s=30, alpha=0.85,
                   color=f"C{kinds.index(kind) % 10}", marker=markers.get(mine[0][2], "o"), label=kind, zorder=3)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(range(len(models)), list(reversed(models)), fontsize=8.5)
    ax.set_ylim(-0.6, len(models) - 0.4)
    ax.set_xlabel("latency / eager PyTorch (log scale; left of the line is faster)", fontsize=9)
    fig.legend(fontsize=8.5, frameon=False, loc="outside right upper")
    _style(ax)
    return _svg(fig)


# ---------------------------------------------------------------- images


def _overlay_uri(eager_uri: str, artifact_uri: str) -> tuple[str, int]:
    """A transparent PNG with the pixels where the two masks' classes differ in magenta, grown so that one
    pixel stays visible when the page shows the map at about 200 px; a few scattered pixels also get a box
    around each, so that they can be found at all."""
    from PIL import Image

    from edgeexport.report.images import data_uri, decode_mask

    e, a = decode_mask(eager_uri), decode_mask(artifact_uri)
    diff = e != a
    count = int(diff.sum())
    h, w = diff.shape
    r = max(0, round(max(h, w) / 200))
    shown = np.zeros((h + 2 * r, w + 2 * r), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            shown[dy:dy + h, dx:dx + w] |= diff
    shown = shown[r:r + h, r:r + w]
    if 0 < count <= 64:
        box = max(4, 6 * max(r, 1))
        for y, x in zip(*np.nonzero(diff)):
            y0, y1, x0, x1 = max(y - box, 0), min(y + box, h - 1), max(x - box, 0), min(x + box, w - 1)
            shown[y0:y1 + 1, [x0, x1]] = True
            shown[[y0, y1], x0:x1 + 1] = True
    im = Image.fromarray(shown.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 255])
    im.info["transparency"] = 0
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True, transparency=0)
    return data_uri(buf.getvalue(), "image/png"), count


def _legend(classes: list[str] | None, masks: list[str]) -> list[dict]:
    """The classes that occur in the masks shown, with their palette colours."""
    from edgeexport.report.images import PALETTE, decode_mask

    present = sorted({int(v) for m in masks if m for v in np.unique(decode_mask(m)) if int(v) != 255})
    out = []
    for c in present[:24]:
        r, g, b = PALETTE[c]
        out.append({"name": classes[c] if classes and c < len(classes) else f"class {c}",
                    "colour": f"#{r:02x}{g:02x}{b:02x}"})
    return out


def segmentation_views(report: dict, a: dict) -> list[dict]:
    images = (report.get("views") or {}).get("images") or {}
    classes = (report.get("views") or {}).get("classes")
    out = []
    for v in (a.get("views") or {}).get("segmentation") or []:
        img = images.get(v["image"])
        if img is None:
            continue
        eager = img["eager"].get(v["output"])
        if eager is None:
            continue
        overlay, count = _overlay_uri(eager, v["artifact"])
        labeled = img["source"] == "eval_data"
        share = 100 * count / max(v["pixels"], 1)
        caption = (f"{count:,} of {v['pixels']:,} pixels ({share:.2f}%) differ from eager" if share >= 0.01 else
                   f"{count:,} of {v['pixels']:,} pixels differ from eager (boxed)" if count else
                   "every pixel agrees with eager")
        if labeled and v.get("eager_value") is not None and v.get("artifact_value") is not None:
            label = {"miou": "mIoU", "top1": "top-1"}.get(v.get("metric"), v.get("metric"))
            caption += (f"; {label} on this image: eager {100 * v['eager_value']:.2f}, "
                        f"{a['kind']} {100 * v['artifact_value']:.2f}")
        why = ("the labeled image where it loses the most against eager" if labeled
               else "the photograph where its mask differs most from eager's")
        out.append({"output": v["output"], "name": img["name"], "why": why, "input": img["input"],
                    "label": img.get("label"), "eager": eager, "artifact": v["artifact"], "overlay": overlay,
                    "caption": caption, "legend": _legend(classes, [img.get("label"), eager, v["artifact"]])})
    return out


def classification_views(report: dict, a: dict) -> list[dict]:
    images = (report.get("views") or {}).get("images") or {}
    classes = (report.get("views") or {}).get("classes")
    name = lambda c: classes[c] if classes and c < len(classes) else f"class {c}"  # noqa: E731
    out = []
    for v in (a.get("views") or {}).get("classification") or []:
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


def _status(a: dict) -> str:
    return "build_failed" if a.get("error") else a["parity"]["status"]


def verdict_summary(report: dict) -> list[str]:
    arts = report["artifacts"]
    counts: dict[str, list[str]] = {}
    for a in arts:
        counts.setdefault(_status(a), []).append(a["kind"])
    parts = []
    for st in ("passed", "failed", "build_failed", "not_run", "skipped"):
        kinds = counts.get(st)
        if kinds:
            which = f" ({', '.join(kinds)})" if st != "passed" else ""
            parts.append(f"{len(kinds)} {STATUS_TEXT[st].lower()}{which}")
    return parts


def table_context(report: dict) -> dict:
    hs = headers(report)
    rows = summary_rows(report)
    statuses = ["reference"] + [_status(a) for a in report["artifacts"]]
    out = []
    for row, st, a in zip(rows, statuses, [None] + report["artifacts"]):
        out.append({"cells": row, "status": STATUS_CLASS.get(st, "skipped"),
                    "anchor": _anchor(a["kind"]) if a else None,
                    "title": (a or {}).get("parity", {}).get("reason") or (a or {}).get("error") or ""})
    return {"headers": hs, "rows": out, "status_col": hs.index("parity")}


def _anchor(kind: str) -> str:
    return "art-" + re.sub(r"[^a-zA-Z0-9_-]", "-", kind)


def _facts(a: dict, report: dict) -> list[tuple[str, str]]:
    out = []
    if a.get("path"):
        out.append(("artifact", f"{a['path']} ({_size(a.get('size_bytes'))})"))
    if a.get("runner"):
        out.append(("runs with", f"{a['backend']} ({a['runner']['target']} runner)"))
    lat = a.get("latency")
    if lat:
        txt = (f"median {lat['median_ms']:.3g} ms over {lat['runs']} runs ({lat['threads']} threads), "
               f"p90 {lat['p90_ms']:.3g}, min {lat['min_ms']:.3g}, max {lat['max_ms']:.3g}")
        if a.get("ratio_to_eager") is not None:
            txt += f"; {a['ratio_to_eager']:.2f}x eager"
        if a.get("ratio_to_fp32") is not None:
            txt += f", {a['ratio_to_fp32']:.2f}x the fp32 ONNX graph"
        out.append(("latency", txt))
    elif a.get("latency_note") and a["latency_note"] != a["parity"].get("reason"):
        out.append(("latency", a["latency_note"]))
    if a.get("required_by"):
        out.append(("built because", f"{a['required_by']} needs it"))
    t = a.get("task")
    if t:
        label = {"miou": "mIoU", "top1": "top-1"}[t["metric"]]
        txt = f"{label} {100 * t['value']:.2f}" if t.get("value") is not None else f"{label} –"
        if t.get("drop_points") is not None:
            txt += f" ({t['drop_points']:+.2f} points against eager)"
        out.append(("task", txt))
    b = a.get("build") or {}
    if b.get("build_s") is not None:
        out.append(("build time", f"{b['build_s']:.1f} s"))
    return out


def _record_tables(a: dict) -> tuple[list[tuple[str, str]], list[dict]]:
    """The build record, generically: scalar facts, and its list-of-rows fields as tables."""
    facts, tables = [], []
    for k, v in (a.get("build") or {}).items():
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
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def parity_tables(a: dict) -> list[dict]:
    out = []
    for chk in a["parity"].get("checks") or []:
        rows = []
        for o in chk["outputs"]:
            m = o["metrics"]
            rows.append({"cells": [o["name"], o["task"], _fmt(m.get("max_abs"), ".3g"), _fmt(m.get("mean_abs"), ".3g"),
                                   _fmt(m.get("max_abs_scaled"), ".3g"), _fmt(m.get("cosine"), ".7f"),
                                   _fmt(m.get("snr_db"), ".1f"), _fmt(m.get("agreement"), ".5f")],
                         "passed": o["passed"]})
        limits = {k: v for k, v in chk["tolerance"].items() if v is not None}
        issues = [i["message"] for i in chk["issues"]] + [f"{i['output']}: {i['message']}" for o in chk["outputs"]
                                                          for i in o["issues"]]
        out.append({"shape": format_shape(chk["shape"]), "samples": chk["samples"], "passed": chk["passed"],
                    "limits": ", ".join(f"{k} {v:g}" for k, v in limits.items()), "rows": rows, "issues": issues})
    return out


def comparisons(a: dict) -> list[str]:
    out = []
    for key, checks in a["parity"].items():
        if key.startswith("vs_") and checks:
            for o in checks[0]["outputs"]:
                m = o["metrics"]
                out.append(f"against the {key[3:]} artifact, {o['name']}: SNR {_fmt(m['snr_db'], '.1f')} dB, "
                           f"max err / scale {_fmt(m['max_abs_scaled'], '.2e')}, "
                           f"agreement {_fmt(m['agreement'], '.4f')}")
    return out


def hist_caption(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        h = o.get("hist")
        if not h or not h["total"]:
            continue
        exact = 100 * h["under"] / h["total"]
        m = o["metrics"]
        parts.append(f"{o['name']}: max {_fmt(m.get('max_abs'), '.3g')}, mean {_fmt(m.get('mean_abs'), '.3g')}"
                     + (f", {exact:.1f}% of elements below 1e-10" if h["under"] else "")
                     + f" (largest eager value {_fmt(m.get('ref_scale'), '.3g')})")
    return "; ".join(parts)


def int8_context(a: dict) -> dict | None:
    b = a.get("build") or {}
    if a["precision"] != "int8" or not (b.get("per_layer") or b.get("plans") or b.get("float_nodes")):
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


def profile_context(a: dict) -> dict | None:
    p = a.get("profile")
    if not p:
        return None
    ops = p.get("ops") or {}
    art, base = ops.get("artifact") or {}, ops.get("baseline") or {}
    rows = []
    for n in sorted(set(art) | set(base), key=lambda k: -max(art.get(k, 0), base.get(k, 0))):
        x, y = base.get(n), art.get(n)
        rows.append({"op": n, "fp32": _fmt(x, ".3f"), "int8": _fmt(y, ".3f"),
                     "delta": _fmt((y or 0) - (x or 0), "+.3f"), "worse": (y or 0) > (x or 0)})
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
    return {"figure": profile_figure(p, a["kind"]), "rows": rows, "speedup": p["speedup"], "needed": p["needed"],
            "baseline": p["baseline"], "runs": p.get("runs"),
            "runtime": ", ".join(dict.fromkeys((p.get("runtime") or {}).values())),
            "missing": p.get("missing") or {}, "error": p.get("error"),
            "total_art": totals.get("artifact"), "total_base": totals.get("baseline"),
            "kernel_art": sum(art.values()) if art else None, "kernel_base": sum(base.values()) if base else None,
            "worse": [f"{f} (+{d:.3g} ms)" for f, d in worse],
            "qdq_ms": sum(v for n, v in art.items() if n in qdq) or None}


def artifact_context(report: dict, a: dict) -> dict:
    st = _status(a)
    checks = a["parity"].get("checks") or []
    main = checks[0]["outputs"] if checks else []
    facts, tables = _record_tables(a)
    t = a.get("task")
    per_class = []
    et = report["eager"].get("task") or {}
    if t and t.get("per_class_iou"):
        names = t.get("classes") or [str(i) for i in range(len(t["per_class_iou"]))]
        eager_iou = et.get("per_class_iou") or []
        for i, (n, v) in enumerate(zip(names, t["per_class_iou"])):
            e = eager_iou[i] if i < len(eager_iou) else None
            if v is None and e is None:
                continue
            per_class.append({"name": n, "eager": _fmt(e, ".3f"), "artifact": _fmt(v, ".3f"),
                              "delta": _fmt(None if v is None or e is None else 100 * (v - e), "+.1f"),
                              "bad": v is not None and e is not None and e - v > 0.01})
    parity = parity_tables(a)
    issues = [i for p in parity for i in p["issues"]]
    headline = a.get("error") or "; ".join(a.get("failures") or []) or (t or {}).get("issue") or "; ".join(issues[:2])
    try:
        record = record_of(a)
        terminal = record.terminal() if record is not None else []
    except Exception:
        terminal = []
    return {
        "headline": headline if st in ("failed", "build_failed") else None, "terminal": terminal,
        "kind": a["kind"], "anchor": _anchor(a["kind"]), "backend": a["backend"], "precision": a["precision"],
        "status": STATUS_CLASS.get(st, "skipped"), "status_text": STATUS_TEXT.get(st, st),
        "error": a.get("error"), "reason": a["parity"].get("reason"), "failures": a.get("failures") or [],
        "notes": a.get("notes") or [], "task_issue": (t or {}).get("issue"), "facts": _facts(a, report),
        "hist": histogram_figure(main), "hist_caption": hist_caption(main),
        "segmentation": segmentation_views(report, a), "classification": classification_views(report, a),
        "views_error": (a.get("views") or {}).get("error"), "parity": parity,
        "comparisons": comparisons(a), "int8": int8_context(a), "profile": profile_context(a),
        "record_facts": facts, "record_tables": tables, "per_class": per_class,
    }


def _prune(d, stages: bool = False):
    """The recipe without its unset (None / empty) fields; under ``stages`` only ``onnx: null`` is kept (it
    turns the fp32 export off when nothing needs it)."""
    if isinstance(d, dict):
        return {k: _prune(v, k == "stages") for k, v in d.items()
                if (stages and k == "onnx") or (v is not None and v != {} and v != [])}
    if isinstance(d, list):
        return [_prune(v) for v in d]
    return d


def reproduce(report: dict, json_path: str | None) -> dict:
    """One shell block (comment lines say what each command does) and the recipe."""
    import yaml

    lines = []
    if report.get("command"):
        lines += ["# the command that wrote this report", report["command"]]
    recipe = _prune(report["recipe"]) if report.get("recipe") else None
    if recipe:
        lines += ["# " + ("or " if lines else "") + "the same run from the recipe below, saved as recipe.yaml",
                  "edgeexport run recipe.yaml"]
    where = json_path or f"{(recipe or {}).get('output', '.')}/{report['model'].get('name', 'NAME')}.report.json"
    lines += ["# this page again, from the JSON beside it", f"edgeexport report {where} --html"]
    bundles = [note.split(": ", 1)[1] for a in report["artifacts"] for note in a.get("notes") or []
               if note.startswith("parity bundle: ")]
    if bundles:
        lines += ["# parity and latency of an artifact on the target device, from its bundle (no torch needed)"]
        lines += [f"edgeexport verify {b}" for b in bundles]
    return {"commands": "\n".join(lines),
            "recipe": yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=110) if recipe else None}


def environment(report: dict) -> dict:
    m = report.get("machine") or {}
    rows = [("CPU", m.get("cpu")), ("cores", m.get("cores")), ("logical CPUs", m.get("logical_cpus")),
            ("threads for every backend", m.get("threads")), ("OS", m.get("os")), ("Python", m.get("python")),
            ("edgeexport", report.get("edgeexport")), ("report written", report.get("created")),
            ("run took", f"{report['elapsed_s']:.0f} s" if report.get("elapsed_s") is not None else None)]
    versions = [(k, v) for k, v in (report.get("versions") or {}).items()]
    return {"machine": [(k, v) for k, v in rows if v is not None], "versions": versions}


def page_context(report: dict, json_path: str | None = None) -> dict:
    m = report["model"]
    ed, et = report.get("eval_data"), report["eager"].get("task")
    data_line = None
    if ed and et:
        where = ed.get("path") or ed.get("spec")
        data_line = (f"labeled data: {where} ({ed['task']}, {ed['images_used']} images at "
                     f"{format_shape(ed['input_shape'])}); eager {task_label(report)} {100 * et['value']:.2f}")
    inputs = report.get("inputs") or {}
    outputs = ", ".join(f"{o} ({(m.get('output_tasks') or {}).get(o, '?')})" for o in m.get("outputs", []))
    return {
        "title": f"edgeexport report: {m.get('name', '?')}",
        "model": m, "shape": format_shape(m.get("input_shape") or []), "verdict": report["verdict"],
        "summary": verdict_summary(report), "table": table_context(report), "fastest": fastest_line(report),
        "latency": latency_figure(report),
        "threads": (report.get("machine") or {}).get("threads"),
        "model_line": (f"{m.get('origin')}, weights: {m.get('weights')}"
                       + (f", {m['params']:,} parameters" if isinstance(m.get("params"), int) else "")),
        "outputs": outputs, "data_line": data_line,
        "inputs_line": (f"{inputs.get('source')}: {', '.join(inputs.get('images') or [])}" if inputs else None),
        "artifacts": [artifact_context(report, a) for a in report["artifacts"]],
        "env": environment(report), "reproduce": reproduce(report, json_path),
    }


# ---------------------------------------------------------------- the matrix page


def matrix_context(reports: dict[str, dict], links: dict[str, str], title: str, intro: str) -> dict:
    kinds: list[str] = []
    for rep in reports.values():
        for a in rep["artifacts"]:
            if a["kind"] not in kinds:
                kinds.append(a["kind"])
    rows = []
    for name, rep in reports.items():
        cells = {}
        for a in rep["artifacts"]:
            st = _status(a)
            checks = a["parity"].get("checks") or []
            outs = checks[0]["outputs"] if checks else []
            snr = [o["metrics"].get("snr_db") for o in outs if o["metrics"].get("snr_db") is not None]
            t = a.get("task") or {}
            lines = []
            if a.get("ratio_to_eager") is not None:
                lines.append(f"{a['ratio_to_eager']:.2f}x eager")
            if a.get("ratio_to_fp32") is not None:
                lines.append(f"{a['ratio_to_fp32']:.2f}x fp32")
            if t.get("drop_points") is not None:
                lines.append(f"{t['drop_points']:+.2f} pts")
            elif a["precision"] != "fp32" and snr:
                lines.append(f"SNR {min(snr):.1f} dB")
            cells[a["kind"]] = {"kind": a["kind"], "precision": a["precision"],
                                "status": STATUS_CLASS.get(st, "skipped"), "text": STATUS_TEXT.get(st, st),
                                "lines": lines, "x_eager": a.get("ratio_to_eager"),
                                "title": (a.get("error") or a["parity"].get("reason")
                                          or "; ".join(a.get("failures") or []))}
        rows.append({"name": name, "link": links.get(name),
                     "shape": format_shape(rep["model"].get("input_shape") or []),
                     "verdict": rep["verdict"], "cells": cells,
                     "eager_ms": (rep["eager"].get("latency") or {}).get("median_ms")})
    first = next(iter(reports.values()), None)
    return {"title": title, "intro": intro, "kinds": kinds, "rows": rows, "figure": matrix_figure(rows),
            "env": _matrix_env(first) if first else None,
            "passed": sum(r["verdict"] == "passed" for r in rows), "total": len(rows)}


def _matrix_env(report: dict) -> dict:
    env = environment(report)
    env["machine"] = [(k, v) for k, v in env["machine"] if k not in ("run took", "report written")]
    return env


def write_matrix(reports: dict[str, dict], path: Path, links: dict[str, str] | None = None, **kw) -> Path:
    path = Path(path)
    text = render_matrix(reports, links, **kw)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def relative_link(target: Path, page: Path) -> str:
    """A relative URL from ``page``'s folder to ``target`` (the page works wherever the folder is moved)."""
    from urllib.parse import quote

    return quote(os.path.relpath(Path(target).resolve(), Path(page).resolve().parent).replace(os.sep, "/"))


