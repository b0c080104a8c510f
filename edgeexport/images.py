"""Images: the photographs available offline, user image folders, preprocessing.

The bundled photographs are scikit-image's sample images (installed with the
``scikit-image`` wheel, no download; provenance and licences are documented in the
``skimage.data`` docstrings). They are split into two disjoint sets:

* ``eval``: natural colour photographs used for parity checks and accuracy budgets;
* ``calib``: the others, used for int8 calibration and BatchNorm re-estimation.

Where a run's inputs come from (photographs, a folder, labeled data, calibration) is
:mod:`edgeexport.inputs`, above the labeled datasets; this module is below them.
"""
from __future__ import annotations

import contextlib
import functools
import stat
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgeexport.errors import UserError

EVAL_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png")
CALIB_PHOTOS = ("rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
                "moon.png", "grass.png", "gravel.png", "brick.png", "cell.png", "color.png")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


# Bounds on a user's image, checked from its header before it is decoded: a 370-byte PNG can declare 100000x1
# pixels, and resizing that for a centre crop would take gigabytes.
MAX_IMAGE_PIXELS = 64_000_000
MAX_ASPECT = 20
MIN_SIDE = 8


def _pil():
    from PIL import Image

    return Image


@contextlib.contextmanager
def open_image(path: Path, what: str = "image"):
    """A user's image opened (not decoded) after checking that it is a regular file whose declared size is within
    the bounds above; yields the PIL image. Anything else is a one-line :class:`UserError`."""
    Image = _pil()
    try:
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the bounds below decide
            im = Image.open(path)
    except Exception as exc:  # PIL raises many types for corrupt files (DecompressionBombError among them)
        raise UserError(f"{path}: not a readable {what} ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:120]})") from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise UserError(f"{path}: {w}x{h} pixels, more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
        if min(w, h) < MIN_SIDE or max(w, h) > MAX_ASPECT * min(w, h):
            raise UserError(f"{path}: a {w}x{h} {what} (sides of at least {MIN_SIDE} px and an aspect ratio of at "
                            f"most {MAX_ASPECT}:1 are taken)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield im


@functools.lru_cache(maxsize=None)
def _bundled(name: str) -> np.ndarray:
    Image = _pil()
    with resources.as_file(resources.files("skimage.data") / name) as path:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))


def photos(split: str = "eval") -> list[tuple[str, np.ndarray]]:
    """The bundled photographs of a split, as (name, HxWx3 uint8) pairs."""
    names = {"eval": EVAL_PHOTOS, "calib": CALIB_PHOTOS, "all": EVAL_PHOTOS + CALIB_PHOTOS}[split]
    return [(n, _bundled(n)) for n in names]


def read_image(path: Path) -> np.ndarray:
    """Read one user image as HxWx3 uint8; grayscale is replicated, other layouts are refused."""
    try:
        with open_image(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "L", "P") or (mode == "RGBA" and im.getextrema()[3][0] == 255):
                return np.asarray(im.convert("RGB"))
            if mode in ("RGBA", "LA"):
                raise UserError(f"{path}: image has transparency ({mode}); flatten it to RGB first")
            raise UserError(f"{path}: unsupported channel layout {mode!r}; expected RGB or grayscale 8-bit")
    except UserError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def folder_images(folder: str | Path) -> list[tuple[str, np.ndarray]]:
    """Every image in a folder (sorted), validated. Empty or missing folders are errors."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UserError(f"image folder {folder} is empty")
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise UserError(f"image folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [(p.name, read_image(p)) for p in images]


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """Per-model preprocessing: resize policy and normalisation (declared in the model meta)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "resize"  # "resize" | "center_crop"
    crop_fraction: float = 0.875

    def __call__(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        """HxWx3 uint8 -> 3xHxW float32, resized and normalised."""
        return self.normalize(self.resize(image, height, width))

    def _geometry(self, size: tuple[int, int], height: int, width: int):
        """(resized W, H) and the crop box applied after resizing, for an image of ``size`` (W, H)."""
        if self.resize_mode == "center_crop":
            scale = max(height, width) / self.crop_fraction / min(size)
            rw, rh = max(width, round(size[0] * scale)), max(height, round(size[1] * scale))
            left, top = (rw - width) // 2, (rh - height) // 2
            return (rw, rh), (left, top, left + width, top + height)
        return (width, height), None

    def resize(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        """HxWx3 uint8 -> height x width x 3 uint8 (bilinear resize, then the centre crop if any)."""
        Image = _pil()
        im = Image.fromarray(image)
        size, box = self._geometry(im.size, height, width)
        im = im.resize(size, Image.BILINEAR)
        return np.asarray(im.crop(box) if box else im)

    def resize_mask(self, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """A label map through the same geometry as its image, by nearest neighbour."""
        Image = _pil()
        im = Image.fromarray(np.asarray(mask, dtype=np.uint8))
        size, box = self._geometry(im.size, height, width)
        im = im.resize(size, Image.NEAREST)
        return np.asarray(im.crop(box) if box else im)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 (or NxHxWx3) -> 3xHxW (Nx3xHxW) float32 with the model's mean and std."""
        x = np.asarray(image, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (50-100% of the side) and horizontal flip, for calibration diversity."""
    h, w = image.shape[:2]
    s = rng.uniform(0.5, 1.0)
    ch, cw = max(8, int(h * s)), max(8, int(w * s))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = image[top:top + ch, left:left + cw]
    return out[:, ::-1] if rng.random() < 0.5 else out
