"""The one builder of reports: a pipeline run, a bundle's verification and a matrix all make their
:class:`~edgeexport.report.schema.Report` here, so the envelope (version, time, machine, tool versions)
and every artifact's derived fields (status, latency ratios, the latency note) are computed once.
"""
from __future__ import annotations

import datetime as _dt
import time

from edgeexport.bench import LatencyStats
from edgeexport.doctor import installed_versions, machine_info
from edgeexport.metrics import TaskMetrics
from edgeexport.parity import ParityResult
from edgeexport.report.schema import ArtifactResult, Cell, Machine, Report, TaskResult
from edgeexport.targets import BuildRecord, RunnerSpec
from edgeexport.util import captured
from edgeexport.version import __version__


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def artifact_result(*, kind: str, target: str, backend: str, precision: str, name: str | None = None,
                    checked: str = "not_run", error: str | None = None, reason: str | None = None,
                    path=None, size_bytes: int | None = None, dynamic: str = "none", built: bool = True,
                    required_by: str | None = None, runner: RunnerSpec | dict | None = None,
                    build: BuildRecord | dict | None = None, failures=(), notes=(),
                    parity: list[ParityResult] = (), compared: dict[str, list[ParityResult]] | None = None,
                    latency: LatencyStats | None = None, eager_latency: LatencyStats | None = None,
                    baseline_latency: LatencyStats | None = None, task: TaskMetrics | None = None,
                    task_drop: float | None = None, task_issue: str | None = None, views: dict | None = None,
                    profile: dict | None = None, model: str | None = None, cell: Cell | None = None,
                    unsupported: dict | None = None, layers=None, repair=None) -> ArtifactResult:
    """One artifact. ``checked``: what its checks concluded (passed, failed, not_run, skipped, or error for a
    matrix cell that crashed): a build error overrides it; ``eager_latency`` / ``baseline_latency``: what its
    latency is a ratio of; ``unsupported``: the op a converter refused, its module and the targets that converted the model
    (``{"op", "module", "taken_by"}``)."""
    status = "build_failed" if error else "unsupported" if unsupported else checked
    return ArtifactResult(
        name=name or kind, kind=kind, target=target, backend=backend, precision=precision, model=model,
        status=status, reason=reason, path=str(path) if path is not None and not error and not unsupported else None,
        size_bytes=None if error else size_bytes, dynamic=dynamic, built=built, required_by=required_by,
        runner=runner, build=build.model_dump() if isinstance(build, BuildRecord) else dict(build or {}),
        error=error, failures=list(failures), notes=list(notes), parity=list(parity),
        compared=dict(compared or {}), latency=latency,
        ratio_to_eager=latency.median_ms / eager_latency.median_ms if latency and eager_latency else None,
        ratio_to_fp32=latency.median_ms / baseline_latency.median_ms if latency and baseline_latency else None,
        latency_note=reason if latency is None and error is None and status == "not_run" else None,
        task=(TaskResult(**task.model_dump(exclude={"per_image"}), drop_points=task_drop, issue=task_issue)
              if task is not None else None),
        views=dict(views or {}), profile=profile, cell=cell, layers=layers, repair=repair,
        op=(unsupported or {}).get("op"), module=(unsupported or {}).get("module"),
        taken_by=(unsupported or {}).get("taken_by"))


class ReportBuilder:
    """Collects a report's artifacts, then :meth:`build` adds the envelope and the run's sections.

    ``threads``: the thread count every backend ran with; ``command``: the command line that ran it."""

    def __init__(self, kind: str = "run", *, threads: int | None = None, command: str | None = None,
                 started: float | None = None):
        self.kind, self.threads, self.command = kind, threads, command
        self.started = time.perf_counter() if started is None else started
        self.artifacts: dict[str, ArtifactResult] = {}

    def artifact(self, **fields) -> ArtifactResult:
        """One artifact (see :func:`artifact_result`), added to the report."""
        return self.add(artifact_result(**fields))

    def add(self, artifact: ArtifactResult) -> ArtifactResult:
        """An artifact as another report recorded it (a matrix cell's), under its ``name``."""
        if artifact.name in self.artifacts:
            raise ValueError(f"the report has two artifacts named {artifact.name!r}")
        self.artifacts[artifact.name] = artifact
        return artifact

    def build(self, **sections) -> Report:
        """The report: the artifacts so far, the envelope, and ``sections`` (model, inputs, recipe, eager, ...)."""
        return Report(kind=self.kind, edgeexport=__version__, created=now(),
                      elapsed_s=round(time.perf_counter() - self.started, 1), command=self.command,
                      machine=Machine(**machine_info(self.threads)), versions=installed_versions(),
                      artifacts=dict(self.artifacts), warnings=captured(), **sections)

    def build_like(self, base: Report, **sections) -> Report:
        """A report of these artifacts in ``base``'s envelope and sections (a matrix's per-model report,
        made of cells that each ran on their own), with ``sections`` replaced."""
        return base.model_copy(update={"kind": self.kind, "artifacts": dict(self.artifacts), "command": self.command,
                                       **sections})
