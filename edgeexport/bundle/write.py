"""Writing a parity bundle on the build host: the artifact, its inputs, eager outputs, tolerances, manifest."""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import numpy as np

from edgeexport.bundle.manifest import (FORMAT_VERSION, INPUTS, MANIFEST, REFERENCES, SIGNATURE, _NAME, _RESERVED,
                                        is_bundle, load_bundle, sign_manifest)
from edgeexport.errors import UserError
from edgeexport.keys import load_private_key
from edgeexport.targets import get_target
from edgeexport.util import atomic_path, file_size, sha256
from edgeexport.version import __version__


def write_bundle(out: Path, *, runner, kind: str, precision: str, inputs: list[np.ndarray],
                 references: list[dict[str, np.ndarray]], tasks: dict[str, str], tolerance: dict, model: dict,
                 versions: dict, build_latency_ms: float | None = None, sign_key: str | Path | None = None) -> dict:
    """Write the bundle folder ``out`` atomically; return its manifest.

    ``runner`` is the artifact's :class:`~edgeexport.targets.base.RunnerSpec`: the bundle stores it
    with file names relative to the bundle, so ``verify`` runs the artifact exactly as the build host
    did (CoreML compute units, ncnn fp16 arithmetic, ...). ``sign_key``: an Ed25519 private key file
    (PEM or raw 32 bytes) that signs the manifest. The finished folder is read back with
    :func:`load_bundle` before it gets its final name, so every bundle written is one that loads.
    """
    key = load_private_key(sign_key) if sign_key is not None else None
    artifact = Path(runner.artifact)
    files = [Path(f) for f in runner.files]
    for f in [artifact, *files]:
        if not f.exists():
            raise UserError(f"artifact {f} does not exist")
    names = [f.name for f in [artifact, *files]]
    for name in names:
        if not _NAME.fullmatch(name) or name in _RESERVED:
            raise UserError(f"{name!r}: a bundle holds files under plain names (letters, digits, . _ + -, not "
                            f"{', '.join(sorted(_RESERVED))}); rename it")
    if len({n.lower() for n in names}) != len(names):
        raise UserError(f"the artifact's files have clashing names: {', '.join(names)}")
    with atomic_path(out, replaces=is_bundle) as tmp:  # replaces only an earlier bundle
        tmp.mkdir()
        for f in [artifact, *files]:
            dest = tmp / f.name
            if f.is_dir():
                shutil.copytree(f, dest)
            else:
                shutil.copy2(f, dest)
        np.savez_compressed(tmp / INPUTS, **{f"{i:03d}": x for i, x in enumerate(inputs)})
        np.savez_compressed(tmp / REFERENCES, **{f"{i:03d}/{k}": v for i, r in enumerate(references)
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
            "hashes": {name: sha256(tmp / name) for name in [INPUTS, REFERENCES, *spec.files]},
        }
        try:  # what load_bundle will parse (tuples become lists): the signature covers exactly that
            manifest = json.loads(json.dumps(manifest, allow_nan=False))
        except ValueError as exc:
            raise UserError(f"cannot write the bundle manifest: {exc}") from None
        if key is not None:
            manifest[SIGNATURE] = sign_manifest(manifest, key)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        load_bundle(tmp)
    return manifest


def _backend(target: str) -> str:
    return get_target(target).backend
