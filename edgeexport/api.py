"""The library API: what the CLI calls, for users who hold a model in Python.

>>> import torch, edgeexport
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
>>> report = edgeexport.export(model, (1, 3, 64, 64), targets=["onnx", "onnx-int8"])   # doctest: +SKIP
>>> report.verdict, report.fastest(passing=True).name                                   # doctest: +SKIP

* :func:`export`: a model (an ``nn.Module`` in memory, a zoo name, or ``package.module:factory``) to the
  artifact kinds named (``edgeexport targets`` lists them), each judged against eager PyTorch on real
  photographs and timed beside it; returns the :class:`~edgeexport.report.Report`.
* :func:`check`: an artifact built elsewhere, judged against the eager model the same way.
* :func:`run`: a recipe (a YAML file, a dict or a :class:`~edgeexport.recipe.Recipe`): a saved call.
  :func:`recipe_for` is the recipe :func:`export` runs.
* :func:`verify`: a parity bundle, on the machine that has its runtime.
* :func:`matrix`: models x artifact kinds as Ray tasks, cached.
* :func:`load_report`: a report written before, from its JSON.

Bad input raises :class:`~edgeexport.errors.UserError` (one line; the CLI exits 2 with it); a converter that
refuses an op of the model raises :class:`~edgeexport.errors.Unsupported` (a ``UserError`` naming the target,
the op, the module it sits in and the targets that took the model; ``.report`` is the run's report, written
all the same). The matrix keeps such a cell as "unsupported" instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeexport.bundle import verify_bundle
from edgeexport.errors import EdgeExportError, Unsupported, UserError  # noqa: F401  (re-exported by edgeexport)
from edgeexport.keys import load_public_key
from edgeexport.parity import Tolerance
from edgeexport.recipe import Recipe
from edgeexport.report import ArtifactResult, Report, load_report  # noqa: F401  (re-exported by edgeexport)
from edgeexport.targets import list_targets, options_for_kind
from edgeexport.util import MAX_RUNS, MAX_THREADS, bounded, parse_shape

# torch, the pipeline and Ray are imported by the functions that need them: verifying a bundle needs none.

__all__ = ["ArtifactResult", "EdgeExportError", "Recipe", "Report", "Tolerance", "Unsupported", "UserError", "check",
           "check_recipe",
           "export", "load_report", "matrix", "recipe_for", "run", "verify"]


def _quiet(message: str) -> None:
    """The library prints nothing unless given a ``log``."""


def refuse_unsupported(report: Report) -> Report:
    """``report``, or :class:`~edgeexport.errors.Unsupported` (carrying it) when a converter refused an op of
    the model: the target, the op, the module it sits in, and the targets that did take the model."""
    refused = [a for a in report.artifacts.values() if a.status == "unsupported"]
    if not refused:
        return report
    first = refused[0]
    raise Unsupported(first.target, first.op or "?", first.module, first.taken_by,
                      model=report.model.origin if report.model else "the model", report=report)


def _shape(example) -> tuple[int, int, int, int]:
    """The input shape from an example: a tensor (or array), a 1-tuple of one, a shape, or ``"1x3x224x224"``."""
    if isinstance(example, (tuple, list)) and example and all(hasattr(t, "shape") for t in example):
        if len(example) != 1:
            raise UserError(f"edgeexport takes image models with one NCHW input; the example has {len(example)} "
                            "tensors")
        example = example[0]
    if hasattr(example, "shape"):
        if hasattr(example, "is_floating_point") and not example.is_floating_point():
            raise UserError(f"the example tensor is {example.dtype}; image models take float input")
        return parse_shape(tuple(int(d) for d in example.shape))
    if isinstance(example, (tuple, list, str)):
        return parse_shape(example)
    raise UserError(f"example: expected a tensor, a tuple of one tensor, or a shape like (1, 3, 224, 224); "
                    f"got {type(example).__name__}")


def _stages(targets, calib_folder: str | None) -> dict:
    """Recipe stages for artifact kinds (``["onnx", "onnx-int8"]``) or kinds with option overrides
    (``{"onnx-int8": {"method": "entropy"}}``). Default stages (the fp32 ONNX export) are off unless named:
    what a target requires is built anyway."""
    if isinstance(targets, str):
        targets = [targets]
    wanted = dict(targets) if isinstance(targets, Mapping) else {k: {} for k in targets}
    stages: dict = {t.name: None for t in list_targets() if t.default_stage}
    for kind, overrides in wanted.items():
        target, defaults = options_for_kind(kind)
        opts = {**defaults.model_dump(exclude_unset=True), **dict(overrides or {})}
        if calib_folder and "calib_folder" in target.Options.model_fields and "calib_folder" not in opts:
            opts["calib_folder"] = calib_folder
        options = target.Options(**opts)
        if target.format_for(options).kind != kind:
            raise UserError(f"targets: the options {overrides} build {target.format_for(options).kind}, not {kind}")
        if target.multiple:
            stages.setdefault(target.name, [])
            stages[target.name] = (stages[target.name] or []) + [options.model_dump(mode="json")]
        else:
            stages[target.name] = options.model_dump(mode="json")
    return stages


def _tolerances(tolerances) -> dict:
    out = {}
    for precision, limits in (tolerances or {}).items():
        out[precision] = limits.set_limits() if isinstance(limits, Tolerance) else dict(limits)
    return out


def recipe_for(model, example, targets: Sequence[str] | Mapping[str, dict] = ("onnx",), *, weights: str | None = None,
               calib: str | Path | None = None, eval_data: str | Path | None = None, task: str | None = None,
               tolerances: Mapping | None = None, output: str | Path = "out", threads: int | None = None,
               name: str | None = None, dynamic: str = "none", images: int = 4, bench: bool = True,
               settle_bn: bool = False) -> Recipe:
    """The recipe :func:`export` runs: the call, saved (``recipe.model_dump()``, or YAML for ``edgeexport run``).
    A module given in memory is named ``python:CLASS`` there; running it again needs the module."""
    from torch import nn

    from edgeexport.source import IN_MEMORY

    if isinstance(model, nn.Module):
        model_name = f"{IN_MEMORY}{name or type(model).__name__}"
    elif isinstance(model, str) and model.strip():
        model_name = model
    else:
        raise UserError(f"model: expected an nn.Module, a zoo name or package.module:factory; got {type(model).__name__}")
    data = {
        "model": model_name, "name": name, "weights": str(weights) if weights else None,
        "input_shape": list(_shape(example)), "dynamic": dynamic, "task": task, "output": str(output),
        "settle_bn": settle_bn,
        "inputs": {"images": images, "eval_data": str(eval_data) if eval_data else "auto"},
        "tolerances": _tolerances(tolerances),
        "stages": _stages(targets, str(calib) if isinstance(calib, (str, Path)) else None),
        "bench": {"enabled": bench, "threads": threads},
    }
    return Recipe.from_dict(data, source="edgeexport.export")


def _calibration_arrays(calib, shape) -> list[np.ndarray] | None:
    """Calibration batches given in memory: a tensor / array of N images, or a list of batches."""
    if calib is None or isinstance(calib, (str, Path)):
        return None
    items = list(calib) if isinstance(calib, (list, tuple)) else [calib]
    arrays = [np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32) for x in items]
    images = [img for a in arrays for img in (a if a.ndim == 4 else a[None])]
    if not images or any(img.shape != tuple(shape[1:]) for img in images):
        raise UserError(f"calib: expected images of shape {list(shape[1:])} (as tensors or arrays), got "
                        f"{sorted({tuple(img.shape) for img in images})}")
    n = shape[0]
    if len(images) < n:
        raise UserError(f"calib: {len(images)} image(s), fewer than one batch of {n}")
    return [np.stack(images[i:i + n]) for i in range(0, len(images) - n + 1, n)]


def export(model, example, targets: Sequence[str] | Mapping[str, dict] = ("onnx",), *, weights: str | None = None,
           calib=None, eval_data: str | Path | None = None, task: str | None = None, tolerances: Mapping | None = None,
           output: str | Path = "out", threads: int | None = None, name: str | None = None, dynamic: str = "none",
           images: int = 4, bench: bool = True, settle_bn: bool = False, log=None) -> Report:
    """Export ``model`` to every artifact kind in ``targets``; judge and time each against eager PyTorch.

    ``model``: an ``nn.Module`` (a copy is exported), a zoo name, or ``package.module:factory``.
    ``example``: a tensor, a tuple of one tensor, or the input shape (``(1, 3, 224, 224)`` / ``"1x3x224x224"``);
    parity is judged on real photographs at that shape, not on the example's values.
    ``targets``: artifact kinds (``"onnx"``, ``"onnx-int8"``, ``"litert-int8"``, ...), or a mapping from kind
    to option overrides. ``weights``: a state dict / checkpoint file, or trained weights (``MODEL:TAG``).
    ``calib``: calibration images for int8, a folder (or ``shapes_seg:calib``), or tensors at the example's
    size. ``eval_data``: labeled data for task metrics (a folder, or a built-in task). ``tolerances``:
    ``{"int8": {"max_task_drop": 0.5}}`` (or :class:`~edgeexport.parity.Tolerance` values).
    ``output``: where the artifacts and ``NAME.report.{json,md,html}`` go. ``threads``: for every backend.
    ``settle_bn``: re-estimate BatchNorm statistics on calibration images first (a model without trained
    weights, whose outputs would otherwise be constant or vanishing).
    """
    from torch import nn

    if not targets:
        raise UserError("targets: name at least one artifact kind (`edgeexport targets` lists them)")
    recipe = recipe_for(model, example, targets, weights=weights, calib=calib, eval_data=eval_data, task=task,
                        tolerances=tolerances, output=output, threads=threads, name=name, dynamic=dynamic,
                        images=images, bench=bench, settle_bn=settle_bn)
    from edgeexport.pipeline import run as run_pipeline

    return refuse_unsupported(run_pipeline(recipe, log=log or _quiet,
                                           module=model if isinstance(model, nn.Module) else None,
                                           calibration=_calibration_arrays(calib, recipe.input_shape)))


def check(artifact_path: str | Path, model, example, *, weights: str | None = None, precision: str | None = None,
          eval_data: str | Path | None = None, task: str | None = None, tolerances: Mapping | None = None,
          output: str | Path | None = None, threads: int | None = None, runner_options: dict | None = None,
          bench: bool = True, log=None) -> Report:
    """Judge an artifact built elsewhere (its kind from its file name) against the eager ``model``:
    task metrics, parity on real photographs, latency beside eager. The report goes to ``output``
    (default: the artifact's folder). ``runner_options``: how to run it (e.g. ``{"compute_units": "all"}``)."""
    from torch import nn

    path = Path(artifact_path)
    recipe = recipe_for(model, example, (), weights=weights, eval_data=eval_data, task=task,
                        tolerances=tolerances, output=output or path.parent, threads=threads, bench=bench)
    return check_recipe(recipe, path, precision=precision, runner_options=runner_options, log=log,
                        module=model if isinstance(model, nn.Module) else None)


def check_recipe(recipe: Recipe, artifact_path: str | Path, *, precision: str | None = None,
                 runner_options: dict | None = None, log=None, status=None, command: str | None = None,
                 module=None) -> Report:
    """:func:`check` with the eager model, inputs and tolerances of a recipe (its stages are not built)."""
    from edgeexport.pipeline import check_file

    kw = {"status": status} if status is not None else {}
    return check_file(recipe, Path(artifact_path), precision, runner_options, log=log or _quiet, command=command,
                      module=module, **kw)


def diff(artifact_path: str | Path, model, example, *, weights: str | None = None, precision: str | None = None,
         tolerances: Mapping | None = None, output: str | Path | None = None, threads: int | None = None,
         runner_options: dict | None = None, settle_bn: bool = False, log=None) -> Report:
    """Where an artifact departs from the eager ``model``, layer by layer: its runtime's intermediate tensors
    paired with the outputs of the model's modules by module path, on the first evaluation photograph.
    ``report.artifacts[kind].layers`` holds the records, the first divergent module and the worst ones."""
    from torch import nn

    from edgeexport.pipeline import diff_file

    path = Path(artifact_path)
    recipe = recipe_for(model, example, (), weights=weights, tolerances=tolerances, output=output or path.parent,
                        threads=threads, bench=False, images=1, eval_data="none", settle_bn=settle_bn)
    return diff_file(recipe, path, precision, runner_options, log=log or _quiet,
                     module=model if isinstance(model, nn.Module) else None)


def diff_recipe(recipe: Recipe, artifact_path: str | Path, *, precision: str | None = None,
                runner_options: dict | None = None, log=None, status=None, command: str | None = None,
                module=None) -> Report:
    """:func:`diff` with the eager model and inputs of a recipe (its stages are not built)."""
    from edgeexport.pipeline import diff_file

    kw = {"status": status} if status is not None else {}
    return diff_file(recipe, Path(artifact_path), precision, runner_options, log=log or _quiet, command=command,
                     module=module, **kw)


def run(recipe: Recipe | str | Path | Mapping, *, model=None, log=None, status=None, command: str | None = None) -> Report:
    """Run a recipe: a YAML file, a dict or a :class:`~edgeexport.recipe.Recipe`. ``model``: the module, for a
    recipe whose model was given in memory (``python:CLASS``)."""
    from edgeexport.pipeline import run as run_pipeline

    if isinstance(recipe, Mapping):
        recipe = Recipe.from_dict(dict(recipe))
    elif not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    kw = {"status": status} if status is not None else {}
    return refuse_unsupported(run_pipeline(recipe, log=log or _quiet, command=command, module=model, **kw))


def verify(bundle: str | Path, *, trust_keys: Sequence[str | Path | bytes] = (), threads: int | None = None,
           runs: int = 30) -> Report:
    """Run a parity bundle's artifact with the runtime installed here. ``trust_keys``: public key files (or raw
    keys); the bundle must then be signed by one of them."""
    bounded("--threads", threads, 1, MAX_THREADS)
    bounded("--runs", runs, 1, MAX_RUNS)
    keys = [k if isinstance(k, bytes) else load_public_key(k) for k in trust_keys]
    return verify_bundle(Path(bundle), threads=threads, runs=runs, trust_keys=keys or None)


def matrix(models: Sequence[str] | None, kinds: Sequence[str] | None = None, **options) -> Report:
    """Every model (zoo names or recipe files) through every artifact kind as Ray tasks, cached by content
    (see :func:`edgeexport.matrix.run_matrix` for ``options``)."""
    from edgeexport.matrix import run_matrix

    options.setdefault("log", _quiet)
    bounded("--threads", options.get("threads"), 1, MAX_THREADS)
    bounded("--cpus", options.get("cpus"), 1, 4096)
    bounded("--retries", options.get("retries"), 0, 100)
    return run_matrix(list(models) if models else None, list(kinds) if kinds else None, **options)
