"""The ``edgeexport`` command line: a thin typer layer over the library.

One command per registered target (``edgeexport onnx``, ``quantize``, ``trt``, ``coreml``,
``executorch``, ...) is generated from the target registry: its options come from the target's
typed options, the rest from one shared :class:`Common` object. Each builds a
:class:`~edgeexport.recipe.Recipe` and runs the same pipeline as ``edgeexport run RECIPE``.

Exit codes: 0 parity holds, 1 parity (or a build) failed with the report still written,
2 bad input or a backend this machine lacks (one line on stderr).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import types
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from edgeexport.errors import EdgeExportError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Export PyTorch vision models to edge runtimes and prove "
                                              "parity and speed against eager PyTorch.")


class Dynamic(str, Enum):
    none = "none"
    batch = "batch"
    hw = "hw"
    all = "all"


class Exporter(str, Enum):
    dynamo = "dynamo"
    torchscript = "torchscript"


def _err(msg: str) -> None:
    print(f"edgeexport: error: {msg}", file=sys.stderr)


def handle_errors(fn):
    """Bad input -> one line on stderr and exit 2; other deliberate failures -> exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _err(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise typer.Exit(2) from None
        except EdgeExportError as exc:
            _err(str(exc).splitlines()[0])
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("EDGEEXPORT_DEBUG"):
                raise
            _err(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} "
                 "(set EDGEEXPORT_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


def _console(quiet: bool = False, stderr: bool = True):
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, quiet=quiet, width=None if probe.is_terminal else 200)


def _execute(recipe, quiet: bool, as_json: bool, target=None) -> None:
    """Run a recipe, print the table (or JSON), exit with the verdict.

    When ``target``'s converter is missing here (nothing could be built), the table still shows
    what ran (e.g. TensorRT's pre-flight), then the command exits 2 with the install hint.
    """
    import contextlib

    from edgeexport import pipeline
    from edgeexport import report as R
    from edgeexport.errors import BackendMissing

    err = _console(quiet)

    def status(msg: str):
        # A transient spinner on a terminal; nothing in pipes and logs, where stderr is for errors.
        return err.status(msg) if err.is_terminal else contextlib.nullcontext()

    rep = pipeline.run(recipe, log=err.print, status=status, command=_command_line())
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    elif not quiet:
        out = _console(stderr=False)
        R.print_table(rep, out)
        name = recipe.name or rep["model"]["name"]
        out.print(f"report: {Path(recipe.output) / (name + '.report.md')}", markup=False, highlight=False)
        page = R.html_path(Path(recipe.output), name)
        if page.exists():
            out.print(f"report: {page}", markup=False, highlight=False)
    unbuilt = pipeline.unbuilt(rep, target.name) if target is not None else []
    if unbuilt and not any(a["error"] for a in unbuilt):
        ok, reason = target.build_availability()
        raise BackendMissing(target.title, reason, target.install)
    raise typer.Exit(0 if rep["verdict"] == "passed" else 1)


def _command_line() -> str | None:
    """This process's command line, when it is the edgeexport command (recorded in the report)."""
    import shlex

    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 != "edgeexport" and not sys.argv[0].endswith(os.path.join("edgeexport", "__main__.py")):
        return None
    return shlex.join(["edgeexport", *sys.argv[1:]])


def parse_budget(items: list[str]) -> dict[str, float] | None:
    """``["snr_db=25", "miou_drop=0.5"]`` -> {"snr_db": 25.0, "miou_drop": 0.5}."""
    from edgeexport.targets.base import BUDGET_METRICS

    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in BUDGET_METRICS:
            raise UserError(f"--budget {item!r}: expected METRIC=VALUE with METRIC one of {', '.join(BUDGET_METRICS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise UserError(f"--budget {item!r}: {value!r} is not a number") from None
    return out


# ---------------------------------------------------------------- commands


@app.command("list")
@handle_errors
def list_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """List the registered models."""
    from edgeexport.zoo import get_entry, list_models

    rows = []
    for name in list_models():
        e = get_entry(name)
        rows.append({"name": name, "aliases": list(e.aliases), "family": e.meta.family, "task": e.meta.task,
                     "input_size": list(e.meta.input_size), "num_classes": e.meta.num_classes})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        alias = f" (alias: {', '.join(r['aliases'])})" if r["aliases"] else ""
        print(f"{r['name']:<28} {r['task']:<15} {'x'.join(map(str, r['input_size'])):<12} {r['family']}{alias}")


@app.command()
@handle_errors
def info(name: str = typer.Argument(..., help="zoo model name"),
         as_json: bool = typer.Option(False, "--json"),
         num_classes: Optional[int] = typer.Option(None, "--num-classes"),
         state_dict_shapes: bool = typer.Option(False, "--state-dict-shapes",
                                                help="print {key: shape} of the model's state dict as JSON")):
    """Parameters, MACs, input shape and outputs of a model."""
    import torch

    from edgeexport.source import count_macs, load_model

    handle = load_model(name, weights="init", num_classes=num_classes)
    if state_dict_shapes:
        print(json.dumps({k: list(v.shape) for k, v in handle.model.state_dict().items()}, indent=1))
        return
    shape = (1, *handle.meta.input_size)
    x = torch.zeros(shape)
    handle.probe(x)
    meta = handle.meta
    d = {**handle.info(shape), "macs": count_macs(handle.model, x), "family": meta.family, "paper": meta.paper,
         "num_classes": meta.num_classes, "published_params": meta.published_params, "resize": meta.resize,
         "notes": meta.notes}
    d["weights"] = "default: seeded, BatchNorm re-estimated on the bundled photos (use --weights for yours)"
    from edgeexport.zoo.pretrained import trained_for

    d["trained_weights"] = [w.describe() for w in trained_for(handle.origin.removeprefix("zoo:"))]
    if as_json:
        print(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        if k == "trained_weights":
            continue
        if isinstance(v, int) and k in ("params", "macs", "published_params"):
            v = f"{v:,}"
        print(f"{k:>17}: {v}")
    for w in d["trained_weights"]:
        ev = w["eval"] or {}
        where = "shipped" if w["shipped"] else "trained on demand into the cache"
        state = ("; eager " + ", ".join(f"{k} {ev[k]:.4f}" for k in ("miou", "pixel_accuracy", "top1", "top5")
                                       if ev.get(k) is not None) + f" on {ev.get('images')} {w['dataset']} eval images"
                 if ev else "; not on this machine yet")
        r = w["recipe"]
        print(f"{'--weights':>17}: {w['weights']} ({where}{state})")
        print(f"{'':>17}  recipe: {r['steps']} steps x {r['batch']} at {r['size']}px, AdamW lr {r['lr']:g}, "
              f"seed {r['seed']}: edgeexport train {w['weights'].split(':')[0]} --tag {w['weights'].split(':')[1]}")


# ---------------------------------------------------------------- per-target commands (from the registry)


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
    runs: int = 30
    threads: Optional[int] = None
    no_bench: bool = False
    quiet: bool = False
    as_json: bool = False

    def recipe(self, name: str, stages: dict):
        from edgeexport.recipe import Recipe

        if self.input_folder and self.random_inputs:
            raise UserError("--input-folder and --random-inputs exclude each other")
        data = {
            "model": self.model or name, "name": name if self.model else None, "weights": self.weights,
            "input_shape": self.shape, "dynamic": self.dynamic, "output": self.output,
            "num_classes": self.num_classes, "task": self.task,
            "inputs": {"source": "folder" if self.input_folder else "random" if self.random_inputs else "photos",
                       "folder": self.input_folder, "images": self.images, "eval_data": self.eval_data or "auto",
                       "eval_images": self.eval_images},
            "stages": stages, "bench": {"enabled": not self.no_bench, "runs": self.runs, "threads": self.threads},
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
    ("runs", int, _opt(30, "--runs", help="timed runs")),
    ("threads", Optional[int], _opt(None, "--threads", help="threads for every backend (default: all cores)")),
    ("no_bench", bool, _opt(False, "--no-bench")),
    ("quiet", bool, _opt(False, "--quiet", "-q")),
    ("as_json", bool, _opt(False, "--json", help="print the report as JSON")),
]


def _field_param(name: str, field) -> tuple[str, object, object] | None:
    """A typer option for one pydantic field of a target's options (None: not on the command line)."""
    import typing

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
    from edgeexport.util import parse_shape

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
    from edgeexport.targets import list_targets

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
    from edgeexport.targets import list_targets

    return {t.name: None for t in list_targets() if t.default_stage}


def _make_target_command(target) -> None:
    """Register ``edgeexport <target.name>``: the target's options plus the shared ones."""
    import inspect

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
        _execute(common.recipe(name, _command_stages(target, opts, common, is_onnx)), common.quiet, common.as_json,
                 target=target)

    command.__signature__ = inspect.Signature(params)
    command.__name__ = f"{target.name}_command"
    command.__doc__ = target.help
    app.command(name=target.name, help=target.help)(handle_errors(command))


def _register_target_commands() -> None:
    from edgeexport.targets import list_targets

    for t in list_targets():
        _make_target_command(t)


@app.command()
@handle_errors
def bundle(name: str = typer.Argument(..., help="zoo model the artifact was built from"),
           artifact: Path = typer.Option(..., "--artifact", help="an artifact file edgeexport built (see "
                                                                 "`edgeexport targets` for the formats)"),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="bundle folder to write"),
           precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | fp16 | int8 (default: the "
                                                                             "format's, from the file name)"),
           runner_option: Optional[list[str]] = typer.Option(None, "--option", help="runner option KEY=VALUE "
                                                              "recorded in the bundle (repeatable; e.g. "
                                                              "compute_units=all); values are JSON when they parse"),
           weights: Optional[str] = typer.Option(None, "--weights"),
           model: Optional[str] = typer.Option(None, "--model"),
           shape: Optional[str] = typer.Option(None, "--shape"),
           images: int = typer.Option(4, "--images"),
           sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM or raw 32 "
                                                   "bytes, e.g. from `edgeexport keygen`) that signs the manifest")):
    """Write a self-contained parity bundle: artifact, inputs, eager outputs, tolerances, how to run it."""
    from edgeexport import pipeline
    from edgeexport.targets import format_for_path

    if sign_key is not None:
        from edgeexport.keys import load_private_key

        load_private_key(sign_key)  # a bad key fails now, not after the model has run

    found = format_for_path(str(artifact))
    if found is None:
        from edgeexport.targets import all_formats

        raise UserError(f"{artifact}: unknown artifact type ({', '.join(sorted({f.suffix for _, f in all_formats()}))})")
    target, fmt = found
    if not artifact.exists():
        raise UserError(f"artifact {artifact} does not exist")
    if precision not in (None, "fp32", "fp16", "int8"):
        raise UserError(f"--precision {precision!r}: expected fp32, fp16 or int8")
    options = {}
    for item in runner_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)  # true, 2, {"in0": "input"} ...
        except ValueError:
            options[key] = value
    common = Common(weights=weights, model=model, shape=shape, output=str(artifact.parent), images=images, runs=1,
                    no_bench=True, eval_data="none")
    ctx = pipeline.prepare(common.recipe(name, default_stages_off()))
    companions = [artifact.with_name(artifact.name[:-len(fmt.suffix)] + c) for c in fmt.companions]
    missing = [c for c in companions if not c.exists()]
    if missing:
        raise UserError(f"{artifact} needs {missing[0].name} beside it")
    art = pipeline.RunArtifact(fmt.kind, target.name, target.backend, precision or fmt.precision, artifact)
    art.runner = ctx.runner_spec(target, artifact, companions, **options)
    out = Path(output) if output else artifact.parent / f"{ctx.name}.{fmt.kind}.bundle"
    manifest = pipeline.write_bundle_for(ctx, art, out, sign_key=sign_key)
    signed = ""
    if "signature" in manifest:
        from edgeexport.keys import fingerprint

        signed = f", signed by key {fingerprint(bytes.fromhex(manifest['signature']['public_key']))}"
    print(f"wrote {out} ({manifest['artifact']['backend']}, {art.precision}, {len(manifest['input_shapes'])} "
          f"input batch(es){signed}); check it on the target with: edgeexport verify {out}"
          + (" --trust-key PUB" if signed else ""))


@app.command()
@handle_errors
def verify(bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
           threads: Optional[int] = typer.Option(None, "--threads"),
           runs: int = typer.Option(30, "--runs"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json"),
           trust_key: Optional[list[Path]] = typer.Option(None, "--trust-key", help="Ed25519 public key (PEM or "
                                                          "raw 32 bytes); refuse a bundle not signed by it "
                                                          "(repeat for several keys)")):
    """Run a bundle's artifact with the runtime installed here: parity and latency (no torch, no model code).

    The report says whether the bundle was signed and by which key (fingerprint: SHA-256 of the raw
    public key); with --trust-key an unsigned, foreign-signed or altered bundle is refused (exit 2).
    """
    from edgeexport.bundle import verify_bundle
    from edgeexport.keys import load_public_key
    from edgeexport.errors import BackendMissing
    from edgeexport.report import print_table

    keys = [load_public_key(k) for k in trust_key or []]
    rep = verify_bundle(bundle_path, threads=threads, runs=runs, trust_keys=keys or None)
    art = rep["artifacts"][0]
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    elif not quiet:
        print_table(rep, _console(stderr=False))
    if art["parity"]["status"] == "not_run":
        raise BackendMissing(art["backend"], art["parity"]["reason"].removeprefix("not run on this machine: "))
    raise typer.Exit(0 if rep["verdict"] == "passed" else 1)


@app.command()
@handle_errors
def keygen(output: Path = typer.Option(..., "--output", "-o", help="folder for NAME.key and NAME.pub"),
           name: str = typer.Option("edgeexport", "--name", help="file name stem")):
    """Make an Ed25519 key pair for signing bundles: NAME.key (private, mode 0600) and NAME.pub (public)."""
    from edgeexport.keys import generate_keypair

    priv, pub, fp = generate_keypair(output, name)
    print(f"wrote {priv} (private: keep it on the build host) and {pub} (public: give it to verifying machines)")
    print(f"key fingerprint: {fp}")
    print(f"sign: edgeexport bundle MODEL --artifact FILE --sign-key {priv}; check: edgeexport verify BUNDLE "
          f"--trust-key {pub}")


@app.command()
@handle_errors
def run(recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="recipe YAML"),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="override the recipe's output folder"),
        weights: Optional[str] = typer.Option(None, "--weights", help="override the recipe's weights"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
        as_json: bool = typer.Option(False, "--json")):
    """Run every stage of a recipe and report parity and latency of every artifact."""
    from edgeexport.recipe import Recipe

    recipe = Recipe.from_yaml(recipe_path)
    if output:
        recipe.output = output
    if weights:
        recipe.weights = weights
    _execute(recipe, quiet, as_json)


@app.command("report")
@handle_errors
def report_cmd(path: Path = typer.Argument(..., metavar="REPORT_JSON", help="a NAME.report.json edgeexport wrote"),
               html: bool = typer.Option(False, "--html", help="(re)write the self-contained HTML page beside it"),
               open_page: bool = typer.Option(False, "--open", help="open the page in a browser (implies --html)"),
               output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                     help="where to write the page (default: NAME.report.html "
                                                          "beside the JSON)")):
    """Re-render an existing report: the terminal table and, with --html, the HTML page (from the JSON alone)."""
    from edgeexport import report as R
    from edgeexport.report.html import write_html

    if not path.is_file():
        raise UserError(f"{path}: no such report")
    try:
        rep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a JSON report ({type(exc).__name__})") from None
    out = _console(stderr=False)
    page = None
    if isinstance(rep, dict) and isinstance(rep.get("cells"), list) and isinstance(rep.get("models"), list):
        from edgeexport.matrix import print_matrix, write_matrix_html  # a matrix report (edgeexport matrix)

        if output is not None:
            raise UserError("--output: a matrix page links the model pages beside it; it is written beside its JSON")
        print_matrix(rep, out)
        if html or open_page:
            page = write_matrix_html(rep, path.parent)
    elif not isinstance(rep, dict) or not isinstance(rep.get("artifacts"), list) or "model" not in rep:
        raise UserError(f"{path}: not an edgeexport report (no model and artifacts)")
    else:
        R.print_table(rep, out)
        if html or open_page or output:
            name = path.name.removesuffix(".json").removesuffix(".report")
            page = write_html(rep, output or R.html_path(path.parent, name))
    if page is not None:
        out.print(f"report: {page}", markup=False, highlight=False)
        if open_page:
            import webbrowser

            webbrowser.open(page.resolve().as_uri())


@app.command()
@handle_errors
def data(name: str = typer.Argument(..., help="built-in labeled task: shapes_seg | shapes_cls"),
         split: str = typer.Option("eval", "--split", help="train | calib | val | eval"),
         count: int = typer.Option(40, "--count", min=1, help="images to write"),
         seed: int = typer.Option(0, "--seed", help="a seed no reference result used gives a fresh set"),
         size: Optional[str] = typer.Option(None, "--size", help="HxW (default: the task's own, e.g. 520x520)"),
         output: Path = typer.Option(..., "--output", "-o", help="folder to write (must not exist or be empty)")):
    """Write a built-in labeled task as a folder (ImageFolder, or images/ + masks/) for --eval-data."""
    from edgeexport.datasets import get_dataset
    from edgeexport.datasets.labeled import from_builtin, write_folder
    from edgeexport.datasets.shapes import SPLITS

    ds = get_dataset(name)
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}")
    hw = None
    if size:
        try:
            hw = tuple(int(v) for v in size.lower().split("x"))
        except ValueError:
            hw = ()
        if len(hw) != 2 or min(hw) < 16 or max(hw) > 4096:
            raise UserError(f"--size {size!r}: expected HxW between 16 and 4096, e.g. 520x520")
    out = write_folder(from_builtin(ds, split, seed, count, hw), output,
                       {"generator": f"edgeexport data {name} --split {split} --count {count} --seed {seed}"})
    print(f"wrote {count} {ds.task} images of {name} ({split}, seed {seed}) to {out}; "
          f"use it with --eval-data {out}")


@app.command()
@handle_errors
def train(name: str = typer.Argument(..., help="zoo model with a training recipe"),
          tag: str = typer.Option("shapes", "--tag"),
          output: Optional[str] = typer.Option(None, "--output", "-o",
                                               help="safetensors file (default: where --weights NAME:TAG finds it)"),
          steps: Optional[int] = typer.Option(None, "--steps", help="fewer steps for a quick try (not the recipe)"),
          threads: Optional[int] = typer.Option(None, "--threads")):
    """Train reference weights on a built-in task from their recipe (CPU, or a CUDA GPU when visible)."""
    from edgeexport.training import run_training
    from edgeexport.zoo import resolve_name

    run_training(resolve_name(name), tag, output, steps, threads, log=lambda m: print(m, file=sys.stderr))


@app.command()
@handle_errors
def targets(as_json: bool = typer.Option(False, "--json")):
    """Every registered target: its formats, whether it can build and run here, and how to install it."""
    from edgeexport.doctor import target_rows

    rows = target_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        build = "builds here" if r["build"]["ok"] else f"cannot build here ({r['build']['reason']})"
        run_ = "runs here" if r["run"]["ok"] else f"cannot run here ({r['run']['reason']})"
        print(f"{r['name']:<11} {r['title']:<13} {build}; {run_}")
        for f in r["formats"]:
            print(f"{'':<11}   {f['kind']:<20} NAME{f['suffix']:<24} {f['precision']:<5} {f['runs_on']}")
        if not (r["build"]["ok"] and r["run"]["ok"]):
            print(f"{'':<11}   install: {r['install']}")


@app.command()
@handle_errors
def doctor(as_json: bool = typer.Option(False, "--json"),
           ray_resources: bool = typer.Option(False, "--ray-resources",
                                              help="print the Ray resources this machine offers, as JSON for "
                                                   "`ray start --resources=...` (the runtimes that run here)")):
    """Which backends are installed here, their versions, and how to install the missing ones."""
    if ray_resources:
        from edgeexport.doctor import ray_resources as offered

        print(json.dumps(offered(), separators=(",", ":")))
        return
    from edgeexport.doctor import doctor as check

    rows = check()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        line = f"{r['backend']:<21} {r['status']:<27} {r['version'] or '':<12}"
        if r["reason"]:
            line += f" {r['reason']}"
        if r["install"]:
            line += f"  -> {r['install']}"
        print(line.rstrip())


@app.command()
@handle_errors
def matrix(models: Optional[list[str]] = typer.Argument(None, metavar="RECIPE_OR_MODEL...",
                                                        help="zoo models (their recipes/NAME.yaml when there is one) "
                                                             "or recipe YAML files"),
           targets_: str = typer.Option(",".join(("onnx", "onnx-int8", "executorch", "coreml")), "--targets",
                                        help="artifact kinds, comma-separated (`edgeexport targets` lists them)"),
           cluster: str = typer.Option("local", "--cluster", help="local (a Ray instance here, loopback only), "
                                                                  "auto, or ray://HOST:PORT / HOST:PORT of a cluster"),
           cache: Optional[Path] = typer.Option(None, "--cache", help="content-addressed cell cache (default: "
                                                                      "$EDGEEXPORT_CACHE/matrix or "
                                                                      "~/.cache/edgeexport/matrix)"),
           no_cache: bool = typer.Option(False, "--no-cache", help="build every cell again (results still cached)"),
           resume: bool = typer.Option(False, "--resume", help="continue the interrupted matrix in --output "
                                                               "without redoing its finished cells"),
           output: Path = typer.Option(Path("out/matrix"), "--output", "-o"),
           threads: int = typer.Option(1, "--threads", min=1, help="CPUs per cell task, and threads for every "
                                                                  "backend's timings"),
           retries: int = typer.Option(2, "--retries", min=0, help="retries of a cell whose worker process dies"),
           cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="size of a local cluster (default: every "
                                                                          "core); 1 runs the cells one after another"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json", help="print the matrix report as JSON")):
    """Every model through every target as Ray tasks: cached, resumable, verified where the runtime is."""
    from edgeexport.matrix import print_matrix, run_matrix

    err = _console(quiet)
    rep = run_matrix(models or [], [k.strip() for k in targets_.split(",") if k.strip()], cluster=cluster,
                     cache=cache, use_cache=not no_cache, resume=resume, output=output, threads=threads,
                     retries=retries, cpus=cpus, log=lambda m: err.print(m, markup=False, highlight=False),
                     command=_command_line())
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    elif not quiet:
        out = _console(stderr=False)
        print_matrix(rep, out)
        for suffix in ("md", "html"):
            page = output / f"matrix.report.{suffix}"
            if page.exists():
                out.print(f"report: {page}", markup=False, highlight=False)
    raise typer.Exit(0 if rep["verdict"] == "passed" else 1)


_register_target_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line on stderr and exit 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Abort:
        _err("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors from the (vendored) click layer
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgeexport`: show the help
            print(message, file=sys.stderr)
            sys.exit(2)
        _err((message.splitlines() or [type(exc).__name__])[0])
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    sys.exit(rv or 0)
