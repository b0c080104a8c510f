"""A report as text: the Markdown document and the terminal table (rich). A check that could not execute
on this machine reads "not run here", never "passed"."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from edgeexport.report.status import STATUS_TEXT
from edgeexport.util import fmt, format_shape

if TYPE_CHECKING:  # pragma: no cover
    from edgeexport.report.schema import ArtifactResult, Report

HEADERS = ["artifact", "backend", "precision", "size", "parity", "max err / scale", "SNR dB", "agreement",
           "median ms", "x eager", "x fp32", "measured on"]
TASK_LABELS = {"miou": "mIoU", "top1": "top-1"}


def size_text(n) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def task_label(report: Report) -> str | None:
    """'mIoU' / 'top-1' when the run had labeled data."""
    task = report.eager.task if report.eager else None
    return TASK_LABELS[task.metric] if task else None


def headers(report: Report) -> list[str]:
    label = task_label(report)
    return HEADERS[:8] + ([label, "drop pts"] if label else []) + HEADERS[8:]


def _task_cells(report: Report, task, eager: bool = False) -> list[str]:
    if not task_label(report):
        return []
    if task is None:
        return ["–", "–"]
    value = fmt(100 * task.value, ".2f") if task.value is not None else "–"
    return [value, "–" if eager else fmt(task.drop_points, "+.2f")]


def status_text(a: ArtifactResult) -> str:
    text = STATUS_TEXT.get(a.status, a.status)
    return text + (f" ({len(a.parity)} shapes)" if len(a.parity) > 1 else "")


def summary_rows(report: Report) -> list[list[str]]:
    """One row per artifact (plus eager): backend, precision, size, parity, errors, task metric, latency, ratio."""
    e = report.eager
    lat = e.latency if e else None
    rows = [[report.label, e.backend if e else "–", "fp32", "–", "reference", "–", "–", "–",
             *_task_cells(report, e.task if e else None, eager=True),
             fmt(lat.median_ms, ".1f") if lat else "–", "1.00" if lat else "–", "–", report.machine.short()]]
    for a in report.artifacts.values():
        rows.append([
            a.name, a.backend, a.precision, size_text(a.size_bytes), status_text(a),
            fmt(a.worst("max_abs_scaled"), ".2e"), fmt(a.worst("snr_db"), ".1f"), fmt(a.worst("agreement"), ".4f"),
            *_task_cells(report, a.task), fmt(a.latency.median_ms, ".1f") if a.latency else "–",
            fmt(a.ratio_to_eager, ".2f"), fmt(a.ratio_to_fp32, ".2f"),
            report.machine.short() if a.latency or a.parity else "not run here",
        ])
    return rows


def fastest_line(report: Report) -> str | None:
    f = report.fastest(passing=True)
    if f is None:
        return None
    drop = f" ({f.task.drop_points:+.2f} points of the task metric)" if f.task and f.task.drop_points is not None else ""
    ratio = f", {f.ratio_to_eager:.2f}x eager" if f.ratio_to_eager else ""
    return (f"fastest artifact that meets its tolerances: {f.name} ({f.backend}, {f.precision}), "
            f"{f.latency.median_ms:.1f} ms{ratio}{drop}")


def issue_lines(a: ArtifactResult) -> list[tuple[str, str]]:
    """(where, message) of every parity issue of an artifact."""
    return [(format_shape(chk.shape), f"{i.output}: {i.message}") for chk in a.parity for i in chk.all_issues()]


def build_lines(a: ArtifactResult) -> list[str]:
    record = a.record()
    if record is not None:
        return record.markdown()
    return [f"- {k}: {json.dumps(v, default=str)}" for k, v in a.build.items()]


# ---------------------------------------------------------------- Markdown


def markdown(report: Report) -> str:
    return matrix_markdown(report) if report.kind == "matrix" else _run_markdown(report)


def _eval_data_lines(report: Report) -> list[str]:
    ed, task = report.eval_data, report.eager.task if report.eager else None
    if not ed or not task:
        return []
    where = ed.get("path") or ed.get("spec")
    line = (f"- labeled data: {where} ({ed['task']}, {ed['images_used']} images at {format_shape(ed['input_shape'])},"
            f" output `{ed['output']}`); eager {task_label(report)} {100 * task.value:.2f}")
    if task.task == "segmentation":
        line += f", pixel accuracy {100 * task.pixel_accuracy:.2f}"
    else:
        line += f", top-5 {100 * task.top5:.2f}"
    return [line]


def _task_lines(a: ArtifactResult) -> list[str]:
    t = a.task
    if not t:
        return []
    line = f"- task: {TASK_LABELS[t.metric]} {100 * t.value:.2f} ({fmt(t.drop_points, '+.2f')} points against eager"
    line += f"; {t.issue})" if t.issue else ")"
    out = [line]
    if t.task == "segmentation" and t.per_class_iou:
        names = t.classes or [str(i) for i in range(len(t.per_class_iou))]
        out.append("- per-class IoU: " + ", ".join(f"{n} {fmt(v, '.3f')}" for n, v in zip(names, t.per_class_iou)))
    return out


def _run_markdown(report: Report) -> str:
    m, mach = report.model, report.machine
    params = f", {m.params:,} parameters" if m.params is not None else ""
    lines = [f"# edgeexport report: {m.name}", "",
             f"- model: `{m.origin}`, weights: {m.weights}{params}",
             f"- input: {format_shape(m.input_shape)} (dynamic: {m.dynamic}), outputs: "
             + ", ".join(f"`{o}` ({m.output_tasks.get(o, '?')})" for o in m.outputs)]
    if report.inputs:
        lines.append(f"- inputs: {report.inputs.source}: {', '.join(report.inputs.images)}")
    lines += [f"- machine: {mach.cpu}, {mach.cores} cores, {mach.threads} threads for every backend",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items() if v),
              *_eval_data_lines(report)]
    if report.signature:
        lines.append(f"- bundle signature: {report.signature.status}"
                     + (f" (key {report.signature.key_fingerprint})" if report.signature.key_fingerprint else ""))
    lines += [f"- verdict: **{report.verdict}**", *([f"- {fastest_line(report)}"] if fastest_line(report) else []),
              "", "| " + " | ".join(headers(report)) + " |", "|" + "---|" * len(headers(report))]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(report)]
    for a in report.artifacts.values():
        lines += ["", f"## {a.name} ({a.backend}, {a.precision})", ""]
        if a.error:
            lines.append(f"Build failed: {a.error}")
            lines += build_lines(a) if a.build else []
            continue
        lines += _artifact_markdown(a)
    return "\n".join(lines) + "\n"


def _artifact_markdown(a: ArtifactResult) -> list[str]:
    lines = []
    if a.path:
        lines.append(f"- artifact: `{a.path}` ({size_text(a.size_bytes)})")
    if a.ratio_to_fp32 is not None:
        lines.append(f"- latency: {a.ratio_to_fp32:.2f}x its fp32 graph, {a.ratio_to_eager:.2f}x eager")
    lines += [f"- **failed**: {f}" for f in a.failures]
    if a.required_by:
        lines.append(f"- built because {a.required_by} needs it")
    lines += _task_lines(a) + build_lines(a) + [f"- note: {n}" for n in a.notes]
    lines += [f"- {line}" for line in repair_lines(a)] + repair_table_markdown(a)
    lines += [f"- {line}" for line in layer_lines(a)] + layer_table_markdown(a)
    if a.status == "not_run":
        lines.append(f"- parity: {a.reason}")
    for other, checks in a.compared.items():
        for o in checks[0].outputs if checks else []:
            mt = o.metrics
            lines.append(f"- against the {other} artifact, `{o.name}`: SNR {fmt(mt.snr_db, '.1f')} dB, "
                         f"max err / scale {fmt(mt.max_abs_scaled, '.2e')}, agreement {fmt(mt.agreement, '.4f')}")
    for chk in a.parity:
        lines += ["", f"Parity at {format_shape(chk.shape)} over {chk.samples} batch(es), {chk.precision} limits "
                      f"{json.dumps(chk.tolerance.set_limits())}: **{'passed' if chk.passed else 'FAILED'}**", "",
                  "| output | task | max abs | mean abs | max err / scale | max rel | cosine | SNR dB | agreement |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for o in chk.outputs:
            mt = o.metrics
            lines.append(f"| {o.name} | {o.task} | {fmt(mt.max_abs, '.3g')} | {fmt(mt.mean_abs, '.3g')}"
                         f" | {fmt(mt.max_abs_scaled, '.3g')} | {fmt(mt.max_rel, '.3g')}"
                         f" | {fmt(mt.cosine, '.7f')} | {fmt(mt.snr_db, '.1f')} | {fmt(mt.agreement, '.5f')} |")
        lines += [f"- {i.kind} ({i.output}): {i.message}" for i in chk.all_issues()]
    if a.latency:
        lt = a.latency
        lines += ["", f"Latency over {lt.runs} runs ({lt.threads} threads): median {lt.median_ms:.2f} ms, "
                      f"p90 {lt.p90_ms:.2f}, p99 {lt.p99_ms:.2f}, mean {lt.mean_ms:.2f} ± {lt.std_ms:.2f} ms"]
    return lines


# ---------------------------------------------------------------- the terminal


def summary_table(report: Report):
    """The summary as a rich Table (the matrix grid for a matrix report)."""
    from rich.markup import escape
    from rich.table import Table

    if report.kind == "matrix":
        return matrix_table(report)
    t = Table(title=escape(f"{report.model.name} {format_shape(report.model.input_shape)}"
                           f" · {report.machine.threads} threads · verdict: {report.verdict}"))
    for h in headers(report):
        t.add_column(h, justify="right" if h not in ("artifact", "backend", "precision", "parity") else "left")
    for row in summary_rows(report):
        style = "red" if "FAILED" in row[4] else "yellow" if "not run" in row[4] else None
        t.add_row(*[escape(c) for c in row], style=style)
    return t


def print_report(report: Report, console) -> None:
    """The table, then what the reader must know about each artifact (notes, reasons, errors, issues)."""
    from rich.markup import escape

    console.print(summary_table(report))
    if report.kind == "matrix":
        _print_matrix_notes(report, console)
        return
    if fastest_line(report):
        console.print(fastest_line(report), markup=False, highlight=False)
    for a in report.artifacts.values():
        kind = escape(a.name)
        record = a.record()
        for line in (record.terminal() if record is not None else []):
            console.print(line, markup=False, highlight=False)
        for note in a.notes:
            console.print(f"[yellow]note[/] {kind}: {escape(note)}")
        if a.status == "not_run":
            console.print(f"[yellow]{kind}[/]: {escape(a.reason or '')}")
        if a.error:
            console.print(f"[red]{kind}[/]: {escape(a.error)}")
        if a.task and a.task.issue:
            console.print(f"[red]{kind}[/]: {escape(a.task.issue)}")
        for failure in a.failures:
            console.print(f"[red]{kind}[/]: {escape(failure)}")
        for where, message in issue_lines(a):
            console.print(f"[red]{kind} @ {where}[/] {escape(message)}")
        for line in repair_lines(a):
            console.print(f"[{'cyan' if a.repair.met else 'red'}]{kind}[/] {escape(line)}")
        for line in layer_lines(a):
            console.print(f"[cyan]{kind}[/] {escape(line)}")


# ---------------------------------------------------------------- the matrix


def node_name(node: dict | None) -> str:
    if not node:
        return "–"
    return node.get("hostname") or (node.get("node_id") or "?")[:8]


def cell_text(a: ArtifactResult) -> str:
    if a.status == "not_run" and (a.reason or "").startswith("no node can run"):
        return f"no node can run {a.backend}"
    text = STATUS_TEXT.get(a.status, a.status).replace("not run here", "not run")
    return text + (f" {a.ratio_to_eager:.2f}x" if a.ratio_to_eager is not None else "")


def _grid(report: Report) -> dict[tuple[str, str], ArtifactResult]:
    return {(a.model, a.kind): a for a in report.artifacts.values()}


def matrix_markdown(report: Report) -> str:
    mx, cells = report.matrix, _grid(report)
    shapes = {a.model: a.cell.shape for a in report.artifacts.values() if a.cell and a.cell.shape}
    nodes = mx.cluster.get("nodes") or []
    c = mx.cache
    cpus = lambda n: int((n.get("resources") or {}).get("CPU", 0))  # noqa: E731
    where = (f"{len(nodes)} node(s): " + ", ".join(f"{n.get('hostname')} {cpus(n)} CPUs" for n in nodes) if nodes
             else "not started: every cell came from the cache or could not run")
    lines = [f"# edgeexport matrix: {len(mx.models)} model(s) x {len(mx.kinds)} artifact kind(s)", "",
             f"- cluster: {mx.cluster.get('address')} ({where})",
             f"- wall time: {report.elapsed_s:.1f} s; the cells run here took {mx.cells_s:.1f} s together",
             f"- cache: {c['dir']}: {c['hits']} hit(s), {c['resumed']} resumed, {c['built']} built",
             f"- latencies: {mx.latency_note}",
             f"- bundles shipped to other nodes are signed by Ed25519 key {mx.signing_key}",
             f"- verdict: **{report.verdict}**" + (f" (failed: {', '.join(report.failed)})" if report.failed else ""),
             "", "| model | input | " + " | ".join(mx.kinds) + " |", "|---|---|" + "---|" * len(mx.kinds)]
    for model in mx.models:
        lines.append(f"| {model} | {format_shape(shapes[model]) if model in shapes else '–'} | "
                     + " | ".join(cell_text(cells[(model, k)]) for k in mx.kinds) + " |")
    lines += ["", "## Cells", "",
              "| model | artifact | verdict | built on | verified on | cache | attempts | wall s | median ms | x eager "
              "| x fp32 | reason |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in report.artifacts.values():
        cell = a.cell
        v = cell.verify or {}
        lat = a.latency.median_ms if a.latency else None
        lines.append(f"| {a.model} | {a.kind} | {STATUS_TEXT.get(a.status, a.status)} | {node_name(cell.node)} | "
                     f"{node_name(v.get('node'))} | {_cache_state(a)} | {cell.attempts or '–'} | {fmt(cell.wall_s, '.1f')} | "
                     f"{fmt(lat, '.2f')} | {fmt(a.ratio_to_eager, '.2f')} | {fmt(a.ratio_to_fp32, '.2f')} | "
                     f"{(a.why() or '').replace('|', '/') if not a.passed else ''} |")
    lines += ["", "Each cell's own report: `cells/MODEL/KIND/`; a model's cells in one report: "
                  "`models/MODEL.report.html`.", ""]
    return "\n".join(lines)


def matrix_table(report: Report):
    from rich.markup import escape
    from rich.table import Table

    mx, cells = report.matrix, _grid(report)
    c = mx.cache
    t = Table(title=escape(f"matrix · {mx.threads} thread(s) per cell · {report.elapsed_s:.0f} s · cache "
                           f"{c['hits']} hit(s), {c['resumed']} resumed, {c['built']} built · "
                           f"verdict: {report.verdict}"))
    t.add_column("model")
    for k in mx.kinds:
        t.add_column(k)
    for model in mx.models:
        t.add_row(escape(model), *[escape(cell_text(cells[(model, k)])) for k in mx.kinds])
    return t


def _print_matrix_notes(report: Report, console) -> None:
    from rich.markup import escape

    for a in report.artifacts.values():
        extra = []
        if (a.cell.attempts or 1) > 1:
            extra.append(f"{a.cell.attempts} attempts")
        if not a.passed and a.why():
            extra.append(a.why())
        if extra:
            style = "red" if a.failing else "yellow"
            console.print(f"[{style}]{escape(a.name)}[/]: {escape('; '.join(extra))}")


def layer_lines(a: ArtifactResult, rows: int = 8) -> list[str]:
    """What the per-layer diff found, in lines (Markdown and the terminal)."""
    d = a.layers
    if d is None:
        return []
    if not d.layers:
        return [f"per-layer diff: {d.note or 'no layer could be paired with a module'}"]
    first = d.record(d.first_divergent) if d.first_divergent else None
    head = (f"first divergent layer: {first.module} ({first.cls}, {first.op}): SNR {first.snr_db:.1f} dB, below "
            f"{d.threshold_db:g}" if first else f"no layer below {d.threshold_db:g} dB SNR")
    lines = [f"per-layer diff on {len(d.layers)} of {d.eager_modules} modules"
             f"{f' in {d.seconds:.1f} s' if d.seconds is not None else ''}: {head}"]
    if d.worst:
        lines.append("worst layers: " + ", ".join(f"{m} ({d.record(m).snr_db:.1f} dB)" for m in d.worst[:rows]))
    return lines


def layer_table_markdown(a: ArtifactResult, around: int = 6) -> list[str]:
    """The records around the first divergent layer (or the worst ones), as a Markdown table."""
    d = a.layers
    if d is None or not d.layers:
        return []
    if d.first_divergent:
        i = next(k for k, r in enumerate(d.layers) if r.module == d.first_divergent)
        picked = d.layers[max(0, i - 2):i + around]
    else:
        picked = sorted(d.layers, key=lambda r: r.snr_db)[:around]
    lines = ["", "| depth | module | class | runtime op | shape | SNR dB | max err / scale | cosine | fused with |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.depth} | {r.module} | {r.cls} | {r.op} | {format_shape(r.shape)} | {r.snr_db:.1f} | "
              f"{r.max_abs_scaled:.2e} | {r.cosine:.6f} | {', '.join(r.fused_with)} |" for r in picked]
    return lines


def metrics_text(m: dict) -> str:
    parts = []
    if m.get("task_drop") is not None:
        parts.append(f"task drop {m['task_drop']:+.2f} pts")
    if m.get("snr_db") is not None:
        parts.append(f"SNR {m['snr_db']:.2f} dB")
    if m.get("agreement") is not None:
        parts.append(f"agreement {m['agreement']:.4f}")
    return ", ".join(parts) or "not measured"


def repair_lines(a: ArtifactResult) -> list[str]:
    """What an accuracy budget kept in float, and the latency it cost (Markdown and the terminal)."""
    r = a.repair
    if r is None:
        return []
    budget = ", ".join(f"{k}={v:g}" for k, v in r.budget.items())
    kept = ", ".join(r.float_modules) if r.float_modules else "nothing"
    line = (f"accuracy budget {budget} {'met' if r.met else 'NOT met'} after {len(r.steps)} measured build(s)"
            f"{f' in {r.seconds:.0f} s' if r.seconds is not None else ''}; kept in float: {kept}")
    if r.cost is not None:
        line += f"; latency {r.repaired_ms:.2f} ms against {r.int8_ms:.2f} ms all-int8 ({r.cost:.2f}x)"
    return [line]


def repair_table_markdown(a: ArtifactResult) -> list[str]:
    r = a.repair
    if r is None or len(r.steps) < 2:
        return []
    lines = ["", f"Float-set search ({r.search}; ranked on {r.ranked_on or 'n/a'}):", "",
             "| step | change | why | measured | budget |", "|---|---|---|---|---|"]
    for i, s in enumerate(r.steps):
        change = s.change + (f" ({', '.join(s.float_modules)} in float)" if s.float_modules and i == 0 else "")
        lines.append(f"| {i} | {change} | {s.why or ''} | {s.error or metrics_text(s.metrics)} | "
                     f"{'met' if s.met else 'missed'} |")
    return lines


def _cache_state(a) -> str:
    """A cell's cache state in the table: "rebuilt" when its entry failed the file check (the note says why)."""
    rebuilt = next((n for n in a.notes if n.startswith("rebuilt: cache entry")), None)
    return f"rebuilt ({rebuilt.split('(', 1)[-1].rstrip(')')[:80].replace('|', '/')})" if rebuilt else a.cell.cache
