"""Small shared helpers: atomic writes, output folders, shapes, thread counts, hashes, versions, one-line
messages and Markdown tables. One copy of each, for every layer above."""
from __future__ import annotations

import contextlib
import contextvars
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


def regular_input(path: str | os.PathLike, what: str = "file", folder: bool = False) -> Path:
    """``path`` if it is something a runtime may open: a non-empty regular file (or, with ``folder``, a folder of
    regular files and folders, no symlinks). A FIFO, a device, a symlink loop or an empty file is a one-line
    :class:`UserError` (a FIFO would block the reader forever)."""
    import stat

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise UserError(f"{what} {p} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {p} ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(st.st_mode):
        if not folder:
            raise UserError(f"{what} {p} is a folder, not a file")
        for sub in p.rglob("*"):
            if sub.is_symlink() or not (sub.is_file() or sub.is_dir()):
                raise UserError(f"{what} {p} holds {sub.relative_to(p)}, which is not a regular file or folder")
        return p
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {p} is not a regular file")
    if folder:
        raise UserError(f"{what} {p} is a file; this format is a folder (a package)")
    if st.st_size == 0:
        raise UserError(f"{what} {p} is empty")
    return p


def in_the_way(final: Path, writes_folder: bool = False, replaces=None) -> None:
    """Refuse to write ``final`` when something the tool must not delete is there: a folder where a file is
    written, a file or symlink where a folder is written, or a folder that ``replaces`` (a predicate: is this
    folder one edgeexport wrote, e.g. a bundle with its manifest) does not recognise. A regular file where a file
    is written is replaced: it is an earlier run's output of the same name."""
    if final.is_symlink():
        raise UserError(f"{final} is a symlink; edgeexport writes its output there only as a new "
                        f"{'folder' if writes_folder else 'file'} (move it away)")
    if not final.exists():
        return
    if final.is_dir():
        if not writes_folder:
            raise UserError(f"{final} is a folder; edgeexport writes a file there (move the folder away)")
        if replaces is None or not replaces(final):
            raise UserError(f"{final} is a folder edgeexport did not write; it would be replaced (move it away)")
    elif writes_folder:
        raise UserError(f"{final} is a file; edgeexport writes a folder there (move the file away)")
    elif not final.is_file():
        raise UserError(f"{final} is not a regular file; edgeexport writes a file there (move it away)")


def atomic_target(final: Path, writes_folder: bool = False, replaces=None) -> None:
    """Refuse, before any work, to write ``final`` where :func:`atomic_path` would refuse to: under something
    that is not a folder, or over something the tool must not replace (:func:`in_the_way`)."""
    if not final.parent.is_dir():
        raise UserError(f"cannot write {final}: {final.parent} is not a folder"
                        + ("" if final.parent.exists() or final.parent.is_symlink() else " (it does not exist)"))
    if final.exists() or final.is_symlink():
        in_the_way(final, writes_folder=writes_folder, replaces=replaces)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "", replaces=None):
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and folders (e.g. ``.mlpackage``). On failure the temporary is removed, so no partial
    artifact is ever left under the final name. Nothing the tool did not write is deleted: a folder at
    ``final`` is replaced only by a folder, and only when ``replaces(folder)`` recognises it as edgeexport's
    own; anything else in the way is a one-line :class:`UserError` (:func:`in_the_way`), checked before the
    block runs and again before the rename.
    """
    final = Path(final)
    atomic_target(final, writes_folder=final.is_dir(), replaces=replaces)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:80]}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if tmp.is_file():  # some writers (safetensors) create 0600 files: give the umask's usual mode
            os.chmod(tmp, 0o666 & ~_umask())
        in_the_way(final, writes_folder=tmp.is_dir(), replaces=replaces)
        if final.is_dir():
            old = final.with_name(f".{final.name[:80]}.{tmp.name[-12:]}.old")
            os.replace(final, old)  # our own earlier folder: out of the way first, removed once the new one is in
            try:
                os.replace(tmp, final)
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
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


# Bounds on what a recipe, flag or manifest may ask for: beyond them a value is bad input, not a long run.
MAX_THREADS = 256
MAX_RUNS = 10_000



def bounded(flag: str, value, low: int, high: int):
    """``value`` (an int from ``low`` to ``high``, or None), else a one-line :class:`UserError` naming ``flag``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{flag} {str(value)[:40]}: expected a whole number from {low} to {high}")
    return value


PLAIN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,254}")  # a plain file name (POSIX portable characters)


def plain_name(name: str) -> str:
    """``name`` as one plain file name: characters outside :data:`PLAIN_NAME` become ``_``, length capped."""
    out = re.sub(r"[^A-Za-z0-9._+-]", "_", str(name))[:200].lstrip(".") or "model"
    return out if PLAIN_NAME.fullmatch(out) else "model"


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


# Characters that steer a terminal or reorder text: C0 and C1 controls (but newline and tab), DEL, and the
# Unicode bidirectional overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """``text`` with every character that could steer a terminal shown as its escape (``\\x1b``), so a string
    from an artifact, a manifest or a report prints as what it is."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


@contextlib.contextmanager
def stdout_to_stderr():
    """For the block, whatever is written to standard output (by the user's model code, a library, a native
    runtime: Python's ``sys.stdout`` and file descriptor 1) goes to standard error; yields a stream on the
    real standard output, for the one document that belongs there (``--json``)."""
    import sys

    original = sys.stdout
    try:
        fd = original.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test runner): no descriptor to move
        fd = None
    original.flush()
    saved = os.dup(fd) if fd is not None else None
    real = os.fdopen(os.dup(saved), "w", encoding="utf-8", closefd=True) if saved is not None else original
    try:
        if saved is not None:
            os.dup2(2, fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
            real.flush()
            real.close()


@contextlib.contextmanager
def native_stderr():
    """What native code writes to file descriptor 2 during the block (a parser's complaints), captured instead of
    reaching the terminal; yields a list that holds the captured lines once the block ends."""
    import sys

    lines: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(ln for ln in sink.read(1 << 16).decode("utf-8", "replace").splitlines() if ln.strip())


_CAPTURE: "contextvars.ContextVar[list | None]" = contextvars.ContextVar("edgeexport_capture", default=None)


@contextlib.contextmanager
def capture_warnings():
    """Python warnings raised by libraries during the block are recorded (each distinct one once, with a count)
    instead of printed: the command's report carries them (:func:`captured`), the terminal does not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        token = _CAPTURE.set(caught)
        try:
            yield caught
        finally:
            _CAPTURE.reset(token)


def captured() -> list[str]:
    """The warnings recorded so far by the innermost :func:`capture_warnings`, as ``Category (xN): message``."""
    caught = _CAPTURE.get()
    if not caught:
        return []
    counts: dict[str, int] = {}
    for w in caught:
        key = terminal_safe(f"{w.category.__name__}: {str(w.message).splitlines()[0][:300] if str(w.message) else ''}")
        counts[key] = counts.get(key, 0) + 1
    return [k if n == 1 else k.replace(":", f" (x{n}):", 1) for k, n in counts.items()]


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
