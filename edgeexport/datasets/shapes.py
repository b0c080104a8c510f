"""The built-in labeled task: textured shapes composited onto crops of the bundled photographs.

A synthetic stand-in for a user's labeled validation set, generated deterministically and
offline, so that task accuracy (mIoU, top-1) of every artifact can be measured and tested
without a download. It is *not* a benchmark of real-world accuracy.

Eight shape classes, in alphabetical order (so that an ImageFolder written from it sorts to
the training indices): circle, crescent, cross, hexagon, ring, square, star, triangle.

* ``shapes_seg`` (segmentation): 1-5 shapes per scene plus 0-2 occluders (irregular patches of
  photo texture, which belong to the background); label 0
  is background, 1-8 the shapes; the antialiased boundary of every object is 255 (ignore), as
  in Pascal VOC. Object sizes are relative to ``scale_ref`` (the evaluation size), so training
  on smaller canvases sees objects at the pixel scale of evaluation.
* ``shapes_cls`` (classification): one shape of 30-70% of the side, sometimes partly
  occluded, on a photo crop; generated at 256x256 so that a 224 centre crop keeps the shape.

Every scene varies: the photo crop behind it (flip, colour jitter), each shape's size
(log-uniform over a 5x range), aspect, rotation, fill (flat, gradient, stripes or checker,
chosen to contrast with what is behind it), occlusion by other shapes and by patches of photo
texture, then blur and sensor noise.

A sample is a pure function of (split, seed, index): ``np.random.default_rng((SALT, split, seed,
index))``. The splits ``train``, ``calib``, ``val`` and ``eval`` draw from disjoint streams.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASSES = ("circle", "crescent", "cross", "hexagon", "ring", "square", "star", "triangle")
SPLITS = {"train": 0, "calib": 1, "val": 2, "eval": 3}
SALT = 0x5EED5
SUPERSAMPLE = 4
IGNORE = 255
VERSION = 1  # bump when the generator's output changes


# ---------------------------------------------------------------- geometry


def _circle(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _regular(k: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(k) * 2 * np.pi / k
    return np.stack([np.cos(t), np.sin(t)], 1)


def shape_polygons(cls: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons in unit coordinates (radius ~1), each with its fill value (255 draw, 0 cut out)."""
    if cls == "circle":
        return [(_circle(), 255)]
    if cls == "crescent":
        off = rng.uniform(0.35, 0.5)
        return [(_circle(), 255), (_circle() * 0.85 + [off, 0.0], 0)]
    if cls == "cross":
        w = rng.uniform(0.28, 0.38)
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w),
               (-w, 1)]
        return [(np.asarray(pts, np.float64), 255)]
    if cls == "hexagon":
        return [(_regular(6), 255)]
    if cls == "ring":
        return [(_circle(), 255), (_circle() * rng.uniform(0.5, 0.62), 0)]
    if cls == "square":
        return [(_regular(4, np.pi / 4) * math.sqrt(2) * 0.8, 255)]
    if cls == "star":
        inner = rng.uniform(0.4, 0.5)
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), 255)]
    if cls == "triangle":
        return [(_regular(3, np.pi / 2), 255)]
    raise ValueError(f"unknown shape {cls!r}")


def blob_polygon(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """An irregular blob (an occluder that belongs to no class)."""
    k = int(rng.integers(7, 12))
    t = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = rng.uniform(0.45, 1.0, k)
    return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), 255)]


def render_alpha(polys, radius: float, aspect: float, angle: float) -> tuple[np.ndarray, float, float]:
    """Antialiased coverage (0..1) of the transformed polygons; returns (alpha, cx, cy) where
    (cx, cy) is the polygons' origin inside the alpha patch."""
    from PIL import Image, ImageDraw

    sx, sy = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    c, s = math.cos(angle), math.sin(angle)
    moved = []
    for pts, fill in polys:
        x, y = pts[:, 0] * sx, pts[:, 1] * sy
        moved.append((np.stack([x * c - y * s, x * s + y * c], 1), fill))
    allpts = np.concatenate([p for p, _ in moved])
    lo = np.floor(allpts.min(0)) - 2
    hi = np.ceil(allpts.max(0)) + 2
    w, h = int(hi[0] - lo[0]), int(hi[1] - lo[1])
    k = SUPERSAMPLE
    im = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(im)
    for pts, fill in moved:
        draw.polygon([tuple(p) for p in ((pts - lo) * k).tolist()], fill=fill)
    alpha = np.asarray(im.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    return alpha, float(-lo[0]), float(-lo[1])


# ---------------------------------------------------------------- appearance


def _photos() -> list[np.ndarray]:
    from edgeexport.images import photos

    return [a for _, a in photos("all")]


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))


def background(rng: np.random.Generator, h: int, w: int, pool: list[np.ndarray]) -> np.ndarray:
    """A random crop of a bundled photograph, resized to HxW, flipped and colour-jittered."""
    photo = pool[int(rng.integers(len(pool)))]
    ph, pw = photo.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch = int(min(ph, pw * h / w) * frac)
    cw = max(8, int(ch * w / h))
    ch = max(8, ch)
    top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = _resize(photo[top:top + ch, left:left + cw], h, w).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = (rng.uniform(0.7, 1.2, 3) * rng.uniform(0.8, 1.2)).astype(np.float32)
    # Reduced contrast (35-80%): the photo stays a photo, the shapes in front of it stay the subject.
    mean = crop.mean((0, 1), keepdims=True)
    crop = (crop - mean) * float(rng.uniform(0.35, 0.8)) + mean
    crop = (crop - 128.0) * float(rng.uniform(0.8, 1.1)) + (128.0 + float(rng.uniform(-25, 25)))
    crop *= gain
    return np.clip(crop, 0, 255, out=crop)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))
    return np.asarray([r, g, b], np.float32) * 255


SHAPE_FILLS = (("flat", "gradient", "stripes", "checker"), (0.45, 0.35, 0.15, 0.05))
BLOB_FILLS = (("photo",), (1.0,))


def texture(rng: np.random.Generator, h: int, w: int, pool: list[np.ndarray], fills=SHAPE_FILLS) -> np.ndarray:
    """An HxWx3 float fill: flat, gradient, stripes, checker, or a tinted photo texture (occluders)."""
    kind = rng.choice(fills[0], p=fills[1])
    a, b = _random_color(rng), _random_color(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        out = np.broadcast_to(a, (h, w, 3)).copy()
    elif kind == "gradient":
        t = rng.uniform(0, 2 * np.pi)
        u = (xx * math.cos(t) + yy * math.sin(t))
        u = (u - u.min()) / max(float(np.ptp(u)), 1.0)
        out = a * (1 - u[..., None]) + b * u[..., None]
    elif kind in ("stripes", "checker"):
        period = rng.uniform(6, 20)
        t = rng.uniform(0, np.pi)
        u = xx * math.cos(t) + yy * math.sin(t)
        m = (np.floor(u / period) % 2).astype(np.float32)
        if kind == "checker":
            v = -xx * math.sin(t) + yy * math.cos(t)
            m = np.abs(m - (np.floor(v / period) % 2))
        out = a * (1 - m[..., None]) + b * m[..., None]
    else:
        photo = pool[int(rng.integers(len(pool)))]
        ph, pw = photo.shape[:2]
        ch, cw = min(ph, max(8, h * 2)), min(pw, max(8, w * 2))
        top, left = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        crop = _resize(photo[top:top + ch, left:left + cw], h, w).astype(np.float32)
        out = crop * 0.5 + a * 0.5
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * float(rng.uniform(0, 6))
    return (out + grain).astype(np.float32, copy=False)


@dataclass
class Canvas:
    image: np.ndarray  # HxWx3 float32, 0..255
    label: np.ndarray | None  # HxW uint8 (segmentation) or None


def paste(canvas: Canvas, rng: np.random.Generator, polys, value: int | None, cx: float, cy: float, radius: float,
          pool: list[np.ndarray], min_contrast: float = 45.0) -> float:
    """Composite one object (a shape of class ``value``, or an occluder when ``value`` is None)."""
    fills = SHAPE_FILLS if value is not None else BLOB_FILLS
    h, w = canvas.image.shape[:2]
    alpha, ox, oy = render_alpha(polys, radius, rng.uniform(0.75, 1.33), rng.uniform(0, 2 * np.pi))
    ah, aw = alpha.shape
    x0, y0 = int(round(cx - ox)), int(round(cy - oy))
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(w, x0 + aw), min(h, y0 + ah)
    if dx1 <= dx0 or dy1 <= dy0:
        return 0.0
    a = alpha[sy0:sy0 + dy1 - dy0, sx0:sx0 + dx1 - dx0]
    region = canvas.image[dy0:dy1, dx0:dx1]
    inside = a > 0.5
    behind = region[inside].mean(0) if inside.any() else region.reshape(-1, 3).mean(0)
    fill = texture(rng, *a.shape, pool, fills)
    for _ in range(6):  # an object has to be visible against what is behind it
        if np.linalg.norm(fill[inside].mean(0) - behind) >= min_contrast if inside.any() else True:
            break
        fill = texture(rng, *a.shape, pool, fills)
    region[:] = region * (1 - a[..., None]) + fill * a[..., None]
    if canvas.label is not None:
        lab = canvas.label[dy0:dy1, dx0:dx1]
        lab[a >= 0.5] = value if value is not None else 0
        lab[(a > 0.1) & (a < 0.9)] = IGNORE
    return float(a.sum() / max(alpha.sum(), 1e-6))


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur and sensor noise, then back to uint8."""
    from PIL import Image, ImageFilter

    out = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))))
    if rng.random() < 0.5:
        noisy = rng.standard_normal(out.shape, dtype=np.float32)
        noisy *= float(rng.uniform(1, 8))
        noisy += out
        out = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------- the two tasks


def sample_rng(split: str, seed: int, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}")
    return np.random.default_rng((SALT, VERSION, SPLITS[split], int(seed), int(index)))


def segmentation_scene(rng: np.random.Generator, h: int, w: int, scale_ref: float | None = None,
                       pool: list[np.ndarray] | None = None, shapes: tuple[int, int] = (1, 5)) -> tuple[np.ndarray, np.ndarray]:
    """HxWx3 uint8 image and HxW uint8 label (0 background, 1..8 shapes, 255 ignore).

    ``shapes``: how many shapes (inclusive range); training uses denser scenes than evaluation.
    """
    pool = pool if pool is not None else _photos()
    ref = float(scale_ref or max(h, w))
    canvas = Canvas(background(rng, h, w, pool), np.zeros((h, w), np.uint8))
    items = [("shape", int(rng.integers(len(CLASSES)))) for _ in range(int(rng.integers(shapes[0], shapes[1] + 1)))]
    items += [("blob", -1) for _ in range(int(rng.integers(0, 3)))]
    order = rng.permutation(len(items))
    for i in order:
        kind, cls = items[i]
        if kind == "shape":
            radius = ref * math.exp(rng.uniform(math.log(0.05), math.log(0.2)))
            polys, value = shape_polygons(CLASSES[cls], rng), cls + 1
        else:
            radius = ref * rng.uniform(0.04, 0.12)
            polys, value = blob_polygon(rng), None
        cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
        paste(canvas, rng, polys, value, cx, cy, radius, pool)
    return finish(canvas.image, rng), canvas.label


def classification_scene(rng: np.random.Generator, h: int, w: int,
                         pool: list[np.ndarray] | None = None) -> tuple[np.ndarray, int]:
    """HxWx3 uint8 image with one shape of class ``label`` (0..7)."""
    pool = pool if pool is not None else _photos()
    side = float(min(h, w))
    canvas = Canvas(background(rng, h, w, pool), None)
    for _ in range(int(rng.integers(0, 3))):  # clutter behind the shape
        paste(canvas, rng, blob_polygon(rng), None, rng.uniform(0, w), rng.uniform(0, h),
              side * rng.uniform(0.05, 0.15), pool)
    label = int(rng.integers(len(CLASSES)))
    radius = side * rng.uniform(0.15, 0.35)
    cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * side, h / 2 + rng.uniform(-0.1, 0.1) * side
    paste(canvas, rng, shape_polygons(CLASSES[label], rng), label, cx, cy, radius, pool)
    if rng.random() < 0.35:  # an occluder over part of the shape
        t = rng.uniform(0, 2 * np.pi)
        d = radius * rng.uniform(0.8, 1.2)
        paste(canvas, rng, blob_polygon(rng), None, cx + d * math.cos(t), cy + d * math.sin(t),
              radius * rng.uniform(0.3, 0.5), pool)
    return finish(canvas.image, rng), label
