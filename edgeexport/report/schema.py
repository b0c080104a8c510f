"""The one typed report: a run, a bundle's verification, or a matrix of cells.

``Report`` → ``artifacts`` (by name) → per-shape, per-output parity (:class:`~edgeexport.parity.ParityResult`),
task metrics, latency samples (:class:`~edgeexport.bench.LatencyStats`), the build record, notes.
Every producer builds it with :class:`~edgeexport.report.build.ReportBuilder`; both renderers (Markdown
and the terminal table, :mod:`~edgeexport.report.text`; the HTML page, :mod:`~edgeexport.report.html`)
read it. Its JSON carries ``schema_version``; :func:`load_report` reads every version since 1 and refuses,
in one line, a file that is not a report or was written by a newer edgeexport. The JSON Schema is
``Report.model_json_schema(mode="serialization")``, published as ``schemas/report.schema.json``.

Statuses: ``passed`` / ``failed`` (the checks ran), ``not_run`` (the runtime or the converter is not on
this machine: never counted as passed), ``skipped`` (parity was turned off), ``build_failed`` (the target
could not build it), ``unsupported`` (its converter refused an op of the model: ``op`` and ``module`` say
which and where), ``error`` (a matrix cell that crashed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, computed_field

from edgeexport.bench import LatencyStats
from edgeexport.divergence import LayerDiff
from edgeexport.errors import UserError
from edgeexport.metrics import TaskMetrics
from edgeexport.parity import ParityResult
from edgeexport.report.status import FAILING, STATUS_TEXT, Status  # noqa: F401  (STATUS_TEXT: part of the interface)
from edgeexport.targets import BuildRecord, Repair, RunnerSpec, get_target
from edgeexport.util import Data

SCHEMA_VERSION = 4
# Schema upgrades: version -> the function taking a report dict of that version to the next one.
UPGRADES = {
    # 2: the "unsupported" status with the refused op and its module; the model's preparation
    1: lambda d: {**d, "schema_version": 2},
    # 3: the warnings libraries raised during the command (captured into the report instead of the terminal)
    2: lambda d: {**d, "schema_version": 3},
    # 4: the machine's ISA flags (machine.isa; an older report's machine did not record them: empty)
    3: lambda d: {**d, "schema_version": 4},
}


class Machine(Data):
    cpu: str
    cores: int
    logical_cpus: int | None = None
    threads: int | None = None  # the thread count every backend ran with
    os: str
    python: str
    machine: str
    isa: list[str] = []  # the CPU's flags that decide which kernels run (AVX2, AVX512-VNNI, AMX, NEON dot product...)

    def label(self) -> str:
        """CPU model, architecture, ISA flags and OS: the machine a figure was measured on."""
        return f"{self.cpu} ({self.machine}; {', '.join(self.isa) if self.isa else 'ISA not recorded'}; {self.os})"

    def short(self) -> str:
        """CPU model and the widest int8 instruction set it has, for a table column."""
        best = next((f for f in ("AMX-INT8", "AVX512-VNNI", "AVX-VNNI", "AVX2", "I8MM", "NEON-dotprod", "NEON")
                     if f in self.isa), None)
        return self.cpu[:28] + (f" · {best}" if best else "")


class ModelInfo(Data):
    name: str
    origin: str  # zoo:NAME, user:module:factory, python:CLASS, onnx:PATH, bundle:...
    weights: str | None = None
    task: str | None = None
    params: int | None = None
    input_shape: list[int]
    mean: list[float] | None = None
    std: list[float] | None = None
    outputs: list[str] = []
    output_tasks: dict[str, str] = {}
    dynamic: str = "none"
    images: list[str] = []  # the evaluation images (a bundle's)
    preparation: list[str] = []  # what was done to the model before export (BatchNorm settled, rewrites)


class Inputs(Data):
    source: str  # photos | folder | random | eval_data | bundle
    folder: str | None = None
    shapes: list[list[int]] = []
    images: list[str] = []


class TaskResult(TaskMetrics):
    """An artifact's task metrics and their drop against eager."""

    drop_points: float | None = None  # 100 x (eager - artifact)
    issue: str | None = None  # why the drop fails its tolerance


class Eager(Data):
    backend: str  # what the artifacts are compared with (eager PyTorch, the user's fp32 ONNX graph, a bundle)
    latency: LatencyStats | None = None
    task: TaskMetrics | None = None


class Signature(Data):
    """How a verified bundle was signed."""

    signed: bool
    algorithm: str | None = None
    key_fingerprint: str | None = None
    trusted: bool = False
    status: str


class Cell(Data):
    """A matrix cell's bookkeeping: where it was built and verified, the cache, attempts, time."""

    key: str
    cache: Literal["hit", "miss", "resumed"]
    node: dict[str, Any] | None = None
    attempts: int | None = None
    wall_s: float | None = None
    folder: str | None = None  # the cell's output folder, relative to the matrix's
    report: str | None = None  # the cell's own report
    required: list[str] = []  # artifacts the cell built first (the fp32 graph of an int8 cell)
    bundle: str | None = None
    eager_ms: float | None = None
    shape: list[int] | None = None
    verify: dict[str, Any] | None = None  # the verification on another node: node, attempt, wall_s, signature


class ArtifactResult(Data):
    """One artifact: what was built, how to run it, and what its checks found."""

    name: str  # its key in Report.artifacts: the kind, or MODEL/KIND in a matrix
    kind: str
    target: str
    backend: str
    precision: str
    model: str | None = None  # the matrix row
    status: Status
    reason: str | None = None  # why it was not run (or the cell's error)
    op: str | None = None  # unsupported: the operator the converter refused
    module: str | None = None  # unsupported: the module of the user's model it sits in
    taken_by: list[str] | None = None  # unsupported: the other registered targets that converted the model (None: not tried)
    path: str | None = None
    size_bytes: int | None = None
    dynamic: str = "none"
    built: bool = True
    required_by: str | None = None
    runner: RunnerSpec | None = None
    build: dict[str, Any] = {}  # the target's BuildRecord (see record())
    error: str | None = None
    failures: list[str] = []
    notes: list[str] = []
    parity: list[ParityResult] = []  # one check per input shape, the main shape first
    compared: dict[str, list[ParityResult]] = {}  # parity against another artifact (int8 vs its fp32 graph)
    latency: LatencyStats | None = None
    ratio_to_eager: float | None = None
    ratio_to_fp32: float | None = None
    latency_note: str | None = None
    task: TaskResult | None = None
    views: dict[str, Any] = {}  # the HTML page's error views (worst image, top-5)
    profile: dict[str, Any] | None = None  # time per operator type when int8 is not faster than fp32
    layers: LayerDiff | None = None  # per-layer divergence from eager (edgeexport diff; run when a verdict fails)
    repair: Repair | None = None  # the modules an accuracy budget kept in float, and the latency they cost
    cell: Cell | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def failing(self) -> bool:
        return self.status in FAILING

    def worst(self, metric: str):
        """The worst value of a parity metric over the outputs at the main shape (None: not checked)."""
        return self.parity[0].worst(metric) if self.parity else None

    def record(self) -> BuildRecord | None:
        """The typed build record, by the target that built it (None for a target not registered here)."""
        try:
            return get_target(self.target).Record.model_validate(self.build)
        except (UserError, ValidationError):
            return None

    def why(self) -> str | None:
        """One line on why it did not pass (None when it did)."""
        if self.error:
            return self.error
        if self.status == "unsupported":
            took = f"; {', '.join(self.taken_by)} took it" if self.taken_by else ""
            return f"{self.reason}{took}"
        why = list(self.failures) + ([self.task.issue] if self.task and self.task.issue else [])
        for chk in self.parity:
            if not chk.passed:
                why += [i.message for i in chk.all_issues()]
        return self.reason or "; ".join(dict.fromkeys(why)) or None

    def bundle_path(self) -> str | None:
        """The parity bundle written for it, if any."""
        return next((n.split(": ", 1)[1] for n in self.notes if n.startswith("parity bundle: ")), None)


class MatrixInfo(Data):
    """What a matrix report adds: the cluster, the cache, and the rows and columns."""

    threads: int
    latency_note: str
    cells_s: float
    cluster: dict[str, Any]
    cache: dict[str, Any]
    signing_key: str | None = None
    models: list[str]
    kinds: list[str]


class Report(Data):
    """Everything one run measured (``kind``: ``run``, ``verify`` or ``matrix``)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["run", "verify", "matrix"] = "run"
    edgeexport: str
    created: str
    elapsed_s: float | None = None
    command: str | None = None
    machine: Machine
    versions: dict[str, str | None] = {}
    model: ModelInfo | None = None
    inputs: Inputs | None = None
    recipe: dict[str, Any] | None = None
    eager: Eager | None = None
    eval_data: dict[str, Any] | None = None
    artifacts: dict[str, ArtifactResult] = Field(default_factory=dict)
    views: dict[str, Any] = {}  # report-level view data (images shared by artifacts' views)
    signature: Signature | None = None
    matrix: MatrixInfo | None = None
    # what libraries warned while the command ran (kept out of the terminal; each distinct warning once)
    warnings: list[str] = []

    # ---- verdicts
    @computed_field
    @property
    def failed(self) -> list[str]:
        """The artifacts that failed a check or their build."""
        return [name for name, a in self.artifacts.items() if a.failing]

    @computed_field
    @property
    def verdict(self) -> Literal["passed", "failed"]:
        return "failed" if self.failed else "passed"

    @computed_field
    @property
    def fastest_passing(self) -> str | None:
        """The name of the fastest artifact that meets its tolerances here."""
        best = self.fastest(passing=True)
        return best.name if best else None

    def fastest(self, passing: bool = True) -> ArtifactResult | None:
        """The fastest timed artifact (by median latency); with ``passing``, of those that passed every check."""
        timed = [a for a in self.artifacts.values() if a.latency and (a.passed or not passing)]
        return min(timed, key=lambda a: a.latency.median_ms) if timed else None

    @property
    def label(self) -> str:
        return "reference" if self.model and self.model.origin.startswith("onnx:") else "eager"

    # ---- output
    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def to_markdown(self) -> str:
        from edgeexport.report.text import markdown

        return markdown(self)

    def table(self):
        """The summary as a rich ``Table`` (``rich.print(report.table())``)."""
        from edgeexport.report.text import summary_table

        return summary_table(self)

    def to_html(self, path: str | Path | None = None) -> str | Path:
        """The self-contained HTML page; written to ``path`` (returned) when given, else returned as text."""
        from edgeexport.report.html import render, write_html

        return write_html(self, Path(path)) if path is not None else render(self)

    def write(self, folder: str | Path, name: str, html: bool = True, log=None) -> dict[str, Path]:
        """``NAME.report.json``, ``.md`` and (best effort) ``.html`` in ``folder``; returns their paths."""
        from edgeexport.report.html import write_html_safely
        from edgeexport.util import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = report_paths(folder, name)
        paths.pop("html")
        with atomic_path(paths["json"]) as tmp:
            tmp.write_text(self.to_json() + "\n")
        with atomic_path(paths["md"]) as tmp:
            tmp.write_text(self.to_markdown())
        if html:
            page = write_html_safely(self, folder / f"{name}.report.html", log)
            if page is not None:
                paths["html"] = page
        return paths


def report_paths(folder: str | Path, name: str) -> dict[str, Path]:
    """Where :meth:`Report.write` puts ``NAME.report.{json,md,html}`` in ``folder``."""
    folder = Path(folder)
    return {k: folder / f"{name}.report.{k}" for k in ("json", "md", "html")}


def check_report_paths(folder: str | Path, name: str) -> None:
    """Refuse, before any work, to write a report where something edgeexport must not replace is (a folder of
    the user's named like a report file)."""
    from edgeexport.util import in_the_way

    for path in report_paths(folder, name).values():
        in_the_way(path)


def json_schema() -> dict:
    """The JSON Schema of a report file (what ``Report.to_json()`` writes), as published in
    ``schemas/report.schema.json`` (``make schema`` writes it again)."""
    schema = Report.model_json_schema(mode="serialization")
    schema["$id"] = f"https://edgeexport.invalid/schemas/report-{SCHEMA_VERSION}.schema.json"
    schema["title"] = f"edgeexport report, schema {SCHEMA_VERSION}"
    return schema


def load_report(path: str | Path) -> Report:
    """A report edgeexport wrote (any schema version since 1), or a one-line ``UserError``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such report")
    if p.stat().st_size > MAX_REPORT_BYTES:
        raise UserError(f"{p}: larger than {MAX_REPORT_BYTES >> 20} MiB, not a report edgeexport wrote")
    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as exc:  # JSON and Unicode errors are ValueErrors
        raise UserError(f"{p}: not a JSON report ({type(exc).__name__})") from None
    try:
        return report_from_dict(data, str(p))
    except RecursionError:
        raise UserError(f"{p}: nested too deeply to be a report") from None


MAX_REPORT_BYTES = 256 << 20


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def report_from_dict(data, source: str = "report") -> Report:
    if not isinstance(data, dict) or "edgeexport" not in data:
        raise UserError(f"{source}: not an edgeexport report")
    version = data.get("schema_version")
    if version is None:
        raise UserError(f"{source}: written by edgeexport {data.get('edgeexport', '?')}, before reports had a schema "
                        f"(schema 1 came with 0.2.0); run the command again to write it anew")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{source}: schema_version {version!r} is not a report schema version")
    if version > SCHEMA_VERSION:
        raise UserError(f"{source}: report schema {version} is newer than this edgeexport's ({SCHEMA_VERSION}); "
                        "upgrade edgeexport to read it")
    while data["schema_version"] < SCHEMA_VERSION:
        data = UPGRADES[data["schema_version"]](data)
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise UserError(f"{source}: not a valid edgeexport report: {where}: {err['msg']}") from None
