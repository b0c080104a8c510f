"""The bytes that were hashed are the bytes that run: a bundle's files, hashed while they are copied into a
private folder (or hashed in place, to check a bundle without running it).

A file is opened once, without following a symlink at its last component and refused unless it is a regular
file (a FIFO would block, a device would never end); a folder artifact (an ``.mlpackage``) is walked without
following symlinks and copied file by file, with the digest of :func:`edgeexport.util.sha256_files`. A runtime
that is given the private copy finds there exactly the files the manifest names and hashes: a companion it
would open by itself (an IR's weights, ONNX external data) is not there unless the manifest names it.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from edgeexport.errors import UserError

_CHUNK = 1 << 20
MAX_FOLDER_FILES = 100_000
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _copy_file(src: Path, dest: Path | None, h, what: str, header: bytes | None = None) -> int:
    """Feed ``src``'s bytes (after ``header`` + its size, for folder hashes) into ``h``, copying them to ``dest``."""
    try:
        fd = os.open(src, _FLAGS)
    except OSError as exc:
        raise UserError(f"cannot read {what} ({'a symlink' if exc.errno == 40 else type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} is not a regular file")
        if header is not None:
            h.update(len(header).to_bytes(8, "big") + header + st.st_size.to_bytes(8, "big"))
        out = None
        if dest is not None:
            out = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600),
                            "wb")
        n = 0
        try:
            while chunk := fh.read(_CHUNK):
                n += len(chunk)
                if n > st.st_size:
                    break
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()
        if n != st.st_size:
            raise UserError(f"{what} changed while it was read")
    return n


def _walk(top: Path, rel: tuple[str, ...], files: list, dirs: list, what: str) -> None:
    try:
        entries = sorted(os.scandir(top / Path(*rel)), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot read {what} ({type(exc).__name__})") from None
    for e in entries:
        sub = rel + (e.name,)
        if e.is_dir(follow_symlinks=False):
            dirs.append(sub)
            _walk(top, sub, files, dirs, what)
        elif e.is_file(follow_symlinks=False):
            files.append(sub)
        else:
            raise UserError(f"{what} contains {'/'.join(sub)[:80]!r}, which is not a regular file or folder (no "
                            "symlinks inside a folder artifact)")
        if len(files) + len(dirs) > MAX_FOLDER_FILES:
            raise UserError(f"{what} holds more than {MAX_FOLDER_FILES} files")


def copy_hashed(src: Path, dest: Path | None, what: str) -> tuple[str, int]:
    """SHA-256 (:func:`edgeexport.util.sha256`'s digest) and size of ``src`` (a file, or a folder of files),
    copied to ``dest`` (which must not exist) while it is hashed; ``dest`` None: hashed in place."""
    h = hashlib.sha256()
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        return h.hexdigest() if False else (lambda n: (h.hexdigest(), n))(_copy_file(src, dest, h, what))
    files: list[tuple[str, ...]] = []
    dirs: list[tuple[str, ...]] = []
    _walk(src, (), files, dirs, what)
    if dest is not None:
        dest.mkdir(mode=0o700)
        for d in dirs:
            (dest / Path(*d)).mkdir(mode=0o700)
    size = 0
    for f in sorted(files):  # util.sha256_files: name order by path parts
        name = "/".join(f).encode("utf-8", "surrogateescape")
        size += _copy_file(src / Path(*f), None if dest is None else dest / Path(*f), h, what, header=name)
    return h.hexdigest(), size
