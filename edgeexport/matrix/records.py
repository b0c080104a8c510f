"""A finished cell as the matrix records it: the cell's own report's artifact, named ``MODEL/KIND``, with
its :class:`~edgeexport.report.Cell` (node, cache state, attempts, wall time, folders), written
atomically to ``OUTPUT/cells/MODEL/KIND.json`` as it finishes (what ``--resume`` reads back)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgeexport.errors import UserError
from edgeexport.matrix.entry import FileHash, UntrustedEntry, open_regular, plain_relative, read_regular, shown, walk
from edgeexport.matrix.plan import CellPlan
from edgeexport.report import ArtifactResult, Cell, artifact_result, report_from_dict
from edgeexport.util import atomic_path

MAX_RECORD_BYTES = 64 << 20


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


def cell_folder(c: CellPlan) -> str:
    """The cell's folder in the matrix's output, relative to it: ``cells/MODEL/KIND``."""
    return f"cells/{safe(c.model)}/{c.kind}"


def confined(output: Path, folder: Path) -> Path:
    """``folder`` (inside ``output``), once no part of the way from ``output`` to it is a symlink or a file:
    the matrix writes its cells only into folders of its own."""
    rel = folder.relative_to(output)
    at = output
    for part in rel.parts:
        at = at / part
        if at.is_symlink():
            raise UserError(f"{at} is a symlink; edgeexport writes the matrix's cells there only into folders "
                            "of its own (move it away)")
        if at.exists() and not at.is_dir():
            raise UserError(f"{at} is a file; edgeexport writes the matrix's cells into a folder there (move it away)")
    return folder


def owned_cell(folder: Path) -> bool:
    """Whether ``folder`` is a cell folder an earlier matrix run placed (what :func:`place` may replace): a real
    folder at ``OUTPUT/cells/MODEL/KIND`` beside its record ``KIND.json``, or holding its report."""
    if folder.is_symlink() or not folder.is_dir() or folder.parent.parent.name != "cells":
        return False
    record = folder.with_name(f"{folder.name}.json")
    if record.is_file() and not record.is_symlink():
        return True
    return any(f.name.endswith(".report.json") and f.is_file() and not f.is_symlink() for f in folder.iterdir())


def _copy_checked(src: Path, dst: Path, want: FileHash | None, rel: str) -> None:
    """Copy ``src`` to a new file ``dst`` (a copy, never a link), hashing what is copied; a file that is not
    what the entry's record says (``want``) is an :class:`UntrustedEntry`."""
    h, size = hashlib.sha256(), 0
    try:
        fi = open_regular(src)
    except (UntrustedEntry, OSError):  # a symlink (O_NOFOLLOW), a FIFO, gone
        raise UntrustedEntry(f"{shown(rel)} is not a regular file") from None
    with fi:
        with open(dst, "xb") as fo:
            for chunk in iter(lambda: fi.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
                fo.write(chunk)
    if want is not None and (want.sha256 != h.hexdigest() or want.size != size):
        raise UntrustedEntry(f"{shown(rel)} changed")


def place(entry: Path, workdir: str, dest: Path, output: Path, record=None) -> None:
    """The cell's files from its cache entry (``entry/files``) into the output folder ``dest``: **copies**
    (editing either never edits the other), its reports with their paths pointing at ``dest``. With the
    entry's file ``record``, every byte copied is checked against it as it is read, so what lands in ``dest``
    is what was verified; a file that differs, a symlink or another non-regular file is an
    :class:`UntrustedEntry` and ``dest`` is left as it was."""
    src = entry / "files"
    want = record.files if record is not None else None
    confined(output, dest.parent).mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, replaces=owned_cell) as tmp:
        tmp.mkdir()
        for rel in walk(src):
            key = f"files/{rel}"
            if want is not None and key not in want:
                raise UntrustedEntry(f"extra file {rel}")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if ".report." in rel and "/" not in rel:  # the cell's reports: their paths into this folder
                try:
                    data = read_regular(src / rel, MAX_RECORD_BYTES)
                except (UntrustedEntry, OSError):
                    raise UntrustedEntry(f"{rel} is not a regular file") from None
                if want is not None and FileHash(sha256=hashlib.sha256(data).hexdigest(), size=len(data)) != want[key]:
                    raise UntrustedEntry(f"{rel} changed")
                (tmp / rel).write_text(data.decode("utf-8").replace(workdir, str(dest)), encoding="utf-8")
                continue
            _copy_checked(src / rel, tmp / rel, want.get(key) if want is not None else None, key)
        if want is not None:
            missing = [k for k in want if k.startswith("files/") and not (tmp / k.removeprefix("files/")).is_file()]
            if missing:
                raise UntrustedEntry(f"{shown(missing[0])} missing")


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
    confined(output, p.parent).mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(rec.model_dump_json(indent=1))


def _bad(p: Path, why: str) -> UserError:
    return UserError(f"--resume: {p} is not a cell record this matrix wrote ({why}); remove it, or run without "
                     "--resume")


def _check_paths(p: Path, output: Path, c: CellPlan, rec: ArtifactResult) -> None:
    """Every path of the record's cell is a plain relative name inside the cell's own folder of ``output``."""
    cell, folder = rec.cell, cell_folder(c)
    if cell.folder != folder:
        raise _bad(p, f"its folder is {str(cell.folder)[:80]!r}, not {folder}")
    paths = {"report": cell.report, "bundle": cell.bundle, "verify report": (cell.verify or {}).get("report")}
    for what, v in paths.items():
        if v is None:
            continue
        if not isinstance(v, str) or not plain_relative(v) or not v.startswith(folder + "/"):
            raise _bad(p, f"its {what} {str(v)[:80]!r} is not a plain relative path inside {folder}")
        if not (output / v).resolve().is_relative_to((output / folder).resolve()):
            raise _bad(p, f"its {what} {v[:80]!r} leads out of {folder}")


def read_progress(output: Path, c: CellPlan) -> ArtifactResult | None:
    """The cell as an interrupted run left it, when its key is unchanged and it did not crash (None: build it
    again). A record that is not one this matrix wrote (malformed, another cell's, or naming a path outside its
    cell's folder) is a one-line :class:`UserError`."""
    p = output / "cells" / safe(c.model) / f"{c.kind}.json"
    confined(output, p.parent)
    if not p.exists() and not p.is_symlink():
        return None
    if p.is_symlink():
        raise _bad(p, "it is a symlink")
    try:
        data = read_regular(p, MAX_RECORD_BYTES)
    except UntrustedEntry as exc:
        raise _bad(p, exc.reason) from None
    except OSError as exc:
        raise _bad(p, exc.strerror or type(exc).__name__) from None
    try:
        rec = ArtifactResult.model_validate_json(data)
    except ValueError as exc:  # pydantic's ValidationError, or not JSON
        errors = getattr(exc, "errors", None)
        first = errors()[0] if callable(errors) and errors() else None
        why = f"{'.'.join(map(str, first['loc']))[:80]}: {first['msg'][:80]}" if first else type(exc).__name__
        raise _bad(p, why) from None
    if rec.cell is None:
        raise _bad(p, "it has no matrix cell")
    if (rec.name, rec.model, rec.kind) != (c.label, c.model, c.kind):
        raise _bad(p, f"it is cell {rec.name[:80]}'s, not {c.label}'s")
    if rec.cell.key != c.key or rec.status == "error" or not rec.cell.folder:
        return None  # another cell's key (its recipe or code changed) or a crash: built again
    _check_paths(p, output, c, rec)
    dest = output / rec.cell.folder
    if dest.is_symlink():
        raise _bad(p, f"{rec.cell.folder} is a symlink")
    if not dest.is_dir():
        return None
    return rec
