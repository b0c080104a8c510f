"""The bundle's manifest: its schema, strict reading, containment, hashes and signature checks.

A bundle is untrusted input on the machine that verifies it:

* **Containment.** Every file a manifest names is a plain file name (letters, digits, ``. _ + -``)
  that must resolve inside the bundle: no absolute paths, no ``..``, no sub-folders, no symlink
  that leads out, no folder where a file is expected, nothing but regular files inside a folder
  artifact (an ``.mlpackage``). The runner opens exactly the files whose hashes were checked.
* **Validation.** The manifest is parsed strictly (no duplicate keys, no NaN/Infinity, at most
  16 MiB) and checked against a schema; the arrays must match the shapes it declares. Anything
  malformed is a one-line :class:`UserError`.
* **Signatures** (optional, Ed25519, :mod:`edgeexport.keys`). Hashes only catch accidents:
  whoever edits a reference output can rewrite its hash. A ``signature`` block
  ``{"algorithm": "ed25519", "public_key": HEX, "value": HEX}`` signs :func:`signed_bytes` -- a fixed
  context line followed by the canonical JSON (sorted keys, no spaces, ASCII) of the whole manifest
  without its ``signature`` key. The manifest holds the SHA-256 of every file the bundle uses
  (artifact, companions, inputs, references), so the signature covers them all. A signature that
  does not verify is always refused; ``trust_keys`` additionally refuses a bundle that is unsigned
  or signed by any other key.
"""
from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from edgeexport.bundle.arrays import INPUT_DTYPES, REFERENCE_DTYPES, read_npz
from edgeexport.bundle.files import copy_hashed
from edgeexport.errors import UserError
from edgeexport.keys import check_public_key, ed25519_module, fingerprint, raw_public
from edgeexport.parity import Tolerance
from edgeexport.targets import RunnerSpec, get_target
from edgeexport.util import PLAIN_NAME

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 2: the manifest records the runner spec; 3: plain names, length-prefixed folder hashes, signature
INPUTS, REFERENCES = "inputs.npz", "reference.npz"
MAX_MANIFEST_BYTES = 16 << 20
SIGNATURE = "signature"
SIGNED_CONTEXT = b"edgeexport bundle manifest v3\n"  # domain separation: this key signs bundle manifests
_NAME = PLAIN_NAME
_RESERVED = {MANIFEST, INPUTS, REFERENCES}


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
    return create_model("Tolerance", __config__=ConfigDict(strict=True, extra="forbid"),
                        **{name: (Limit, None) for name in Tolerance.model_fields})


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


def _printable(s: str, limit: int = 300) -> str:
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[:limit] + "..."


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) if isinstance(p, int) or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(p)) else _show(p, 40)
                   for p in err["loc"]) or "(top level)"
    more = len(exc.errors()) - 1
    return _printable(f"{loc}: {err['msg']}" + (f" (+{more} more)" if more else ""))


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
        raise UserError(f"{p}: unreadable manifest ({_printable(str(exc), 200)})") from None
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


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` is a bundle edgeexport wrote (it has a manifest): the only folder a new bundle replaces."""
    return (Path(folder) / MANIFEST).is_file() and not (Path(folder) / MANIFEST).is_symlink()


def _check_hash(root: Path, name: str, expected: str, what: str, folder_ok: bool, into: Path | None) -> Path:
    """``root / name``, contained and hashed (copied to ``into / name`` while it is hashed, when given): the
    path the runtime is given afterwards (the copy), or a one-line :class:`UserError`."""
    p = _inside(root, name, what, folder_ok)
    dest = None if into is None else into / name
    digest, _ = copy_hashed(p, dest, f"{what} {name}")
    if digest != expected:
        raise UserError(f"{p} does not match its hash in the manifest (corrupt or edited)")
    return p if dest is None else dest


def _finite_arrays(p: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for k, v in arrays.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise UserError(f"{p}: array {_show(k, 40)} holds NaN or infinity (nothing to compare against)")
    return arrays


def load_bundle(path: Path, trust_keys: list[bytes] | None = None, into: Path | None = None
                ) -> tuple[dict, list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Check a bundle and read it: ``(manifest, inputs, references)``, or a one-line ``UserError``.

    ``trust_keys`` (raw Ed25519 public keys, see :func:`load_public_key`): refuse the bundle unless
    it is signed by one of them. A signature that does not verify is refused either way. ``into``: an empty
    private folder that receives a copy of exactly the files the manifest names, each hashed as it is
    copied, so that the runner opens the bytes that were checked and nothing else (a companion the
    runtime would look for by itself is not there unless the manifest names and hashes it).
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
    if art["file"] in hashes:
        raise UserError(f"{path / MANIFEST}: the artifact {_show(art['file'])} is also listed as a hashed file")
    _check_hash(path, art["file"], art["sha256"], "its artifact", True, into)
    for name, digest in hashes.items():
        _check_hash(path, name, digest, "a hashed file", name not in (INPUTS, REFERENCES), into)
    missing = [c for c in _companions(art) if c not in spec.files]
    if missing:
        raise UserError(f"{path / MANIFEST}: the artifact needs {_show(missing[0])} beside it, and the runner spec "
                        "does not name it")
    root = path if into is None else into
    shapes = manifest["input_shapes"]
    x = _finite_arrays(path / INPUTS, read_npz(root / INPUTS, {f"{i:03d}": s for i, s in enumerate(shapes)},
                                               INPUT_DTYPES, "input", shown=path / INPUTS))
    inputs = [x[f"{i:03d}"] for i in range(len(shapes))]
    for name in manifest["outputs"]:
        if not name or "/" in name or len(name) > 200:
            raise UserError(f"{path / MANIFEST}: output name {_show(name, 40)} is not a plain name")
    expected = {f"{i:03d}/{k}": s for i in range(len(inputs)) for k, s in manifest["outputs"].items()}
    r = _finite_arrays(path / REFERENCES, read_npz(root / REFERENCES, expected, REFERENCE_DTYPES, "reference",
                                                   shown=path / REFERENCES))
    refs = [{k: r[f"{i:03d}/{k}"] for k in manifest["outputs"]} for i in range(len(inputs))]
    return manifest, inputs, refs


def _companions(art: dict) -> list[str]:
    """The companion files (e.g. an OpenVINO IR's ``.bin``) the artifact's format needs beside it."""
    for fmt in get_target(art["target"]).formats:
        if art["file"].endswith(fmt.suffix):
            stem = art["file"][:-len(fmt.suffix)]
            return [stem + c for c in fmt.companions]
    raise UserError(f"artifact {_show(art['file'])} is not a {art['target']} format (by its file name)")


# ---------------------------------------------------------------- signatures


def signed_bytes(manifest: dict) -> bytes:
    """What a bundle's signature signs: a context line, then the canonical JSON of the manifest
    without its ``signature`` (sorted keys, no whitespace, ASCII only)."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE}
    return SIGNED_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                       allow_nan=False).encode("ascii")


def sign_manifest(manifest: dict, key) -> dict:
    """The ``signature`` block for ``manifest`` (signed with an Ed25519 private key object)."""
    return {"algorithm": "ed25519", "public_key": raw_public(key.public_key()).hex(),
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
    ed25519 = ed25519_module()
    from cryptography.exceptions import InvalidSignature

    public = check_public_key(bytes.fromhex(sig["public_key"]), f"{path}: the signing key")
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


