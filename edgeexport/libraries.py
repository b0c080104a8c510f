"""Models from the ecosystem's libraries: ``timm:NAME`` and ``torchvision:NAME``, built with no download.

Wherever a model is named (``--model``, a recipe's ``model``, ``edgeexport.export``), these two
prefixes build the library's architecture with its own seeded initialisation (``pretrained=False`` /
``weights=None``); ``--weights`` loads the user's own checkpoint (safetensors or a ``weights_only``
state dict), strictly. What the library knows about the model's input comes with it: timm's
``pretrained_cfg`` (mean, std, input size, crop fraction) and torchvision's weight metadata (the
transforms of its default weights, read without downloading them).

Both are optional extras (``pip install 'edgeexport[timm]'``). torchvision's PyPI wheel is built against
one torch build: beside another (a CPU-only wheel of the same version), ``import torchvision`` fails on its
C ops (``operator torchvision::nms does not exist``), raised while ``torchvision/_meta_registrations.py``
registers their fake kernels. The model code needs none of those ops, so when (and only when) that import
fails, it is retried with that one module stubbed; on a matching torch install nothing is touched.
"""
from __future__ import annotations

import difflib
import importlib
import sys
import types
from dataclasses import dataclass

from edgeexport.errors import UserError
from edgeexport.zoo.registry import IMAGENET_MEAN, IMAGENET_STD

LIBRARIES = ("timm", "torchvision")
INSTALL = {"timm": "pip install 'edgeexport[timm]'", "torchvision": "pip install 'edgeexport[torchvision]'"}
_META = "torchvision._meta_registrations"


def is_library_spec(model: str) -> bool:
    return model.partition(":")[0] in LIBRARIES


def import_torchvision():
    """torchvision, imported even when its compiled ops do not match this torch build (see the module)."""
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError:
        raise UserError(f"torchvision is not installed ({INSTALL['torchvision']})") from None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules[_META] = types.ModuleType(_META)  # its fake kernels are for ops this build cannot load
    return importlib.import_module("torchvision")


def _import(library: str):
    if library == "timm":
        import_torchvision()  # timm imports torchvision
        try:
            return importlib.import_module("timm")
        except ModuleNotFoundError:
            raise UserError(f"timm is not installed ({INSTALL['timm']})") from None
    return import_torchvision()


@dataclass
class LibraryModel:
    """A library's model and what it says about its input."""

    module: object
    name: str
    task: str  # classification | segmentation
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str  # "center_crop" or "resize"
    crop_fraction: float
    output_names: tuple[str, ...]
    source: str  # what the metadata came from


def _unknown(library: str, name: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"{library} has no model {name!r}{hint}")


def _timm(name: str, num_classes: int | None, kwargs: dict) -> LibraryModel:
    timm = _import("timm")
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    try:
        module = timm.create_model(name, pretrained=False, **({"num_classes": num_classes} if num_classes else {}),
                                   **kwargs)
    except TypeError as exc:
        raise UserError(f"timm:{name}: {exc}") from None
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    crop = float(cfg.get("crop_pct") or 1.0)
    return LibraryModel(module, name, "classification", tuple(cfg.get("input_size") or (3, 224, 224)),
                        tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD),
                        "center_crop" if crop < 1.0 else "resize", crop, ("logits",),
                        f"timm {timm.__version__} pretrained_cfg ({cfg.get('tag') or 'default'})")


def _torchvision(name: str, num_classes: int | None, kwargs: dict) -> LibraryModel:
    tv = _import("torchvision")
    models = tv.models
    segmentation = set(models.list_models(module=models.segmentation))
    classification = set(models.list_models(module=models))
    if name not in segmentation | classification:
        others = set(models.list_models()) - segmentation - classification
        if name in others:
            raise UserError(f"torchvision:{name} is a detection / video / optical-flow model; edgeexport takes "
                            "image classification and segmentation models")
        raise _unknown("torchvision", name, sorted(segmentation | classification))
    try:
        module = models.get_model(name, weights=None, **({"num_classes": num_classes} if num_classes else {}),
                                  **({"weights_backbone": None} if name in segmentation else {}), **kwargs)
    except TypeError as exc:
        raise UserError(f"torchvision:{name}: {exc}") from None
    transforms = models.get_model_weights(name).DEFAULT.transforms()  # metadata only: nothing is downloaded
    mean, std = tuple(transforms.mean), tuple(transforms.std)
    if name in segmentation:
        side = int(transforms.resize_size[0]) if transforms.resize_size else 520
        outputs = ("out", "aux") if getattr(module, "aux_classifier", None) is not None else ("out",)
        return LibraryModel(module, name, "segmentation", (3, side, side), mean, std, "resize", 1.0, outputs,
                            f"torchvision {tv.__version__} default weights' transforms")
    crop, resize = int(transforms.crop_size[0]), int(transforms.resize_size[0])
    return LibraryModel(module, name, "classification", (3, crop, crop), mean, std, "center_crop", crop / resize,
                        ("logits",), f"torchvision {tv.__version__} default weights' transforms")


def build(spec: str, num_classes: int | None = None, kwargs: dict | None = None) -> LibraryModel:
    """``timm:NAME`` or ``torchvision:NAME`` with seeded weights (the caller loads checkpoints)."""
    import torch

    library, _, name = spec.partition(":")
    if not name:
        raise UserError(f"--model {spec!r}: expected {library}:NAME")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights every time, whatever the caller's RNG state
        model = (_timm if library == "timm" else _torchvision)(name, num_classes, dict(kwargs or {}))
    model.module.eval()
    return model


def version(library: str) -> str | None:
    from edgeexport.util import version_of

    return version_of(library)
