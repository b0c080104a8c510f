"""Before anything is built: the model, the input shape, the evaluation inputs, the labeled data and the
eager references, validated in that order, so that bad input fails here with one line.

``prepare(recipe)`` reads the recipe once, top to bottom:

1. the model (:mod:`edgeexport.source`: a zoo name, ``package.module:factory``, an ``.onnx`` file, or a
   module given in memory), its weights and preprocessing;
2. the input shape and what the architecture allows (channels, minimum size, multiples, dynamic H/W);
3. where the inputs come from (:mod:`edgeexport.inputs`): the evaluation images, the labeled data, and
   every stage's calibration folder (checked before anything is built, never the evaluation images);
4. one forward pass at that shape (the output names and tasks);
5. the evaluation batches per shape and eager PyTorch's outputs for them (:class:`References`), and the
   eager task metrics on the labeled data.
"""
from __future__ import annotations

import os

from dataclasses import replace

import torch

from edgeexport.errors import EdgeExportError, UserError
from edgeexport.inputs import InputSource, check_calibration_source, eval_data_spec
from edgeexport.pipeline.context import Context, References, no_status
from edgeexport.recipe import Recipe
from edgeexport.source import ModelHandle, load_model, load_onnx
from edgeexport.targets import TargetOptions, list_targets
from edgeexport.taskeval import open_task_data
from edgeexport.util import default_threads, ensure_output_dir, format_shape
from edgeexport.weights import settle_batchnorm


def auto_extra_shapes(shape, dynamic: str, size_multiple: int = 1, min_hw: int = 1) -> list[tuple[int, int, int, int]]:
    """Two shapes other than ``shape`` along the dynamic axes (odd sizes where the model allows)."""
    n, c, h, w = shape
    m = max(size_multiple, 1)

    def r(v):  # nearest size >= min_hw that is a multiple of m
        v = max(int(round(v)), min_hw)
        return max(m, -(-v // m) * m)

    b = dynamic in ("batch", "all")
    s = dynamic in ("hw", "all")
    if not (b or s):
        return []
    first = (n + 1 if b else n, c, r(h * 0.75) + (1 if m == 1 and s else 0) if s else h, r(w * 1.25) if s else w)
    second = (n + 2 if b else n, c, r(h * 0.6) if s else h, r(w * 0.8) + (1 if m == 1 and s else 0) if s else w)
    return [first, second]


def stage_options(recipe: Recipe) -> list[TargetOptions]:
    """Every option set the recipe's stages give, over all registered targets."""
    out = []
    for t in list_targets():
        cfg = getattr(recipe.stages, t.name, None)
        out += cfg if t.multiple else [cfg] if cfg is not None else []
    return out


def _load(recipe: Recipe, shape, module: torch.nn.Module | None) -> ModelHandle:
    if module is not None:
        return load_model(recipe.model, recipe.weights, recipe.num_classes, recipe.task,
                          tuple(shape[1:]) if shape else None, recipe.model_kwargs, module=module)
    if recipe.model.endswith(".onnx"):
        return load_onnx(recipe.model, recipe.task, shape)
    return load_model(recipe.model, recipe.weights, recipe.num_classes, recipe.task,
                      tuple(shape[1:]) if shape else None, recipe.model_kwargs)


def _settle_shape(recipe: Recipe, handle: ModelHandle, shape) -> tuple[int, int, int, int]:
    if recipe.mean or recipe.std:
        if len(recipe.mean or [0] * 3) != 3 or len(recipe.std or [1] * 3) != 3 or min(recipe.std or [1]) <= 0:
            raise UserError("mean and std take three values each (std > 0)")
        handle.meta = replace(handle.meta, mean=tuple(recipe.mean or handle.meta.mean),
                              std=tuple(recipe.std or handle.meta.std))
    if shape is None:
        shape = (1, *handle.meta.input_size)
    meta = handle.meta
    if shape[1] != meta.input_size[0] and handle.origin.startswith("zoo:"):
        raise UserError(f"{handle.name} takes {meta.input_size[0]} input channels, not {shape[1]}")
    if min(shape[2], shape[3]) < meta.min_hw:
        raise UserError(f"{handle.name} needs H and W of at least {meta.min_hw}; got {shape[2]}x{shape[3]}")
    m = meta.size_multiple
    if m > 1 and (shape[2] % m or shape[3] % m):
        raise UserError(f"{handle.name} needs H and W that are multiples of {m}; got {shape[2]}x{shape[3]}")
    if recipe.dynamic in ("hw", "all") and not meta.dynamic_hw:
        raise UserError(f"{handle.name} cannot take dynamic H/W: {meta.notes or 'fixed-size graph'}")
    return tuple(shape)


def _extra_shapes(recipe: Recipe, handle: ModelHandle, shape) -> list[tuple]:
    if recipe.dynamic == "none" or not recipe.parity.enabled:
        return []
    if recipe.parity.extra_shapes == "auto":
        return auto_extra_shapes(shape, recipe.dynamic, handle.meta.size_multiple, handle.meta.min_hw)
    extra = [tuple(s) for s in recipe.parity.extra_shapes]
    fixed = {"batch": (1, 2, 3), "hw": (0, 1), "all": (1,)}[recipe.dynamic]
    for s in extra:
        if len(s) != 4 or any(int(d) <= 0 for d in s):
            raise UserError(f"parity.extra_shapes: {s} is not a positive NxCxHxW shape")
        for axis in fixed:
            if s[axis] != shape[axis]:
                raise UserError(f"parity.extra_shapes: {list(s)} changes axis {axis}, which is not dynamic "
                                f"({recipe.dynamic})")
    return extra


def prepare(recipe: Recipe, log=print, status=no_status, module: torch.nn.Module | None = None) -> Context:
    """Load the model and the evaluation inputs; validate everything the stages will need.
    ``module``: the model itself, when the caller holds it in memory (the recipe then only names it)."""
    shape = tuple(recipe.input_shape) if recipe.input_shape else None
    if recipe.inputs.source == "folder" and not recipe.inputs.folder:
        raise UserError("inputs.source is 'folder' but inputs.folder is not set")
    created = not os.path.lexists(recipe.output)
    out_dir = ensure_output_dir(recipe.output)
    try:
        return _prepare(recipe, shape, out_dir, log, status, module)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # bad input leaves nothing behind, not even the empty output folder it made
        raise


def _prepare(recipe: Recipe, shape, out_dir, log, status, module) -> Context:
    # 1-2. the model and the shape it runs at
    with status(f"Loading {recipe.model}"):
        handle = _load(recipe, shape, module)
    shape = _settle_shape(recipe, handle, shape)
    if recipe.settle_bn and handle.model is not None:
        calib = next((o.calib_folder for o in stage_options(recipe) if getattr(o, "calib_folder", None)), None)
        if calib:
            check_calibration_source(calib, recipe.inputs.folder, None)
        handle.preparation.append(settle_batchnorm(handle.model, shape, handle.preprocess, calib,
                                                   recipe.inputs.folder))
    # 3. where the inputs come from: evaluation images, labeled data, calibration (never the evaluation data)
    eval_spec = eval_data_spec(recipe.inputs.eval_data, handle.trained.dataset if handle.trained else None)
    if recipe.inputs.source == "eval_data" and not eval_spec:
        raise UserError("inputs.source is 'eval_data' but there is no labeled data (inputs.eval_data)")
    for options in stage_options(recipe):
        if getattr(options, "calib_folder", None):
            check_calibration_source(options.calib_folder, recipe.inputs.folder, eval_spec)
    source = InputSource(recipe.inputs.source, "eval", eval_spec if recipe.inputs.source == "eval_data"
                         else recipe.inputs.folder)
    if source.source != "random" and not source.images():
        raise UserError("no evaluation images")
    # 4. one forward pass: output names, shapes and tasks
    try:
        probe = next(source.batches(shape, 1, handle.preprocess))[1]
        handle.probe(torch.from_numpy(probe))
    except EdgeExportError:
        raise
    except Exception as exc:
        raise UserError(f"{handle.name} does not run at input shape {format_shape(shape)}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    # 5. references: evaluation batches per shape, eager outputs (lazily), eager task metrics
    threads = recipe.bench.threads or default_threads()
    refs = References(handle, shape, recipe.inputs.images, source, _extra_shapes(recipe, handle, shape), threads)
    ctx = Context(recipe, handle, shape, out_dir, threads, refs, log, status)
    if eval_spec:
        with status(f"Reading labeled data {eval_spec}"):
            ctx.task_data = open_task_data(eval_spec, recipe.inputs.eval_images, handle, shape, log)
        with status(f"Task metrics of {handle.reference_label} on {ctx.task_data.count} labeled images"):
            with refs.eager_runner() as r:
                ctx.eager_task, ctx.eager_preds = ctx.task_data.evaluate(r, refs.input_name, keep_predictions=True)
    return ctx
