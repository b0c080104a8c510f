"""Content-addressed cell keys: a cell is run again only when something that can change its result did.

A cell's key is the SHA-256 of: the code (every ``.py`` of edgeexport except the zoo and the modules that
do not change a cell's result, :data:`NOT_IN_KEY`, plus the model's zoo module and the zoo modules it
imports, or a user model's module file), the weights (file hash for trained or user weights; the seed
for the default seeded weights), the cell's recipe (stage options, tolerances, inputs, shape, bench
settings and threads), the input data (bundled photos: the scikit-image version; folders: a hash of
their files) and the tool versions (edgeexport and every target's packages).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import platform
from pathlib import Path

from edgeexport.doctor import installed_versions
from edgeexport.libraries import is_library_spec
from edgeexport.util import sha256, sha256_files, version_of
from edgeexport.version import __version__
from edgeexport.zoo import get_entry, resolve_name, resolve_weights

PACKAGE = Path(__file__).resolve().parents[1]
# What does not change a cell's result: the command line, the library API, the matrix scheduler, the
# report renderers, training and doctor; the zoo is keyed per model.
NOT_IN_KEY = {("cli",), ("__main__.py",), ("api.py",), ("matrix",), ("report", "html.py"), ("report", "figures.py"),
              ("report", "text.py"), ("training.py",), ("doctor.py",), ("zoo",)}


def _in_key(path: Path) -> bool:
    parts = path.relative_to(PACKAGE).parts
    return "__pycache__" not in parts and not any(parts[:len(p)] == p for p in NOT_IN_KEY)


def _zoo_modules(module: str) -> set[Path]:
    """The source files of a zoo module and of the edgeexport.zoo modules it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        spec = importlib.util.find_spec(todo.pop())
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin).resolve()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeexport.zoo"):
                todo.append(node.module)
                if node.module == "edgeexport.zoo":
                    todo += [f"edgeexport.zoo.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("edgeexport.zoo")]
    return seen


class Keys:
    """What a cell's key is made of, computed once per run."""

    def __init__(self):
        self.core = sha256_files([p for p in PACKAGE.rglob("*.py") if _in_key(p)], PACKAGE)
        self.versions = {"edgeexport": __version__, **installed_versions(), "python": platform.python_version(),
                         "machine": platform.machine(), "numpy": version_of("numpy"),
                         "scikit-image": version_of("scikit-image")}
        self._files: dict[str, str] = {}

    def file(self, path) -> str:
        p = Path(path).resolve()
        k = f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        if k not in self._files:
            self._files[k] = sha256(p)
        return self._files[k]

    def model_code(self, model: str) -> str:
        if model.endswith(".onnx"):
            return "onnx-file"
        if is_library_spec(model):  # timm:NAME / torchvision:NAME: the library's version
            library = model.partition(":")[0]
            return f"{library} {version_of(library)}:{model.partition(':')[2]}"
        if ":" in model:  # user model package.module:factory: its module's source
            spec = importlib.util.find_spec(model.split(":")[0])
            return self.file(spec.origin) if spec and spec.origin and Path(spec.origin).is_file() else model
        entry = get_entry(model)
        files = _zoo_modules(entry.builder.__module__) | _zoo_modules("edgeexport.zoo.registry") \
            | _zoo_modules("edgeexport.zoo.pretrained")
        return sha256_files(sorted(files), PACKAGE)

    def weights(self, recipe: dict) -> str:
        model, w = recipe["model"], recipe.get("weights")
        if model.endswith(".onnx"):
            return "onnx:" + self.file(model) if Path(model).exists() else "onnx:missing"
        if w in (None, "init"):
            return f"{w or 'default'}:seed=0"  # build_model seeds 0; default BN statistics from the bundled photos
        if ":" not in model:
            trained = resolve_weights(resolve_name(model), w)
            if trained is not None:
                return f"trained:{trained.spec}:" + (self.file(trained.path()) if trained.available() else "missing")
        return "file:" + self.file(w) if Path(w).exists() else f"missing:{w}"

    def data(self, recipe: dict) -> dict:
        inputs = recipe.get("inputs") or {}
        out = {"photos": f"scikit-image {version_of('scikit-image')}"}
        for k in ("folder", "eval_data"):
            v = inputs.get(k)
            if v and Path(v).exists():
                out[k] = self.file(v)
        for stage in (recipe.get("stages") or {}).values():
            for opts in stage if isinstance(stage, list) else [stage] if isinstance(stage, dict) else []:
                v = opts.get("calib_folder")
                if v and Path(v).exists():
                    out[f"calib:{v}"] = self.file(v)
        return out

    def cell_key(self, kind: str, recipe: dict) -> str:
        recipe = {k: v for k, v in recipe.items() if k != "output"}
        blob = {"kind": kind, "code": self.core, "model": self.model_code(recipe["model"]),
                "weights": self.weights(recipe), "recipe": recipe, "data": self.data(recipe),
                "versions": self.versions}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()
