"""Reading a bundle's ``.npz`` arrays without trusting them: nothing is decompressed that the manifest does
not account for.

An ``.npz`` is a zip of ``.npy`` files, and a 2 MB zip can hold a member that inflates to 2 GiB. Before any
data is read, the zip's directory is checked (the members the manifest implies and no others, each stored or
deflated, each declaring an uncompressed size within what its declared shape needs, the total under
:data:`MAX_ARRAY_BYTES`); then each member's ``.npy`` header is read and its dtype and shape checked against the
manifest; only then are exactly that many bytes read (the zip reader stops at the declared size).
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from edgeexport.errors import UserError

MAX_MEMBERS = 4096
MAX_ARRAY_BYTES = 1 << 30  # per .npz file: what verify holds in memory at most
HEADER_SLACK = 1 << 16  # an .npy header (magic, version, length, the dict) is at most this
# What the writer writes: inputs are float32 images; references are the eager model's outputs (float32 from
# PyTorch; an ONNX reference graph may return float16 or integer outputs, e.g. an argmax).
INPUT_DTYPES = (np.dtype(np.float32),)
REFERENCE_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int64, np.int32, np.int16,
                                               np.int8, np.uint8, np.uint16, np.uint32, np.uint64))


def _show(value, limit: int = 60) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + "...'"


def expected_bytes(shape) -> int:
    """What an array of ``shape`` takes at most (8-byte items) with its ``.npy`` header."""
    return math.prod(shape) * 8 + HEADER_SLACK


def read_npz(path: Path, expected: dict[str, list[int]], dtypes: tuple, what: str,
             shown: Path | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``path``: exactly the keys of ``expected`` (``{key: shape}``), each of that shape and one of
    ``dtypes``, or a one-line :class:`UserError` that names ``shown`` (the bundle's file, when ``path`` is
    a private copy of it); nothing larger than the shapes imply is decompressed."""
    p = shown or path
    if len(expected) > MAX_MEMBERS:
        raise UserError(f"{p}: the manifest declares {len(expected)} {what} arrays (at most {MAX_MEMBERS})")
    declared = sum(expected_bytes(s) for s in expected.values())
    if sum(math.prod(s) * 4 for s in expected.values()) > MAX_ARRAY_BYTES:
        raise UserError(f"{p}: the manifest declares {what} larger than {MAX_ARRAY_BYTES >> 30} GiB")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UserError(f"{p}: unreadable arrays (not an .npz archive: {type(exc).__name__})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UserError(f"{p}: unreadable arrays ({len(infos)} members, at most {MAX_MEMBERS})")
        names = [i.filename for i in infos]
        keys = [n[:-4] for n in names if n.endswith(".npy")]
        if len(set(names)) != len(names) or len(keys) != len(names) or sorted(keys) != sorted(expected):
            extra = sorted(set(n.removesuffix(".npy") for n in names) - set(expected))
            raise UserError(f"{p}: unexpected arrays (" + (f"e.g. {_show(extra[0], 40)}" if extra else
                            f"expected {len(expected)}, found {len(names)}") + ")")
        total = 0
        for info in infos:
            key = info.filename[:-4]
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                raise UserError(f"{p}: array {_show(key, 40)} is compressed in a way .npz files are not")
            total += info.file_size
            if info.file_size > expected_bytes(expected[key]) or total > min(declared, MAX_ARRAY_BYTES + HEADER_SLACK):
                raise UserError(f"{p}: array {_show(key, 40)} declares {info.file_size} bytes, more than the "
                                f"manifest's shape {expected[key]} needs (refused unread)")
        return {info.filename[:-4]: _member(zf, info, p, expected[info.filename[:-4]], dtypes) for info in infos}


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, p: Path, shape: list[int], dtypes: tuple) -> np.ndarray:
    key = info.filename[:-4]
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):  # 3.0 is for utf-8 field names: structured, not numbers
                raise ValueError(f"npy version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            got, fortran, dtype = read(fh, max_header_size=HEADER_SLACK)
            if dtype.hasobject or dtype not in dtypes:
                raise UserError(f"{p}: array {_show(key, 40)} is {dtype}, not "
                                f"{' or '.join(str(d) for d in dtypes[:3])}{' or ...' if len(dtypes) > 3 else ''}")
            if list(got) != list(shape):
                raise UserError(f"{p}: array {_show(key, 40)} has shape {list(got)[:8]}, not the manifest's {shape}")
            n = math.prod(shape) * dtype.itemsize
            data = bytearray(fh.read(n))
            if len(data) != n:
                raise ValueError(f"{len(data)} of {n} bytes")
    except UserError:
        raise
    except Exception as exc:  # what numpy or zipfile raise on a malformed member (CRC, header syntax): bad input
        raise UserError(f"{p}: unreadable arrays ({type(exc).__name__} in {_show(key, 40)}: "
                        f"{' '.join(str(exc).split())[:120]})") from None
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
