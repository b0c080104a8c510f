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

Backend libraries are imported lazily inside methods, so a missing optional backend disables
only its own target.
"""
from __future__ import annotations

import abc
import importlib
import importlib.metadata as md
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from edgeexport.pipeline import Context
    from edgeexport.runners.base import Runner


# Accuracy budgets a target may accept (``--budget KEY=VALUE``): tensor metrics against eager, or the
# drop of a task metric on labeled data, in points.
BUDGET_METRICS = ("snr_db", "agreement", "cosine", "miou_drop", "top1_drop")


class Availability(NamedTuple):
    ok: bool
    reason: str = ""


class TargetOptions(BaseModel):
    """Base of every target's stage options: strict (unknown keys are errors), assignable."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Format(BaseModel):
    """One artifact a target can build: NAME + ``suffix``."""

    model_config = ConfigDict(frozen=True)

    kind: str  # artifact kind in reports, e.g. "onnx-int8"
    suffix: str
    precision: str  # fp32 | fp16 | int8
    runs_on: str  # where its runner executes
    companions: tuple[str, ...] = ()  # other files that belong to it (suffixes), e.g. ".bin"
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


@dataclass
class Requirement:
    """An artifact a target needs from another target: built first when the recipe does not build it."""

    target: str
    options: dict = field(default_factory=dict)
    kind: str = ""  # the artifact kind that satisfies it


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
    def requires(cls, options: TargetOptions, ctx: "Context") -> list[Requirement]:
        """Artifacts of other targets this build starts from (built first by the pipeline)."""
        return []

    @abc.abstractmethod
    def build(self, ctx: "Context", options: TargetOptions, art) -> None:
        """Write ``art.path`` (atomically) and call ``art.finish(record, runner_spec)``.

        Raise :class:`~edgeexport.pipeline.BuildFailed` with one line when the conversion fails.
        """

    def unavailable(self, ctx: "Context", options: TargetOptions, art, reason: str) -> None:
        """Called instead of :meth:`build` when this machine lacks the converter; a target may still
        do what it can here (TensorRT's pre-flight of the ONNX graph)."""

    # ---- how to run what it built
    @classmethod
    @abc.abstractmethod
    def runner(cls, spec: RunnerSpec, threads: int | None) -> "Runner":
        """A runner (not yet activated) for the artifact ``spec`` describes."""

    @classmethod
    def operator_profile(cls, spec: RunnerSpec, feed: dict, threads: int, runs: int) -> dict | None:
        """Time per operator type from the runtime's own profiler, ``{"runtime", "ops": {type: ms},
        "total_ms"}`` (ms per run, median over ``runs``); None when the runtime has no profiler here."""
        return None


def _importable(modules) -> Availability:
    from edgeexport.util import quiet

    for m in modules:
        try:
            with quiet():  # coremltools / executorch print warnings at import
                importlib.import_module(m)
        except Exception as exc:  # missing, or installed but broken (a PyPI stub, missing shared libraries)
            first = str(exc).splitlines()[0][:160] if str(exc) else ""
            return Availability(False, f"{m} is not importable here ({type(exc).__name__}{': ' + first if first else ''})")
    return Availability(True)


def version_of(dist: str) -> str | None:
    """The installed version of a distribution (None: not installed)."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None

