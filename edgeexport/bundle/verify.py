"""Verifying a parity bundle on the target: its artifact, run with the runtime installed there.

It imports neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from edgeexport.bench import benchmark
from edgeexport.bundle.manifest import MANIFEST, _runner_spec, load_bundle, signature_info
from edgeexport.errors import UserError
from edgeexport.parity import ParityCheck, Tolerance
from edgeexport.report import Eager, Inputs, ModelInfo, Report, ReportBuilder, Signature, check_report_paths
from edgeexport.targets import checked_spec, get_target, load_in_child
from edgeexport.targets import make_runner as from_spec
from edgeexport.util import default_threads, one_line


def runner_spec(manifest: dict, path: Path):
    """The checked runner spec of a manifest that :func:`load_bundle` accepted, its files in ``path``."""
    try:
        spec = _runner_spec(manifest)
    except ValidationError:
        raise UserError(f"{path / MANIFEST}: the runner spec is not valid") from None
    try:
        return checked_spec(spec.relocated(path))
    except UserError as exc:
        raise UserError(f"{path / MANIFEST}: {exc}") from None


def make_runner(manifest: dict, path: Path, threads: int | None):
    """The runner of a manifest that :func:`load_bundle` accepted: its files are the ones in ``path``."""
    return from_spec(runner_spec(manifest, path), threads)


def verify_bundle(path: Path, threads: int | None = None, runs: int = 30, warmup: int = 5,
                  trust_keys: list[bytes] | None = None) -> Report:
    """Run a bundle's artifact here; return (and write into the bundle) a parity + latency report.

    ``trust_keys``: raw Ed25519 public keys (:func:`load_public_key`); the bundle must be signed by
    one of them. The report's ``signature`` says whether it was signed, by which key, and whether
    that key was checked against a trusted one.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a parity bundle (no {MANIFEST})")
    check_report_paths(path, "verify")  # a folder of the user's named like the report is never replaced
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: the bundle folder is not writable, and verify writes its report there (copy "
                        "the bundle to a writable folder)")
    with tempfile.TemporaryDirectory(prefix="edgeexport-verify-") as work:
        return _verify(path, Path(work), threads, runs, warmup, trust_keys)


def _verify(path: Path, work: Path, threads, runs, warmup, trust_keys) -> Report:
    # the runner opens the private copy: exactly the files the manifest names, with the bytes that were hashed
    manifest, inputs, refs = load_bundle(path, trust_keys=trust_keys, into=work)
    spec = runner_spec(manifest, work)
    signature = Signature(**signature_info(manifest, trusted=bool(trust_keys)))
    threads = threads or default_threads()
    builder = ReportBuilder("verify", threads=threads)
    art = manifest["artifact"]
    note = ("bundle not signed" if not signature.signed else
            f"bundle signed by Ed25519 key {signature.key_fingerprint}: "
            + ("checked against a trusted key" if signature.trusted else "not checked against a trusted key"))
    facts = {"bundle": str(path), "built_with": manifest["build_host_versions"]}
    checked, reason, parity, latency = "not_run", None, [], None
    ok, why = get_target(art["target"]).run_availability()
    if not ok:
        reason = f"not run on this machine: {why}"
    else:
        t0 = time.perf_counter()
        load_in_child(spec, f"{path.name}/{art['file']}")  # a runtime that crashes on it costs one line
        try:
            with from_spec(spec, threads) as runner:
                check = ParityCheck(manifest["input_shapes"][0], art["precision"],
                                    Tolerance(**manifest["tolerance"]), manifest["tasks"])
                for x, ref in zip(inputs, refs):
                    check.add(ref, runner.infer({manifest["input_name"]: x}))
                parity = [check.result()]
                latency = benchmark(runner, {manifest["input_name"]: inputs[0]}, warmup=warmup, runs=runs,
                                    budget_s=30)
        except UserError:
            raise
        except Exception as exc:  # the bundle's artifact, inputs or names do not fit together: bad input
            raise UserError(f"{path}: {get_target(art['target']).title} cannot run the bundle's artifact on its "
                            f"inputs ({one_line(exc, 160)})") from None
        checked = "passed" if parity[0].passed else "failed"
        facts["verify_s"] = round(time.perf_counter() - t0, 1)
        if manifest.get("build_host_latency_ms"):
            facts["build_host_latency_ms"] = manifest["build_host_latency_ms"]
    builder.artifact(kind=art["kind"], target=art["target"], backend=art["backend"], precision=art["precision"],
                     checked=checked, reason=reason, path=path / art["file"], size_bytes=art["size_bytes"],
                     runner=manifest["runner"], build=facts, notes=[note], parity=parity, latency=latency)
    model = {**manifest["model"], "origin": f"bundle:{manifest['model'].get('origin', '?')}"}
    report = builder.build(
        model=ModelInfo(**model), signature=signature,
        inputs=Inputs(source="bundle", folder=str(path), shapes=manifest["input_shapes"], images=model.get("images", [])),
        eager=Eager(backend="reference outputs stored in the bundle"))
    report.write(path, "verify")
    return report
