"""Where a model comes from (the zoo or a user factory) and how its outputs are named.

:class:`ModelHandle` bundles everything the pipeline needs about the eager model: the
module, its metadata (task, preprocessing), the names of its inputs and outputs, and a
:class:`NamedOutputs` wrapper that turns dict / tuple / tensor outputs into a flat tuple
in a fixed order, so exported graphs keep meaningful output names (``out``, ``aux``,
``p3`` ... ``p7``).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import re
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeexport import libraries
from edgeexport.errors import UserError
from edgeexport.images import Preprocess
from edgeexport.libraries import is_library_spec
from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
from edgeexport.runners.torch_eager import TorchRunner
from edgeexport.weights import load_weights
from edgeexport.zoo import create_model, get_meta, resolve_name, resolve_weights
from edgeexport.zoo.registry import IMAGENET_MEAN, IMAGENET_STD, TASKS, ModelMeta

INPUT_NAME = "input"


class NamedOutputs(nn.Module):
    """Wrap a model so that it returns a tuple ordered as ``output_names``."""

    def __init__(self, model: nn.Module, output_names: list[str], kind: str):
        super().__init__()
        self.model = model
        self.output_names = list(output_names)
        self.kind = kind  # "dict" | "sequence" | "tensor"

    def forward(self, input: torch.Tensor):  # noqa: A002 - the argument name becomes the graph's input name
        out = self.model(input)
        if self.kind == "dict":
            return tuple(out[k] for k in self.output_names)
        if self.kind == "sequence":
            return tuple(out)
        return (out,)


def describe_outputs(out, declared: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """Names and structure of a model's outputs, from one forward pass."""
    if isinstance(out, dict):
        if not all(isinstance(v, torch.Tensor) for v in out.values()):
            raise UserError("model returns a dict whose values are not all tensors")
        return [str(k) for k in out], "dict"
    if isinstance(out, (tuple, list)):
        if not all(isinstance(v, torch.Tensor) for v in out):
            raise UserError("model returns a sequence whose items are not all tensors")
        names = list(declared) if len(declared) == len(out) else [f"output{i}" for i in range(len(out))]
        return names, "sequence"
    if isinstance(out, torch.Tensor):
        return [declared[0] if declared else "output"], "tensor"
    raise UserError(f"model returns {type(out).__name__}; expected a tensor, a tuple of tensors or a dict of tensors")


def infer_task(t: torch.Tensor) -> str:
    if t.ndim == 2 and t.shape[1] > 1:
        return "classification"
    if t.ndim == 4 and t.shape[1] > 1:
        return "segmentation"
    return "features"


@dataclass
class ModelHandle:
    name: str
    model: nn.Module | None  # None when the reference is an ONNX graph the user gave
    meta: ModelMeta
    origin: str  # "zoo:<name>", "user:<module:factory>" or "onnx:<path>"
    weights: str  # description of the weights
    output_names: list[str] = field(default_factory=list)
    output_kind: str = "tensor"
    tasks: dict[str, str] = field(default_factory=dict)
    input_names: list[str] = field(default_factory=lambda: [INPUT_NAME])
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    trained: object = None  # the TrainedWeights entry when the weights are reference weights trained here
    preparation: list[str] = field(default_factory=list)  # what was done to the loaded model (settled BatchNorm)

    @property
    def class_names(self) -> list[str] | None:
        return self.trained.classes if self.trained is not None else None

    def num_classes_of(self, output: str) -> int:
        """Classes an output predicts (its channel dimension, learned by :meth:`probe`)."""
        shape = self.output_shapes.get(output)
        if not shape or len(shape) < 2:
            raise UserError(f"output {output!r} has no class dimension")
        return int(shape[1])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.meta.mean, self.meta.std, self.meta.resize, self.meta.crop_fraction)

    onnx_path: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None

    @property
    def reference_label(self) -> str:
        return "fp32 ONNX given as input (no eager model)" if self.is_onnx else "eager PyTorch"

    def wrapped(self, model: nn.Module | None = None) -> NamedOutputs:
        return NamedOutputs(self.model if model is None else model, self.output_names, self.output_kind).eval()

    def reference_runner(self, threads: int | None):
        """The runner every artifact is compared with: eager PyTorch, or the user's fp32 ONNX graph."""
        if self.is_onnx:
            return OnnxRuntimeRunner(self.onnx_path, threads=threads)
        return TorchRunner(self.wrapped(), self.input_names, self.output_names, threads)

    def probe(self, x: torch.Tensor) -> None:
        """One forward pass to learn the output structure and per-output tasks."""
        if self.is_onnx:
            with self.reference_runner(None) as r:
                outs = r.infer({self.input_names[0]: x.numpy()})
            self.output_names, self.output_kind = list(outs), "sequence"
            self.output_shapes = {n: list(t.shape) for n, t in outs.items()}
            self.tasks = {n: self.meta.task if self.meta.task != "features" else infer_task(torch.from_numpy(t))
                          for n, t in outs.items()}
            return
        with torch.inference_mode():
            out = self.model(x)
        self.output_names, self.output_kind = describe_outputs(out, self.meta.output_names)
        tensors = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
        self.output_shapes = {n: list(t.shape) for n, t in zip(self.output_names, tensors)}
        declared = self.meta.output_names
        self.tasks = {}
        for i, (name, t) in enumerate(zip(self.output_names, tensors)):
            if self.origin.startswith("zoo:") and name in declared:
                self.tasks[name] = self.meta.task_of(declared.index(name))
            elif self.meta.task != "features" and not self.origin.startswith("zoo:"):
                self.tasks[name] = self.meta.task
            else:
                self.tasks[name] = infer_task(t)

    def info(self, shape) -> dict:
        if self.is_onnx:
            import onnx

            g = onnx.load(str(self.onnx_path), load_external_data=False).graph
            params = sum(int(np.prod(i.dims)) for i in g.initializer)
        else:
            params = sum(p.numel() for p in self.model.parameters())
        return {"name": self.name, "origin": self.origin, "weights": self.weights, "task": self.meta.task,
                "params": params, "input_shape": list(shape), "mean": list(self.meta.mean),
                "std": list(self.meta.std), "outputs": self.output_names, "output_tasks": self.tasks,
                "preparation": list(self.preparation)}


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by torch's FlopCounterMode (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() // 2


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# Packages whose functions are not model factories (their nn.Module classes are): the tool itself, torch's
# loaders and hub, installers and the cluster.
NOT_FACTORIES = ("edgeexport", "torch", "pip", "setuptools", "ray", "typer", "click", "IPython")


def _stdlib_file(path: str | None) -> bool:
    """Whether a source file belongs to Python's standard library (not site-packages)."""
    if not path:
        return True
    stdlib = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")]
    p = Path(path).resolve()
    return "site-packages" not in p.parts and "dist-packages" not in p.parts and \
        any(p.is_relative_to(Path(d).resolve()) for d in stdlib)


def _import_user_module(module_name: str):
    """Import the module a recipe names. The current folder is searched for that module only, and only while it
    is imported (after every installed package, so a stray ``onnxsim.py`` there never shadows the real one)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and importlib.util.find_spec(module_name.split(".")[0]) is None
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
        importlib.invalidate_caches()


def _import_factory(spec: str):
    """The model factory a recipe names as ``package.module:factory``, checked before anything is called: a
    class that subclasses ``nn.Module``, or a Python function defined outside the standard library (and outside
    the tool, torch and installers). Importing the module runs it, like a Python script; nothing else is called
    until the check passes."""
    if ":" not in spec:
        raise UserError(f"--model {spec!r}: expected package.module:factory")
    module_name, _, attr = spec.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise UserError(f"model {_show(spec)}: expected package.module:factory (Python names, dot-separated)")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
        raise UserError(f"model {spec}: {top} is Python's standard library, not a model factory (a recipe names "
                        "a function or an nn.Module class of your own package)")
    try:
        obj = _import_user_module(module_name)
    except UserError:
        raise
    except BaseException as exc:  # the module's own top-level code: whatever it raises or exits with
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserError(f"cannot import {module_name!r}: {type(exc).__name__}: {_show(str(exc), 200)}") from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise UserError(f"{module_name!r} has no callable {attr!r}")
    what = _factory_kind(obj)
    if what is not None:
        raise UserError(f"model {spec}: {what}, not a model factory (a recipe may name an nn.Module class, or a "
                        "Python function of your own package that returns one)")
    return obj


def _factory_kind(obj) -> str | None:
    """None when ``obj`` may be called as a model factory; otherwise what it is."""
    if inspect.isclass(obj):
        return None if issubclass(obj, nn.Module) else f"{obj.__module__}.{obj.__qualname__} is a class that is not " \
                                                       "a torch.nn.Module"
    if not inspect.isfunction(obj):
        return f"{type(obj).__name__} {getattr(obj, '__qualname__', '')}".strip() + " is not a Python function"
    owner = (obj.__module__ or "").split(".")[0]
    if owner in sys.stdlib_module_names or _stdlib_file(getattr(obj.__code__, "co_filename", None)):
        return f"{obj.__module__}.{obj.__qualname__} is a function of Python's standard library"
    if owner in NOT_FACTORIES:
        return f"{obj.__module__}.{obj.__qualname__} is a function of {owner}"
    return None


def _show(value: str, limit: int = 80) -> str:
    """A string as it may appear in a one-line message: control characters escaped, length capped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


IN_MEMORY = "python:"  # a recipe's model name for a module given in memory (edgeexport.export)


def _user_handle(name: str, origin: str, module, weights: str | None, task: str | None,
                 input_size: tuple[int, int, int] | None, weights_label: str) -> ModelHandle:
    """A handle for a module the user built (a factory's, or one given in memory)."""
    if not isinstance(module, nn.Module):
        raise UserError(f"{origin.split(':', 1)[1]} is a {type(module).__name__}, not a torch.nn.Module")
    if task is not None and task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}")
    if input_size is None:
        raise UserError(f"model {name} needs an input shape (--shape NxCxHxW)")
    meta = ModelMeta(task=task or "features", input_size=input_size, output_names=(), mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, family="user")
    if weights:
        load_weights(module, weights)
    return ModelHandle(name, module.eval(), meta, origin, weights or weights_label)


def _library_handle(spec: str, weights: str | None, num_classes: int | None, task: str | None,
                    input_size: tuple[int, int, int] | None, kwargs: dict) -> ModelHandle:
    """A timm / torchvision model (:mod:`edgeexport.libraries`) with the library's own input metadata."""
    lib = libraries.build(spec, num_classes, kwargs)
    if task is not None and task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}")
    meta = ModelMeta(task=task or lib.task, input_size=input_size or lib.input_size, output_names=lib.output_names,
                     mean=lib.mean, std=lib.std, resize=lib.resize, crop_fraction=lib.crop_fraction,
                     family=spec.partition(":")[0], notes=f"input metadata from {lib.source}")
    if weights:
        load_weights(lib.module, weights)
    label = weights or f"seeded init ({spec.partition(':')[0]}'s own initialisation, seed 0; no download)"
    return ModelHandle(lib.name, lib.module, meta, spec, label)


def load_model(model: str, weights: str | None = None, num_classes: int | None = None, task: str | None = None,
               input_size: tuple[int, int, int] | None = None, model_kwargs: dict | None = None,
               module: nn.Module | None = None) -> ModelHandle:
    """Resolve a zoo name or a ``module:factory`` spec into a :class:`ModelHandle`; ``module``: the model
    itself, given in memory (a copy is exported: the caller's module is left as it was)."""
    kwargs = dict(model_kwargs or {})
    if module is not None:
        name = model.removeprefix(IN_MEMORY) or type(module).__name__
        return _user_handle(name, f"{IN_MEMORY}{type(module).__name__}", copy.deepcopy(module), weights, task,
                            input_size, "as given in memory")
    if is_library_spec(model):
        return _library_handle(model, weights, num_classes, task, input_size, kwargs)
    if model.startswith(IN_MEMORY):
        raise UserError(f"model {model} was given in memory; pass the module itself (edgeexport.export(module, ...)) "
                        "or name a package.module:factory")
    if ":" in model:
        factory = _import_factory(model)
        try:
            built = factory(**({"num_classes": num_classes} if num_classes else {}), **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the user's code: whatever it raises (or exits with) is this model's problem
            raise UserError(f"calling {model}: {type(exc).__name__}: {_show(str(exc), 200)}") from None
        return _user_handle(model.rsplit(":", 1)[1].rsplit(".", 1)[-1], f"user:{model}", built, weights, task, input_size,
                            "the factory's own")
    name = resolve_name(model)
    trained = resolve_weights(name, weights) if weights not in (None, "init") else None
    try:
        built = create_model(name, weights=weights, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise UserError(f"model {name}: {exc}") from None
    meta = get_meta(name, trained.num_classes if trained is not None else num_classes)
    if task is not None and task != meta.task:
        meta = replace(meta, task=task, output_tasks=())
    label = {None: "default (seeded, BatchNorm re-estimated on the bundled photos)", "init": "seeded init"}
    desc = (f"{trained.spec} (trained here on the built-in {trained.dataset} task)" if trained is not None
            else label.get(weights, str(weights)))
    return ModelHandle(model, built, meta, f"zoo:{name}", desc, trained=trained)


def load_onnx(path: str, task: str | None = None, shape=None) -> ModelHandle:
    """An fp32 ONNX graph as the reference (for ``edgeexport quantize model.onnx``)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX model {p} does not exist")
    try:
        g = onnx.load(str(p), load_external_data=False).graph
    except Exception as exc:
        raise UserError(f"cannot read ONNX model {p}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from None
    inputs = [i for i in g.input if i.name not in {init.name for init in g.initializer}]
    if len(inputs) != 1:
        raise UserError(f"{p} has {len(inputs)} inputs; edgeexport takes image models with one NCHW input")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise UserError(f"{p}: input {inputs[0].name!r} is not NCHW (rank {len(dims)})")
    if shape is None and None in dims[1:]:
        raise UserError(f"{p} has dynamic input dims; give the shape with --shape NxCxHxW")
    size = tuple(shape[1:]) if shape is not None else tuple(dims[1:])
    meta = ModelMeta(task=task or "features", input_size=size, output_names=(), family="onnx")
    handle = ModelHandle(p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.stem, None, meta, f"onnx:{p}",
                         "as stored in the ONNX graph", onnx_path=p)
    handle.input_names = [inputs[0].name]
    return handle
