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

from edgeexport.errors import UserError
from edgeexport.keys import ed25519_module, fingerprint, raw_public
from edgeexport.parity import Tolerance
from edgeexport.targets import RunnerSpec
from edgeexport.util import PLAIN_NAME, sha256

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
        raise UserError(f"{p}: unreadable arrays ({type(exc).__name__}: {_printable(str(exc), 120)})") from None
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


