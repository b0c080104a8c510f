"""The content-addressed cell cache (``--cache``, default ``$EDGEEXPORT_CACHE/matrix`` or
``~/.cache/edgeexport/matrix``): ``DIR/cells/KEY/`` (``result.json``, ``files/``, ``verify.json``),
``DIR/keys/`` (the matrix's Ed25519 signing key) and ``DIR/attempts/``.

A cell whose key is in the cache is not run again (its artifacts and bundle are hard-linked from it,
read-only, and its reports copied); a verification is cached with its cell once it ran. Only finished
pipeline runs are cached: a crashed task, an input error or "no node can run" is tried again.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgeexport.bundle import MANIFEST, SIGNATURE, load_bundle, sign_manifest
from edgeexport.errors import UserError
from edgeexport.keys import fingerprint, generate_keypair, load_private_key, load_public_key
from edgeexport.matrix.tasks import unpack
from edgeexport.util import atomic_path
from edgeexport.weights import cache_dir




class Cache:
    """``DIR/cells/KEY/`` (``result.json``, ``files/``, ``verify.json``), ``DIR/keys/`` (the signing key)
    and ``DIR/attempts/``."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        try:
            (self.dir / "cells").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the matrix cache {self.dir}: {exc.strerror}") from None

    @staticmethod
    def default() -> Path:
        return cache_dir() / "matrix"

    def entry(self, key: str) -> Path:
        return self.dir / "cells" / key

    def get(self, key: str) -> dict | None:
        e = self.entry(key)
        try:
            result = json.loads((e / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if not (e / "files").is_dir():
            return None
        v = e / "verify.json"
        result["verify"] = json.loads(v.read_text()) if v.is_file() else None
        return result

    def put(self, key: str, result: dict, files: bytes) -> Path:
        e = self.entry(key)
        with atomic_path(e) as tmp:
            tmp.mkdir()
            unpack(files, tmp / "files")
            for f in (tmp / "files").rglob("*"):  # outputs hard-link these: read-only, so no one edits the cache
                if f.is_file():
                    f.chmod(0o444)
            (tmp / "result.json").write_text(json.dumps(result, indent=1, default=str))
        return e

    def put_verify(self, key: str, verify: dict) -> None:
        with atomic_path(self.entry(key) / "verify.json") as tmp:
            tmp.write_text(json.dumps(verify, indent=1, default=str))

    def signing_key(self):
        """(private key, raw public key, fingerprint) of this cache's Ed25519 key (made once, mode 0600)."""
        folder = self.dir / "keys"
        if not (folder / "matrix.key").is_file():
            generate_keypair(folder, "matrix")
        pub = load_public_key(folder / "matrix.pub")
        return load_private_key(folder / "matrix.key"), pub, fingerprint(pub)


def sign_bundle(path: Path, key, public: bytes) -> None:
    """Sign a bundle's manifest with ``key`` (the hashes are checked first), then check it as a
    verifying node will (``trust_keys=[public]``)."""
    manifest, _, _ = load_bundle(path)
    manifest.pop(SIGNATURE, None)
    manifest[SIGNATURE] = sign_manifest(manifest, key)
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(path, trust_keys=[public])
