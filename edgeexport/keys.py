"""Ed25519 keys (through ``cryptography``): what signs parity bundles and what a verifying machine
trusts. ``edgeexport keygen`` writes a pair; recipes name a private key, ``verify --trust-key`` public ones.

Key files are unencrypted PEM (PKCS#8 private keys, SubjectPublicKeyInfo public keys, as ``keygen``
writes them) or the raw 32 bytes. A key's fingerprint is the SHA-256 (hex) of its raw public key.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeexport.errors import UserError
from edgeexport.util import PLAIN_NAME

MAX_KEY_BYTES = 64 << 10

# ---------------------------------------------------------------- public keys that are points of small order
#
# Ed25519 verification (RFC 8032, as OpenSSL does it) accepts a public key A of small order: with A in the
# 8-element torsion subgroup and the signature R = identity, s = 0, the check [8][s]B == [8]R + [8][k]A holds for
# every message whose k makes [k]A vanish (about 1 in 4 for the all-zero key). Such a key signs anything, so it is
# refused wherever a public key is read. The test is the point's own arithmetic (8P == identity on edwards25519),
# which covers the 8 points and their non-canonical encodings (libsodium's blacklist in ed25519_ref10.c); a
# non-canonical encoding (y >= p) or a y that is on no point is refused as well.

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(raw: bytes):
    """``(x, y)`` of an encoded edwards25519 point; None when the encoding is not canonical or not on the curve."""
    n = int.from_bytes(raw, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= _P:
        return None
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P  # RFC 8032 5.1.3
    if (v * x * x - u) % _P:
        x = x * _SQRT_M1 % _P
        if (v * x * x - u) % _P:
            return None
    if x == 0 and sign:
        return None  # -0: a non-canonical encoding of x = 0
    return (_P - x if (x & 1) != sign else x), y


def _double(pt):
    x, y = pt  # affine doubling on -x^2 + y^2 = 1 + d x^2 y^2 (complete: the denominators never vanish)
    xy, xx, yy = x * y % _P, x * x % _P, y * y % _P
    dxxyy = _D * xx * yy % _P
    return (2 * xy * pow(1 + dxxyy, _P - 2, _P) % _P, (yy + xx) * pow(1 - dxxyy, _P - 2, _P) % _P)


def public_key_problem(raw: bytes) -> str | None:
    """Why ``raw`` (32 bytes) is not a usable Ed25519 public key: None, or a short reason."""
    if len(raw) != 32:
        return f"{len(raw)} bytes, not 32"
    pt = _decode_point(raw)
    if pt is None:
        return "not a canonical encoding of a point of edwards25519"
    for _ in range(3):
        pt = _double(pt)
    if pt == (0, 1):
        return "a point of small order, which verifies signatures it never made"
    return None


def check_public_key(raw: bytes, what: str) -> bytes:
    """``raw`` if it is a usable Ed25519 public key, else a one-line :class:`UserError` about ``what``."""
    why = public_key_problem(raw)
    if why:
        raise UserError(f"{what} is not a usable Ed25519 public key ({why})")
    return raw


def ed25519_module():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a dependency of edgeexport
        raise UserError("bundle signatures need the cryptography package (pip install 'cryptography>=41')") from None
    return ed25519


def fingerprint(public_key: bytes) -> str:
    """A key's fingerprint: SHA-256 (hex) of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()


def raw_public(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


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
    ed25519 = ed25519_module()
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
    ed25519 = ed25519_module()
    from cryptography.hazmat.primitives import serialization

    data = _key_bytes(path, "trusted key")
    if len(data) == 32:
        return check_public_key(data, f"trusted key {path}")
    if b"PRIVATE KEY" in data:
        raise UserError(f"trusted key {path} is a private key: pass the public key (edgeexport keygen writes NAME.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, UnsupportedAlgorithm
        raise UserError(f"trusted key {path}: not a PEM or raw 32-byte public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"trusted key {path} is a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
    return check_public_key(raw_public(key), f"trusted key {path}")


def generate_keypair(folder: Path, name: str = "edgeexport") -> tuple[Path, Path, str]:
    """Write ``NAME.key`` (private, PEM, mode 0600) and ``NAME.pub`` (public, PEM) into ``folder``;
    return both paths and the key's fingerprint. Never overwrites a key."""
    ed25519 = ed25519_module()
    from cryptography.hazmat.primitives import serialization

    if not PLAIN_NAME.fullmatch(name):
        raise UserError(f"--name {name!r}: use letters, digits, . _ + -")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    priv, pub = folder / f"{name}.key", folder / f"{name}.pub"
    for p in (priv, pub):
        if os.path.lexists(p):
            raise UserError(f"{p} already exists (keygen never overwrites a key)")
    key = ed25519.Ed25519PrivateKey.generate()
    check_public_key(raw_public(key.public_key()), "the generated key")  # never, with a sound generator
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, fingerprint(raw_public(key.public_key()))
