"""Labeled data: the built-in synthetic tasks and the user's own labeled folders.

>>> from edgeexport.datasets import get_dataset, open_labeled
>>> ds = get_dataset("shapes_seg")                      # built-in, generated offline
>>> image, mask = ds.sample("eval", seed=0, index=3)
>>> data = open_labeled("shapes_seg:eval", count=40)     # or a folder: open_labeled("val/")

A labeled-data spec is either a folder (ImageFolder for classification, ``images/`` +
``masks/`` for segmentation) or ``NAME[:SPLIT[:SEED]]`` naming a built-in task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgeexport.errors import UserError


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    task: str  # "segmentation" | "classification"
    classes: tuple[str, ...]  # label names by index
    size: tuple[int, int]  # (H, W) the samples are generated at
    eval_count: int  # images in the default evaluation set
    description: str
    _generate: Callable  # (rng, h, w, scale_ref) -> (image, label)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sample(self, split: str, seed: int, index: int, size: tuple[int, int] | None = None,
               scale_ref: float | None = None, **options):
        """One (HxWx3 uint8 image, label) pair; a pure function of its arguments."""
        from edgeexport.datasets import shapes

        h, w = size or self.size
        return self._generate(shapes.sample_rng(split, seed, index), h, w, scale_ref, **options)


def _seg(rng, h, w, scale_ref, **options):
    from edgeexport.datasets.shapes import segmentation_scene

    return segmentation_scene(rng, h, w, scale_ref, pool=_pool(), **options)


def _cls(rng, h, w, scale_ref):
    from edgeexport.datasets.shapes import classification_scene

    return classification_scene(rng, h, w, pool=_pool())


_POOL: list = []


def _pool():
    if not _POOL:
        from edgeexport.datasets.shapes import _photos

        _POOL.extend(_photos())
    return _POOL


def _shapes_classes():
    from edgeexport.datasets.shapes import CLASSES

    return CLASSES


DATASETS: dict[str, BuiltinDataset] = {
    "shapes_seg": BuiltinDataset(
        "shapes_seg", "segmentation", ("background", *_shapes_classes()), (520, 520), 40,
        "8 textured shapes + background on crops of the bundled photographs, with occlusion, scale changes, blur and "
        "noise; 255 marks object boundaries (ignored); synthetic stand-in for a labeled segmentation set", _seg),
    "shapes_cls": BuiltinDataset(
        "shapes_cls", "classification", _shapes_classes(), (256, 256), 200,
        "one of 8 textured shapes per photo crop, with clutter, occlusion, blur and noise; synthetic stand-in for "
        "a labeled classification set", _cls),
}


def get_dataset(name: str) -> BuiltinDataset:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r} (built-in: {', '.join(DATASETS)})")
    return DATASETS[name]


def parse_builtin_spec(spec: str) -> tuple[BuiltinDataset, str, int] | None:
    """``NAME[:SPLIT[:SEED]]`` -> (dataset, split, seed), or None when ``spec`` names no built-in task."""
    from edgeexport.datasets.shapes import SPLITS

    name, _, rest = spec.partition(":")
    if name not in DATASETS:
        return None
    split, _, seed = rest.partition(":")
    split = split or "eval"
    if split not in SPLITS:
        raise UserError(f"{spec}: split must be one of {', '.join(SPLITS)}")
    try:
        seed_value = int(seed) if seed else 0
    except ValueError:
        raise UserError(f"{spec}: seed {seed!r} is not an integer") from None
    return DATASETS[name], split, seed_value


def open_labeled(spec: str, count: int | None = None, task: str | None = None):
    """A :class:`~edgeexport.datasets.labeled.LabeledSet` from a folder or a built-in spec."""
    from edgeexport.datasets.labeled import from_builtin, load_folder

    builtin = parse_builtin_spec(spec)
    if builtin is not None:
        ds, split, seed = builtin
        if task is not None and task != ds.task:
            raise UserError(f"{spec} is a {ds.task} set; the model's task is {task}")
        return from_builtin(ds, split, seed, count or ds.eval_count)
    return load_folder(spec, count=count, task=task)


__all__ = ["BuiltinDataset", "DATASETS", "get_dataset", "open_labeled", "parse_builtin_spec"]
