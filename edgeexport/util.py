"""Small shared helpers: atomic writes, output folders, shapes, thread counts."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
import re
import shutil
import tempfile
from pathlib import Path

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
