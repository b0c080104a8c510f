"""Parity bundles: verify an artifact on the machine that will run it.

``write_bundle`` (on the build host) puts in one folder: the artifact, the input tensors
(``inputs.npz``), the reference outputs computed by eager PyTorch for exactly those inputs
(``reference.npz``), the tolerances and a manifest (versions, SHA-256 hashes, shapes, names).

``verify_bundle`` (on the target: a Mac, a Jetson, a phone-class board) runs the artifact
with the runtime installed there and writes the same parity and latency report. It imports
neither torch nor any model code; only the runtime of the artifact's backend (ExecuTorch's
runtime itself depends on torch).

A bundle is untrusted input on the machine that verifies it:

* **Containment.** Every file a manifest names is a plain file name (letters, digits, ``. _ + -``)
  that must resolve inside the bundle: no absolute paths, no ``..``, no sub-folders, no symlink
  that leads out, no folder where a file is expected, nothing but regular files inside a folder
  artifact (an ``.mlpackage``). The runner opens exactly the files whose hashes were checked.
* **Validation.** The manifest is parsed strictly (no duplicate keys, no NaN/Infinity, at most
  16 MiB) and checked against a schema; the arrays must match the shapes it declares. Anything
  malformed is a one-line :class:`UserError`.
* **Signatures** (optional, Ed25519 through ``cryptography``). Hashes only catch accidents:
  whoever edits a reference output can rewrite its hash. ``write_bundle(sign_key=...)`` adds a
  ``signature`` block: ``{"algorithm": "ed25519", "public_key": HEX, "value": HEX}``, where
  ``value`` signs :func:`signed_bytes` -- a fixed context line followed by the canonical JSON
  (sorted keys, no spaces, ASCII) of the whole manifest without its ``signature`` key. The
  manifest holds the SHA-256 of every file the bundle uses (artifact, companions, inputs,
  references), so the signature covers them all. A signature that does not verify is always
  refused; ``trust_keys`` additionally refuses a bundle that is unsigned or signed by any other
  key. Key fingerprints are the SHA-256 (hex) of the raw 32-byte public key.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgeexport import __version__
from edgeexport.errors import UserError
from edgeexport.util import atomic_path, file_size

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 2: the manifest records the runner spec; 3: plain names, length-prefixed folder hashes, signature
INPUTS, REFERENCES = "inputs.npz", "reference.npz"
MAX_MANIFEST_BYTES = 16 << 20
MAX_KEY_BYTES = 64 << 10
SIGNATURE = "signature"
SIGNED_CONTEXT = b"edgeexport bundle manifest v3\n"  # domain separation: this key signs bundle manifests
_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")  # a plain file name (POSIX portable characters)
_RESERVED = {MANIFEST, INPUTS, REFERENCES}


def sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; of a folder (an ``.mlpackage``): of each file's relative POSIX name
    and bytes in name order, each length-prefixed so that no other tree has the same digest."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.is_dir():
        _feed(h, path)
        return h.hexdigest()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        name = f.relative_to(path).as_posix().encode("utf-8", "surrogateescape")
        h.update(len(name).to_bytes(8, "big") + name + f.stat().st_size.to_bytes(8, "big"))
        _feed(h, f)
    return h.hexdigest()


def _feed(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


# ---------------------------------------------------------------- writing


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
    with atomic_path(out) as tmp:
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
    from edgeexport.targets import get_target

    return get_target(target).backend


# ---------------------------------------------------------------- the manifest's schema

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Dim = Annotated[int, Field(ge=0)]
Limit = Optional[Annotated[float, Field(allow_inf_nan=False)]]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # no coercion ("5" is not 5); newer keys are kept


class _Artifact(_Strict):
    file: str
    kind: str
    target: str
    precision: Literal["fp32", "fp16", "int8"]
    backend: str
    sha256: Digest
    size_bytes: Dim


def _tolerance_model() -> type[BaseModel]:
    """The limits of :class:`~edgeexport.parity.Tolerance`, each a finite number or null."""
    from dataclasses import fields

    from pydantic import create_model

    from edgeexport.parity import Tolerance

    return create_model("Tolerance", __config__=ConfigDict(strict=True, extra="forbid"),
                        **{f.name: (Limit, None) for f in fields(Tolerance)})


class _Model(_Strict):
    name: str
    origin: str
    weights: Optional[str] = None
    params: Dim
    input_shape: list[Dim]
    dynamic: str
    outputs: list[str]
    output_tasks: dict[str, str]
    images: list[str] = []


class _Signature(_Strict):
    model_config = ConfigDict(strict=True, extra="forbid")
    algorithm: Literal["ed25519"]
    public_key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    value: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]


class _Manifest(_Strict):
    format: int  # FORMAT_VERSION, checked first
    edgeexport: str
    created: str
    artifact: _Artifact
    runner: dict[str, Any]  # a RunnerSpec, validated strictly by load_bundle
    input_name: str
    input_shapes: Annotated[list[list[Dim]], Field(min_length=1)]
    outputs: Annotated[dict[str, list[Dim]], Field(min_length=1)]
    tasks: dict[str, str]
    tolerance: _tolerance_model()
    model: _Model
    build_host_versions: dict[str, Optional[str]]
    build_host_latency_ms: Optional[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = None
    hashes: dict[str, Digest]
    signature: Optional[_Signature] = None


def _show(value, limit: int = 80) -> str:
    """A value as it may appear in a one-line message (control characters escaped, length capped)."""
    s = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return s if len(s) <= limit else s[:limit] + "...'"


def _one_line(s: str, limit: int = 300) -> str:
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[:limit] + "..."


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)) else _show(p, 40)
                   for p in err["loc"]) or "(top level)"
    more = len(exc.errors()) - 1
    return _one_line(f"{loc}: {err['msg']}" + (f" (+{more} more)" if more else ""))


# ---------------------------------------------------------------- reading


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {_show(k, 40)}")
        out[k] = v
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_manifest(path: Path) -> dict:
    """The bundle's manifest, parsed strictly and checked against the schema (a one-line error if not)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise UserError(f"{path} is not a parity bundle (no {MANIFEST})")
    p = _inside(path, MANIFEST, "its manifest")
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_float=_finite,
                         parse_constant=_constant)
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{p}: unreadable manifest ({_one_line(str(exc), 200)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: unreadable manifest (a JSON object was expected)")
    if raw.get("format") != FORMAT_VERSION or isinstance(raw.get("format"), bool):
        fmt = raw.get("format")
        raise UserError(f"{path}: bundle format {fmt if isinstance(fmt, int) and abs(fmt) < 10**6 else _show(fmt)} "
                        f"is not {FORMAT_VERSION} (write it again with this edgeexport)")
    for part, check in (("", _Manifest.model_validate), ("runner.", lambda m: _runner_spec(m))):
        try:
            check(raw)
        except ValidationError as exc:
            raise UserError(f"{p}: invalid manifest: {part}{_describe(exc)}") from None
    return raw


def _runner_spec(manifest: dict):
    from edgeexport.targets import RunnerSpec

    return RunnerSpec.model_validate(manifest["runner"], strict=True)


def _inside(root: Path, name, what: str, folder_ok: bool = False) -> Path:
    """``root / name`` after checking that it is a plain name that stays inside the bundle and is a
    regular file (or, with ``folder_ok``, a folder of regular files and folders: no symlinks in it)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"{root}: manifest names {what} {_show(name)}, which is not a file inside the bundle "
                        "(bundle files have plain names: letters, digits, . _ + -)")
    p = root / name
    try:
        top = root.resolve(strict=True)
        real = p.resolve(strict=True)
    except FileNotFoundError:
        raise UserError(f"{root}: {what} {name} is missing") from None
    except (OSError, RuntimeError):  # a symlink loop
        raise UserError(f"{root}: {what} {name} cannot be resolved (a symlink loop?)") from None
    if real == top or not real.is_relative_to(top):
        raise UserError(f"{root}: manifest names {what} {name!r}, which resolves outside the bundle")
    try:
        if real.is_dir():
            if not folder_ok:
                raise UserError(f"{root}: {what} {name} is a folder, not a file")
            for sub in real.rglob("*"):
                if sub.is_symlink() or not (sub.is_file() or sub.is_dir()):
                    raise UserError(f"{root}: {what} {name} contains {_show(str(sub.relative_to(real)))}, which is "
                                    "not a regular file or folder (no symlinks inside a folder artifact)")
        elif not stat.S_ISREG(real.stat().st_mode):
            raise UserError(f"{root}: {what} {name} is not a regular file")
    except OSError as exc:
        raise UserError(f"{root}: cannot read {what} {name} ({type(exc).__name__})") from None
    return p


def _check_hash(root: Path, name: str, expected: str, what: str, folder_ok: bool) -> Path:
    p = _inside(root, name, what, folder_ok)
    try:
        digest = sha256(p)
    except OSError as exc:
        raise UserError(f"{root}: cannot read {what} {name} ({type(exc).__name__})") from None
    if digest != expected:
        raise UserError(f"{p} does not match its hash in the manifest (corrupt or edited)")
    return p


def _arrays(root: Path, name: str) -> dict[str, np.ndarray]:
    p = _inside(root, name, "its inputs" if name == INPUTS else "its references")
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            out = {k: z[k] for k in z.files}
    except Exception as exc:  # whatever numpy or zipfile raises on a malformed archive: bad input
        raise UserError(f"{p}: unreadable arrays ({type(exc).__name__}: {_one_line(str(exc), 120)})") from None
    for k, v in out.items():
        if v.dtype.kind not in "biuf":
            raise UserError(f"{p}: array {_show(k, 40)} has dtype {v.dtype}, not numbers")
    return out


def load_bundle(path: Path, trust_keys: list[bytes] | None = None
                ) -> tuple[dict, list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Check a bundle and read it: ``(manifest, inputs, references)``, or a one-line ``UserError``.

    ``trust_keys`` (raw Ed25519 public keys, see :func:`load_public_key`): refuse the bundle unless
    it is signed by one of them. A signature that does not verify is refused either way.
    """
    path = Path(path)
    manifest = read_manifest(path)
    check_signature(path, manifest, trust_keys)
    art, hashes = manifest["artifact"], manifest["hashes"]
    spec = _runner_spec(manifest)
    if spec.artifact != art["file"] or spec.target != art["target"]:
        raise UserError(f"{path / MANIFEST}: the runner spec does not run the bundle's artifact")
    if manifest["input_name"] not in spec.input_names:
        raise UserError(f"{path / MANIFEST}: input {_show(manifest['input_name'])} is not one the runner feeds")
    for name in [INPUTS, REFERENCES, *spec.files]:
        if name not in hashes:
            raise UserError(f"{path / MANIFEST}: {_show(name)} is used but the manifest does not hash it")
    _check_hash(path, art["file"], art["sha256"], "its artifact", folder_ok=True)
    for name, digest in hashes.items():
        _check_hash(path, name, digest, "a hashed file", folder_ok=name not in (INPUTS, REFERENCES))
    x = _arrays(path, INPUTS)
    if sorted(x) != [f"{i:03d}" for i in range(len(x))] or not x:
        raise UserError(f"{path / INPUTS}: expected arrays 000, 001, ... (got {_show(', '.join(sorted(x))[:60])})")
    inputs = [x[k] for k in sorted(x)]
    if [list(a.shape) for a in inputs] != manifest["input_shapes"]:
        raise UserError(f"{path / INPUTS}: the input shapes are not the manifest's input_shapes")
    refs: list[dict[str, np.ndarray]] = [{} for _ in inputs]
    for key, value in _arrays(path, REFERENCES).items():
        i, _, name = key.partition("/")
        if not re.fullmatch(r"[0-9]{3,6}", i) or i != f"{int(i):03d}" or int(i) >= len(inputs) \
                or name not in manifest["outputs"]:
            raise UserError(f"{path / REFERENCES}: unexpected array {_show(key, 40)}")
        refs[int(i)][name] = value
    for r in refs:
        if {k: list(v.shape) for k, v in r.items()} != manifest["outputs"]:
            raise UserError(f"{path / REFERENCES}: the reference outputs are not the manifest's outputs")
    return manifest, inputs, refs


# ---------------------------------------------------------------- signatures


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a dependency of edgeexport
        raise UserError("bundle signatures need the cryptography package (pip install 'cryptography>=41')") from None
    return ed25519


def signed_bytes(manifest: dict) -> bytes:
    """What a bundle's signature signs: a context line, then the canonical JSON of the manifest
    without its ``signature`` (sorted keys, no whitespace, ASCII only)."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    return SIGNED_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                       allow_nan=False).encode("ascii")


def fingerprint(public_key: bytes) -> str:
    """A key's fingerprint: SHA-256 (hex) of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()


def _raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_manifest(manifest: dict, key) -> dict:
    """The ``signature`` block for ``manifest`` (signed with an Ed25519 private key object)."""
    return {"algorithm": "ed25519", "public_key": _raw_public(key.public_key()).hex(),
            "value": key.sign(signed_bytes(manifest)).hex()}


def check_signature(path: Path, manifest: dict, trust_keys: list[bytes] | None = None) -> None:
    """Refuse a manifest whose signature does not verify, or (with ``trust_keys``) that is not
    signed by one of those raw public keys."""
    sig = manifest.get(SIGNATURE)
    if sig is None:
        if trust_keys:
            raise UserError(f"{path}: the bundle is not signed (--trust-key accepts only bundles signed by a "
                            "trusted key)")
        return
    ed25519 = _ed25519()
    from cryptography.exceptions import InvalidSignature

    public = bytes.fromhex(sig["public_key"])
    fp = fingerprint(public)
    if trust_keys and public not in trust_keys:
        raise UserError(f"{path}: signed by key {fp}, which is not a trusted key "
                        f"(trusted: {', '.join(fingerprint(k) for k in trust_keys)})")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(bytes.fromhex(sig["value"]),
                                                                  signed_bytes(manifest))
    except (InvalidSignature, ValueError):
        raise UserError(f"{path}: the signature of key {fp} does not match the manifest (changed after "
                        "signing)") from None


def signature_info(manifest: dict, trusted: bool) -> dict:
    """How a bundle that :func:`load_bundle` accepted was signed, for the verify report."""
    sig = manifest.get(SIGNATURE)
    if sig is None:
        return {"signed": False, "algorithm": None, "key_fingerprint": None, "trusted": False, "status": "unsigned"}
    return {"signed": True, "algorithm": sig["algorithm"],
            "key_fingerprint": fingerprint(bytes.fromhex(sig["public_key"])), "trusted": trusted,
            "status": "signed by a trusted key" if trusted
            else "signed, not checked against a trusted key (no --trust-key)"}


def _key_bytes(path, what: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist" if not p.exists() else f"{what} {p} is not a file")
    try:
        with open(p, "rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {p}: {exc.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise UserError(f"{what} {p} is not a key file (too large)")
    return data


def load_private_key(path):
    """An Ed25519 private key from a file: unencrypted PEM (PKCS#8, as ``edgeexport keygen`` writes)
    or the raw 32 bytes."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    data = _key_bytes(path, "signing key")
    try:
        key = (ed25519.Ed25519PrivateKey.from_private_bytes(data) if len(data) == 32
               else serialization.load_pem_private_key(data, password=None))
    except (ValueError, TypeError) as exc:
        why = "it is encrypted" if "encrypted" in str(exc).lower() else "not a PEM or raw 32-byte private key"
        raise UserError(f"signing key {path}: cannot load it ({why})") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm
        raise UserError(f"signing key {path}: cannot load it ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UserError(f"signing key {path} is a {type(key).__name__.lstrip('_')}, not an Ed25519 private key")
    return key


def load_public_key(path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key file: PEM (SubjectPublicKeyInfo, as ``edgeexport
    keygen`` writes) or the raw 32 bytes."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    data = _key_bytes(path, "trusted key")
    if len(data) == 32:
        return data
    if b"PRIVATE KEY" in data:
        raise UserError(f"trusted key {path} is a private key: pass the public key (edgeexport keygen writes NAME.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, UnsupportedAlgorithm
        raise UserError(f"trusted key {path}: not a PEM or raw 32-byte public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"trusted key {path} is a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
    return _raw_public(key)


def generate_keypair(folder: Path, name: str = "edgeexport") -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, PEM, mode 0600) and ``NAME.pub`` (public, PEM) into ``folder``;
    return both paths and the key's fingerprint. Never overwrites a key."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    if not _NAME.fullmatch(name):
        raise UserError(f"--name {name!r}: use letters, digits, . _ + -")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    for p in (priv, pub):
        if os.path.lexists(p):
            raise UserError(f"{p} already exists (keygen never overwrites a key)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, fingerprint(_raw_public(key.public_key()))


# ---------------------------------------------------------------- verifying


def make_runner(manifest: dict, path: Path, threads: int | None):
    """The runner of a manifest that :func:`load_bundle` accepted: its files are the bundle's own."""
    from edgeexport.targets import make_runner as from_spec

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
    from edgeexport.bench import benchmark
    from edgeexport.parity import ParityCheck, Tolerance
    from edgeexport.report import machine_info, versions, write_reports
    from edgeexport.util import default_threads

    path = Path(path)
    manifest, inputs, refs = load_bundle(path, trust_keys=trust_keys)
    signature = signature_info(manifest, trusted=bool(trust_keys))
    threads = threads or default_threads()
    from edgeexport.targets import get_target

    runner = make_runner(manifest, path, threads)
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
        "signature": signature,
        "artifacts": [entry],
        "verdict": "failed" if entry["parity"]["status"] == "failed" else "passed",
        "failed": [art["kind"]] if entry["parity"]["status"] == "failed" else [],
    }
    write_reports(report, path, "verify")
    return report
