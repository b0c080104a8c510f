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
        return data
    if b"PRIVATE KEY" in data:
        raise UserError(f"trusted key {path} is a private key: pass the public key (edgeexport keygen writes NAME.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, UnsupportedAlgorithm
        raise UserError(f"trusted key {path}: not a PEM or raw 32-byte public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise UserError(f"trusted key {path} is a {type(key).__name__.lstrip('_')}, not an Ed25519 public key")
    return raw_public(key)


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
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, fingerprint(raw_public(key.public_key()))
