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
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from edgeexport.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class TrainRecipe:
    model: str  # canonical zoo name
    dataset: str  # built-in task
    steps: int
    batch: int
    size: int  # training input (segmentation: canvas; classification: network input)
    lr: float
    weight_decay: float = 1e-4
    seed: int = 0
    label_smoothing: float = 0.0
    final_size: int | None = None  # classification: last ``final_steps`` at this input size (train/test resolution)
    final_steps: int = 0
    warmup_pct: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, TrainRecipe] = {
    "lraspp_mobilenetv3_large": TrainRecipe("lraspp_mobilenetv3_large", "shapes_seg", steps=3600, batch=16, size=256,
                                            lr=4e-3),
    "lraspp_mobilenetv3_small": TrainRecipe("lraspp_mobilenetv3_small", "shapes_seg", steps=3600, batch=16, size=256,
                                            lr=5e-3),
    # Classification: most steps at 160 px, the last ones at the evaluation's 224 (objects are a fixed
    # fraction of the image, so their size in pixels changes with the resolution; 150 final steps at 224
    # after 128 px training left pyconvresnet18 at 0.795 top-1).
    "pyconvresnet18": TrainRecipe("pyconvresnet18", "shapes_cls", steps=2000, batch=32, size=160, lr=2e-3,
                                  label_smoothing=0.1, final_size=224, final_steps=500),
    "pyconvresnet50": TrainRecipe("pyconvresnet50", "shapes_cls", steps=1500, batch=32, size=160, lr=2e-3,
                                  label_smoothing=0.1, final_size=224, final_steps=400),
}


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
