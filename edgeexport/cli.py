"""The ``edgeexport`` command line: a thin typer layer over the library.

Each export command builds a :class:`~edgeexport.recipe.Recipe` from its flags and runs
the same pipeline as ``edgeexport run RECIPE``. Exit codes: 0 parity holds, 1 parity (or
a build) failed with the report still written, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import functools
import json
import os
import sys
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


def _execute(recipe, quiet: bool, as_json: bool) -> None:
    """Run a recipe, print the table (or JSON), exit with the verdict."""
    import contextlib

    from edgeexport import pipeline
    from edgeexport import report as R

    err = _console(quiet)

    def status(msg: str):
        # A transient spinner on a terminal; nothing in pipes and logs, where stderr is for errors.
        return err.status(msg) if err.is_terminal else contextlib.nullcontext()

    rep = pipeline.run(recipe, log=err.print, status=status)
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
    elif not quiet:
        R.print_table(rep, _console(stderr=False))
        name = recipe.name or rep["model"]["name"]
        err.print(f"report: {Path(recipe.output) / (name + '.report.md')}")
    raise typer.Exit(0 if rep["verdict"] == "passed" else 1)


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


@app.command()
@handle_errors
def onnx(name: Optional[str] = typer.Argument(None, help="zoo model name (or the artifact name with --model)"),
         weights: Optional[str] = typer.Option(None, "--weights", help="state dict or checkpoint (.pt/.pth)"),
         model: Optional[str] = typer.Option(None, "--model", help="user model as package.module:factory"),
         shape: Optional[str] = typer.Option(None, "--shape", help="input shape NxCxHxW, e.g. 1x3x520x520"),
         dynamic: Dynamic = typer.Option(Dynamic.none, "--dynamic", help="dynamic axes"),
         opset: int = typer.Option(18, "--opset"),
         exporter: Exporter = typer.Option(Exporter.dynamo, "--exporter"),
         no_simplify: bool = typer.Option(False, "--no-simplify", help="skip onnxsim"),
         output: str = typer.Option("out", "--output", "-o", help="output folder"),
         num_classes: Optional[int] = typer.Option(None, "--num-classes"),
         task: Optional[str] = typer.Option(None, "--task", help="classification | segmentation | features"),
         images: int = typer.Option(4, "--images", help="evaluation images at the main shape"),
         input_folder: Optional[str] = typer.Option(None, "--input-folder", help="your own evaluation images"),
         random_inputs: bool = typer.Option(False, "--random-inputs", help="random tensors instead of photos"),
         eval_data: Optional[str] = typer.Option(None, "--eval-data", help="labeled data for task metrics: a folder "
                                                 "(ImageFolder, or images/ + masks/) or a built-in task (shapes_seg, "
                                                 "shapes_cls[:SPLIT[:SEED]]); default: the task of trained weights"),
         eval_images: Optional[int] = typer.Option(None, "--eval-images", help="labeled images to use"),
         runs: int = typer.Option(30, "--runs", help="timed runs"),
         threads: Optional[int] = typer.Option(None, "--threads", help="threads for every backend (default: all cores)"),
         no_bench: bool = typer.Option(False, "--no-bench"),
         quiet: bool = typer.Option(False, "--quiet", "-q"),
         as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Export to ONNX, check it, simplify it, compare it with eager PyTorch and time both."""
    recipe = _recipe_from_flags(name, model, weights, shape, dynamic.value, output, num_classes, task, images,
                                input_folder, random_inputs, runs, threads, no_bench,
                                stages={"onnx": {"opset": opset, "exporter": exporter.value,
                                                 "simplify": not no_simplify}},
                                eval_data=eval_data, eval_images=eval_images)
    _execute(recipe, quiet, as_json)


class Mode(str, Enum):
    int8 = "int8"
    int8_dynamic = "int8-dynamic"
    fp16 = "fp16"


class Method(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QFormat(str, Enum):
    qdq = "qdq"
    qoperator = "qoperator"


def parse_budget(items: list[str]) -> dict[str, float] | None:
    """``["snr_db=25", "miou_drop=0.5"]`` -> {"snr_db": 25.0, "miou_drop": 0.5}."""
    from edgeexport.recipe import BUDGET_METRICS

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


@app.command()
@handle_errors
def quantize(name_or_onnx: str = typer.Argument(..., metavar="NAME_OR_ONNX", help="zoo model, or an fp32 .onnx file"),
             mode: Mode = typer.Option(Mode.int8, "--mode"),
             calib: Optional[str] = typer.Option(None, "--calib", help="folder of calibration images "
                                                                       "(default: the bundled calibration photos)"),
             calib_size: int = typer.Option(8, "--calib-size", help="calibration batches"),
             method: Method = typer.Option(Method.minmax, "--method"),
             per_channel: bool = typer.Option(True, "--per-channel/--per-tensor"),
             qformat: QFormat = typer.Option(QFormat.qdq, "--format"),
             exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="node to keep in float (repeatable)"),
             budget: Optional[list[str]] = typer.Option(None, "--budget", help="e.g. miou_drop=0.5, top1_drop=0.5, "
                                                                               "snr_db=25 or agreement=0.99"),
             weights: Optional[str] = typer.Option(None, "--weights"),
             model: Optional[str] = typer.Option(None, "--model", help="user model as package.module:factory"),
             shape: Optional[str] = typer.Option(None, "--shape"),
             exporter: Exporter = typer.Option(Exporter.dynamo, "--exporter", help="for the fp32 export"),
             output: str = typer.Option("out", "--output", "-o"),
             num_classes: Optional[int] = typer.Option(None, "--num-classes"),
             task: Optional[str] = typer.Option(None, "--task"),
             images: int = typer.Option(4, "--images"),
             input_folder: Optional[str] = typer.Option(None, "--input-folder", help="your own evaluation images"),
             eval_data: Optional[str] = typer.Option(None, "--eval-data", help="labeled data for task metrics: a folder "
                                                                     "(ImageFolder, or images/ + masks/) or a built-in task (shapes_seg, "
                                                                     "shapes_cls[:SPLIT[:SEED]]); default: the task of trained weights"),
             eval_images: Optional[int] = typer.Option(None, "--eval-images", help="labeled images to use"),
             runs: int = typer.Option(30, "--runs"),
             threads: Optional[int] = typer.Option(None, "--threads"),
             no_bench: bool = typer.Option(False, "--no-bench"),
             quiet: bool = typer.Option(False, "--quiet", "-q"),
             as_json: bool = typer.Option(False, "--json")):
    """Build NAME.int8.onnx / NAME.fp16.onnx and check it against eager PyTorch and the fp32 graph."""
    stage = {"mode": mode.value, "calib_folder": calib, "calib_size": calib_size, "method": method.value,
             "per_channel": per_channel, "format": qformat.value, "exclude": list(exclude or []),
             "budget": parse_budget(list(budget or []))}
    is_onnx = name_or_onnx.endswith(".onnx")
    stages = {"onnx": None if is_onnx else {"exporter": exporter.value}, "quantize": [stage]}
    recipe = _recipe_from_flags(None if model else name_or_onnx, model or None, weights, shape, "none", output,
                                num_classes, task, images, input_folder, False, runs, threads, no_bench, stages,
                                eval_data=eval_data, eval_images=eval_images)
    if model:
        recipe.name = name_or_onnx
    _execute(recipe, quiet, as_json)


def _recipe_from_flags(name, model, weights, shape, dynamic, output, num_classes, task, images, input_folder,
                       random_inputs, runs, threads, no_bench, stages, eval_data=None, eval_images=None):
    from edgeexport.recipe import Recipe

    if not name and not model:
        raise UserError("give a zoo model name, or --model package.module:factory")
    if input_folder and random_inputs:
        raise UserError("--input-folder and --random-inputs exclude each other")
    data = {
        "model": model or name, "name": name if model else None, "weights": weights, "input_shape": shape,
        "dynamic": dynamic, "output": output, "num_classes": num_classes, "task": task,
        "inputs": {"source": "folder" if input_folder else "random" if random_inputs else "photos",
                   "folder": input_folder, "images": images, "eval_data": eval_data or "auto",
                   "eval_images": eval_images},
        "stages": stages, "bench": {"enabled": not no_bench, "runs": runs, "threads": threads},
    }
    return Recipe.from_dict(data, source="options")


@app.command()
@handle_errors
def trt(name_or_onnx: str = typer.Argument(..., metavar="NAME_OR_ONNX", help="zoo model, or an .onnx file"),
        fp16: bool = typer.Option(False, "--fp16"),
        int8: bool = typer.Option(False, "--int8", help="explicit quantization from the symmetric int8 QDQ graph"),
        min_shape: Optional[str] = typer.Option(None, "--min-shape"),
        opt_shape: Optional[str] = typer.Option(None, "--opt-shape"),
        max_shape: Optional[str] = typer.Option(None, "--max-shape"),
        workspace: int = typer.Option(2048, "--workspace", help="MiB"),
        timing_cache: Optional[str] = typer.Option(None, "--timing-cache", help="reused across builds"),
        weights: Optional[str] = typer.Option(None, "--weights"),
        model: Optional[str] = typer.Option(None, "--model"),
        shape: Optional[str] = typer.Option(None, "--shape"),
        dynamic: Dynamic = typer.Option(Dynamic.none, "--dynamic"),
        output: str = typer.Option("out", "--output", "-o"),
        images: int = typer.Option(4, "--images"),
        runs: int = typer.Option(30, "--runs"),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
        as_json: bool = typer.Option(False, "--json")):
    """Build NAME.engine with TensorRT (pre-flight of the ONNX graph first, on any machine)."""
    from edgeexport.errors import BackendMissing
    from edgeexport.export.tensorrt import INSTALL_HINT, tensorrt_available
    from edgeexport.util import parse_shape

    shapes = {k: list(parse_shape(v)) if v else None
              for k, v in (("min_shape", min_shape), ("opt_shape", opt_shape), ("max_shape", max_shape))}
    stage = {"fp16": fp16, "int8": int8, "workspace_mib": workspace, "timing_cache": timing_cache, **shapes}
    is_onnx = name_or_onnx.endswith(".onnx")
    stages = {"onnx": None if is_onnx else {}, "trt": stage}
    available, reason = tensorrt_available()
    recipe = _recipe_from_flags(None if model else name_or_onnx, model, weights, shape, dynamic.value, output, None,
                                None, images, None, False, runs, None, not available, stages)
    if model:
        recipe.name = name_or_onnx
    if available:
        _execute(recipe, quiet, as_json)
    recipe.parity.enabled = False  # without TensorRT: export and pre-flight only, then refuse
    from edgeexport import pipeline

    rep = pipeline.run(recipe)
    art = next(a for a in rep["artifacts"] if a["kind"] == "tensorrt")
    pre = art["build"].get("preflight")
    if pre and not quiet:
        verdict = "would parse" if pre["parses"] else "would NOT parse"
        print(f"TensorRT pre-flight of {art['build']['source']}: {verdict} "
              f"({len(pre['errors'])} errors, {pre['warning_count']} warnings)")
        for f in pre["errors"] + pre["warnings"]:
            print(f"  {f['severity']:<7} {f['node']} ({f['op']}): {f['message']}")
    if art["error"]:
        raise typer.Exit(1) if "pre-flight" in art["error"] else UserError(art["error"])
    raise BackendMissing("TensorRT", reason, INSTALL_HINT)


@app.command()
@handle_errors
def coreml(name: str = typer.Argument(..., help="zoo model (or the artifact name with --model)"),
           precision: str = typer.Option("fp16", "--precision", help="fp32 | fp16"),
           compress: str = typer.Option("none", "--compress", help="none | int8 | palettize4 | palettize6"),
           deployment_target: str = typer.Option("iOS17", "--deployment-target"),
           compute_units: str = typer.Option("cpu_only", "--compute-units",
                                             help="cpu_only | cpu_and_gpu | all | cpu_and_ne (macOS)"),
           weights: Optional[str] = typer.Option(None, "--weights"),
           model: Optional[str] = typer.Option(None, "--model"),
           shape: Optional[str] = typer.Option(None, "--shape"),
           output: str = typer.Option("out", "--output", "-o"),
           images: int = typer.Option(4, "--images"),
           runs: int = typer.Option(30, "--runs"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json")):
    """Convert to a CoreML ML program (NAME.mlpackage); parity and latency on macOS, validation elsewhere."""
    stage = {"precision": precision, "compress": compress, "deployment_target": deployment_target,
             "compute_units": compute_units}
    recipe = _recipe_from_flags(None if model else name, model, weights, shape, "none", output, None, None, images,
                                None, False, runs, None, False, {"onnx": None, "coreml": [stage]})
    if model:
        recipe.name = name
    _execute(recipe, quiet, as_json)


@app.command()
@handle_errors
def executorch(name: str = typer.Argument(..., help="zoo model (or the artifact name with --model)"),
               quantize: str = typer.Option("none", "--quantize", help="none | int8 (PT2E, XNNPACK quantizer)"),
               calib_size: int = typer.Option(8, "--calib-size"),
               weights: Optional[str] = typer.Option(None, "--weights"),
               model: Optional[str] = typer.Option(None, "--model"),
               shape: Optional[str] = typer.Option(None, "--shape"),
               output: str = typer.Option("out", "--output", "-o"),
               images: int = typer.Option(4, "--images"),
               runs: int = typer.Option(30, "--runs"),
               threads: Optional[int] = typer.Option(None, "--threads"),
               no_bench: bool = typer.Option(False, "--no-bench"),
               eval_data: Optional[str] = typer.Option(None, "--eval-data", help="labeled data for task metrics: a folder "
                                                                               "(ImageFolder, or images/ + masks/) or a built-in task (shapes_seg, "
                                                                               "shapes_cls[:SPLIT[:SEED]]); default: the task of trained weights"),
               eval_images: Optional[int] = typer.Option(None, "--eval-images", help="labeled images to use"),
               quiet: bool = typer.Option(False, "--quiet", "-q"),
               as_json: bool = typer.Option(False, "--json")):
    """Lower to an ExecuTorch program (NAME.pte) with the XNNPACK delegate; parity and latency here."""
    stages = {"onnx": None, "executorch": [{"quantize": quantize, "calib_size": calib_size}]}
    recipe = _recipe_from_flags(None if model else name, model, weights, shape, "none", output, None, None, images,
                                None, False, runs, threads, no_bench, stages, eval_data=eval_data,
                                eval_images=eval_images)
    if model:
        recipe.name = name
    _execute(recipe, quiet, as_json)


@app.command()
@handle_errors
def bundle(name: str = typer.Argument(..., help="zoo model the artifact was built from"),
           artifact: Path = typer.Option(..., "--artifact", help=".onnx / .engine / .mlpackage / .pte"),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="bundle folder to write"),
           precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | fp16 | int8 (default: from "
                                                                             "the file name)"),
           weights: Optional[str] = typer.Option(None, "--weights"),
           model: Optional[str] = typer.Option(None, "--model"),
           shape: Optional[str] = typer.Option(None, "--shape"),
           images: int = typer.Option(4, "--images")):
    """Write a self-contained parity bundle: artifact, inputs, eager outputs, tolerances, manifest."""
    from edgeexport import pipeline
    from edgeexport.formats import format_for_path
    from edgeexport.pipeline import Artifact

    fmt = format_for_path(str(artifact))
    if fmt is None:
        raise UserError(f"{artifact}: unknown artifact type (.onnx, .engine, .mlpackage or .pte)")
    if not artifact.exists():
        raise UserError(f"artifact {artifact} does not exist")
    if precision is None:
        precision = next((p for p in ("int8", "fp16") if f".{p}" in artifact.name),
                         "fp16" if fmt.backend == "coreml" else "fp32")
    recipe = _recipe_from_flags(None if model else name, model, weights, shape, "none", str(artifact.parent), None,
                                None, images, None, False, 1, None, True, {"onnx": None})
    ctx = pipeline.prepare(recipe)
    art = Artifact(fmt.name, fmt.backend, precision, artifact)
    out = Path(output) if output else artifact.parent / f"{ctx.name}.{fmt.name}.bundle"
    manifest = pipeline.write_bundle_for(ctx, art, out)
    print(f"wrote {out} ({manifest['artifact']['backend']}, {precision}, {len(manifest['input_shapes'])} "
          f"input batch(es)); check it on the target with: edgeexport verify {out}")


@app.command()
@handle_errors
def verify(bundle_path: Path = typer.Argument(..., metavar="BUNDLE"),
           threads: Optional[int] = typer.Option(None, "--threads"),
           runs: int = typer.Option(30, "--runs"),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           as_json: bool = typer.Option(False, "--json")):
    """Run a bundle's artifact with the runtime installed here: parity and latency (no torch, no model code)."""
    from edgeexport.bundle import verify_bundle
    from edgeexport.errors import BackendMissing
    from edgeexport.report import print_table

    rep = verify_bundle(bundle_path, threads=threads, runs=runs)
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
def doctor(as_json: bool = typer.Option(False, "--json")):
    """Which backends are installed here, their versions, and how to install the missing ones."""
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
