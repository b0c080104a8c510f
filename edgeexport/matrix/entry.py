"""A cache entry's file record, and its check on every hit.

An entry (``CACHE/cells/KEY/``) holds ``result.json``, ``files/`` (the cell's output folder), maybe
``verify.json``, and ``files.json``: every other file of the entry by its relative POSIX path, with its
SHA-256 and size, the cell's key, and an Ed25519 signature by the cache's own key over all of it. A hit
is used only when the entry is exactly what its record says: no file edited, replaced, missing or added,
no symlink or other non-regular file anywhere in it, the record well-formed, naming this cell and signed
by this cache; and ``result.json`` and ``verify.json`` are typed records (:class:`CachedResult`,
:class:`CachedVerify`) of a finished run whose reports load. Anything else is an :class:`UntrustedEntry`:
the cell is built again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeexport.report import report_from_dict

RECORD = "files.json"
RESULT = "result.json"
VERIFY = "verify.json"
FILES = "files"
FORMAT = "edgeexport-matrix-cache-entry-1"
KEY = re.compile(r"[0-9a-f]{64}")
MAX_FILES = 20_000
MAX_JSON_BYTES = 64 << 20  # result.json and verify.json hold reports, with their views
_NAME_PART = re.compile(r"[^/\x00-\x1f\x7f]{1,255}")


class UntrustedEntry(Exception):
    """A cache entry that failed its file check; ``reason`` is one short phrase ("model.onnx changed")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FileHash(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


def plain_relative(path: str) -> bool:
    """Whether ``path`` is a plain relative POSIX path: no leading slash, no empty, ``.`` or ``..`` part."""
    parts = path.split("/")
    return 0 < len(path) <= 4096 and all(_NAME_PART.fullmatch(p) and p not in (".", "..") for p in parts)


class FilesRecord(_Strict):
    """``files.json``: the entry's files (relative POSIX path -> SHA-256 and size), signed with its key."""

    format: Literal["edgeexport-matrix-cache-entry-1"]
    key: str = Field(pattern=r"^[0-9a-f]{64}$")
    files: dict[str, FileHash]
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")

    @field_validator("files")
    @classmethod
    def _paths(cls, files: dict) -> dict:
        if len(files) > MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files")
        for p in files:
            if not plain_relative(p) or not (p in (RESULT, VERIFY) or p.startswith(FILES + "/")):
                raise ValueError(f"{p[:80]!r} is not a file of a cache entry")
        if RESULT not in files:
            raise ValueError(f"{RESULT} is not recorded")
        return files


class CachedResult(_Strict):
    """``result.json``: a finished build task's result (what :func:`~edgeexport.matrix.tasks.build_cell`
    returned, its files and log left out)."""

    ok: Literal[True]
    attempt: int | None = Field(None, ge=1)
    node: dict[str, Any] | None = None
    workdir: str = Field(min_length=2, max_length=4096)
    report: dict[str, Any]
    runnable: bool
    run_reason: str | None = None
    wall_s: float | None = Field(None, ge=0, allow_inf_nan=False)

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not os.path.isabs(v) or "\x00" in v or v.rstrip("/") != v:
            raise ValueError("not an absolute folder path")
        return v


class CachedVerify(_Strict):
    """``verify.json``: a verification that ran (on a node with the runtime) and reached a verdict."""

    ok: Literal[True]
    attempt: int | None = Field(None, ge=1)
    node: dict[str, Any] | None = None
    workdir: str | None = Field(None, max_length=4096)
    report: dict[str, Any]
    wall_s: float | None = Field(None, ge=0, allow_inf_nan=False)


def signed_bytes(key: str, files: dict) -> bytes:
    """What an entry's signature covers: the format, the cell's key and every file's hash and size."""
    return json.dumps({"format": FORMAT, "key": key, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def shown(rel: str) -> str:
    """A file of an entry as the report names it: the cell's own files by their name in the cell's folder."""
    return rel.removeprefix(FILES + "/")


def walk(folder: Path, problems: list[str] | None = None) -> list[str]:
    """Every regular file under ``folder`` (relative POSIX paths), symlinks never followed; a symlink or
    any other non-regular file anywhere is an :class:`UntrustedEntry` (or, with ``problems``, added to it)."""
    def bad(why: str) -> None:
        if problems is None:
            raise UntrustedEntry(why)
        problems.append(why)

    out: list[str] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        try:
            with os.scandir(folder / rel if rel else folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise UntrustedEntry(f"{shown(rel) or 'the entry'} cannot be read ({exc.strerror})") from None
        for e in items:
            sub = f"{rel}/{e.name}" if rel else e.name
            if e.is_symlink():
                bad(f"{shown(sub)} is a symlink")
            elif e.is_dir(follow_symlinks=False):
                todo.append(sub)
            elif e.is_file(follow_symlinks=False):
                out.append(sub)
            else:
                bad(f"{shown(sub)} is not a regular file")
            if len(out) + len(todo) > MAX_FILES:
                raise UntrustedEntry(f"more than {MAX_FILES} files")
    return sorted(out)


def open_regular(path: Path):
    """``path`` opened for reading when it is a regular file, never through a symlink, never blocking on a FIFO
    (an :class:`UntrustedEntry` otherwise)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise UntrustedEntry(f"{path.name} is not a regular file")
    return fh


def file_hash(path: Path) -> FileHash:
    h, size = hashlib.sha256(), 0
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return FileHash(sha256=h.hexdigest(), size=size)


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file (never through a symlink, never more than ``limit``)."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UntrustedEntry(f"{path.name} is too large")
    return data


def make_record(entry: Path, key: str, private_key) -> bytes:
    """``files.json`` for the entry as it is now (every file but the record), signed with ``private_key``."""
    return sign_record(key, {rel: file_hash(entry / rel).model_dump() for rel in walk(entry) if rel != RECORD},
                       private_key)


def sign_record(key: str, files: dict, private_key) -> bytes:
    """``files.json`` of ``files`` (relative path -> ``{"sha256", "size"}``), signed with ``private_key``."""
    record = {"format": FORMAT, "key": key, "files": files,
              "signature": private_key.sign(signed_bytes(key, files)).hex()}
    FilesRecord.model_validate(record)
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()


def _first(problems: list[str]) -> str:
    """The first three problems, and how many more."""
    return "; ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")


def _typed(model, data: bytes, name: str, source: str):
    try:
        rec = model.model_validate_json(data)
        report_from_dict(json.loads(data)["report"], source)
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise UntrustedEntry(f"{name} is not a record edgeexport wrote ({type(exc).__name__})") from None
    except Exception as exc:  # a report that does not load (UserError): the same
        raise UntrustedEntry(f"{name} holds no report edgeexport wrote ({type(exc).__name__})") from None
    return rec


def check_entry(entry: Path, key: str, public_key) -> tuple[FilesRecord, dict]:
    """The entry's record and its result (with ``verify``: the cached verification or None), when every
    file is what the record says; else an :class:`UntrustedEntry` naming the first thing that is not."""
    try:
        st = os.lstat(entry)
    except OSError as exc:
        raise UntrustedEntry(f"the entry cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedEntry("the entry is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise UntrustedEntry("the entry is not a folder")
    problems: list[str] = []  # everything found, so that the report says what was wrong with the entry
    present = walk(entry, problems)
    if RECORD not in present:
        raise UntrustedEntry(_first([f"{RECORD} missing", *problems]))
    try:
        record = FilesRecord.model_validate_json(read_regular(entry / RECORD, MAX_JSON_BYTES))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))[:80]
        raise UntrustedEntry(_first([f"{RECORD} is malformed ({where + ': ' if where else ''}{err['msg'][:80]})",
                                     *problems])) from None
    except OSError as exc:
        raise UntrustedEntry(_first([f"{RECORD} cannot be read ({exc.strerror})", *problems])) from None
    if record.key != key:
        raise UntrustedEntry(_first([f"{RECORD} is another cell's", *problems]))
    try:
        files = {k: v.model_dump() for k, v in record.files.items()}
        public_key.verify(bytes.fromhex(record.signature), signed_bytes(key, files))
    except Exception:  # cryptography's InvalidSignature
        raise UntrustedEntry(_first([f"{RECORD} is not signed by this cache's key", *problems])) from None
    present = [p for p in present if p != RECORD]
    problems += [f"{shown(p)} missing" for p in record.files if p not in present]
    problems += [f"extra file {shown(p)}" for p in present if p not in record.files]
    data: dict[str, bytes] = {}
    for rel, want in record.files.items():
        if rel not in present:
            continue
        try:
            if rel in (RESULT, VERIFY):  # read once: the bytes that are checked are the bytes that are parsed
                data[rel] = read_regular(entry / rel, MAX_JSON_BYTES)
                h = hashlib.sha256(data[rel]).hexdigest()
                got = FileHash(sha256=h, size=len(data[rel]))
            else:
                got = file_hash(entry / rel)
        except OSError as exc:
            problems.append(f"{shown(rel)} cannot be read ({exc.strerror})")
            continue
        if got != want:
            problems.append(f"{shown(rel)} changed")
    if problems:
        raise UntrustedEntry(_first(problems))
    result = _typed(CachedResult, data[RESULT], RESULT, f"cache entry {key[:12]}")
    verify = _typed(CachedVerify, data[VERIFY], VERIFY, f"cache entry {key[:12]} (verify)") if VERIFY in data else None
    out = json.loads(data[RESULT])
    out["verify"] = json.loads(data[VERIFY]) if verify is not None else None
    return record, out
