"""Images in a report: photographs as small JPEG data URIs, masks as palette PNG data URIs of
class-index maps (the pixel value is the class; the palette is :data:`PALETTE`). The pipeline encodes
them into the report JSON (:mod:`edgeexport.pipeline.views`); the HTML page decodes and overlays them.
"""
from __future__ import annotations

import base64
import io

import numpy as np

INPUT_MAX_SIDE = 384  # photographs in the report are downsampled to this size


def _palette() -> list[tuple[int, int, int]]:
    base = [(40, 40, 40), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
            (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141),
            (158, 218, 229), (127, 127, 127), (90, 90, 200)]
    rng = np.random.default_rng(0)
    extra = [tuple(int(v) for v in rng.integers(40, 240, 3)) for _ in range(256 - len(base))]
    return base + extra


PALETTE = _palette()  # class 0 (background) dark grey, then matplotlib's tab10 / tab20 colours


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def decode_data_uri(uri: str) -> bytes:
    return base64.b64decode(uri.split(",", 1)[1])


def jpeg_uri(image: np.ndarray, max_side: int = INPUT_MAX_SIDE, quality: int = 80) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, optimize=True)
    return data_uri(buf.getvalue(), "image/jpeg")


def mask_uri(mask: np.ndarray) -> str:
    """A class-index map as a palette PNG (lossless: pixel value = class; 255, ignore, stays 255)."""
    from PIL import Image

    m = np.asarray(mask)
    im = Image.fromarray(np.clip(m, 0, 255).astype(np.uint8), mode="P")
    im.putpalette([c for rgb in PALETTE for c in rgb])
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return data_uri(buf.getvalue(), "image/png")


def decode_mask(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(decode_data_uri(uri))))


def photo_of(x: np.ndarray, mean, std) -> np.ndarray:
    """A normalised 3xHxW input back to HxWx3 uint8."""
    img = np.moveaxis(np.asarray(x, np.float32), 0, -1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
