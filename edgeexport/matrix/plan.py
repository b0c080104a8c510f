"""The matrix's cells: one model (a zoo name, or a recipe YAML that gives its shape, weights, tolerances
and inputs) and one artifact kind (``onnx``, ``onnx-int8``, ``executorch``, ``coreml``, ... : the format
table, :func:`~edgeexport.targets.options_for_kind`), each with the recipe its task runs."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeexport.errors import UserError
from edgeexport.matrix.keys import Keys
from edgeexport.recipe import Recipe
from edgeexport.targets import Target, TargetOptions, get_target, list_targets, options_for_kind
from edgeexport.util import MAX_THREADS, atomic_path
from edgeexport.zoo import get_entry, resolve_name

PACKAGE = Path(__file__).resolve().parents[1]
PLAN = "matrix.plan.json"
MAX_PLAN_BYTES = 16 << 20


@dataclass
class CellPlan:
    model: str  # the row: a zoo name or a recipe's name
    kind: str
    target: str
    backend: str
    precision: str
    recipe: dict  # the cell's recipe (output chosen by the task)
    key: str = ""
    resources: dict = field(default_factory=dict)  # what its runtime needs, as Ray resources
    record: object = None  # the finished cell: an ArtifactResult with its Cell (see records.py)
    needs_verify: bool = False  # built where its runtime is missing: verified from its bundle elsewhere
    rebuilt: str | None = None  # why its cache entry was not trusted (the cell was built again)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.kind}"


def find_recipe(name: str, search: list[Path] | None = None) -> Path | None:
    """``recipes/NAME.yaml`` for a zoo model (or one of its aliases), in the working folder or beside
    the package (a source checkout)."""
    entry = get_entry(name)
    names = list(dict.fromkeys([name, entry.name, *entry.aliases]))
    for folder in search or [Path.cwd() / "recipes", PACKAGE.parent / "recipes"]:
        for n in names:
            if (folder / f"{n}.yaml").is_file():
                return folder / f"{n}.yaml"
    return None


def resolve_model(spec: str) -> tuple[str, Recipe, Path | None]:
    """(row name, Recipe, recipe path or None) for a zoo name or a recipe YAML."""
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        recipe = Recipe.from_yaml(spec)
        return recipe.name or Path(spec).stem, recipe, Path(spec)
    resolve_name(spec)  # an unknown name is a one-line error with suggestions
    path = find_recipe(spec)
    recipe = Recipe.from_yaml(path) if path else Recipe.from_dict({"model": spec})
    return spec, recipe, path


def requires(target: type[Target], options: TargetOptions, other: str, source_onnx: bool) -> bool:
    """Whether a stage starts (directly or through another stage) from target ``other``'s artifact."""
    ctx = SimpleNamespace(source_onnx="model.onnx" if source_onnx else None)  # what requires() may look at
    try:
        reqs = target.requires(options, ctx)
    except AttributeError:  # it asks the context for more: build it too, to be safe
        return True
    for req in reqs:
        rt = get_target(req.target)
        if rt.name == other or requires(rt, rt.Options(**req.options), other, source_onnx):
            return True
    return False


def _absolute(data: dict) -> None:
    """Relative paths are the working folder's: make them absolute for the task, which runs elsewhere."""
    if data.get("weights") and Path(data["weights"]).exists():
        data["weights"] = str(Path(data["weights"]).resolve())
    inputs = data.get("inputs") or {}
    for k in ("folder", "eval_data"):
        if inputs.get(k) and Path(inputs[k]).exists():
            inputs[k] = str(Path(inputs[k]).resolve())
    for stage in data["stages"].values():
        for opts in stage if isinstance(stage, list) else [stage] if stage else []:
            if opts.get("calib_folder") and Path(opts["calib_folder"]).exists():
                opts["calib_folder"] = str(Path(opts["calib_folder"]).resolve())


def cell_recipe(recipe: Recipe, kind: str, threads: int, overrides: dict | None = None) -> dict:
    """The recipe of one cell: the model's recipe with only the stage that builds ``kind`` (the recipe's
    own option set for it when it has one, else the format table's) and the default stages (the fp32
    ONNX export) that stage starts from; every backend timed with ``threads`` threads."""
    target, options = options_for_kind(kind)
    cfg = getattr(recipe.stages, target.name, None)
    own = [o for o in (cfg if target.multiple else [cfg] if cfg is not None else []) if target.format_for(o).kind == kind]
    options = own[0] if own else options
    source_onnx = recipe.model.endswith(".onnx")
    stages: dict = {}
    for d in list_targets():
        if d.default_stage and d is not target:
            needed = requires(target, options, d.name, source_onnx) and not (source_onnx and d.input_replaces)
            d_opts = getattr(recipe.stages, d.name, None) or options_for_kind(d.formats[0].kind)[1]
            stages[d.name] = d_opts.model_dump(mode="json") if needed else None
    own_opts = options.model_dump(mode="json")
    stages[target.name] = [own_opts] if target.multiple else own_opts
    data = recipe.model_dump(mode="json")
    data.update(stages=stages, output=".")
    data["bench"]["threads"] = threads
    data["parity"]["probe_refusals"] = False  # the model's other cells say which targets take it
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    _absolute(data)
    return data


def plan_cells(models: list[str], kinds: list[str], threads: int = 1, overrides: dict | None = None) -> list[CellPlan]:
    """Every cell of models x kinds, validated (bad input fails here, before anything runs)."""
    if not models:
        raise UserError("give at least one zoo model or recipe YAML")
    if not kinds:
        raise UserError("--targets needs at least one artifact kind")
    for kind in kinds:
        options_for_kind(kind)  # unknown kinds: one line with the known ones
    if len(set(kinds)) != len(kinds):
        raise UserError(f"--targets names an artifact kind twice: {', '.join(kinds)}")
    cells, rows = [], set()
    for spec in models:
        row, recipe, _ = resolve_model(spec)
        if row in rows:
            raise UserError(f"model {row} is given twice")
        rows.add(row)
        for kind in kinds:
            target, options = options_for_kind(kind)
            data = cell_recipe(recipe, kind, threads, overrides)
            Recipe.from_dict(data, source=f"{spec} ({kind})")
            cells.append(CellPlan(row, kind, target.name, target.backend, target.format_for(options).precision, data,
                                  resources={target.backend: 1, **target.ray_resources}))
    keys = Keys()
    for c in cells:
        c.key = keys.cell_key(c.kind, c.recipe)
    return cells


def model_spec(spec: str) -> str:
    """A model as the plan keeps it: a recipe file by its absolute path (``--resume`` works from any folder),
    anything else (a zoo name, ``package.module:factory``) as given."""
    return str(Path(spec).resolve()) if spec.endswith((".yaml", ".yml")) and Path(spec).is_file() else spec


class PlanFile(BaseModel):
    """``OUTPUT/matrix.plan.json``: what ``--resume`` replays. Models are what the command line named; the
    cells (``MODEL/KIND`` -> key) say what the plan was built from, for the reader."""

    model_config = ConfigDict(extra="forbid", strict=True)

    models: list[str] = Field(min_length=1, max_length=10_000)
    kinds: list[str] = Field(min_length=1, max_length=100)
    threads: int = Field(ge=1, le=MAX_THREADS)
    overrides: dict[str, Any] | None = None
    cells: dict[str, str] = {}

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        for m in v:
            if not 0 < len(m) <= 4096 or any(ord(ch) < 32 or ord(ch) == 127 for ch in m):
                raise ValueError(f"{m[:80]!r} is not a model or recipe")
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        for k in v:
            if not (0 < len(k) <= 64 and k.replace("-", "").replace("_", "").isalnum() and k.isascii()):
                raise ValueError(f"{k[:80]!r} is not an artifact kind")
        return v

    @field_validator("cells")
    @classmethod
    def _cells(cls, v: dict[str, str]) -> dict[str, str]:
        for label, key in v.items():
            if len(label) > 8192 or len(key) != 64 or not all(ch in "0123456789abcdef" for ch in key):
                raise ValueError(f"{label[:80]!r}: not a cell key")
        return v


def write_plan(output: Path, models: list[str], kinds: list[str], threads: int, overrides: dict | None,
               cells: list[CellPlan]) -> None:
    try:
        plan = PlanFile(models=list(models), kinds=list(kinds), threads=threads, overrides=overrides,
                        cells={c.label: c.key for c in cells})
    except ValidationError as exc:  # e.g. a recipe file whose name holds a control character
        err = exc.errors()[0]
        raise UserError(f"cannot record the matrix's plan ({'.'.join(map(str, err['loc']))[:80]}: "
                        f"{err['msg'][:100]})") from None
    with atomic_path(output / PLAN) as tmp:
        tmp.write_text(plan.model_dump_json(indent=1))


def read_plan(output: Path) -> PlanFile:
    """The stored plan of the matrix in ``output``, validated before anything acts on it (one-line
    :class:`UserError` when it is missing, not a regular file, or not a plan this matrix wrote)."""
    p = output / PLAN
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UserError(f"--resume: {output} has no matrix to continue (no {PLAN})") from None
    except OSError as exc:
        raise UserError(f"--resume: {output} has no matrix to continue (no readable {PLAN}: "
                        f"{'a symlink' if p.is_symlink() else exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise UserError(f"--resume: {p} is not a regular file")
        data = fh.read(MAX_PLAN_BYTES + 1)
    if len(data) > MAX_PLAN_BYTES:
        raise UserError(f"--resume: {p} is not a matrix plan (too large)")
    try:
        return PlanFile.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"]))[:80] or "the file"
        raise UserError(f"--resume: {p} is not a matrix plan edgeexport wrote ({where}: {err['msg'][:100]})") from None
