"""Reports: one JSON document per run, a Markdown rendering of it, the terminal table, and a
self-contained HTML page rendered from the JSON alone (:mod:`edgeexport.report_html`).

Every artifact appears with its backend, precision, size, parity verdict and latency
side by side. A check that could not execute on this machine is reported as
"not run on this machine", never as passed.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path

from edgeexport.version import __version__
from edgeexport.util import atomic_path, format_shape

STATUS_TEXT = {"passed": "passed", "failed": "FAILED", "not_run": "not run here", "skipped": "skipped",
               "build_failed": "BUILD FAILED"}


def machine_info(threads: int | None = None) -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from edgeexport.util import default_threads

    return {"cpu": cpu, "cores": default_threads(), "logical_cpus": os.cpu_count(), "threads": threads,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "machine": platform.machine()}


def versions() -> dict:
    from edgeexport.doctor import installed_versions

    return installed_versions()


def _artifact_dict(ctx, art) -> dict:
    eager = ctx.eager_latency
    status = "build_failed" if art.error else art.parity_status
    d = {
        "kind": art.kind, "target": art.target, "backend": art.backend, "precision": art.precision,
        "path": str(art.path) if art.path and art.error is None else None,
        "size_bytes": art.size if art.error is None else None,
        "dynamic": art.dynamic, "built": art.built, "required_by": art.required_by,
        "runner": art.runner.model_dump() if art.runner else None,
        "build": art.record.model_dump() if art.record else {}, "error": art.error, "notes": art.all_notes,
        "parity": {"status": status, "reason": art.not_run_reason,
                   "checks": [p.to_dict() for p in art.parity],
                   **{f"vs_{k}": [r.to_dict() for r in v] for k, v in art.compared.items()}},
        "latency": art.latency.to_dict() if art.latency else None,
        "ratio_to_eager": (art.latency.median_ms / eager.median_ms) if art.latency and eager else None,
        "failures": art.failures,
        "task": ({**art.task.to_dict(), "drop_points": art.task_drop, "issue": art.task_issue}
                 if art.task is not None else None),
        "views": art.views, "profile": art.profile,
    }
    base = ctx.find(art.compare_to) if art.compare_to else None
    if art.latency and base is not None and base.latency:
        d["ratio_to_fp32"] = art.latency.median_ms / base.latency.median_ms
    if art.latency is None and art.error is None and art.parity_status == "not_run":
        d["latency_note"] = art.not_run_reason
    return d


def build_report(ctx, elapsed_s: float, command: str | None = None) -> dict:
    h = ctx.handle
    arts = [_artifact_dict(ctx, a) for a in ctx.artifacts]
    failed = [a["kind"] for a in arts if a["parity"]["status"] in ("failed", "build_failed")]
    return {
        "edgeexport": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed_s, 1),
        "machine": machine_info(ctx.threads),
        "versions": versions(),
        "model": {**h.info(ctx.shape), "dynamic": ctx.recipe.dynamic},
        "inputs": {"source": ctx.recipe.inputs.source, "folder": ctx.recipe.inputs.folder,
                   "shapes": [list(s) for s in ctx.refs.batches],
                   "images": sorted({n for b in ctx.refs.batches.values() for names, _ in b for n in names})},
        "recipe": ctx.recipe.model_dump(mode="json"),
        "eager": {"backend": ctx.refs.eager_runner().backend, "latency": ctx.eager_latency.to_dict() if ctx.eager_latency else None,
                  "task": ctx.eager_task.to_dict() if ctx.eager_task is not None else None},
        "eval_data": ctx.task_data.describe() if ctx.task_data is not None else None,
        "artifacts": arts,
        "verdict": "failed" if failed else "passed",
        "failed": failed,
        "fastest": fastest(arts),
        "command": command,
        "views": ctx.views,
    }


def fastest(arts: list[dict]) -> dict | None:
    """The fastest artifact that meets its tolerances here (parity and task metric passed, timed)."""
    ok = [a for a in arts if a["parity"]["status"] == "passed" and a["latency"]]
    if not ok:
        return None
    best = min(ok, key=lambda a: a["latency"]["median_ms"])
    return {"kind": best["kind"], "backend": best["backend"], "precision": best["precision"],
            "median_ms": best["latency"]["median_ms"], "ratio_to_eager": best["ratio_to_eager"],
            "task_drop": (best.get("task") or {}).get("drop_points")}


def fastest_line(report: dict) -> str | None:
    f = report.get("fastest")
    if not f:
        return None
    drop = f" ({f['task_drop']:+.2f} points of the task metric)" if f.get("task_drop") is not None else ""
    ratio = f", {f['ratio_to_eager']:.2f}x eager" if f.get("ratio_to_eager") else ""
    return (f"fastest artifact that meets its tolerances: {f['kind']} ({f['backend']}, {f['precision']}), "
            f"{f['median_ms']:.1f} ms{ratio}{drop}")


def write_reports(report: dict, out_dir: Path, name: str, log=None) -> tuple[Path, Path]:
    """NAME.report.json, NAME.report.md and NAME.report.html (see :func:`html_path`)."""
    js, md = out_dir / f"{name}.report.json", out_dir / f"{name}.report.md"
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    with atomic_path(md) as tmp:
        tmp.write_text(to_markdown(report))
    from edgeexport.report.html import write_html_safely

    write_html_safely(json.loads(js.read_text()), html_path(out_dir, name), log)
    return js, md


def html_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.report.html"


# ---------------------------------------------------------------- rendering


def _fmt(v, spec=".3g", none="–"):
    if v is None:
        return none
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _size(n):
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def task_label(report: dict) -> str | None:
    """'mIoU' / 'top-1' when the run had labeled data."""
    task = report.get("eager", {}).get("task")
    return None if not task else {"miou": "mIoU", "top1": "top-1"}[task["metric"]]


def headers(report: dict) -> list[str]:
    label = task_label(report)
    return HEADERS[:8] + ([label, "drop pts"] if label else []) + HEADERS[8:]


def _task_cells(report: dict, task: dict | None, eager: bool = False) -> list[str]:
    if not task_label(report):
        return []
    if task is None:
        return ["–", "–"]
    value = _fmt(100 * task["value"], ".2f") if task["value"] is not None else "–"
    return [value, "–" if eager else _fmt(task.get("drop_points"), "+.2f")]


def summary_rows(report: dict) -> list[list[str]]:
    """One row per artifact (plus eager): backend, precision, size, parity, errors, task metric, latency, ratio."""
    rows = []
    eager = report["eager"]["latency"]
    ref_kind = "reference" if report["model"]["origin"].startswith("onnx:") else "eager"
    ref_backend = report["eager"].get("backend", "torch")
    rows.append([ref_kind, ref_backend, "fp32", "–", "reference", "–", "–", "–",
                 *_task_cells(report, report["eager"].get("task"), eager=True),
                 _fmt(eager["median_ms"], ".1f") if eager else "–", "1.00" if eager else "–", "–"])
    for a in report["artifacts"]:
        main = a["parity"]["checks"][0]["outputs"] if a["parity"]["checks"] else []
        worst = lambda key, fn: fn([o["metrics"].get(key) for o in main if o["metrics"].get(key) is not None]) \
            if main and any(o["metrics"].get(key) is not None for o in main) else None  # noqa: E731
        shapes = len(a["parity"]["checks"])
        status = STATUS_TEXT[a["parity"]["status"]]
        if shapes > 1:
            status += f" ({shapes} shapes)"
        lat = a["latency"]
        rows.append([
            a["kind"], a["backend"], a["precision"], _size(a["size_bytes"]), status,
            _fmt(worst("max_abs_scaled", max), ".2e"), _fmt(worst("snr_db", min), ".1f"),
            _fmt(worst("agreement", min), ".4f"), *_task_cells(report, a.get("task")),
            _fmt(lat["median_ms"], ".1f") if lat else "–", _fmt(a["ratio_to_eager"], ".2f"),
            _fmt(a.get("ratio_to_fp32"), ".2f"),
        ])
    return rows


HEADERS = ["artifact", "backend", "precision", "size", "parity", "max err / scale", "SNR dB", "agreement",
           "median ms", "x eager", "x fp32"]


def md_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of dict rows (the columns of the first row unless given)."""
    if not rows:
        return []
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c), ".4g") if not isinstance(r.get(c), str) else r[c].replace("|", "/")
                                     for c in columns) + " |")
    return out


def record_of(a: dict):
    """The typed build record of a report's artifact (None for entries no target built, e.g. bundles)."""
    from edgeexport.targets import get_target

    try:
        return get_target(a["target"]).Record.model_validate(a["build"])
    except Exception:
        return None


def _build_lines(a: dict) -> list[str]:
    record = record_of(a)
    if record is not None:
        return [ln for ln in record.markdown()]
    return [f"- {k}: {json.dumps(v, default=str)}" for k, v in a["build"].items()]


def _eval_data_lines(report: dict) -> list[str]:
    ed, task = report.get("eval_data"), report["eager"].get("task")
    if not ed or not task:
        return []
    where = ed.get("path") or ed.get("spec")
    line = (f"- labeled data: {where} ({ed['task']}, {ed['images_used']} images at {format_shape(ed['input_shape'])},"
            f" output `{ed['output']}`); eager {task_label(report)} {100 * task['value']:.2f}")
    if task["task"] == "segmentation":
        line += f", pixel accuracy {100 * task['pixel_accuracy']:.2f}"
    else:
        line += f", top-5 {100 * task['top5']:.2f}"
    return [line]


def _task_lines(a: dict) -> list[str]:
    t = a.get("task")
    if not t:
        return []
    label = {"miou": "mIoU", "top1": "top-1"}[t["metric"]]
    line = f"- task: {label} {100 * t['value']:.2f} ({_fmt(t['drop_points'], '+.2f')} points against eager"
    line += f"; {t['issue']})" if t.get("issue") else ")"
    out = [line]
    if t["task"] == "segmentation" and t.get("per_class_iou"):
        names = t.get("classes") or [str(i) for i in range(len(t["per_class_iou"]))]
        out.append("- per-class IoU: " + ", ".join(f"{n} {_fmt(v, '.3f')}" for n, v in zip(names, t["per_class_iou"])))
    return out


def to_markdown(report: dict) -> str:
    m = report["model"]
    lines = [f"# edgeexport report: {m['name']}", "",
             f"- model: `{m['origin']}`, weights: {m['weights']}, {m['params']:,} parameters",
             f"- input: {format_shape(m['input_shape'])} (dynamic: {m['dynamic']}), outputs: "
             + ", ".join(f"`{o}` ({m['output_tasks'].get(o, '?')})" for o in m["outputs"]),
             f"- inputs: {report['inputs']['source']}: {', '.join(report['inputs']['images'])}",
             f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"{report['machine']['threads']} threads for every backend",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
             *_eval_data_lines(report),
             f"- verdict: **{report['verdict']}**",
             *([f"- {fastest_line(report)}"] if fastest_line(report) else []), "",
             "| " + " | ".join(headers(report)) + " |", "|" + "---|" * len(headers(report))]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(report)]
    for a in report["artifacts"]:
        lines += ["", f"## {a['kind']} ({a['backend']}, {a['precision']})", ""]
        if a["error"]:
            lines.append(f"Build failed: {a['error']}")
            lines += _build_lines(a) if a["build"] else []
            continue
        lines.append(f"- artifact: `{a['path']}` ({_size(a['size_bytes'])})")
        if a.get("ratio_to_fp32") is not None:
            lines.append(f"- latency: {a['ratio_to_fp32']:.2f}x the fp32 ONNX graph, {a['ratio_to_eager']:.2f}x eager")
        for failure in a.get("failures", []):
            lines.append(f"- **failed**: {failure}")
        if a.get("required_by"):
            lines.append(f"- built because {a['required_by']} needs it")
        lines += _task_lines(a)
        lines += _build_lines(a)
        for note in a["notes"]:
            lines.append(f"- note: {note}")
        if a["parity"]["status"] == "not_run":
            lines.append(f"- parity: {a['parity']['reason']}")
        for key, checks in a["parity"].items():
            if key.startswith("vs_") and checks:
                for o in checks[0]["outputs"]:
                    m = o["metrics"]
                    lines.append(f"- against the {key[3:]} artifact, `{o['name']}`: SNR {_fmt(m['snr_db'], '.1f')} dB, "
                                 f"max err / scale {_fmt(m['max_abs_scaled'], '.2e')}, agreement {_fmt(m['agreement'], '.4f')}")
        for chk in a["parity"]["checks"]:
            lines += ["", f"Parity at {format_shape(chk['shape'])} over {chk['samples']} batch(es), "
                          f"{chk['precision']} limits {json.dumps({k: v for k, v in chk['tolerance'].items() if v is not None})}: "
                          f"**{'passed' if chk['passed'] else 'FAILED'}**", "",
                      "| output | task | max abs | mean abs | max err / scale | max rel | cosine | SNR dB | agreement |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for o in chk["outputs"]:
                mt = o["metrics"]
                lines.append(f"| {o['name']} | {o['task']} | {_fmt(mt['max_abs'], '.3g')} | {_fmt(mt['mean_abs'], '.3g')}"
                             f" | {_fmt(mt['max_abs_scaled'], '.3g')} | {_fmt(mt['max_rel'], '.3g')}"
                             f" | {_fmt(mt['cosine'], '.7f')} | {_fmt(mt['snr_db'], '.1f')} | {_fmt(mt['agreement'], '.5f')} |")
            for issue in chk["issues"] + [i for o in chk["outputs"] for i in o["issues"]]:
                lines.append(f"- {issue['kind']} ({issue['output']}): {issue['message']}")
        if a["latency"]:
            lt = a["latency"]
            lines += ["", f"Latency over {lt['runs']} runs ({lt['threads']} threads): median {lt['median_ms']:.2f} ms, "
                          f"p90 {lt['p90_ms']:.2f}, p99 {lt['p99_ms']:.2f}, mean {lt['mean_ms']:.2f} ± {lt['std_ms']:.2f} ms"]
    return "\n".join(lines) + "\n"


def print_table(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{report['model']['name']} {format_shape(report['model']['input_shape'])}"
                           f" · {report['machine']['threads']} threads · verdict: {report['verdict']}"))
    for h in headers(report):
        t.add_column(h, justify="right" if h not in ("artifact", "backend", "precision", "parity") else "left")
    for row in summary_rows(report):
        style = "red" if "FAILED" in row[4] else "yellow" if "not run" in row[4] else None
        t.add_row(*[escape(c) for c in row], style=style)
    console.print(t)
    if fastest_line(report):
        console.print(fastest_line(report), markup=False, highlight=False)
    for a in report["artifacts"]:
        kind = escape(a["kind"])
        record = record_of(a)
        for line in (record.terminal() if record is not None else []):
            console.print(line, markup=False, highlight=False)
        for note in a["notes"]:
            console.print(f"[yellow]note[/] {kind}: {escape(note)}")
        if a["parity"]["status"] == "not_run":
            console.print(f"[yellow]{kind}[/]: {escape(a['parity']['reason'])}")
        if a["error"]:
            console.print(f"[red]{kind}[/]: {escape(a['error'])}")
        if (a.get("task") or {}).get("issue"):
            console.print(f"[red]{kind}[/]: {escape(a['task']['issue'])}")
        for failure in a.get("failures", []):
            console.print(f"[red]{kind}[/]: {escape(failure)}")
        for chk in a["parity"]["checks"]:
            for issue in chk["issues"] + [i for o in chk["outputs"] for i in o["issues"]]:
                console.print(f"[red]{kind} @ {format_shape(chk['shape'])}[/] {escape(issue['output'])}: "
                              f"{escape(issue['message'])}")
