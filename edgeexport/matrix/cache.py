"""The content-addressed cell cache (``--cache``, default ``$EDGEEXPORT_CACHE/matrix`` or
``~/.cache/edgeexport/matrix``): ``DIR/cells/KEY/`` (``result.json``, ``files/``, ``verify.json`` and
``files.json``, the signed record of every other file's SHA-256: :mod:`~edgeexport.matrix.entry`),
``DIR/keys/`` (the matrix's Ed25519 signing key) and ``DIR/attempts/``.

A cell whose key is in the cache is not run again when its entry passes its file check (every file's
hash, no symlink, nothing missing or added, typed JSON); its artifacts and bundle are copied from it
(never hard-linked: editing an output never edits the cache, nor the other way round) and its reports
copied. An entry that fails the check is not trusted: the cell is built again and the entry replaced. A
verification is cached with its cell once it ran. Only finished pipeline runs are cached: a crashed task,
an input error or "no node can run" is tried again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgeexport.bundle import MANIFEST, SIGNATURE, load_bundle, sign_manifest
from edgeexport.errors import UserError
from edgeexport.keys import fingerprint, generate_keypair, load_private_key, raw_public
from edgeexport.matrix.entry import (FILES, KEY, RECORD, RESULT, VERIFY, CachedVerify, FilesRecord, UntrustedEntry,
                                     check_entry, make_record, sign_record, walk)
from edgeexport.matrix.tasks import unpack
from edgeexport.util import atomic_path
from edgeexport.weights import cache_dir


class Cache:
    """``DIR/cells/KEY/`` (``result.json``, ``files/``, ``verify.json``, ``files.json``), ``DIR/keys/`` (the
    signing key) and ``DIR/attempts/``."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        try:
            (self.dir / "cells").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the matrix cache {self.dir}: {exc.strerror}") from None
        self._key = None

    @staticmethod
    def default() -> Path:
        return cache_dir() / "matrix"

    def entry(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"not a cell key: {key[:80]!r}")
        return self.dir / "cells" / key

    def owns(self, folder: Path) -> bool:
        """Whether ``folder`` is one of this cache's entries (what :func:`atomic_path` may replace): a folder
        named by a cell key in ``DIR/cells`` that holds an entry's files, or nothing."""
        folder = Path(folder)
        if folder.parent != self.dir / "cells" or not KEY.fullmatch(folder.name) or folder.is_symlink() \
                or not folder.is_dir():
            return False
        names = {p.name for p in folder.iterdir()}
        return not names or bool(names & {RECORD, RESULT, FILES, VERIFY})

    def get(self, key: str) -> dict | None:
        """The cached result of cell ``key`` (its ``verify`` included, and its file ``record``), None when the
        cache has no entry; an :class:`~edgeexport.matrix.entry.UntrustedEntry` when the entry is not exactly
        what this cache stored."""
        e = self.entry(key)
        if not e.exists() and not e.is_symlink():
            return None
        record, result = check_entry(e, key, self.signing_key()[0].public_key())
        result["record"] = record
        return result

    def put(self, key: str, result: dict, files: bytes) -> FilesRecord:
        """Store a finished build (replacing an earlier entry of the key, trusted or not); its record."""
        e = self.entry(key)
        priv = self.signing_key()[0]
        with atomic_path(e, replaces=self.owns) as tmp:
            tmp.mkdir()
            unpack(files, tmp / FILES)
            (tmp / RESULT).write_text(json.dumps(result, indent=1, default=str))
            walk(tmp)  # regular files only (unpack admits nothing else): a symlink here is an error, not an entry
            for f in (tmp / FILES).rglob("*"):  # read-only: no one edits the cache by mistake
                if f.is_file():
                    f.chmod(0o444)
            (tmp / RECORD).write_bytes(make_record(tmp, key, priv))
        return FilesRecord.model_validate_json((e / RECORD).read_bytes())

    def put_verify(self, key: str, verify: dict) -> bool:
        """Add a verification to a stored entry (and to its record), when the entry still passes its check."""
        e = self.entry(key)
        data = json.dumps(verify, indent=1, default=str).encode()
        try:
            hit = self.get(key)
            CachedVerify.model_validate_json(data)
        except (UntrustedEntry, ValueError):
            return False  # an entry that no longer passes is built again next time: nothing to add to
        if hit is None:
            return False
        files = {k: v.model_dump() for k, v in hit["record"].files.items()}
        files[VERIFY] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        with atomic_path(e / VERIFY) as tmp:
            tmp.write_bytes(data)
        with atomic_path(e / RECORD) as tmp:  # until this lands the entry fails its check: never half-trusted
            tmp.write_bytes(sign_record(key, files, self.signing_key()[0]))
        return True

    def signing_key(self):
        """(private key, raw public key, fingerprint) of this cache's Ed25519 key (made once, mode 0600). The
        public key is the private key's own, not read from ``matrix.pub``."""
        if self._key is None:
            folder = self.dir / "keys"
            if not (folder / "matrix.key").is_file():
                generate_keypair(folder, "matrix")
            priv = load_private_key(folder / "matrix.key")
            pub = raw_public(priv.public_key())
            self._key = (priv, pub, fingerprint(pub))
        return self._key


def sign_bundle(path: Path, key, public: bytes) -> None:
    """Sign a bundle's manifest with ``key`` (the hashes are checked first), then check it as a
    verifying node will (``trust_keys=[public]``)."""
    manifest, _, _ = load_bundle(path)
    manifest.pop(SIGNATURE, None)
    manifest[SIGNATURE] = sign_manifest(manifest, key)
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(path, trust_keys=[public])
