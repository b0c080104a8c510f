"""Small shared helpers: atomic writes, output folders, shapes, thread counts, hashes, versions, one-line
messages and Markdown tables. One copy of each, for every layer above."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as md
import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from edgeexport.errors import UserError


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and folders (e.g. ``.mlpackage``). On failure the temporary is removed,
    so no partial artifact is ever left under the final name.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if tmp.is_file():  # some writers (safetensors) create 0600 files: give the umask's usual mode
            os.chmod(tmp, 0o666 & ~_umask())
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder, or fail with a one-line error when a file is in the way."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"output path {p} is under a file ({parent}), not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {p}: {exc.strerror}") from None
    if not os.access(p, os.W_OK):
        raise UserError(f"output folder {p} is not writable")
    return p


PLAIN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")  # a plain file name (POSIX portable characters)
_SHAPE = re.compile(r"^\s*(\d+)\s*(?:[x,]\s*(\d+)\s*){3}$")


def parse_shape(text: str | list | tuple) -> tuple[int, int, int, int]:
    """'1x3x520x520' (or a 4-list) -> (1, 3, 520, 520); anything else is a UserError."""
    if isinstance(text, (list, tuple)):
        dims = list(text)
    else:
        if not _SHAPE.match(str(text)):
            raise UserError(f"malformed shape {text!r}: expected NxCxHxW, e.g. 1x3x520x520")
        dims = [int(d) for d in re.split(r"[x,]", str(text).replace(" ", ""))]
    if len(dims) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise UserError(f"malformed shape {text!r}: expected four integers N, C, H, W")
    if any(d <= 0 for d in dims):
        raise UserError(f"malformed shape {text!r}: every dimension must be positive")
    if dims[2] > 8192 or dims[3] > 8192 or dims[0] > 1024:
        raise UserError(f"shape {text!r} is unreasonably large")
    return tuple(dims)  # type: ignore[return-value]


def format_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def file_size(path: str | os.PathLike) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


@contextlib.contextmanager
def quiet(loggers=("torch", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "coremltools",
                   "executorch", "torchao")):
    """Silence what converters and exporters print (stdout, stderr, warnings, their loggers).

    Yields the captured text, for reports when something fails.
    """
    buf = io.StringIO()
    objs = [logging.getLogger(n) for n in loggers] + [logging.getLogger()]
    levels = [lg.level for lg in objs]
    for lg in objs:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(objs, levels):
            lg.setLevel(level)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters): how an error enters a report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


def version_of(dist: str) -> str | None:
    """The installed version of a distribution (None: not installed)."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _feed(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def sha256_files(files, root: Path) -> str:
    """SHA-256 over files under ``root``: each file's POSIX name relative to ``root``, its size and its
    bytes, in name order, names and sizes length-prefixed so that no other set of files has the digest."""
    h = hashlib.sha256()
    for f in sorted((Path(f) for f in files), key=lambda f: f.relative_to(root).parts):
        name = f.relative_to(root).as_posix().encode("utf-8", "surrogateescape")
        h.update(len(name).to_bytes(8, "big") + name + f.stat().st_size.to_bytes(8, "big"))
        _feed(h, f)
    return h.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes; of a folder (an ``.mlpackage``), :func:`sha256_files` of every file in it."""
    path = Path(path)
    if path.is_dir():
        return sha256_files([p for p in path.rglob("*") if p.is_file()], path)
    h = hashlib.sha256()
    _feed(h, path)
    return h.hexdigest()


def fmt(v, spec: str = ".3g", none: str = "–") -> str:
    """A value in a table cell: floats by ``spec``, None as a dash."""
    if v is None:
        return none
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def md_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    """A Markdown table of dict rows (the columns of the first row unless given)."""
    if not rows:
        return []
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c), ".4g") if not isinstance(r.get(c), str) else r[c].replace("|", "/")
                                     for c in columns) + " |")
    return out


class Data(BaseModel):
    """Base of the typed records reports are made of: unknown keys are errors, and computed fields (written
    to JSON for its readers) are recomputed when a record is read back, never taken from the file."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data):
        if isinstance(data, dict) and cls.model_computed_fields:
            return {k: v for k, v in data.items() if k not in cls.model_computed_fields}
        return data
