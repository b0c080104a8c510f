"""A finished cell as the matrix records it: the cell's own report's artifact, named ``MODEL/KIND``, with
its :class:`~edgeexport.report.Cell` (node, cache state, attempts, wall time, folders), written
atomically to ``OUTPUT/cells/MODEL/KIND.json`` as it finishes (what ``--resume`` reads back)."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from edgeexport.matrix.plan import CellPlan
from edgeexport.report import ArtifactResult, Cell, artifact_result, report_from_dict
from edgeexport.util import atomic_path


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def relocate(obj, old: str, new: str):
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, list):
        return [relocate(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: relocate(v, old, new) for k, v in obj.items()}
    return obj


def place(entry: Path, workdir: str, dest: Path) -> None:
    """The cell's files from its cache entry into the output: artifacts hard-linked (read-only; copied
    across file systems), its reports copied with their paths pointing at ``dest``."""
    src = entry / "files"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for f in src.rglob("*"):
            rel = f.relative_to(src)
            if f.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if ".report." in f.name and f.parent == src:
                (tmp / rel).write_text(f.read_text(encoding="utf-8").replace(workdir, str(dest)), encoding="utf-8")
                continue
            try:
                os.link(f, tmp / rel)
            except OSError:
                shutil.copy2(f, tmp / rel)


def _failed(c: CellPlan, cell: Cell, reason: str | None) -> ArtifactResult:
    return artifact_result(kind=c.kind, target=c.target, backend=c.backend, precision=c.precision, name=c.label,
                           model=c.model, checked="error", reason=reason, built=False, cell=cell)


def cell_record(c: CellPlan, result: dict, dest: Path, output: Path, cache_state: str) -> ArtifactResult:
    """The finished cell from its task's result (a cache entry's, a fresh run's, or a failure)."""
    cell = Cell(key=c.key, cache=cache_state, node=result.get("node"), attempts=result.get("attempt"),
                wall_s=result.get("wall_s"))
    if not result.get("ok"):
        return _failed(c, cell, result.get("error"))
    rep = report_from_dict(relocate(result["report"], result["workdir"], str(dest)), c.label)
    name = (rep.recipe or {}).get("name") or rep.model.name
    cell = cell.model_copy(update={
        "folder": str(dest.relative_to(output)), "report": str((dest / f"{name}.report.json").relative_to(output)),
        "eager_ms": rep.eager.latency.median_ms if rep.eager and rep.eager.latency else None,
        "shape": rep.model.input_shape, "required": [k for k in rep.artifacts if k != c.kind]})
    art = rep.artifacts.get(c.kind)
    if art is None:
        return _failed(c, cell, f"the pipeline built no {c.kind} artifact")
    bundle = art.bundle_path()
    if bundle:
        cell.bundle = str(Path(bundle).relative_to(output)) if Path(bundle).is_relative_to(output) else bundle
    # the views and the operator profile stay in the cell's own report
    return art.model_copy(update={"name": c.label, "model": c.model, "views": {}, "profile": None, "cell": cell})


def needs_verify(rec: ArtifactResult) -> bool:
    """Built where its runtime is missing, with a bundle a node that has the runtime can verify."""
    return rec.status == "not_run" and rec.built and rec.cell is not None and rec.cell.bundle is not None \
        and rec.cell.verify is None


def apply_verify(rec: ArtifactResult, verify: dict, output: Path) -> ArtifactResult:
    """The cell with a verification (run on another node from the signed bundle) merged in."""
    info = {k: verify.get(k) for k in ("node", "attempt", "wall_s", "error")}
    if not verify.get("ok"):
        return rec.model_copy(update={"status": "error", "reason": f"verification failed: {verify.get('error')}",
                                      "cell": rec.cell.model_copy(update={"verify": info})})
    rep = report_from_dict(verify["report"], f"{rec.name} (verify)")
    a = next(iter(rep.artifacts.values()))
    info.update(signature=rep.signature.model_dump() if rep.signature else None,
                report=str(Path(rec.cell.folder) / "verify.report.json"))
    host = (verify.get("node") or {}).get("hostname")
    rep.write(output / rec.cell.folder, "verify")
    signed = f"{rep.signature.status} ({rep.signature.key_fingerprint})" if rep.signature else "unsigned"
    return rec.model_copy(update={
        "status": a.status, "reason": a.reason, "parity": a.parity, "latency": a.latency, "ratio_to_eager": None,
        "notes": rec.notes + [f"verified on node {host} from the bundle, {signed}; latency measured there"],
        "cell": rec.cell.model_copy(update={"verify": info})})


def write_progress(output: Path, rec: ArtifactResult) -> None:
    p = output / "cells" / safe(rec.model) / f"{rec.kind}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(rec.model_dump_json(indent=1))


def read_progress(output: Path, c: CellPlan) -> ArtifactResult | None:
    """The cell as an interrupted run left it, when its key is unchanged and it did not crash."""
    p = output / "cells" / safe(c.model) / f"{c.kind}.json"
    try:
        rec = ArtifactResult.model_validate_json(p.read_text())
    except (OSError, ValueError):
        return None
    if rec.cell is None or rec.cell.key != c.key or rec.status == "error" or not rec.cell.folder \
            or not (output / rec.cell.folder).is_dir():
        return None
    return rec
