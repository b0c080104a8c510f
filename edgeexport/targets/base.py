"""The Target interface: one registered class per backend, in its own file.

A target says everything edgeexport needs to know about a backend, so that the recipe, the
CLI, ``doctor``, the format table, bundles and reports are generated from the registry and
never name a backend:

* ``name`` (the recipe stage and CLI command), ``backend`` (the runtime), ``help``;
* ``Options``: its typed stage options (pydantic, unknown keys rejected); ``multiple`` when a
  stage takes a list of option sets (e.g. an fp32 and an int8 program);
* ``formats``: the artifacts it can build (kind, suffix, precision, where they run);
* ``requires(options, ctx)``: what it needs from other targets (the fp32 ONNX graph, an int8 Q/DQ
  graph), which the pipeline builds first, instead of a target mutating the user's recipe;
* ``build(ctx, options, art)``: builds one artifact and gives it a serialisable :class:`RunnerSpec`
  (how to run it: data, not a closure, so a bundle can record it) and a typed :class:`BuildRecord`;
* ``runner(spec, threads)``: the :class:`~edgeexport.runners.base.Runner` for a spec;
* ``build_availability()`` / ``run_availability()`` and ``install``: whether it can convert
  and whether it can execute on this machine, and how to get what is missing.

What a target may ask of the run that builds it is :class:`BuildContext`, a small interface the
pipeline implements; what it fills in is an :class:`Artifact`. Targets import neither the pipeline
nor each other (an import-linter contract holds them to it).

Backend libraries are imported lazily inside methods, so a missing optional backend disables
only its own target.
"""
from __future__ import annotations

import abc
import importlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Literal, NamedTuple, Optional, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from edgeexport.errors import UserError
from edgeexport.util import file_size, one_line, quiet, version_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from edgeexport.metrics import TaskMetrics
    from edgeexport.parity import ParityResult, Tolerance
    from edgeexport.runners.base import Runner
    from edgeexport.taskeval import TaskData


# Accuracy budgets a target may accept (``--budget KEY=VALUE``): tensor metrics against eager, or the
# drop of a task metric on labeled data, in points.
BUDGET_METRICS = ("snr_db", "agreement", "cosine", "miou_drop", "top1_drop")
# The range a budget's value must lie in (a search for SNR = inf, or an agreement of 2, is bad input).
BUDGET_RANGES = {"snr_db": (-20.0, 200.0), "agreement": (0.0, 1.0), "cosine": (-1.0, 1.0),
                 "miou_drop": (0.0, 100.0), "top1_drop": (0.0, 100.0)}


def _check_budget(budget: dict | None) -> dict | None:
    for metric, value in (budget or {}).items():
        low, high = BUDGET_RANGES[metric]
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"{metric}={value:g} is outside [{low:g}, {high:g}]")
    return budget


# An int8 target's accuracy budget (``--budget snr_db=25``) and the modules it keeps in float
# (``--float-module PATH``, ``conv+bn`` for a group): one declaration, shared by every int8 target's options.
Budget = Annotated[Optional[dict[Literal[BUDGET_METRICS], float]], AfterValidator(_check_budget)]
_MODULE_PATH = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\+[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*)*")


def _check_module_path(path: str) -> str:
    if len(path) > 1000 or not _MODULE_PATH.fullmatch(path):
        raise ValueError(f"{path[:60]!r} is not a module path (dot-separated names as `edgeexport diff` gives them, "
                         "'a+b' for a group)")
    return path


ModulePath = Annotated[str, AfterValidator(_check_module_path)]
FloatModules = Annotated[list[ModulePath], Field(max_length=1000)]
# Cross-layer equalization before int8 (the ``equalize`` rewrite on the model's copy): ``on``, ``off``, or ``auto``
# (the pipeline measures the calibration activations' channel ranges; where one channel is far wider than the
# rest it builds the artifact both ways and keeps the one with the better measured task metric or SNR).
Equalize = Annotated[Literal["auto", "on", "off"], Field(
    description="int8: cross-layer equalization before quantizing (auto: where activation channel ranges are "
                "unbalanced, built both ways and the more accurate one kept)")]
EQUALIZE_REWRITE = "equalize"
# The artifact kind of the fp32 ONNX graph that several targets start from (see fp32_graph).
FP32_GRAPH = "onnx"


class Availability(NamedTuple):
    ok: bool
    reason: str = ""


class TargetOptions(BaseModel):
    """Base of every target's stage options: strict (unknown keys are errors), assignable."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Format(BaseModel):
    """One artifact a target can build: NAME + ``suffix``."""

    model_config = ConfigDict(frozen=True)

    kind: str  # artifact kind in reports, e.g. "onnx-int8"
    suffix: str
    precision: str  # fp32 | fp16 | int8
    runs_on: str  # where its runner executes
    companions: tuple[str, ...] = ()  # other files that belong to it (suffixes), e.g. ".bin"
    folder: bool = False  # the artifact is a folder (a package), not a file
    # The stage options that build it (``Options(**options)``; unset keys keep their defaults), so that an
    # artifact kind names a build: ``edgeexport matrix --targets onnx-int8`` (checked by the conformance tests).
    options: dict[str, Any] = {}


class RunnerSpec(BaseModel):
    """How to run an artifact: everything a runner needs, as data (bundles and reports record it)."""

    target: str  # registered target name
    artifact: str  # path of the main file (or package folder)
    files: list[str] = []  # companion files the artifact needs beside it
    input_names: list[str] = ["input"]
    output_names: list[str] = []
    options: dict[str, Any] = {}  # runtime options (CoreML compute units, ncnn fp16 arithmetic, ...)

    def relocated(self, folder: Path) -> "RunnerSpec":
        """The same spec with its files in ``folder`` (a bundle)."""
        return self.model_copy(update={"artifact": str(Path(folder) / Path(self.artifact).name),
                                       "files": [str(Path(folder) / Path(f).name) for f in self.files]})


class RunnerOptions(BaseModel):
    """The options a target's runner takes from a :class:`RunnerSpec` (a bundle's manifest, ``check
    --runner-option``): typed per target (``Target.runner_options``), unknown keys and wrong types refused
    before a runtime sees them."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class BuildRecord(BaseModel):
    """What a build did, typed per target; renders its own report section.

    Subclasses add fields and may override :meth:`markdown` (tables) and :meth:`terminal` (lines the
    CLI prints under the table). ``notes`` are surfaced everywhere.
    """

    model_config = ConfigDict(extra="forbid")

    build_s: float | None = None
    notes: list[str] = []

    def facts(self) -> dict:
        """Scalar facts for the generic rendering (tables are rendered by subclasses)."""
        return {k: v for k, v in self.model_dump().items()
                if k != "notes" and (not isinstance(v, list) or (v and not isinstance(v[0], dict)))}

    def markdown(self) -> list[str]:
        return [f"- {k}: {json.dumps(v, default=str)}" for k, v in self.facts().items() if v not in (None, [], {})]

    def terminal(self) -> list[str]:
        return []


class RepairStep(BaseModel):
    """One artifact a float-set search built and measured."""

    model_config = ConfigDict(extra="forbid")

    float_modules: list[str]  # the modules kept in float in it
    added: str | None = None  # the module this step put back in float
    removed: str | None = None  # the module this step tried back in int8 (the pruning pass)
    why: str | None = None  # why that module (what the per-layer diff said)
    metrics: dict[str, float | None] = {}  # snr_db, agreement, cosine vs eager; task_drop (points) on labeled data
    met: bool = False
    error: str | None = None  # the build failed
    kept: bool = True  # False: the step did not bring the artifact closer to the budget and was undone

    @property
    def change(self) -> str:
        """What this step changed: ``+ module``, ``- module`` or ``as built``; ``(undone)`` when it was not kept."""
        what = f"+ {self.added}" if self.added else f"- {self.removed}" if self.removed else "as built"
        return what if self.kept else f"{what} (undone)"


class Repair(BaseModel):
    """What an int8 build kept in float to meet an accuracy budget, and what that costs in latency."""

    model_config = ConfigDict(extra="forbid")

    search: str  # how the float set was searched
    budget: dict[str, float]  # the limits (task_drop in points; *_drop are upper bounds, the others lower bounds)
    met: bool
    float_modules: list[str] = []  # the chosen set: modules of the user's model kept in float
    steps: list[RepairStep] = []
    ranked_on: str | None = None  # where the per-layer ranking came from
    int8_ms: float | None = None  # median latency as first built (nothing, or only the user's modules, in float) ...
    repaired_ms: float | None = None  # ... and with the chosen set, measured interleaved in one run
    seconds: float | None = None  # how long the search took

    @property
    def cost(self) -> float | None:
        """Latency of the repaired artifact over the all-int8 one."""
        return self.repaired_ms / self.int8_ms if self.repaired_ms and self.int8_ms else None


@dataclass
class Requirement:
    """An artifact a target needs from another target: built first when the recipe does not build it."""

    target: str
    options: dict = field(default_factory=dict)
    kind: str = ""  # the artifact kind that satisfies it


@dataclass
class Artifact:
    """One built file (or package): what a target fills in. The pipeline adds what its checks find."""

    kind: str  # e.g. "onnx", "onnx-int8"
    target: str  # the registered target that built it
    backend: str  # the runtime that runs it
    precision: str
    path: Path | None
    dynamic: str = "none"
    runner: RunnerSpec | None = None  # how to run it (data: bundles and reports record it)
    record: BuildRecord | None = None  # what was built
    required_by: str | None = None  # built because that target needs it
    built: bool = True  # False: this machine lacks the target's converter, nothing was built
    error: str | None = None  # build failure
    failures: list[str] = field(default_factory=list)  # build-time verdicts (e.g. an accuracy budget missed)
    notes: list[str] = field(default_factory=list)
    compare_to: str | None = None  # also compared against this artifact's kind (e.g. int8 vs fp32 ONNX)
    repair: Repair | None = None  # the float set an accuracy budget kept, and its latency cost

    def finish(self, record: BuildRecord, runner: RunnerSpec | None) -> None:
        """What a target calls when the artifact is written: its record and how to run it."""
        self.record, self.runner = record, runner

    @property
    def size(self) -> int | None:
        if self.path is None or not self.path.exists():
            return None
        extra = [Path(f) for f in (self.runner.files if self.runner else []) if Path(f).exists()]
        return file_size(self.path) + sum(file_size(f) for f in extra)

    @property
    def all_notes(self) -> list[str]:
        return (self.record.notes if self.record else []) + self.notes


class BuildContext(Protocol):
    """What a target may ask of the run that builds it (:class:`edgeexport.pipeline.Context` implements it).

    The evaluation inputs are real photographs (or the user's images) at the main ``shape``; the
    reference is eager PyTorch, or the user's fp32 ONNX graph when ``source_onnx`` is set.
    """

    name: str  # the artifacts' base name
    shape: tuple[int, int, int, int]  # the main input shape
    dynamic: str  # none | batch | hw | all
    threads: int  # threads for every runtime
    out_dir: Path
    input_name: str
    output_names: list[str]
    output_shapes: dict[str, list[int]]
    source_onnx: Path | None  # the user's fp32 ONNX file (then there is no PyTorch model)
    task_data: "TaskData | None"  # labeled data, when the run has it
    eager_task: "TaskMetrics | None"  # the reference's task metrics on it
    eval_folder: str | None  # the user's evaluation images (calibration must not use them)
    log: Callable[[str], None]

    def status(self, message: str) -> AbstractContextManager: ...

    def tolerance(self, precision: str) -> "Tolerance": ...

    def sample(self) -> "torch.Tensor":
        """One input batch at the main shape (a real photograph), as a tensor."""

    def eval_batches(self) -> "list[np.ndarray]":
        """The evaluation batches at the main shape."""

    def feed(self) -> "dict[str, np.ndarray]":
        """The first evaluation batch as a named feed."""

    def torch_model(self, rewrites: list[str] | None = None) -> "torch.nn.Module":
        """The eager model with export rewrites applied, returning a tuple in ``output_names`` order."""

    def rewrite_counts(self, rewrites: list[str] | None = None) -> dict[str, int]:
        """How many modules each rewrite of :meth:`torch_model` replaced."""

    def calibration(self, count: int, folder: str | None = None) -> "list[np.ndarray]":
        """``count`` calibration batches at the main shape, never the evaluation images."""

    def calib_spec(self, folder: str | None) -> str | None: ...

    def check_parity(self, runner: "Runner", precision: str) -> "ParityResult":
        """``runner`` (active) against the reference at the main shape, with ``precision``'s limits."""

    def accuracy(self, runner: "Runner", precision: str) -> dict:
        """What accuracy budgets are checked on: the worst ``snr_db``, ``agreement`` and ``cosine`` of ``runner``
        (active) against the reference, and with labeled data the task metric and its ``task_drop`` (points)."""

    def find(self, kind: str) -> Artifact | None: ...

    def on_demand(self, req: Requirement) -> Artifact:
        """An artifact of another target built now if this run has not built it (checked like every artifact
        and reported), or BuildFailed saying why it could not be: what a build needs only sometimes."""

    def default_rewrites(self) -> list[str]:
        """The rewrites of :meth:`torch_model` by default (the recipe's ONNX stage's)."""

    def require(self, kind: str) -> Artifact:
        """A built artifact this target needs (see :meth:`Target.requires`), or BuildFailed saying why not."""

    def runner_spec(self, target: type["Target"], path: Path, files=(), **options) -> RunnerSpec: ...


def fp32_graph_requirement(ctx: BuildContext) -> list[Requirement]:
    """What a target that starts from the fp32 ONNX graph requires: the ``onnx`` target's export, unless
    the user gave an ONNX file (then that file is the graph)."""
    return [] if ctx.source_onnx else [Requirement(FP32_GRAPH, kind=FP32_GRAPH)]


def fp32_graph(ctx: BuildContext, equalize: bool = False) -> Path:
    """The fp32 ONNX graph: the user's file, or this run's export; ``equalize``: the export of the equalized
    copy of the model (``onnx-equalized``, built on demand, checked for fp32 parity like every artifact)."""
    if not equalize:
        return Path(ctx.source_onnx) if ctx.source_onnx else ctx.require(FP32_GRAPH).path
    if ctx.source_onnx:
        raise UserError("equalize: on needs the PyTorch model (equalization rewrites it); an ONNX file was given")
    return ctx.on_demand(Requirement(FP32_GRAPH, {"equalize": True}, kind="onnx-equalized")).path


def int8_model(ctx: BuildContext, equalize: str) -> "torch.nn.Module":
    """The model a PyTorch int8 converter quantizes: the export rewrites, and equalization when ``on``."""
    return ctx.torch_model([*ctx.default_rewrites(), EQUALIZE_REWRITE] if equalize == "on" else None)


class Target(abc.ABC):
    name: ClassVar[str]  # recipe stage and CLI command
    title: ClassVar[str]  # how people call the backend ("TensorRT")
    backend: ClassVar[str]  # the runtime that executes its artifacts
    help: ClassVar[str]
    order: ClassVar[int] = 50  # position in recipes and reports (the fp32 ONNX graph first)
    default_stage: ClassVar[bool] = False  # its recipe stage is on unless a recipe turns it off
    input_replaces: ClassVar[bool] = False  # a model file the user gives (an .onnx) is this target's artifact
    # Ray scheduling (``edgeexport matrix``): what a node must offer besides ``{backend: 1}`` to run this
    # target's artifacts, and whether they are built on that node too (engines tied to the GPU that built them).
    ray_resources: ClassVar[dict[str, float]] = {}
    builds_where_it_runs: ClassVar[bool] = False
    Options: ClassVar[type[TargetOptions]] = TargetOptions
    runner_options: ClassVar[type[RunnerOptions]] = RunnerOptions  # what its RunnerSpec.options may hold
    Record: ClassVar[type[BuildRecord]] = BuildRecord
    formats: ClassVar[tuple[Format, ...]] = ()
    multiple: ClassVar[bool] = False  # the recipe stage is a list of option sets
    from_onnx_file: ClassVar[bool] = False  # can start from a user's .onnx file (no PyTorch model)
    build_modules: ClassVar[tuple[str, ...]] = ()  # Python modules the conversion imports
    run_modules: ClassVar[tuple[str, ...]] = ()  # Python modules the runner imports
    distributions: ClassVar[dict[str, str]] = {}  # module -> pip distribution name, when they differ
    install: ClassVar[str] = "pip install edgeexport"
    extra: ClassVar[str | None] = None  # the pyproject extra that installs it

    # ---- capability
    @classmethod
    def build_availability(cls) -> Availability:
        return _importable(cls.build_modules)

    @classmethod
    def run_availability(cls) -> Availability:
        return _importable(cls.run_modules)

    @classmethod
    def versions(cls) -> dict[str, str | None]:
        mods = dict.fromkeys(cls.build_modules + cls.run_modules)
        return {m: version_of(cls.distributions.get(m, m)) for m in mods}

    # ---- what it builds
    @classmethod
    def format_for(cls, options: TargetOptions) -> Format:
        """The format these options build: of the formats whose declared ``options`` all hold, the most
        specific one (so ``mode=int8, target=tensorrt`` picks the TensorRT int8 graph over plain int8)."""
        matches = [f for f in cls.formats if all(getattr(options, k) == v for k, v in f.options.items())]
        if not matches:
            raise ValueError(f"{cls.name}: no format is built by {options!r}")
        return max(matches, key=lambda f: len(f.options))  # max keeps the first of equally specific ones

    @classmethod
    def requires(cls, options: TargetOptions, ctx: BuildContext) -> list[Requirement]:
        """Artifacts of other targets this build starts from (built first by the pipeline)."""
        return []

    @abc.abstractmethod
    def build(self, ctx: BuildContext, options: TargetOptions, art: Artifact) -> None:
        """Write ``art.path`` (atomically) and call ``art.finish(record, runner_spec)``.

        Raise :class:`~edgeexport.errors.BuildFailed` with one line when the conversion fails.
        """

    def unavailable(self, ctx: BuildContext, options: TargetOptions, art: Artifact, reason: str) -> None:
        """Called instead of :meth:`build` when this machine lacks the converter; a target may still
        do what it can here (TensorRT's pre-flight of the ONNX graph)."""

    # ---- how to run what it built
    @classmethod
    @abc.abstractmethod
    def runner(cls, spec: RunnerSpec, threads: int | None) -> "Runner":
        """A runner (not yet activated) for the artifact ``spec`` describes."""

    @classmethod
    def searches_budget(cls, options: TargetOptions) -> bool:
        """Whether this build meets ``options.budget`` itself (and fills ``art.repair``). Otherwise a target whose
        options have ``budget`` and ``float_modules`` gets the pipeline's search: modules ranked by the
        per-layer diff go back to float one at a time, rebuilding through ``float_modules``."""
        return False

    @classmethod
    def quantized_taps(cls, ctx: BuildContext, options: TargetOptions, x: "np.ndarray") -> list | None:
        """Intermediate tensors of the quantized model as the converter computes it before lowering, for ranking
        modules when the runtime cannot return its own (:meth:`Runner.taps` raises); None: no such thing."""
        return None

    @classmethod
    def operator_profile(cls, spec: RunnerSpec, feed: dict, threads: int, runs: int) -> dict | None:
        """Time per operator type from the runtime's own profiler, ``{"runtime", "ops": {type: ms},
        "total_ms"}`` (ms per run, median over ``runs``), and, where the artifact records where its ops come
        from, ``"modules": {module path: ms}``; None when the runtime has no profiler here."""
        return None


def _importable(modules) -> Availability:
    for m in modules:
        try:
            with quiet():  # coremltools / executorch print warnings at import
                importlib.import_module(m)
        except Exception as exc:  # missing, or installed but broken (a PyPI stub, missing shared libraries)
            return Availability(False, f"{m} is not importable here ({one_line(exc, 160)})")
    return Availability(True)
