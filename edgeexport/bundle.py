"""Parity bundles: verify an artifact on the machine that will run it.

``write_bundle`` (on the build host) puts in one folder: the artifact, the input tensors
(``inputs.npz``), the reference outputs computed by eager PyTorch for exactly those inputs
(``reference.npz``), the tolerances and a manifest (versions, SHA-256 hashes, shapes, names).

``verify_bundle`` (on the target: a Mac, a Jetson, a phone-class board) runs the artifact
with the runtime installed there and writes the same parity and latency report. It imports
neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from edgeexport import __version__
from edgeexport.errors import UserError
from edgeexport.util import atomic_path, file_size

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_bundle(out: Path, *, artifact: Path, backend: str, precision: str, kind: str, input_name: str,
                 inputs: list[np.ndarray], references: list[dict[str, np.ndarray]], tasks: dict[str, str],
                 tolerance: dict, model: dict, versions: dict, build_latency_ms: float | None = None) -> dict:
    """Write the bundle folder ``out`` atomically; return its manifest."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UserError(f"artifact {artifact} does not exist")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        dest = tmp / artifact.name
        if artifact.is_dir():
            shutil.copytree(artifact, dest)
        else:
            shutil.copy2(artifact, dest)
        np.savez_compressed(tmp / "inputs.npz", **{f"{i:03d}": x for i, x in enumerate(inputs)})
        np.savez_compressed(tmp / "reference.npz", **{f"{i:03d}/{k}": v for i, r in enumerate(references)
                                                      for k, v in r.items()})
        manifest = {
            "format": FORMAT_VERSION, "edgeexport": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifact": {"file": artifact.name, "kind": kind, "backend": backend, "precision": precision,
                         "sha256": sha256(dest), "size_bytes": file_size(dest)},
            "input_name": input_name, "input_shapes": [list(x.shape) for x in inputs],
            "outputs": {k: list(v.shape) for k, v in references[0].items()}, "tasks": tasks,
            "tolerance": tolerance, "model": model, "build_host_versions": versions,
            "build_host_latency_ms": build_latency_ms,
            "hashes": {"inputs.npz": sha256(tmp / "inputs.npz"), "reference.npz": sha256(tmp / "reference.npz")},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_bundle(path: Path) -> tuple[dict, list[np.ndarray], list[dict[str, np.ndarray]]]:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a parity bundle (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: bundle format {manifest.get('format')} is not {FORMAT_VERSION}")
    for name, digest in manifest["hashes"].items():
        if sha256(path / name) != digest:
            raise UserError(f"{path / name} does not match its hash in the manifest (corrupt or edited)")
    art = path / manifest["artifact"]["file"]
    if not art.exists() or sha256(art) != manifest["artifact"]["sha256"]:
        raise UserError(f"{art} is missing or does not match its hash in the manifest")
    with np.load(path / "inputs.npz") as z:
        inputs = [z[k] for k in sorted(z.files)]
    refs: list[dict[str, np.ndarray]] = [{} for _ in inputs]
    with np.load(path / "reference.npz") as z:
        for key in z.files:
            i, name = key.split("/", 1)
            refs[int(i)][name] = z[key]
    return manifest, inputs, refs


def make_runner(manifest: dict, path: Path, threads: int | None):
    from edgeexport.runners import runner_class

    backend = manifest["artifact"]["backend"]
    cls = runner_class(backend)
    art = path / manifest["artifact"]["file"]
    if backend == "executorch":
        return cls(art, threads=threads, input_names=[manifest["input_name"]], output_names=list(manifest["outputs"]))
    return cls(art, threads=threads)


def verify_bundle(path: Path, threads: int | None = None, runs: int = 30, warmup: int = 5) -> dict:
    """Run a bundle's artifact here; return (and write into the bundle) a parity + latency report."""
    from edgeexport.bench import benchmark
    from edgeexport.parity import ParityCheck, Tolerance
    from edgeexport.report import machine_info, versions, write_reports
    from edgeexport.util import default_threads

    path = Path(path)
    manifest, inputs, refs = load_bundle(path)
    threads = threads or default_threads()
    runner = make_runner(manifest, path, threads)
    art = manifest["artifact"]
    entry = {"kind": art["kind"], "backend": art["backend"], "precision": art["precision"],
             "path": str(path / art["file"]), "size_bytes": art["size_bytes"], "dynamic": "none",
             "build": {"bundle": str(path), "built_with": manifest["build_host_versions"]},
             "error": None, "notes": [], "failures": [], "latency": None, "ratio_to_eager": None}
    ok, reason = runner.availability()
    tol = Tolerance(**manifest["tolerance"])
    if not ok:
        entry["parity"] = {"status": "not_run", "reason": f"not run on this machine: {reason}", "checks": []}
    else:
        t0 = time.perf_counter()
        with runner:
            check = ParityCheck(manifest["input_shapes"][0], art["precision"], tol, manifest["tasks"])
            for x, ref in zip(inputs, refs):
                check.add(ref, runner.infer({manifest["input_name"]: x}))
            res = check.result()
            lat = benchmark(runner, {manifest["input_name"]: inputs[0]}, warmup=warmup, runs=runs, budget_s=30)
        entry["parity"] = {"status": "passed" if res.passed else "failed", "reason": None, "checks": [res.to_dict()]}
        entry["latency"] = lat.to_dict()
        entry["build"]["verify_s"] = round(time.perf_counter() - t0, 1)
        if manifest.get("build_host_latency_ms"):
            entry["build"]["build_host_latency_ms"] = manifest["build_host_latency_ms"]
    model = dict(manifest["model"])
    model["origin"] = f"bundle:{model.get('origin', '?')}"
    report = {
        "edgeexport": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads), "versions": versions(), "model": model,
        "inputs": {"source": "bundle", "folder": str(path), "shapes": manifest["input_shapes"],
                   "images": model.get("images", [])},
        "eager": {"backend": "reference outputs stored in the bundle", "latency": None},
        "artifacts": [entry],
        "verdict": "failed" if entry["parity"]["status"] == "failed" else "passed",
        "failed": [art["kind"]] if entry["parity"]["status"] == "failed" else [],
    }
    write_reports(report, path, "verify")
    return report
