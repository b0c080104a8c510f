"""Reference weights trained here, selected like torchvision's weight enums: ``--weights MODEL:TAG``.

Each entry names the model, the built-in task it was trained on, the recipe that reproduces
it (:mod:`edgeexport.training`) and where the file lives:

* **shipped** entries are safetensors files inside the package (fp16 storage, loaded as fp32);
* the others are trained on demand into the user cache (``make weights-pyconvresnet50``), since
  they are too large to commit.

Files are safetensors, never pickle. Their header carries the training recipe and the eager
metrics measured on the task's evaluation split after training, which ``edgeexport info`` lists.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgeexport.errors import UserError
from edgeexport.training import RECIPES, TrainRecipe

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class TrainedWeights:
    model: str  # canonical zoo name
    tag: str
    recipe: TrainRecipe
    shipped: bool

    @property
    def spec(self) -> str:
        return f"{self.model}:{self.tag}"

    @property
    def dataset(self) -> str:
        return self.recipe.dataset

    @property
    def num_classes(self) -> int:
        from edgeexport.datasets import get_dataset

        return get_dataset(self.dataset).num_classes

    @property
    def classes(self) -> list[str]:
        from edgeexport.datasets import get_dataset

        return list(get_dataset(self.dataset).classes)

    def path(self) -> Path:
        if self.shipped:
            return WEIGHTS_DIR / f"{self.model}-{self.tag}.safetensors"
        from edgeexport.weights import cache_dir

        return cache_dir() / "trained" / f"{self.model}-{self.tag}.safetensors"

    def available(self) -> bool:
        return self.path().is_file()

    def how_to_get(self) -> str:
        if self.shipped:
            return f"it ships with edgeexport; reinstall, or retrain with `edgeexport train {self.model} --tag {self.tag}`"
        return f"train it first (about an hour on 2 CPU cores): `edgeexport train {self.model} --tag {self.tag}`"

    def metadata(self) -> dict:
        """Training recipe and eager metrics stored in the file's header ({} when it is not there)."""
        return dict(_read_metadata(str(self.path()))) if self.available() else {}

    def state_dict(self) -> dict:
        """The weights as fp32 tensors (safetensors: no pickle)."""
        if not self.available():
            raise UserError(f"weights {self.spec} are not on this machine: {self.how_to_get()}")
        from safetensors.torch import load_file

        try:
            state = load_file(str(self.path()))
        except Exception as exc:
            raise UserError(f"cannot read {self.path()}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}") \
                from None
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}

    def describe(self) -> dict:
        meta = self.metadata()
        return {"weights": self.spec, "dataset": self.dataset, "num_classes": self.num_classes,
                "file": str(self.path()), "available": self.available(), "shipped": self.shipped,
                "recipe": self.recipe.to_dict(), "eval": meta.get("eval"),
                "train_minutes": meta.get("train_minutes")}


@lru_cache(maxsize=None)
def _read_metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = f.metadata() or {}
    return json.loads(raw.get("edgeexport", "{}"))


_SHIPPED = {"lraspp_mobilenetv3_large", "lraspp_mobilenetv3_small", "pyconvresnet18"}
TRAINED: dict[tuple[str, str], TrainedWeights] = {
    (name, "shapes"): TrainedWeights(name, "shapes", recipe, name in _SHIPPED) for name, recipe in RECIPES.items()}


def find_trained(model: str, tag: str) -> TrainedWeights | None:
    return TRAINED.get((model, tag))


def trained_for(model: str) -> list[TrainedWeights]:
    return [w for (m, _), w in TRAINED.items() if m == model]


def resolve_weights(model: str, spec: str | None) -> TrainedWeights | None:
    """The trained entry ``spec`` names for ``model`` (``MODEL:TAG`` or ``TAG``), or None when ``spec``
    is not a weights tag (then it is a file path). A tag for another model is an error."""
    from edgeexport.zoo.registry import resolve_name

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
