"""Verifying a parity bundle on the target: its artifact, run with the runtime installed there.

It imports neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from pydantic import ValidationError

from edgeexport.bench import benchmark
from edgeexport.bundle.manifest import MANIFEST, _runner_spec, load_bundle, signature_info
from edgeexport.errors import UserError
from edgeexport.parity import ParityCheck, Tolerance
from edgeexport.targets import get_target, make_runner as from_spec
from edgeexport.util import default_threads
from edgeexport.version import __version__


def make_runner(manifest: dict, path: Path, threads: int | None):
    """The runner of a manifest that :func:`load_bundle` accepted: its files are the bundle's own."""
    try:
        spec = _runner_spec(manifest)
    except ValidationError:
        raise UserError(f"{path / MANIFEST}: the runner spec is not valid") from None
    return from_spec(spec.relocated(path), threads)


def verify_bundle(path: Path, threads: int | None = None, runs: int = 30, warmup: int = 5,
                  trust_keys: list[bytes] | None = None) -> dict:
    """Run a bundle's artifact here; return (and write into the bundle) a parity + latency report.

    ``trust_keys``: raw Ed25519 public keys (:func:`load_public_key`); the bundle must be signed by
    one of them. The report's ``signature`` says whether it was signed, by which key, and whether
    that key was checked against a trusted one.
    """
    from edgeexport.report import machine_info, versions, write_reports

    path = Path(path)
    manifest, inputs, refs = load_bundle(path, trust_keys=trust_keys)
    signature = signature_info(manifest, trusted=bool(trust_keys))
    threads = threads or default_threads()
    art = manifest["artifact"]
    note = ("bundle not signed" if not signature["signed"] else
            f"bundle signed by Ed25519 key {signature['key_fingerprint']}: "
            + ("checked against a trusted key" if signature["trusted"] else "not checked against a trusted key"))
    entry = {"kind": art["kind"], "target": art["target"], "backend": art["backend"], "precision": art["precision"],
             "path": str(path / art["file"]), "size_bytes": art["size_bytes"], "dynamic": "none", "built": True,
             "runner": manifest["runner"], "required_by": None,
             "build": {"bundle": str(path), "built_with": manifest["build_host_versions"]},
             "error": None, "notes": [note], "failures": [], "latency": None, "ratio_to_eager": None, "task": None}
    ok, reason = get_target(art["target"]).run_availability()
    tol = Tolerance(**manifest["tolerance"])
    if not ok:
        entry["parity"] = {"status": "not_run", "reason": f"not run on this machine: {reason}", "checks": []}
    else:
        t0 = time.perf_counter()
        with make_runner(manifest, path, threads) as runner:
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
        "signature": signature,
        "artifacts": [entry],
        "verdict": "failed" if entry["parity"]["status"] == "failed" else "passed",
        "failed": [art["kind"]] if entry["parity"]["status"] == "failed" else [],
    }
    write_reports(report, path, "verify")
    return report
