"""Recipes: a typed description of one export job, validated strictly.

A recipe names the model and its weights, the input shape and dynamic axes, the stages
to run (each with its options), how parity is judged (tolerances per precision) and how
latency is measured. Unknown keys are errors, reported with the key's path and why::

    recipes/x.yaml: stages.onnx.simplfy: unknown key (known: opset, exporter, simplify, rewrites)

Every CLI command builds a Recipe and hands it to :func:`edgeexport.pipeline.run`, so
``edgeexport onnx NAME --shape ...`` and ``edgeexport run recipe.yaml`` share one path. The
``stages:`` keys and their options come from the target registry (``edgeexport targets``).
Relative paths in a recipe (weights, folders, output) are relative to the working folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from edgeexport.errors import UserError
from edgeexport.parity import DEFAULT_TOLERANCES, TASK_JUDGED, Tolerance
from edgeexport.util import MAX_RUNS, MAX_THREADS, PLAIN_NAME, parse_shape

PRECISIONS = ("fp32", "fp16", "int8")
# A recipe is data from other people: bounded before anything reads it.
MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 64  # YAML anchors used more often than this are refused (a "billion laughs" alias bomb)
MAX_NODES = 20_000  # values in the whole document, aliases expanded
MAX_DEPTH = 16
MAX_KWARGS_NODES, MAX_KWARGS_DEPTH, MAX_STRING = 1000, 6, 10_000


def _expanded(value, depth: int = 0, seen: dict | None = None) -> tuple[int, int]:
    """(values, depth) of a parsed document with every alias expanded, computed once per shared object (an alias
    bomb's expansion is counted, never built)."""
    seen = {} if seen is None else seen
    if not isinstance(value, (dict, list)):
        return 1, depth
    key = id(value)
    if key in seen:
        count, d = seen[key]
        return count, depth + d
    if depth > 64:
        raise UserError(f"nested deeper than {MAX_DEPTH} levels")
    items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
    total, deepest = 1, 0
    for k, v in items:
        n, d = _expanded(v, 0, seen)
        total, deepest = total + n + (k is not None), max(deepest, d + 1)
        if total > 10 * MAX_NODES:
            break
    seen[key] = (total, deepest)
    return total, depth + deepest


def _plain_data(value, limit_nodes: int, limit_depth: int, where: str):
    """``value`` if it is plain data (str, finite number, bool, None, lists and string-keyed mappings of them)
    within the limits; else ValueError naming the path of the first offending value."""
    count = 0

    def walk(v, path, depth):
        nonlocal count
        count += 1
        if count > limit_nodes:
            raise ValueError(f"more than {limit_nodes} values")
        if depth > limit_depth:
            raise ValueError(f"{path or where}: nested deeper than {limit_depth} levels")
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            if abs(v) >= 1 << 63:
                raise ValueError(f"{path or where}: integer out of range")
            return v
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{path or where}: {v} is not a finite number")
            return v
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                raise ValueError(f"{path or where}: a string longer than {MAX_STRING} characters")
            return v
        if isinstance(v, list):
            return [walk(x, f"{path}[{i}]", depth + 1) for i, x in enumerate(v)]
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if not isinstance(k, str) or not k.isidentifier():
                    raise ValueError(f"{path or where}: key {str(k)[:40]!r} is not a Python identifier")
                out[k] = walk(x, f"{path}.{k}" if path else k, depth + 1)
            return out
        raise ValueError(f"{path or where}: a {type(v).__name__} is not plain data")

    return walk(value, "", 0)


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags), counting aliases as it composes."""

    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise UserError(f"more than {MAX_ALIASES} YAML aliases (an alias bomb?)")
        return super().compose_node(parent, index)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class InputsConfig(_Strict):
    """Evaluation inputs: the bundled photographs by default, or a folder of the user's images."""

    source: Literal["photos", "folder", "random", "eval_data"] = "photos"
    folder: str | None = None
    images: int = Field(4, ge=1, le=256, description="evaluation images at the main shape")
    # Labeled data for task metrics: a folder (ImageFolder, or images/ + masks/), a built-in task
    # (NAME[:SPLIT[:SEED]], e.g. shapes_seg:eval), "auto" (the built-in task of trained weights), or "none".
    eval_data: str = "auto"
    eval_images: int | None = Field(None, ge=1, le=100_000, description="labeled images to use (default: all, at most 500)")


class ToleranceConfig(_Strict):
    max_abs_scaled: float | None = Field(None, gt=0)
    min_cosine: float | None = Field(None, ge=-1, le=1)
    min_snr_db: float | None = None
    min_agreement: float | None = Field(None, ge=0, le=1)
    max_task_drop: float | None = Field(None, ge=0, description="points of mIoU / top-1 below eager")


class BundleStage(_Strict):
    artifacts: list[str] = Field(default_factory=lambda: ["all"])  # artifact kinds, or "all"
    sign_key: str | None = Field(None, description="Ed25519 private key file (PEM or raw 32 bytes) that signs "
                                                   "each bundle's manifest")

    @field_validator("sign_key")
    @classmethod
    def _key(cls, v):
        """Load the key now: a bad key path fails before the build, not after it."""
        if v is not None:
            from edgeexport.keys import load_private_key

            try:
                load_private_key(v)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return v


def _stages_model() -> type[BaseModel]:
    """``stages:`` of a recipe, one key per registered target (plus ``bundle``).

    A target whose stage takes several option sets (``multiple``) is a list; a ``default_stage``
    target (``onnx``: most others start from its graph) is on unless a recipe turns it off; the
    others are off until a recipe names them.
    """
    from edgeexport.targets import list_targets

    fields: dict = {}
    for t in list_targets():
        if t.multiple:
            fields[t.name] = (list[t.Options], Field(default_factory=list, description=t.help))
        elif t.default_stage:
            fields[t.name] = (t.Options | None, Field(default_factory=t.Options, description=t.help))
        else:
            fields[t.name] = (t.Options | None, Field(None, description=t.help))
    fields["bundle"] = (BundleStage | None, Field(None, description="a parity bundle per artifact"))
    return create_model("Stages", __base__=_Strict, **fields)


Stages = _stages_model()


class ParityConfig(_Strict):
    enabled: bool = True
    probe_refusals: bool = Field(True, description="when a converter refuses the model, convert it with every other "
                                 "registered target here too (discarded), so the refusal names those that take it")
    diff_on_failure: bool = Field(True, description="when an artifact's verdict fails, tap its runtime layer by "
                                  "layer and record where it departs from eager (edgeexport diff)")
    extra_shapes: list[list[int]] | Literal["auto"] = "auto"  # shapes checked besides the main one (dynamic axes)


class BenchConfig(_Strict):
    enabled: bool = True
    warmup: int = Field(5, ge=0, le=MAX_RUNS)
    runs: int = Field(30, ge=1, le=MAX_RUNS)
    budget_s: float | None = Field(20.0, gt=0, le=3600, allow_inf_nan=False)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)


class Recipe(_Strict):
    model: str = Field(max_length=1000)
    name: str | None = Field(None, description="artifact base name, one plain file name (letters, digits, . _ + -); "
                                               "defaults to the model name")
    weights: str | None = Field(None, max_length=4096)
    num_classes: int | None = Field(None, ge=1, le=1_000_000)
    model_kwargs: dict = Field(default_factory=dict, description="keyword arguments of the model's factory: plain "
                               "data (strings, numbers, booleans, lists, mappings), at most "
                               f"{MAX_KWARGS_NODES} values, {MAX_KWARGS_DEPTH} levels deep")
    task: Literal["classification", "segmentation", "features"] | None = None
    input_shape: list[int] | None = None
    settle_bn: bool = Field(False, description="re-estimate BatchNorm statistics on calibration images before "
                                                "export (models without trained weights)")
    mean: list[float] | None = None  # preprocessing overrides (user models and ONNX inputs)
    std: list[float] | None = None
    dynamic: Literal["none", "batch", "hw", "all"] = "none"
    output: str = "out"
    inputs: InputsConfig = Field(default_factory=InputsConfig)
    tolerances: dict[Literal["fp32", "fp16", "int8"], ToleranceConfig] = Field(default_factory=dict)
    stages: Stages = Field(default_factory=Stages)
    parity: ParityConfig = Field(default_factory=ParityConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)

    @field_validator("input_shape", mode="before")
    @classmethod
    def _shape(cls, v):
        if v is None:
            return v
        try:
            return list(parse_shape(v))
        except UserError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and (not PLAIN_NAME.fullmatch(v) or v in (".", "..") or len(v) > 200):
            raise ValueError("must be one plain file name (letters, digits, . _ + -; no folders, at most 200 "
                             "characters): artifacts and reports are written inside the output folder")
        return v

    @field_validator("model_kwargs", mode="before")
    @classmethod
    def _kwargs(cls, v):
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of argument names to plain data")
        return _plain_data(v, MAX_KWARGS_NODES, MAX_KWARGS_DEPTH, "model_kwargs")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str):
        if not v.strip():
            raise ValueError("must name a zoo model or package.module:factory")
        return v.strip()

    def tolerance(self, precision: str, labeled: bool = False) -> Tolerance:
        """The recipe's limits for ``precision``, falling back to the defaults per field.

        With labeled data (``labeled``), precisions in ``TASK_JUDGED`` (int8) are judged by the task
        metric's drop: their default tensor limits are dropped, the recipe's own ones still apply.
        """
        base = DEFAULT_TOLERANCES[precision]
        if labeled and precision in TASK_JUDGED:
            base = Tolerance(max_task_drop=base.max_task_drop)
        over = self.tolerances.get(precision)
        if over is None:
            return base
        # null is "the default" (a dumped and re-read recipe carries every field, unset ones as null)
        fields = {k: v for k, v in over.model_dump().items() if k in over.model_fields_set and v is not None}
        return base.model_copy(update=fields)

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        p = Path(path)
        if not p.exists():
            raise UserError(f"recipe {p} does not exist")
        if not p.is_file():
            raise UserError(f"recipe {p} is not a file")
        try:
            if p.stat().st_size > MAX_RECIPE_BYTES:
                raise UserError(f"recipe {p} is larger than {MAX_RECIPE_BYTES >> 20} MiB")
            loader = _RecipeLoader(p.read_text(encoding="utf-8"))
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
        except UserError as exc:
            raise UserError(f"{p}: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{p}:{where} malformed YAML: {getattr(exc, 'problem', exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read recipe {p}: {type(exc).__name__}: {exc}") from None
        except (ValueError, RecursionError, OverflowError) as exc:  # a 5000-digit integer, a deep nesting
            raise UserError(f"{p}: unreadable value ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data, source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise UserError(f"{source}: a recipe is a mapping with at least a 'model' key")
        try:
            nodes, depth = _expanded(data)
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            raise UserError(f"{source}: more than {MAX_NODES} values or {MAX_DEPTH} levels of nesting (aliases "
                            "expanded); a recipe is a small document")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UserError(f"{source}: {describe_validation_error(exc, cls)}") from None


def _known_keys(model_cls, loc: tuple) -> list[str]:
    """The keys allowed at ``loc`` (for 'unknown key' messages)."""
    cls = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
                   None)
    return list(cls.model_fields) if cls is not None else []


def describe_validation_error(exc: ValidationError, model_cls=Recipe) -> str:
    """First validation problem as one line: path, then why."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        known = _known_keys(model_cls, loc)
        why = "unknown key" + (f" (known: {', '.join(known)})" if known else "")
    elif err["type"] == "missing":
        why = "required key is missing"
    else:
        why = err["msg"]
        if "input" in err and err["type"].startswith(("literal", "int", "float", "bool")):
            why += f" (got {err['input']!r})"
    more = len(exc.errors()) - 1
    return f"{path}: {why}" + (f" (+{more} more problem{'s' if more > 1 else ''})" if more else "")
