"""The Ray tasks, run on the cluster's nodes: build a cell (the normal pipeline for the cell's recipe) and
verify a cell's signed bundle on a node that has its runtime. Both return plain data: what ran, where,
at which attempt, and the report."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path

from edgeexport.bundle import verify_bundle
from edgeexport.errors import EdgeExportError
from edgeexport.pipeline import run
from edgeexport.recipe import Recipe
from edgeexport.targets import get_target
from edgeexport.util import one_line


def node_info() -> dict:
    info = {"hostname": socket.gethostname(), "node_id": None, "ip": None, "pid": os.getpid()}
    try:
        import ray

        ctx = ray.get_runtime_context()
        info["node_id"] = ctx.get_node_id()
        info["ip"] = ray.util.get_node_ip_address()
    except Exception:
        pass
    return info


def bump_attempt(attempts_dir: str, name: str) -> int:
    """Count this attempt (a byte appended to the cell's counter file) before the work starts."""
    try:
        folder = Path(attempts_dir)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "edgeexport-attempts" / Path(attempts_dir).name
        folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "ab") as fh:
        fh.write(b".")
        fh.flush()
        return fh.tell()


def count_attempts(attempts_dir: str, name: str) -> int | None:
    try:
        return (Path(attempts_dir) / name).stat().st_size
    except OSError:
        return None


def pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _regular_only(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """tarfile's "data" filter (no absolute paths, nothing outside the folder), and then only regular files
    and folders: a cell's files, a cache entry's and a bundle's hold no links, devices or FIFOs."""
    member = tarfile.data_filter(member, path)
    if not (member.isreg() or member.isdir()):
        raise ValueError(f"{member.name[:200]} is not a regular file or folder")
    return member


def unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter=_regular_only)


def task_tmp(spec: dict, prefix: str) -> Path:
    """A temporary folder for one task: inside the driver's run folder (``spec["tmp"]``, which the driver
    removes however the run ends) when this node sees it, else in this node's own temporary folder."""
    where = spec.get("tmp")
    if where and Path(where).is_dir() and not Path(where).is_symlink():
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=prefix))


def build_cell(spec: dict) -> dict:
    """A Ray task: the pipeline for one cell's recipe, on this node. Returns its report and its output
    folder (artifacts, reports, and a bundle when this node cannot run the artifact) as tar bytes."""
    attempt = bump_attempt(spec["attempts_dir"], spec["key"])
    t0 = time.perf_counter()
    out = task_tmp(spec, "edgeexport-cell-")
    logs: list[str] = []
    base = {"attempt": attempt, "node": node_info(), "workdir": str(out / "cell")}
    try:
        data = json.loads(json.dumps(spec["recipe"]))
        data["output"] = str(out / "cell")
        runnable = get_target(spec["target"]).run_availability()
        if not runnable.ok:  # verified elsewhere: from a parity bundle
            data["stages"]["bundle"] = {"artifacts": [spec["kind"]]}
        rep = run(Recipe.from_dict(data, source=spec["label"]), log=lambda m: logs.append(str(m)))
        return {**base, "ok": True, "report": rep.model_dump(mode="json"), "files": pack(out / "cell"),
                "runnable": runnable.ok, "run_reason": runnable.reason, "wall_s": round(time.perf_counter() - t0, 2),
                "log": logs[-40:]}
    except Exception as exc:  # bad input (weights not on this node, ...) or a crash: this cell's error only
        return {**base, "ok": False, "error": one_line(exc), "input_error": isinstance(exc, EdgeExportError),
                "wall_s": round(time.perf_counter() - t0, 2), "log": logs[-40:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def verify_cell(spec: dict, bundle: bytes) -> dict:
    """A Ray task on a node with the artifact's runtime: ``verify --trust-key`` of the signed bundle."""
    attempt = bump_attempt(spec["attempts_dir"], spec["key"] + ".verify")
    t0 = time.perf_counter()
    out = task_tmp(spec, "edgeexport-verify-")
    base = {"attempt": attempt, "node": node_info()}
    try:
        path = out / "bundle"
        unpack(bundle, path)
        rep = verify_bundle(path, threads=spec["threads"], runs=spec["runs"], warmup=spec["warmup"],
                            trust_keys=[bytes.fromhex(spec["trust_key"])])
        return {**base, "ok": True, "report": rep.model_dump(mode="json"), "workdir": str(path),
                "wall_s": round(time.perf_counter() - t0, 2)}
    except Exception as exc:
        return {**base, "ok": False, "error": one_line(exc), "wall_s": round(time.perf_counter() - t0, 2)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
