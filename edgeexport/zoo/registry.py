"""Model registry: ``register_model`` decorator, ``create_model``, ``list_models``.

Every registered builder carries a :class:`ModelMeta` (task, native input size,
preprocessing, output names, published parameter count), in the spirit of
torchvision's weight metadata, so the pipeline never guesses how to feed or
judge a model.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgeexport.errors import UserError
from edgeexport.zoo.pretrained import TrainedWeights, find_trained, trained_for

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TASKS = ("classification", "segmentation", "features")


@dataclass(frozen=True)
class ModelMeta:
    """What the pipeline needs to know about a model, declared with it."""

    task: str
    input_size: tuple[int, int, int]  # C, H, W at which the model is exported by default
    output_names: tuple[str, ...]
    num_classes: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "resize"  # "resize" (whole photo, aspect not kept) or "center_crop"
    crop_fraction: float = 0.875  # center_crop: the crop's side over the resized short side
    family: str = ""
    paper: str = ""
    published_params: int | None = None  # at the default num_classes, when a paper/repo states it
    params_tolerance: float = 0.005  # published figures are rounded to 0.01M
    size_multiple: int = 1  # H and W must be multiples of this (1: any size)
    min_hw: int = 1  # smallest H and W the architecture accepts
    dynamic_hw: bool = True  # whether the graph is valid for other H/W than it was exported at
    notes: str = ""
    output_tasks: tuple[str, ...] = ()  # per output; empty means every output has `task`

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, not {self.task!r}")

    def task_of(self, output_index: int) -> str:
        if self.output_tasks:
            return self.output_tasks[output_index]
        return self.task


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable
    meta: ModelMeta
    aliases: tuple[str, ...] = field(default=())
    default_kwargs: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(*, aliases: tuple[str, ...] = (), name: str | None = None, **meta_kwargs):
    """Register a thin builder ``fn(num_classes=..., **kw) -> nn.Module`` under its name."""

    def wrap(fn: Callable) -> Callable:
        model_name = name or fn.__name__
        if model_name in _REGISTRY or model_name in _ALIASES:
            raise ValueError(f"model {model_name!r} registered twice")
        meta = ModelMeta(**meta_kwargs)
        _REGISTRY[model_name] = ModelEntry(model_name, fn, meta, tuple(aliases))
        for alias in aliases:
            _ALIASES[alias] = model_name
        return fn

    return wrap


_FAMILIES_LOADED = False
NOT_FAMILIES = {"registry", "pretrained", "layers"}


def _ensure_loaded() -> None:
    """Import every family module of the zoo (each registers its models), found by package discovery."""
    global _FAMILIES_LOADED
    if not _FAMILIES_LOADED:
        package = __name__.rpartition(".")[0]
        for m in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
            if m.name not in NOT_FAMILIES and not m.name.startswith("_"):
                importlib.import_module(f"{package}.{m.name}")
        _FAMILIES_LOADED = True


def list_models(include_aliases: bool = False) -> list[str]:
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if include_aliases:
        names = sorted(names + list(_ALIASES))
    return names


def resolve_name(name: str) -> str:
    _ensure_loaded()
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `edgeexport list` to see the zoo"
    raise UserError(f"unknown model {name!r}{hint}")


def get_entry(name: str) -> ModelEntry:
    return _REGISTRY[resolve_name(name)]


def get_meta(name: str, num_classes: int | None = None) -> ModelMeta:
    meta = get_entry(name).meta
    if num_classes is not None and meta.num_classes is not None and num_classes != meta.num_classes:
        meta = replace(meta, num_classes=num_classes, published_params=None)
    return meta


def build_model(name: str, num_classes: int | None = None, **kwargs):
    """Build the architecture only (seeded plain initialisation, no weights)."""
    import torch

    entry = get_entry(name)
    if num_classes is not None:
        if entry.meta.num_classes is None:
            raise UserError(f"model {entry.name!r} has no classifier; --num-classes does not apply")
        kwargs["num_classes"] = num_classes
    # Deterministic initialisation whatever the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = entry.builder(**kwargs)
    return model.eval()


def create_model(name: str, weights: str | None = None, num_classes: int | None = None, **kwargs):
    """Build a registered model with weights.

    ``weights``: None -> deterministic default weights (seeded init, BatchNorm statistics
    re-estimated on the bundled photographs); ``"init"`` -> seeded plain initialisation;
    ``"MODEL:TAG"`` or ``"TAG"`` -> reference weights trained here (:mod:`edgeexport.zoo.pretrained`);
    a path -> a state dict or full checkpoint, loaded strictly.
    """
    from edgeexport import weights as W

    entry = get_entry(name)
    trained = resolve_weights(entry.name, weights) if weights not in (None, "init") else None
    if trained is not None:
        if num_classes is not None and num_classes != trained.num_classes:
            raise UserError(f"weights {trained.spec} have {trained.num_classes} classes, not {num_classes}")
        num_classes = trained.num_classes
    model = build_model(name, num_classes=num_classes, **kwargs)
    meta = get_meta(name, num_classes)
    if weights is None:
        W.apply_default_weights(model, entry.name, meta, build_kwargs=dict(kwargs, num_classes=num_classes))
    elif weights == "init":
        pass
    elif trained is not None:
        W.load_state(model, trained.state_dict(), trained.spec)
    else:
        W.load_weights(model, weights)
    return model.eval()


def resolve_weights(model: str, spec: str | None) -> TrainedWeights | None:
    """The trained entry ``spec`` names for ``model`` (``MODEL:TAG`` or ``TAG``), or None when ``spec``
    is not a weights tag (then it is a file path). A tag for another model is an error."""
    if not spec or Path(spec).exists():
        return None
    head, sep, tag = spec.rpartition(":")
    if not sep:
        entry = find_trained(model, spec)
        return entry
    try:
        named = resolve_name(head)
    except UserError:
        return None  # e.g. a Windows drive letter or a path with a colon: treated as a file
    entry = find_trained(named, tag)
    if named != model:
        raise UserError(f"weights {spec} are for {named}, not {model}")
    if entry is None:
        known = ", ".join(w.spec for w in trained_for(model)) or "none"
        raise UserError(f"unknown weights {spec} (trained weights for {model}: {known})")
    return entry
