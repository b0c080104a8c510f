"""Labeled sets: read the user's folders, generate the built-in ones, write either as a folder.

Layouts (the same ones ``edgeexport data`` writes):

* classification, ImageFolder: one sub-folder per class; the sorted folder names are the class
  indices, unless a ``classes.txt`` (one name per line, line number = index) says otherwise;
* segmentation: ``images/`` and ``masks/`` with matching file stems; a mask is a single-channel
  PNG of class indices (palette PNGs are read as their indices), 255 = ignore (Pascal VOC).

Problems (an empty folder, no image/mask pairs, a mask whose size differs from its image, an
RGB mask, a label out of the model's range) are :class:`UserError` with the file named.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeexport.images import IMAGE_EXTENSIONS, open_image, read_image
from edgeexport.errors import UserError
from edgeexport.metrics import IGNORE_INDEX

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")


@dataclass
class LabeledSet:
    """An ordered, indexable set of (name, HxWx3 uint8 image, label) samples."""

    task: str
    classes: list[str] | None
    source: dict  # what it is, for reports: {"kind": "folder", "path": ...} or {"kind": "builtin", ...}
    names: list[str] = field(default_factory=list)
    _images: list = field(default_factory=list, repr=False)  # Path, or None for generated samples
    _labels: list = field(default_factory=list, repr=False)  # int, Path, or None for generated samples
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray | int]:
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return (self.names[i], *self._cache[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _load(self, i: int):
        image_path, label = self._images[i], self._labels[i]
        image = read_image(image_path)
        if isinstance(label, Path):
            mask = read_mask(label)
            if mask.shape != image.shape[:2]:
                raise UserError(f"{label}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {image_path.name} is "
                                f"{image.shape[1]}x{image.shape[0]}")
            return image, mask
        return image, label

    def describe(self) -> dict:
        return {**self.source, "task": self.task, "images": len(self), "classes": self.classes}

    def check_range(self, num_classes: int) -> None:
        """Every label is a class index below ``num_classes`` (or the ignore label)."""
        if self.classes is not None and len(self.classes) > num_classes:
            raise UserError(f"{self.source_label}: {len(self.classes)} classes, the model predicts {num_classes}")
        for name, _, label in self:
            values = np.unique(label) if self.task == "segmentation" else np.asarray([label])
            bad = [int(v) for v in values if v != IGNORE_INDEX and not 0 <= v < num_classes]
            if bad:
                raise UserError(f"{self.source_label}: {name} has class index {bad[0]}, out of range for a model "
                                f"with {num_classes} classes (0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")

    @property
    def source_label(self) -> str:
        return self.source.get("path") or self.source.get("spec") or "labeled data"


# ---------------------------------------------------------------- reading


def read_mask(path: Path) -> np.ndarray:
    try:
        with open_image(path, "mask") as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8)  # a palette image reads as its indices
            if im.mode in ("I", "I;16") and np.asarray(im).max() <= 255:
                return np.asarray(im).astype(np.uint8)
            raise UserError(f"{path}: a mask must be single-channel class indices (L or palette P), not {im.mode}")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: not a readable mask ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _image_size(path: Path) -> tuple[int, int]:
    with open_image(path) as im:
        return im.size


def _files(folder: Path, extensions) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in extensions)


def load_folder(path: str | Path, count: int | None = None, task: str | None = None) -> LabeledSet:
    """Read a labeled folder; the layout decides the task (``task`` only checks it)."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"labeled data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"labeled data {root} is not a folder (nor a built-in set such as shapes_seg)")
    if (root / "images").is_dir() or (root / "masks").is_dir():
        found = _segmentation_folder(root, count)
    else:
        found = _image_folder(root, count)
    if task is not None and found.task != task:
        raise UserError(f"{root} is laid out for {found.task}; the model's task is {task}")
    return found


def _classes_txt(root: Path) -> list[str] | None:
    f = root / "classes.txt"
    if not f.is_file():
        return None
    names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"{f}: a class is listed twice")
    return names


def _segmentation_folder(root: Path, count: int | None) -> LabeledSet:
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise UserError(f"{root}: a segmentation set needs both images/ and masks/ (no {d.name}/)")
    images = {p.stem: p for p in _files(images_dir, IMAGE_EXTENSIONS)}
    masks = {p.stem: p for p in _files(masks_dir, MASK_EXTENSIONS)}
    if not images:
        raise UserError(f"{images_dir} has no images")
    if not masks:
        raise UserError(f"{masks_dir} has no masks (single-channel PNG)")
    stems = sorted(set(images) & set(masks))
    if not stems:
        raise UserError(f"{root}: no image in images/ has a mask with the same name in masks/ "
                        f"(e.g. images/{next(iter(images))}.* needs masks/{next(iter(images))}.png)")
    stems = stems[:count] if count else stems
    for s in stems:  # sizes from the headers: cheap, and a mismatch is reported before anything runs
        iw, ih = _image_size(images[s])
        mw, mh = _image_size(masks[s])
        if (iw, ih) != (mw, mh):
            raise UserError(f"{masks[s]}: mask is {mw}x{mh}, its image {images[s].name} is {iw}x{ih}")
    return LabeledSet("segmentation", _classes_txt(root), {"kind": "folder", "path": str(root)}, list(stems),
                      [images[s] for s in stems], [masks[s] for s in stems])


def _image_folder(root: Path, count: int | None) -> LabeledSet:
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        loose = _files(root, IMAGE_EXTENSIONS)
        if loose:
            raise UserError(f"{root}: images without labels; use one sub-folder per class (classification) or "
                            "images/ + masks/ (segmentation)")
        raise UserError(f"labeled data folder {root} is empty")
    classes = _classes_txt(root)
    if classes is None:
        classes = subdirs
    else:
        unknown = [d for d in subdirs if d not in classes]
        if unknown:
            raise UserError(f"{root}: folder {unknown[0]!r} is not in classes.txt")
    items = []
    for d in subdirs:
        for f in _files(root / d, IMAGE_EXTENSIONS):
            items.append((f"{d}/{f.name}", f, classes.index(d)))
    if not items:
        raise UserError(f"{root}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    if count:  # a deterministic subset that keeps every class: round-robin over the classes
        by_class: dict[int, list] = {}
        for it in items:
            by_class.setdefault(it[2], []).append(it)
        rr = [it for group in zip_longest_all(list(by_class.values())) for it in group]
        items = sorted(rr[:count], key=lambda it: it[0])
    return LabeledSet("classification", list(classes), {"kind": "folder", "path": str(root)},
                      [n for n, _, _ in items], [f for _, f, _ in items], [c for _, _, c in items])


def zip_longest_all(groups: list[list]) -> list[list]:
    """Round-robin rows: the first item of every group, then the second, ..."""
    rows = []
    for i in range(max((len(g) for g in groups), default=0)):
        rows.append([g[i] for g in groups if i < len(g)])
    return rows


# ---------------------------------------------------------------- built-in sets


def from_builtin(ds, split: str, seed: int, count: int, size: tuple[int, int] | None = None) -> LabeledSet:
    """``count`` generated samples of a built-in task (generated on first access, then cached)."""
    if count < 1:
        raise UserError("the labeled set needs at least one image")
    out = LabeledSet(ds.task, list(ds.classes), {"kind": "builtin", "spec": f"{ds.name}:{split}:{seed}",
                                                  "dataset": ds.name, "split": split, "seed": seed,
                                                  "size": list(size or ds.size)},
                     [f"{ds.name}-{split}-{seed}-{i:05d}" for i in range(count)], [None] * count, [None] * count)
    out._load = lambda i: ds.sample(split, seed, i, size)  # type: ignore[method-assign]
    return out


# ---------------------------------------------------------------- writing


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (index 255, the ignore label, is light beige)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_folder(data: LabeledSet, out: str | Path, provenance: dict | None = None) -> Path:
    """Write ``data`` in the layout :func:`load_folder` reads, atomically (a temporary folder, then a rename)."""
    from PIL import Image

    from edgeexport.util import atomic_path

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if data.task == "segmentation":
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
            palette = voc_palette()
            for i, (name, image, mask) in enumerate(data):
                stem = f"{i:05d}"
                Image.fromarray(image).save(tmp / "images" / f"{stem}.png")
                mask = np.ascontiguousarray(mask, dtype=np.uint8)
                m = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
                m.putpalette(palette)
                m.save(tmp / "masks" / f"{stem}.png")
        else:
            for c in data.classes:
                (tmp / c).mkdir()
            for i, (name, image, label) in enumerate(data):
                Image.fromarray(image).save(tmp / data.classes[label] / f"{i:05d}.png")
        if data.classes:
            (tmp / "classes.txt").write_text("\n".join(data.classes) + "\n")
        (tmp / "dataset.json").write_text(json.dumps({**data.describe(), **(provenance or {})}, indent=2) + "\n")
    return out
