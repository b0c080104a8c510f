"""The matrix's report: one :class:`~edgeexport.report.Report` (``kind: matrix``) whose artifacts are the
cells (``MODEL/KIND``), written as ``OUTPUT/matrix.report.{json,md,html}``, and a report per model of
its cells (``OUTPUT/models/MODEL.report.*``) that the matrix page's rows link to."""
from __future__ import annotations

import os
from pathlib import Path

from edgeexport.matrix.records import safe
from edgeexport.report import MatrixInfo, Report, ReportBuilder, load_report
from edgeexport.report.html import render_matrix
from edgeexport.report.text import node_name
from edgeexport.util import atomic_path, one_line


def rebuilt_note(a) -> str | None:
    """The note of a cell built again because its cache entry failed its file check (None: it did not)."""
    return next((n for n in a.notes if n.startswith("rebuilt: cache entry")), None)


def matrix_report(run, kinds: list[str], nodes, offered, use_cache: bool, started: float,
                  command: str | None) -> Report:
    builder = ReportBuilder("matrix", threads=run.threads, command=command, started=started)
    for c in run.cells:
        builder.add(c.record)
    recs = [c.record for c in run.cells]
    count = lambda state: sum(r.cell.cache == state for r in recs)  # noqa: E731
    t = run.threads
    return builder.build(matrix=MatrixInfo(
        threads=t, cells_s=round(run.ran_s, 1), signing_key=run.fingerprint,
        latency_note=f"every latency is at {t} thread{'s' if t > 1 else ''} per cell (each cell is a Ray task with "
                     f"{t} CPU{'s' if t > 1 else ''}); ratios are against eager PyTorch timed in the same cell",
        cluster={"address": run.cluster.address, "resources": offered, "nodes": nodes},
        cache={"dir": str(run.store.dir), "used": use_cache, "hits": count("hit"), "resumed": count("resumed"),
               "built": count("miss")},
        models=list(dict.fromkeys(c.model for c in run.cells)), kinds=list(kinds)))


def model_reports(matrix: Report, output: Path) -> dict[str, Report]:
    """Per model, one report of its cells (the artifact of each cell with the views its own report kept,
    in the envelope of the first cell that ran)."""
    out: dict[str, Report] = {}
    for model in matrix.matrix.models:
        cells = [a for a in matrix.artifacts.values() if a.model == model]
        own = {a.kind: load_report(output / a.cell.report) for a in cells
               if a.cell.report and (output / a.cell.report).is_file()}
        builder = ReportBuilder("run", command=matrix.command)
        views: dict = {}
        for a in cells:
            full = own[a.kind].artifacts.get(a.kind) if a.kind in own else None
            if full is not None:
                for k, v in own[a.kind].views.items():
                    views[k] = {**v, **views.get(k, {})} if isinstance(v, dict) else views.get(k, v)
            c = a.cell
            builder.add(a.model_copy(update={
                "name": a.kind, "model": None, "cell": None,
                "views": full.views if full else {}, "profile": full.profile if full else None,
                "notes": a.notes + [f"matrix cell: built on {node_name(c.node)}, cache {c.cache}, "
                                    f"attempts {c.attempts or '–'}, {c.wall_s or 0:.0f} s"]}))
        base = next(iter(own.values()), None)
        out[model] = builder.build_like(base, views=views) if base else builder.build()
    return out


def write_matrix_reports(matrix: Report, output: Path, html: bool = True, log=None) -> None:
    """``matrix.report.json``, ``.md`` and ``.html`` (with ``models/MODEL.report.*`` the rows link to)."""
    matrix.write(output, "matrix", html=False)
    if not html:
        return
    try:
        write_matrix_html(matrix, output, log)
    except Exception as exc:  # a page that cannot be rendered costs a warning, never the matrix
        if os.environ.get("EDGEEXPORT_DEBUG"):
            raise
        (log or print)(f"no HTML matrix page: {one_line(exc)}")


def write_matrix_html(matrix: Report, output: Path, log=None) -> Path:
    """``OUTPUT/matrix.report.html`` and the ``models/MODEL.report.*`` pages its rows link to (from the
    matrix report and the cells' reports in OUTPUT alone: ``edgeexport report`` re-renders it)."""
    output = Path(output)
    mx = matrix.matrix
    reports = model_reports(matrix, output)
    links = {}
    for model, rep in reports.items():
        if rep.model is None:  # none of its cells produced a report: a row without a page
            continue
        rep.write(output / "models", safe(model), log=log)
        links[model] = f"models/{safe(model)}.report.html"
    ran_on = [n for a in matrix.artifacts.values() for n in (a.cell.node, (a.cell.verify or {}).get("node")) if n]
    nodes = {node_name(n) for n in ran_on}
    one_node = len(nodes) == 1  # then the node is said once, not in every cell
    intro = (f"{mx.latency_note.capitalize()}. Wall time {matrix.elapsed_s:.0f} s (cells {mx.cells_s:.0f} s "
             f"together); cache {mx.cache['hits']} hit(s), {mx.cache['resumed']} resumed, {mx.cache['built']} built."
             + (f" Every cell ran on {next(iter(nodes))}." if one_node else ""))
    cells = {}
    for a in matrix.artifacts.values():
        c, v = a.cell, a.cell.verify or {}
        wall = "" if c.wall_s is None else f" · {c.wall_s:.0f} s"  # the build's time, also on a hit
        where = [] if one_node else [f"built on {node_name(c.node)}"] + (
            [f"verified on {node_name(v.get('node'))}"] if v.get("node") else [])
        rebuilt = rebuilt_note(a)
        state = "rebuilt" if rebuilt else c.cache
        cells[(a.model, a.kind)] = {
            "lines": where + [f"cache {state}" + (f" · {c.attempts} attempts" if (c.attempts or 1) > 1 else "") + wall],
            "title": "; ".join(t for t in (a.why() if not a.passed else None, rebuilt) if t) or None,
            "text": f"no node can run {a.backend}" if a.status == "not_run" and (a.reason or "").startswith(
                "no node can run") else None}
    page = render_matrix(reports, links, title=f"matrix of {len(mx.models)} model(s) x {len(mx.kinds)} kind(s)",
                         intro=intro, cells=cells, kinds=list(mx.kinds))
    with atomic_path(output / "matrix.report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return output / "matrix.report.html"
