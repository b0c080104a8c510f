"""The per-target commands (``edgeexport onnx``, ``quantize``, ``trt``, ``coreml``, ``executorch``, ...),
generated from the target registry: each command's options are its target's typed options plus the
shared ones (:class:`Common`); each builds a :class:`~edgeexport.recipe.Recipe` and runs it like
``edgeexport run RECIPE``."""
from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeexport.cli.app import app, command_line, console, exit_with, handle_errors, parse_budget, show, status_for
from edgeexport.errors import BackendMissing, Unsupported, UserError
from edgeexport.recipe import Recipe
from edgeexport.targets import list_targets
from edgeexport.util import parse_shape, plain_name


class Dynamic(str, Enum):
    none = "none"
    batch = "batch"
    hw = "hw"
    all = "all"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


def _show_run(rep, recipe: Recipe, quiet: bool, as_json: bool) -> None:
    name = recipe.name or plain_name(rep.model.name)
    show(rep, quiet, as_json, [Path(recipe.output) / f"{name}.report.md", Path(recipe.output) / f"{name}.report.html"])


def execute(recipe: Recipe, quiet: bool, as_json: bool, target=None) -> None:
    """Run a recipe through the library (:func:`edgeexport.api.run`), print the table (or JSON), exit with
    the verdict. When ``target``'s converter is missing here (nothing could be built), the table still
    shows what ran (e.g. TensorRT's pre-flight), then the command exits 2 with the install hint."""
    from edgeexport import api

    err = console(quiet)
    try:
        rep = api.run(recipe, log=err.print, status=status_for(err), command=command_line())
    except Unsupported as exc:  # the table first (the report is written), then the one line, exit 2
        _show_run(exc.report, recipe, quiet, as_json)
        raise
    _show_run(rep, recipe, quiet, as_json)
    unbuilt = [a for a in rep.artifacts.values() if target is not None and a.target == target.name and not a.built]
    if unbuilt and not any(a.error for a in unbuilt):
        ok, reason = target.build_availability()
        raise BackendMissing(target.title, reason, target.install)
    exit_with(rep)


@dataclass
class Common:
    """The options every export command shares (one object, not fifteen positional arguments)."""

    weights: Optional[str] = None
    model: Optional[str] = None
    shape: Optional[str] = None
    dynamic: str = "none"
    output: str = "out"
    num_classes: Optional[int] = None
    task: Optional[str] = None
    images: int = 4
    input_folder: Optional[str] = None
    random_inputs: bool = False
    eval_data: Optional[str] = None
    eval_images: Optional[int] = None
    exporter: Optional[str] = None
    settle_bn: bool = False
    no_probe: bool = False
    runs: int = 30
    threads: Optional[int] = None
    no_bench: bool = False
    quiet: bool = False
    as_json: bool = False

    def recipe(self, name: str, stages: dict) -> Recipe:
        if self.input_folder and self.random_inputs:
            raise UserError("--input-folder and --random-inputs exclude each other")
        data = {
            "model": self.model or name, "name": name if self.model else None, "weights": self.weights,
            "input_shape": self.shape, "dynamic": self.dynamic, "output": self.output,
            "num_classes": self.num_classes, "task": self.task, "settle_bn": self.settle_bn,
            "inputs": {"source": "folder" if self.input_folder else "random" if self.random_inputs else "photos",
                       "folder": self.input_folder, "images": self.images, "eval_data": self.eval_data or "auto",
                       "eval_images": self.eval_images},
            "stages": stages, "bench": {"enabled": not self.no_bench, "runs": self.runs, "threads": self.threads},
            "parity": {"probe_refusals": not self.no_probe},
        }
        return Recipe.from_dict(data, source="options")


def _opt(default, *decls, **kw):
    return typer.Option(default, *decls, **kw)


COMMON_PARAMS = [
    ("weights", Optional[str], _opt(None, "--weights", help="trained weights (MODEL:TAG, e.g. "
                                    "lraspp_mobilenetv3:shapes), or a state dict / checkpoint file")),
    ("model", Optional[str], _opt(None, "--model", help="user model as package.module:factory (NAME is then "
                                  "the artifact name)")),
    ("shape", Optional[str], _opt(None, "--shape", help="input shape NxCxHxW, e.g. 1x3x520x520")),
    ("dynamic", Dynamic, _opt(Dynamic.none, "--dynamic", help="dynamic axes")),
    ("output", str, _opt("out", "--output", "-o", help="output folder")),
    ("num_classes", Optional[int], _opt(None, "--num-classes")),
    ("task", Optional[str], _opt(None, "--task", help="classification | segmentation | features")),
    ("images", int, _opt(4, "--images", help="evaluation images at the main shape")),
    ("input_folder", Optional[str], _opt(None, "--input-folder", help="your own evaluation images")),
    ("random_inputs", bool, _opt(False, "--random-inputs", help="random tensors instead of photos")),
    ("eval_data", Optional[str], _opt(None, "--eval-data", help="labeled data for task metrics: a folder "
                                      "(ImageFolder, or images/ + masks/) or a built-in task (shapes_seg, "
                                      "shapes_cls[:SPLIT[:SEED]]); default: the task of trained weights")),
    ("eval_images", Optional[int], _opt(None, "--eval-images", help="labeled images to use")),
    ("exporter", Optional[Exporter], _opt(None, "--exporter", help="ONNX exporter for the fp32 graph")),
    ("settle_bn", bool, _opt(False, "--settle-bn", help="re-estimate BatchNorm statistics on calibration images "
                                                         "(a model without trained weights)")),
    ("no_probe", bool, _opt(False, "--no-probe", help="when the converter refuses the model, do not try the other "
                                                      "targets to say which take it")),
    ("runs", int, _opt(30, "--runs", help="timed runs")),
    ("threads", Optional[int], _opt(None, "--threads", help="threads for every backend (default: all cores)")),
    ("no_bench", bool, _opt(False, "--no-bench")),
    ("quiet", bool, _opt(False, "--quiet", "-q")),
    ("as_json", bool, _opt(False, "--json", help="print the report as JSON")),
]


def _field_param(name: str, field) -> tuple[str, object, object] | None:
    """A typer option for one pydantic field of a target's options (None: not on the command line)."""
    extra = field.json_schema_extra or {}
    if extra.get("cli") is False:
        return None
    flag = extra.get("flag") or "--" + name.replace("_", "-")
    help_ = field.description or ""
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1 else ann
    parse = extra.get("parse")
    if parse in ("budget", "shape"):
        typ = Optional[list[str]] if parse == "budget" else Optional[str]
        return name, typ, typer.Option(None, flag, help=help_)
    if base is bool:
        decl = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
        return name, Optional[bool], typer.Option(None, decl, help=help_ or None)
    if typing.get_origin(base) is typing.Literal:  # validated by the recipe: one line with the path and the choices
        choices = " | ".join(str(c) for c in typing.get_args(base))
        return name, Optional[str], typer.Option(None, flag, help=f"{help_} ({choices})" if help_ else choices)
    if typing.get_origin(base) is list:
        return name, Optional[list[str]], typer.Option(None, flag, help=help_ or None)
    if base in (int, float, str):
        return name, Optional[base], typer.Option(None, flag, help=help_ or None)
    return None


def _target_options(target, values: dict) -> dict:
    """The options the user gave (None: not given), parsed like a recipe's."""
    out = {}
    for name, field in target.Options.model_fields.items():
        v = values.get(name)
        if v is None:
            continue
        if isinstance(v, Enum):
            v = v.value
        parse = (field.json_schema_extra or {}).get("parse")
        if parse == "budget":
            v = parse_budget(list(v))
        elif parse == "shape":
            v = list(parse_shape(v))
        out[name] = v
    return out


def _command_stages(target, opts: dict, common: Common, is_onnx: bool) -> dict:
    """The recipe stages of ``edgeexport <target>``: that target only. Default stages (the fp32 ONNX
    export) are off unless they are the command's own or a shared option sets one of their fields
    (``--exporter``); whatever the target requires from them is built anyway, as in any recipe."""
    stages: dict = {}
    for t in list_targets():
        if not t.default_stage:
            continue
        shared = {k: getattr(common, k) for k in t.Options.model_fields
                  if k in Common.__dataclass_fields__ and getattr(common, k) is not None}
        stages[t.name] = {**shared, **opts} if t is target else shared if shared and not is_onnx else None
    if not target.default_stage:
        stages[target.name] = [opts] if target.multiple else opts
    return stages


def default_stages_off() -> dict:
    return {t.name: None for t in list_targets() if t.default_stage}


def _make_target_command(target) -> None:
    """Register ``edgeexport <target.name>``: the target's options plus the shared ones."""
    arg_help = "zoo model, or an fp32 .onnx file" if target.from_onnx_file else "zoo model (or the artifact name with --model)"
    own = [p for p in (_field_param(n, f) for n, f in target.Options.model_fields.items()) if p]
    taken = {n for n, _, _ in own}
    params = [inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
                                default=typer.Argument(None, metavar="NAME_OR_ONNX" if target.from_onnx_file else "NAME",
                                                       help=arg_help))]
    for n, typ, opt in own + [c for c in COMMON_PARAMS if c[0] not in taken]:
        params.append(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=typ, default=opt))

    def command(**kwargs):
        common = Common(**{k: (v.value if isinstance(v, Enum) else v) for k, v in kwargs.items()
                           if k in Common.__dataclass_fields__ and k not in taken})
        name = kwargs["name"]
        if not name and not common.model:
            raise UserError("give a zoo model name, or --model package.module:factory")
        is_onnx = bool(name) and name.endswith(".onnx") and not common.model
        if is_onnx and not target.from_onnx_file:
            raise UserError(f"{target.name} converts from the PyTorch model; give a zoo model, not an ONNX file")
        opts = _target_options(target, kwargs)
        execute(common.recipe(name, _command_stages(target, opts, common, is_onnx)), common.quiet, common.as_json,
                target=target)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = f"{target.name}_command"
    command.__doc__ = target.help
    app.command(name=target.name, help=target.help)(handle_errors(command))


def register_target_commands() -> None:
    for t in list_targets():
        _make_target_command(t)


