"""One run's state: the model, its evaluation inputs and eager references, and the artifacts built.

:class:`Context` is what targets build with (it implements :class:`~edgeexport.targets.base.BuildContext`);
:class:`References` holds the evaluation batches per shape and eager PyTorch's outputs for them;
:class:`RunArtifact` is a target's :class:`~edgeexport.targets.base.Artifact` plus what the checks find.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgeexport.bench import LatencyStats
from edgeexport.divergence import LayerDiff
from edgeexport.errors import BuildFailed
from edgeexport.inputs import InputSource, calibration_batches
from edgeexport.metrics import TaskMetrics
from edgeexport.parity import ParityCheck, ParityResult, Tolerance
from edgeexport.recipe import Recipe
from edgeexport.runners.base import Runner
from edgeexport.source import ModelHandle
from edgeexport.targets import Artifact, Format, RunnerSpec, Target
from edgeexport.util import plain_name


IN_MEMORY_CALIBRATION = "memory:"  # a calibration spec naming batches given in memory


@dataclass
class RunArtifact(Artifact):
    """An artifact with what its checks found: parity, task metrics, latency and the report's views."""

    parity: list[ParityResult] = field(default_factory=list)
    parity_status: str = "not_run"  # passed | failed | not_run | skipped
    not_run_reason: str | None = None
    latency: LatencyStats | None = None
    compared: dict[str, list[ParityResult]] = field(default_factory=dict)  # kind -> parity against that artifact
    task: TaskMetrics | None = None  # task metric on the labeled data
    task_drop: float | None = None  # points below eager
    task_issue: str | None = None  # the drop exceeds the tolerance
    views: dict = field(default_factory=dict)  # the report's error views: worst image, top-5 (pipeline.views)
    profile: dict | None = None  # per-operator time when int8 is not faster than fp32 (pipeline.views)
    unsupported: dict | None = None  # the op its converter refused, and the module: {"op", "module"}
    layers: LayerDiff | None = None  # per-layer divergence from eager (pipeline.divergence)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures and self.parity_status in ("passed", "not_run", "skipped")


class References:
    """Evaluation batches per shape and eager PyTorch's outputs for them (computed once)."""

    def __init__(self, handle: ModelHandle, main_shape, images: int, source: InputSource, extra_shapes, threads: int):
        self.handle, self.main_shape, self.threads = handle, tuple(main_shape), threads
        n = main_shape[0]
        count = max(1, math.ceil(images / n))
        pre = handle.preprocess
        self.batches: dict[tuple, list[tuple[list[str], np.ndarray]]] = {
            tuple(main_shape): list(source.batches(tuple(main_shape), count, pre))}
        for s in extra_shapes:
            self.batches[tuple(s)] = list(source.batches(tuple(s), 1, pre))
        self._outputs: dict[tuple, list[dict[str, np.ndarray]]] = {}

    @property
    def input_name(self) -> str:
        return self.handle.input_names[0]

    def eager_runner(self) -> Runner:
        """The reference runner (eager PyTorch, or the user's fp32 ONNX graph)."""
        return self.handle.reference_runner(self.threads)

    def outputs(self, shape) -> list[dict[str, np.ndarray]]:
        shape = tuple(shape)
        if shape not in self._outputs:
            with self.eager_runner() as r:
                self._outputs[shape] = [r.infer({self.input_name: x}) for _, x in self.batches[shape]]
        return self._outputs[shape]

    def shapes_for(self, artifact: Artifact) -> list[tuple]:
        shapes = list(self.batches)
        return shapes if artifact.dynamic != "none" else [self.main_shape]

    def feed(self, shape=None) -> dict[str, np.ndarray]:
        return {self.input_name: self.batches[tuple(shape or self.main_shape)][0][1]}


def check_parity(runner: Runner, refs: References, shapes, precision: str, tolerance: Tolerance,
                 against: Callable[[tuple], list[dict]] | None = None) -> list[ParityResult]:
    """Compare ``runner`` (active) with eager PyTorch (or with ``against``) at each shape."""
    results = []
    for shape in shapes:
        reference = against(shape) if against else refs.outputs(shape)
        check = ParityCheck(shape, precision, tolerance, refs.handle.tasks)
        for (names, x), ref in zip(refs.batches[tuple(shape)], reference):
            check.add(ref, runner.infer({refs.input_name: x}), names)
        results.append(check.result())
    return results


def no_status(message: str):
    return contextlib.nullcontext()


@dataclass
class Context:
    """One run: what targets build with (:class:`~edgeexport.targets.base.BuildContext`) and what the
    pipeline keeps for the report."""

    recipe: Recipe
    handle: ModelHandle
    shape: tuple[int, int, int, int]
    out_dir: Path
    threads: int
    refs: References
    log: Callable[[str], None] = print
    status: Callable = no_status
    artifacts: list[RunArtifact] = field(default_factory=list)
    eager_latency: LatencyStats | None = None
    task_data: object = None  # TaskData when the run has labeled data
    eager_task: TaskMetrics | None = None
    eager_preds: list | None = None  # eager's predicted classes on the labeled data (the report's mask views)
    views: dict = field(default_factory=dict)  # report-level view data: images shared by artifacts' views
    calibration_arrays: list[np.ndarray] | None = None  # calibration batches given in memory (the API)
    _rewritten: dict = field(default_factory=dict)  # rewrite set -> (wrapped rewritten model, counts, notes)
    root: "Context | None" = None  # the run a scratch copy (a search's build) belongs to: on-demand builds go there
    # builds and checks one artifact (execute.build_checked, set by the run: the layer below cannot import it)
    builder: Callable | None = None

    # ---- the run's facts targets read
    @property
    def name(self) -> str:
        """The artifacts' base name: the recipe's (one plain file name, validated), or the model's made into one."""
        return self.recipe.name or plain_name(self.handle.name)

    @property
    def dynamic(self) -> str:
        return self.recipe.dynamic

    @property
    def input_name(self) -> str:
        return self.refs.input_name

    @property
    def output_names(self) -> list[str]:
        return list(self.handle.output_names)

    @property
    def output_shapes(self) -> dict[str, list[int]]:
        return dict(self.handle.output_shapes)

    @property
    def source_onnx(self) -> Path | None:
        return self.handle.onnx_path

    @property
    def eval_folder(self) -> str | None:
        return self.recipe.inputs.folder

    def tolerance(self, precision: str) -> Tolerance:
        """The limits an artifact of ``precision`` is judged by (task-metric drops when data is labeled)."""
        return self.recipe.tolerance(precision, labeled=self.task_data is not None)

    # ---- inputs
    def sample(self) -> torch.Tensor:
        """One input batch at the main shape (a real photograph), as a tensor."""
        return torch.from_numpy(self.refs.feed()[self.input_name])

    def eval_batches(self) -> list[np.ndarray]:
        return [b for _, b in self.refs.batches[self.shape]]

    def feed(self) -> dict[str, np.ndarray]:
        return self.refs.feed()

    def calib_spec(self, cfg_folder: str | None) -> str | None:
        """Calibration images: the stage's folder, else those given in memory (the API), else the calibration
        split of the weights' own task (None: the bundled calibration photographs)."""
        if cfg_folder:
            return cfg_folder
        if self.calibration_arrays is not None:
            return f"{IN_MEMORY_CALIBRATION}{len(self.calibration_arrays)} batches given in memory"
        return f"{self.handle.trained.dataset}:calib" if self.handle.trained is not None else None

    def calibration(self, count: int, folder: str | None = None) -> list[np.ndarray]:
        """``count`` calibration batches at the main shape, never the evaluation images."""
        spec = self.calib_spec(folder)
        if spec is not None and spec.startswith(IN_MEMORY_CALIBRATION):
            return [self.calibration_arrays[i % len(self.calibration_arrays)] for i in range(count)]
        return calibration_batches(self.shape, count, self.handle.preprocess, spec, self.recipe.inputs.folder)

    # ---- the model
    def _rewritten_model(self, rewrites: list[str] | None):
        from edgeexport.rewrite import apply_rewrites

        if rewrites is None:
            rewrites = self.default_rewrites()
        key = tuple(rewrites)
        if key not in self._rewritten:
            notes: list[str] = []
            model, counts = apply_rewrites(self.handle.model, list(rewrites), notes=notes)
            self._rewritten[key] = (self.handle.wrapped(model), counts, notes)
        return self._rewritten[key]

    def torch_model(self, rewrites: list[str] | None = None) -> torch.nn.Module:
        """The eager model with export rewrites applied (default: the recipe's ONNX stage's), wrapped to
        return a tuple in output-name order. Cached per set of rewrites, shared by every target that
        converts from PyTorch; a target whose converter takes an op the ONNX rewrites replace (ncnn's
        native adaptive pooling) asks for its own set."""
        return self._rewritten_model(rewrites)[0]

    def rewrite_counts(self, rewrites: list[str] | None = None) -> dict[str, int]:
        return dict(self._rewritten_model(rewrites)[1])

    def rewrites_applied(self) -> dict[str, int]:
        """Every rewrite that changed a copy some target converted, with the modules it replaced."""
        out: dict[str, int] = {}
        for _, counts, _ in self._rewritten.values():
            for name, n in counts.items():
                out[name] = max(out.get(name, 0), n)
        return {k: v for k, v in out.items() if v}

    def rewrite_notes(self) -> list[str]:
        """What the rewrites of every converted copy left alone, and why (each note once)."""
        return list(dict.fromkeys(n for _, _, notes in self._rewritten.values() for n in notes))

    # ---- checks targets may run while building
    def check_parity(self, runner: Runner, precision: str) -> ParityResult:
        return check_parity(runner, self.refs, [self.shape], precision, self.tolerance(precision))[0]

    def accuracy(self, runner: Runner, precision: str) -> dict:
        res = self.check_parity(runner, precision)
        acc = {k: res.worst(k) for k in ("snr_db", "agreement", "cosine")}
        if self.task_data is not None:
            task = self.task_data.evaluate(runner, self.input_name)[0]
            acc[task.primary] = task.value
            acc["task_drop"] = task.drop_below(self.eager_task)
        return acc

    # ---- artifacts
    def artifact_path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"

    def find(self, kind: str) -> RunArtifact | None:
        return next((a for a in self.artifacts if a.kind == kind and a.error is None), None)

    def on_demand(self, req) -> RunArtifact:
        """``req``'s artifact, built now into the run (not a search's scratch folder) if it was not built yet: with
        the recipe's options for that target, ``req.options`` over them; checked and reported like the others."""
        from edgeexport.targets import get_target

        run = self.root or self
        art = next((a for a in run.artifacts if a.kind == req.kind), None)
        if art is None:
            if run.builder is None:
                raise BuildFailed(f"needs the {req.kind} artifact, which this run cannot build")
            target = get_target(req.target)
            stage = None if target.multiple else getattr(run.recipe.stages, target.name, None)
            options = target.Options(**{**(stage.model_dump() if stage is not None else {}), **req.options})
            art = run.builder(run, target, options, "equalize")  # the only on-demand build today
            run.artifacts.append(art)
        if art not in self.artifacts:
            self.artifacts.append(art)
        return self.require(req.kind)

    def default_rewrites(self) -> list[str]:
        from edgeexport.rewrite import DEFAULT_REWRITES

        return list(self.recipe.stages.onnx.rewrites) if self.recipe.stages.onnx else list(DEFAULT_REWRITES)

    def require(self, kind: str) -> RunArtifact:
        """A built artifact this target needs (see ``Target.requires``), or a BuildFailed saying why not."""
        art = next((a for a in self.artifacts if a.kind == kind), None)
        if art is None:
            raise BuildFailed(f"needs the {kind} artifact, which was not built")
        if art.error is not None or art.path is None:
            raise BuildFailed(f"needs the {kind} artifact, which failed: {art.error or art.not_run_reason}")
        return art

    def new_artifact(self, target: type[Target], fmt: Format, **kw) -> RunArtifact:
        kw.setdefault("dynamic", "none")
        return RunArtifact(fmt.kind, target.name, target.backend, fmt.precision, self.artifact_path(fmt.suffix), **kw)

    def runner_spec(self, target: type[Target], path: Path, files=(), **options) -> RunnerSpec:
        return RunnerSpec(target=target.name, artifact=str(path), files=[str(f) for f in files],
                          input_names=list(self.handle.input_names), output_names=list(self.handle.output_names),
                          options=options)
