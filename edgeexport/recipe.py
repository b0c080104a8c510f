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
from edgeexport.util import parse_shape

PRECISIONS = ("fp32", "fp16", "int8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputsConfig(_Strict):
    """Evaluation inputs: the bundled photographs by default, or a folder of the user's images."""

    source: Literal["photos", "folder", "random", "eval_data"] = "photos"
    folder: str | None = None
    images: int = Field(4, ge=1, le=256, description="evaluation images at the main shape")
    # Labeled data for task metrics: a folder (ImageFolder, or images/ + masks/), a built-in task
    # (NAME[:SPLIT[:SEED]], e.g. shapes_seg:eval), "auto" (the built-in task of trained weights), or "none".
    eval_data: str = "auto"
    eval_images: int | None = Field(None, ge=1, description="labeled images to use (default: all, at most 500)")


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
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, ge=1)
    budget_s: float | None = Field(20.0, gt=0)
    threads: int | None = Field(None, ge=1)


class Recipe(_Strict):
    model: str
    name: str | None = None  # artifact base name; defaults to the model name
    weights: str | None = None
    num_classes: int | None = Field(None, ge=1)
    model_kwargs: dict = Field(default_factory=dict)
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
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise UserError(f"{p}:{where} malformed YAML: {getattr(exc, 'problem', exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read recipe {p}: {exc}") from None
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, data, source: str = "recipe") -> "Recipe":
        if not isinstance(data, dict):
            raise UserError(f"{source}: a recipe is a mapping with at least a 'model' key")
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
