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


# ---------------------------------------------------------------- what the page draws from them


def overlay_uri(eager_uri: str, artifact_uri: str) -> tuple[str, int]:
    """A transparent PNG with the pixels where the two masks' classes differ in magenta, grown so that one
    pixel stays visible when the page shows the map at about 200 px; a few scattered pixels also get a box
    around each, so that they can be found at all."""
    from PIL import Image

    e, a = decode_mask(eager_uri), decode_mask(artifact_uri)
    diff = e != a
    count = int(diff.sum())
    h, w = diff.shape
    r = max(0, round(max(h, w) / 200))
    shown = np.zeros((h + 2 * r, w + 2 * r), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            shown[dy:dy + h, dx:dx + w] |= diff
    shown = shown[r:r + h, r:r + w]
    if 0 < count <= 64:
        box = max(4, 6 * max(r, 1))
        for y, x in zip(*np.nonzero(diff)):
            y0, y1, x0, x1 = max(y - box, 0), min(y + box, h - 1), max(x - box, 0), min(x + box, w - 1)
            shown[y0:y1 + 1, [x0, x1]] = True
            shown[[y0, y1], x0:x1 + 1] = True
    im = Image.fromarray(shown.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 255])
    im.info["transparency"] = 0
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True, transparency=0)
    return data_uri(buf.getvalue(), "image/png"), count


def legend(classes: list[str] | None, masks: list[str]) -> list[dict]:
    """The classes that occur in the masks shown, with their palette colours."""
    present = sorted({int(v) for m in masks if m for v in np.unique(decode_mask(m)) if int(v) != 255})
    out = []
    for c in present[:24]:
        r, g, b = PALETTE[c]
        out.append({"name": classes[c] if classes and c < len(classes) else f"class {c}",
                    "colour": f"#{r:02x}{g:02x}{b:02x}"})
    return out
