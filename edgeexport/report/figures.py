"""The report page's figures: matplotlib (Agg, no pyplot state) rendered to inline SVG."""
from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from edgeexport.parity import OutputParity
    from edgeexport.report.schema import Report

PRECISION_COLOURS = {"fp32": "#1f77b4", "fp16": "#ff7f0e", "int8": "#2ca02c", "eager": "#222222"}
MAX_BARS = 15


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


def latency_figure(report: Report) -> str | None:
    """Every timed sample of eager and of every artifact, one row each, same axis; medians marked."""
    rows = []
    e = report.eager.latency if report.eager else None
    if e:
        rows.append((report.label, "eager", e, None))
    for a in report.artifacts.values():
        reason = None if a.latency else "build failed" if a.error else \
            "not run here" if a.status == "not_run" else "not timed"
        rows.append((a.name, a.precision, a.latency, reason))
    timed = [r for r in rows if r[2]]
    if not timed:
        return None
    samples = [np.asarray(r[2].samples_ms or [r[2].median_ms], float) for r in timed]
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
        s = np.asarray(lat.samples_ms or [lat.median_ms], float)
        colour = PRECISION_COLOURS.get(prec, "#555555")
        ax.scatter(s, y + rng.uniform(-0.22, 0.22, len(s)), s=12, alpha=0.55, color=colour, linewidths=0)
        ax.plot([lat.median_ms] * 2, [y - 0.34, y + 0.34], color="black", linewidth=1.6)
        note = f"{_ms(lat.median_ms)} ms"
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


def histogram_figure(outputs: list[OutputParity]) -> str | None:
    """|artifact - eager| per output (log-spaced bins), as a share of all output elements."""
    hists = [(o.name, o.hist) for o in outputs if o.hist and o.hist.total]
    if not hists:
        return None
    fig = _figure(6.2, 2.3)
    ax = fig.add_subplot()
    for name, h in hists:
        counts = np.asarray(h.counts, float)
        if not counts.size:
            continue
        edges = 10.0 ** (h.lo + h.step * np.arange(len(counts) + 1))
        ax.stairs(100 * counts / h.total, edges, fill=len(hists) == 1, alpha=0.75 if len(hists) == 1 else 1,
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


# ---------------------------------------------------------------- per-layer divergence

LAYER_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2")


def divergence_figure(curves: list[tuple[str, object]], width: int = 860, height: int = 280) -> str | None:
    """SNR against eager by depth (eager execution order), one line per artifact, overlaid; every point names its
    module on hover (an SVG <title>), each artifact's first divergent layer is ringed, thresholds dashed."""
    from html import escape

    curves = [(name, d) for name, d in curves if d is not None and d.layers]
    if not curves:
        return None
    left, right, top, bottom = 48, 150, 14, 34
    depth = max(r.depth for _, d in curves for r in d.layers) or 1
    snr_max = min(200.0, max(60.0, max(r.snr_db for _, d in curves for r in d.layers if r.snr_db < 200) + 10)) \
        if any(r.snr_db < 200 for _, d in curves for r in d.layers) else 200.0
    pw, ph = width - left - right, height - top - bottom
    x = lambda v: left + pw * v / depth  # noqa: E731
    y = lambda v: top + ph * (1 - max(0.0, min(v, snr_max)) / snr_max)  # noqa: E731
    out = [f'<svg class="fig layers" viewBox="0 0 {width} {height}" style="max-width:{width}px" '
           f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">']
    for t in range(0, int(snr_max) + 1, 20):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" fill="#555">{t}</text>')
    out.append(f'<text x="12" y="{top + ph / 2:.0f}" transform="rotate(-90 12 {top + ph / 2:.0f})" '
               f'text-anchor="middle" fill="#333">SNR vs eager (dB)</text>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#333">'
               f'depth: modules in eager execution order (hover a point for its module)</text>')
    for j, (name, d) in enumerate(curves):
        colour = LAYER_COLOURS[j % len(LAYER_COLOURS)]
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(d.threshold_db):.1f}" y2="{y(d.threshold_db):.1f}" '
                   f'stroke="{colour}" stroke-dasharray="4 4" stroke-width="1"/>')
        pts = " ".join(f"{x(r.depth):.1f},{y(r.snr_db):.1f}" for r in d.layers)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.4" opacity="0.85"/>')
        for r in d.layers:
            fused = f" + {', '.join(r.fused_with)}" if r.fused_with else ""
            tip = escape(f"{name}: {r.module} ({r.cls}{fused}) — {r.op}, SNR {r.snr_db:.1f} dB, "
                         f"max err/scale {r.max_abs_scaled:.2e}")
            big = r.module == d.first_divergent
            out.append(f'<circle cx="{x(r.depth):.1f}" cy="{y(r.snr_db):.1f}" r="{5 if big else 2.4}" '
                       f'fill="{"none" if big else colour}" stroke="{colour}" stroke-width="{2 if big else 0}">'
                       f'<title>{tip}</title></circle>')
        ly = top + 14 + 16 * j
        first = f"first: {d.first_divergent}" if d.first_divergent else "none below its line"
        out.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 26}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{left + pw + 30}" y="{ly}" fill="#222">{escape(name)}'
                   f'<title>{escape(first)}</title></text>')
    out.append("</svg>")
    return "".join(out)
