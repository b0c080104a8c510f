"""The public-architecture corpus: models nobody here wrote, from timm and torchvision, with their own
seeded initialisation (no download) and BatchNorm settled on the bundled calibration photographs.

The corpus is its recipes, ``recipes/corpus/ROW.yaml`` (each says on its ``# brings:`` line what the
architecture has that the zoo lacks). The whole corpus runs in ``make bench`` through ``edgeexport matrix``
(BENCHMARKS.md); a fast subset runs in ``make test`` (``tests/test_corpus.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "recipes" / "corpus"

# Every artifact kind a corpus model goes through (coreml: converted and validated; predicted on macOS only).
KINDS = ["onnx", "onnx-int8", "openvino", "openvino-int8", "litert", "litert-int8", "executorch", "executorch-int8",
         "ncnn", "coreml"]


@dataclass(frozen=True)
class Entry:
    row: str
    path: Path
    brings: str

    def recipe(self, **fields):
        """The entry's typed recipe, with ``fields`` replaced (stages, output, bench...)."""
        import yaml

        from edgeexport.recipe import Recipe

        return Recipe.from_dict({**yaml.safe_load(self.path.read_text()), **fields})


def corpus() -> list[Entry]:
    entries = []
    for path in sorted(FOLDER.glob("*.yaml")):
        brings = next((ln.split(":", 1)[1].strip() for ln in path.read_text().splitlines()
                       if ln.startswith("# brings:")), "")
        entries.append(Entry(path.stem, path, brings))
    return entries


def entry(row: str) -> Entry:
    return next(e for e in corpus() if e.row == row)


def stages_for(kinds) -> dict:
    """The recipe ``stages`` that build exactly these artifact kinds."""
    from edgeexport.targets import options_for_kind

    stages: dict = {}
    for kind in kinds:
        target, options = options_for_kind(kind)
        data = options.model_dump(mode="json")
        if target.multiple:
            stages.setdefault(target.name, []).append(data)
        else:
            stages[target.name] = data
    return stages
