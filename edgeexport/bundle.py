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
FORMAT_VERSION = 2  # 2: the manifest records the runner spec


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


def write_bundle(out: Path, *, runner, kind: str, precision: str, inputs: list[np.ndarray],
                 references: list[dict[str, np.ndarray]], tasks: dict[str, str], tolerance: dict, model: dict,
                 versions: dict, build_latency_ms: float | None = None) -> dict:
    """Write the bundle folder ``out`` atomically; return its manifest.

    ``runner`` is the artifact's :class:`~edgeexport.targets.base.RunnerSpec`: the bundle stores it
    with file names relative to the bundle, so ``verify`` runs the artifact exactly as the build host
    did (CoreML compute units, ncnn fp16 arithmetic, ...).
    """
    artifact = Path(runner.artifact)
    files = [Path(f) for f in runner.files]
    for f in [artifact, *files]:
        if not f.exists():
            raise UserError(f"artifact {f} does not exist")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for f in [artifact, *files]:
            dest = tmp / f.name
            if f.is_dir():
                shutil.copytree(f, dest)
            else:
                shutil.copy2(f, dest)
        np.savez_compressed(tmp / "inputs.npz", **{f"{i:03d}": x for i, x in enumerate(inputs)})
        np.savez_compressed(tmp / "reference.npz", **{f"{i:03d}/{k}": v for i, r in enumerate(references)
                                                      for k, v in r.items()})
        spec = runner.model_copy(update={"artifact": artifact.name, "files": [f.name for f in files]})
        manifest = {
            "format": FORMAT_VERSION, "edgeexport": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifact": {"file": artifact.name, "kind": kind, "target": runner.target, "precision": precision,
                         "backend": _backend(runner.target),
                         "sha256": sha256(tmp / artifact.name), "size_bytes": file_size(tmp / artifact.name)},
            "runner": spec.model_dump(),
            "input_name": runner.input_names[0], "input_shapes": [list(x.shape) for x in inputs],
            "outputs": {k: list(v.shape) for k, v in references[0].items()}, "tasks": tasks,
            "tolerance": tolerance, "model": model, "build_host_versions": versions,
            "build_host_latency_ms": build_latency_ms,
            "hashes": {name: sha256(tmp / name) for name in ["inputs.npz", "reference.npz", *spec.files]},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _backend(target: str) -> str:
    from edgeexport.targets import get_target

    return get_target(target).backend


def _inside(root: Path, name: str, what: str) -> Path:
    """``root / name``, refusing any name that leaves the bundle (absolute, ``..``, a symlink out)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise UserError(f"{root}: manifest names {what} {name!r}, which is not a file inside the bundle")
    p = root / name
    if not p.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{root}: manifest names {what} {name!r}, which resolves outside the bundle")
    return p


def load_bundle(path: Path) -> tuple[dict, list[np.ndarray], list[dict[str, np.ndarray]]]:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a parity bundle (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: bundle format {manifest.get('format') if isinstance(manifest, dict) else '?'} "
                        f"is not {FORMAT_VERSION}")
    try:
        hashes = dict(manifest["hashes"])
        art_file = manifest["artifact"]["file"]
        art_hash = manifest["artifact"]["sha256"]
        runner = manifest["runner"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path / MANIFEST}: incomplete manifest") from None
    for name, digest in hashes.items():
        if sha256(_inside(path, name, "a hashed file")) != digest:
            raise UserError(f"{path / name} does not match its hash in the manifest (corrupt or edited)")
    art = _inside(path, art_file, "its artifact")
    if not art.exists() or sha256(art) != art_hash:
        raise UserError(f"{art} is missing or does not match its hash in the manifest")
    if not isinstance(runner, dict) or runner.get("artifact") != art_file:
        raise UserError(f"{path / MANIFEST}: the runner spec does not run the bundle's artifact")
    for f in runner.get("files", []):
        if f not in hashes:
            raise UserError(f"{path / MANIFEST}: the runner needs {f!r}, which the manifest does not hash")
    try:
        with np.load(_inside(path, "inputs.npz", "its inputs"), allow_pickle=False) as z:
            inputs = [z[k] for k in sorted(z.files)]
        refs: list[dict[str, np.ndarray]] = [{} for _ in inputs]
        with np.load(_inside(path, "reference.npz", "its references"), allow_pickle=False) as z:
            for key in z.files:
                i, name = key.split("/", 1)
                refs[int(i)][name] = z[key]
    except (OSError, ValueError, IndexError) as exc:
        raise UserError(f"{path}: unreadable inputs or references ({type(exc).__name__})") from None
    return manifest, inputs, refs


def make_runner(manifest: dict, path: Path, threads: int | None):
    from edgeexport.targets import RunnerSpec
    from edgeexport.targets import make_runner as from_spec

    try:
        spec = RunnerSpec.model_validate(manifest["runner"])
    except Exception:
        raise UserError(f"{path / MANIFEST}: the runner spec is not valid") from None
    return from_spec(spec.relocated(path), threads)


def verify_bundle(path: Path, threads: int | None = None, runs: int = 30, warmup: int = 5) -> dict:
    """Run a bundle's artifact here; return (and write into the bundle) a parity + latency report."""
    from edgeexport.bench import benchmark
    from edgeexport.parity import ParityCheck, Tolerance
    from edgeexport.report import machine_info, versions, write_reports
    from edgeexport.util import default_threads

    path = Path(path)
    manifest, inputs, refs = load_bundle(path)
    threads = threads or default_threads()
    from edgeexport.targets import get_target

    runner = make_runner(manifest, path, threads)
    art = manifest["artifact"]
    entry = {"kind": art["kind"], "target": art["target"], "backend": art["backend"], "precision": art["precision"],
             "path": str(path / art["file"]), "size_bytes": art["size_bytes"], "dynamic": "none", "built": True,
             "runner": manifest["runner"], "required_by": None,
             "build": {"bundle": str(path), "built_with": manifest["build_host_versions"]},
             "error": None, "notes": [], "failures": [], "latency": None, "ratio_to_eager": None, "task": None}
    ok, reason = get_target(art["target"]).run_availability()
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
