"""One matrix run: what is already done (an interrupted run's finished cells, then the cache), then the
rest as Ray tasks, verifying elsewhere what the building node cannot run, each cell recorded as it ends.

* **Capability scheduling.** Builds need only a CPU. A cell whose runtime cannot run on the node that
  built it (``Target.run_availability()`` is false there: CoreML off macOS) ships the artifact as a
  parity bundle, **signed** by this driver's Ed25519 key (``CACHE/keys/matrix.key``; the private key
  never leaves this machine), to a verification task that asks for the Ray resource named after the
  runtime (``{"coreml": 1}``) and runs ``verify --trust-key`` there. Targets that build where they run
  (TensorRT engines) ask for their runtime's resources to build.
* **Failures stay local.** A failing cell is a row. A worker process that dies mid-task is retried by
  Ray (``retries``); each attempt bumps a counter file (``CACHE/attempts/RUN/KEY``) before it starts,
  and the report gives the attempts per cell (counted per node when the cache folder is not shared).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from edgeexport.errors import UserError
from edgeexport.matrix.cache import Cache, sign_bundle
from edgeexport.matrix.cluster import Cluster, missing_resources, no_node_reason
from edgeexport.matrix.entry import UntrustedEntry
from edgeexport.matrix.plan import CellPlan, model_spec, plan_cells, read_plan, write_plan
from edgeexport.matrix.records import (apply_verify, cell_record, needs_verify, place, read_progress, safe,
                                           write_progress)
from edgeexport.matrix.report import matrix_report, write_matrix_reports
from edgeexport.matrix.tasks import build_cell, count_attempts, pack, unpack, verify_cell
from edgeexport.report import STATUS_TEXT, Report
from edgeexport.targets import get_target
from edgeexport.targets.registry import DEFAULT_MATRIX_KINDS
from edgeexport.util import ensure_output_dir, one_line


def run_matrix(models: list[str] | None, kinds: list[str] | None = None, *, cluster: str = "local",
               cache: str | Path | None = None, use_cache: bool = True, resume: bool = False,
               output: str | Path = "out/matrix", threads: int | None = None, retries: int = 2,
               cpus: int | None = None, overrides: dict | None = None, log: Callable[[str], None] = print,
               command: str | None = None, html: bool = True) -> Report:
    """Run (or continue, or take from the cache) every cell of models x kinds; write and return the
    matrix report (``OUTPUT/matrix.report.json``). ``use_cache=False`` builds every cell again (and
    caches the results); ``overrides``: recipe sections merged into every cell's recipe (e.g.
    ``{"bench": {"runs": 10}}``); ``cpus``: the size of a local cluster (default: every core); ``threads``
    default 1. ``resume`` replays the plan stored in OUTPUT (its models, kinds, threads and overrides)."""
    t0 = time.perf_counter()
    output = Path(output).resolve()
    models = [model_spec(m) for m in models or []]
    if resume:
        models, kinds, threads, overrides = replay(output, models, kinds, threads, overrides, log)
    threads = 1 if threads is None else threads
    if threads < 1 or retries < 0:
        raise UserError("--threads must be at least 1 and --retries at least 0")
    kinds = list(kinds or DEFAULT_MATRIX_KINDS)
    clu = Cluster(cluster, cpus)
    cells = plan_cells(models, kinds, threads, overrides)
    clu.backends = {c.backend for c in cells}
    ensure_output_dir(output)
    write_plan(output, models, kinds, threads, overrides, cells)
    store = Cache(Path(cache) if cache else Cache.default())
    with run_folder() as tmp, sigterm_raises() as on_term:
        run = _Run(cells, output, store, clu, threads, retries, log, tmp, on_term)
        try:
            run.reuse(resume, use_cache)
            run.execute()
        except (KeyboardInterrupt, SystemExit):
            done = sum(c.record is not None for c in cells)
            log(f"interrupted: {done} of {len(cells)} cells finished (in {output / 'cells'}); continue with --resume")
            if on_term is not None and on_term.signum is not None:
                raise SystemExit(128 + on_term.signum) from None
            raise
        finally:
            nodes = offered = None
            with contextlib.suppress(Exception):  # never hide what ended the run
                if run.cluster.connected:
                    nodes, offered = run.cluster.nodes(), run.cluster.resources()
            run.cluster.close()
    report = matrix_report(run, kinds, nodes, offered, use_cache, t0, command)
    write_matrix_reports(report, output, html=html, log=log)
    return report


def replay(output: Path, models: list[str], kinds, threads, overrides, log) -> tuple:
    """(models, kinds, threads, overrides) of the plan stored in ``output``: ``--resume`` continues that plan.
    Models that differ from the plan's are refused (one line); other options that differ are not used (and
    said so)."""
    plan = read_plan(output)
    if models and models != [model_spec(m) for m in plan.models]:
        raise UserError(f"--resume continues the matrix in {output}, of {', '.join(plan.models)[:300]}; give no "
                        "models with --resume (or leave --resume out to start another matrix)")
    ignored = []
    if kinds and list(kinds) != plan.kinds:
        ignored.append(f"--targets {','.join(kinds)}")
    if threads is not None and threads != plan.threads:
        ignored.append(f"--threads {threads}")
    if overrides is not None and overrides != plan.overrides:
        ignored.append("the overrides")
    if ignored:
        log(f"--resume: continuing the stored plan ({','.join(plan.kinds)}, {plan.threads} thread(s) per cell); "
            f"not used: {'; '.join(ignored)}")
    return plan.models, plan.kinds, plan.threads, plan.overrides


@contextlib.contextmanager
def run_folder():
    """The run's own temporary folder, where every cell task on this machine keeps its temporaries; removed
    however the run ends (an error, Ctrl-C, SIGTERM), after the cluster is shut down."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="edgeexport-matrix-"))
    except OSError as exc:
        raise UserError(f"cannot create the run's temporary folder in {tempfile.gettempdir()}: "
                        f"{exc.strerror or type(exc).__name__} (set TMPDIR)") from None
    try:
        yield tmp
    finally:
        for _ in range(20):  # a worker the shutdown is still stopping may write a last file: until it is gone
            shutil.rmtree(tmp, ignore_errors=True)
            if not tmp.exists():
                break
            time.sleep(0.1)


@contextlib.contextmanager
def sigterm_raises():
    """For the block, SIGTERM raises :class:`SystemExit` (exit status 143) in the main thread, so every
    ``finally`` runs (the cluster shut down, the run's temporary folder removed); the previous handler is
    restored after. Yields the handler (None off the main thread), to install again once Ray, which sets its
    own, has started."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    on_term = _Terminate()
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield on_term
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminate:
    """A SIGTERM handler that raises :class:`SystemExit` and remembers the signal (Ray turns a SystemExit raised
    while it waits into its own, of status 1: the run raises the right one again). A second SIGTERM while the
    run cleans up is ignored, so that the cleanup finishes."""

    signum: int | None = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            return
        self.signum = signum
        raise SystemExit(128 + signum)


class _Run:
    """One matrix run: the cells, where they go, and the tasks in flight."""

    def __init__(self, cells: list[CellPlan], output: Path, store: Cache, cluster: Cluster, threads: int,
                 retries: int, log, tmp: Path | None = None, on_term=None):
        self.cells, self.output, self.store, self.cluster = cells, output, store, cluster
        self.threads, self.retries, self.log = threads, retries, log
        self.tmp, self.on_term = tmp, on_term
        self.key, self.public, self.fingerprint = store.signing_key()
        run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.attempts_dir = str(store.dir / "attempts" / run_id)
        self.pending: dict = {}  # Ray object ref -> ("build" | "verify", cell)
        self.ran_s = 0.0  # wall time of the tasks this run executed, together
        self._remote: dict = {}

    def dest(self, c: CellPlan) -> Path:
        return self.output / "cells" / safe(c.model) / c.kind

    def finish(self, c: CellPlan, rec) -> None:
        if c.rebuilt and rec.cell.cache == "miss" and c.rebuilt not in rec.notes:  # the report says why it ran
            rec = rec.model_copy(update={"notes": [*rec.notes, c.rebuilt]})
        c.record, c.needs_verify = rec, False
        write_progress(self.output, rec)
        cell = rec.cell
        how = f"({cell.cache})" if cell.cache != "miss" else f"in {cell.wall_s or 0:.0f} s"
        how += f" ({c.rebuilt})" if c.rebuilt and cell.cache == "miss" else ""
        self.log(f"{c.label}: {STATUS_TEXT.get(rec.status, rec.status)} {how}"
                 + (f" after {cell.attempts} attempts" if (cell.attempts or 1) > 1 else "")
                 + (f": {rec.why()}" if rec.why() and not rec.passed else ""))

    def failed(self, c: CellPlan, reason: str, cache_state: str = "miss"):
        return cell_record(c, {"ok": False, "error": reason}, self.dest(c), self.output, cache_state)

    # ---- 1. what is already done: the interrupted run's finished cells, then the cache
    def reuse(self, resume: bool, use_cache: bool) -> None:
        for c in self.cells:
            rec = read_progress(self.output, c) if resume else None
            if rec is not None:
                rec.cell.cache = "resumed"
            else:
                try:
                    hit = self.store.get(c.key) if use_cache else None
                    if hit is not None:
                        place(self.store.entry(c.key), hit["workdir"], self.dest(c), self.output, hit["record"])
                except UntrustedEntry as exc:  # not reused: built again, and the entry replaced
                    c.rebuilt = f"rebuilt: cache entry failed its file check ({exc.reason})"
                    self.log(f"{c.label}: cache entry {c.key[:12]} failed its file check ({exc.reason}); "
                             "building the cell again")
                    continue
                if hit is None:
                    continue
                rec = cell_record(c, hit, self.dest(c), self.output, "hit")
                if needs_verify(rec) and hit.get("verify"):
                    rec = apply_verify(rec, hit["verify"], self.output)
            c.record, c.needs_verify = rec, needs_verify(rec)  # a node with the runtime may have joined since
            if not c.needs_verify:
                self.finish(c, rec)

    # ---- 2. run what is left, verifying elsewhere what its building node cannot run
    def remote(self, fn):
        if fn.__name__ not in self._remote:
            self._remote[fn.__name__] = self.cluster.connect().remote(fn)
            if self.on_term is not None:  # ray.init set its own SIGTERM handler: ours, so the run's finally runs
                signal.signal(signal.SIGTERM, self.on_term)
        return self._remote[fn.__name__]

    def task_options(self, c: CellPlan, what: str, capability: bool) -> dict:
        opts = {"num_cpus": self.threads, "max_retries": self.retries, "name": f"{what} {c.label}"}
        if capability:  # the runtime's own resource (and a GPU for TensorRT)
            opts["resources"] = {r: q for r, q in c.resources.items() if r not in ("CPU", "GPU")}
            opts["num_gpus"] = c.resources.get("GPU", 0)
        return opts

    def unavailable(self, c: CellPlan, why_here: str | None = None) -> bool:
        """Report the cell at once when no node offers its runtime's resources."""
        missing = missing_resources(c.resources, self.cluster.resources())
        if not missing:
            return False
        rec = c.record or self.failed(c, "")
        self.finish(c, rec.model_copy(update={"status": "not_run", "reason": no_node_reason(c, missing, why_here)}))
        return True

    def submit_build(self, c: CellPlan) -> None:
        where_run = get_target(c.target).builds_where_it_runs
        if where_run and self.unavailable(c):
            return
        spec = {"label": c.label, "key": c.key, "kind": c.kind, "target": c.target, "recipe": c.recipe,
                "attempts_dir": self.attempts_dir, "tmp": str(self.tmp) if self.tmp else None}
        ref = self.remote(build_cell).options(**self.task_options(c, "build", where_run)).remote(spec)
        self.pending[ref] = ("build", c)

    def submit_verify(self, c: CellPlan) -> None:
        rec = c.record
        if self.unavailable(c, (rec.reason or "").removeprefix("not run on this machine: ") or None):
            return
        bench = c.recipe.get("bench") or {}
        spec = {"label": c.label, "key": c.key, "attempts_dir": self.attempts_dir, "threads": self.threads,
                "runs": bench.get("runs", 30), "warmup": bench.get("warmup", 5), "trust_key": self.public.hex(),
                "tmp": str(self.tmp) if self.tmp else None}
        ref = self.remote(verify_cell).options(**self.task_options(c, "verify", True)).remote(
            spec, pack(self.output / rec.cell.bundle))
        self.pending[ref] = ("verify", c)

    def settle_build(self, c: CellPlan, result: dict):
        """A finished build into the cache (its bundles signed first) and the output; its record."""
        files = result.pop("files")
        result.pop("log", None)
        try:
            if not result["runnable"]:
                with tempfile.TemporaryDirectory(prefix="edgeexport-sign-", dir=self.tmp) as tmp:
                    unpack(files, Path(tmp))
                    for b in Path(tmp).glob("*.bundle"):
                        sign_bundle(b, self.key, self.public)
                    files = pack(Path(tmp))
            try:
                src, record = self.store.entry(c.key), self.store.put(c.key, result, files)
            except (UserError, OSError) as exc:  # the cell still lands in the output, uncached
                self.log(f"{c.label}: not cached ({exc if isinstance(exc, UserError) else one_line(exc)})")
                src, record = Path(tempfile.mkdtemp(prefix="edgeexport-place-", dir=self.tmp)), None
                unpack(files, src / "files")
            place(src, result["workdir"], self.dest(c), self.output, record)
        except (UntrustedEntry, ValueError) as exc:  # a link or device among its files, or an entry swapped meanwhile
            why = exc.reason if isinstance(exc, UntrustedEntry) else one_line(exc)
            return cell_record(c, {**result, "ok": False, "error": f"the cell's files were not stored: {why}"},
                               self.dest(c), self.output, "miss")
        return cell_record(c, result, self.dest(c), self.output, "miss")

    def collect(self, what: str, c: CellPlan, ref) -> None:
        ray = self.cluster.connect()
        try:
            result = ray.get(ref)
        except Exception as exc:  # the worker died on every attempt, or its node was lost
            n = count_attempts(self.attempts_dir, c.key + (".verify" if what == "verify" else ""))
            n = n or self.retries + 1
            result = {"ok": False, "attempt": n,
                      "error": f"the {what} task's worker died ({n} attempt{'s' if n > 1 else ''}): {one_line(exc)}"}
        self.ran_s += result.get("wall_s") or 0
        if what == "build":
            rec = self.settle_build(c, result) if result.get("ok") else cell_record(c, result, self.dest(c),
                                                                                     self.output, "miss")
            c.record, c.needs_verify = rec, needs_verify(rec)
            if c.needs_verify:
                self.submit_verify(c)
            else:
                self.finish(c, rec)
            return
        rec = apply_verify(c.record, result, self.output)
        if result.get("ok") and rec.status in ("passed", "failed"):  # a check that ran, not "not run"
            self.store.put_verify(c.key, result)
        self.finish(c, rec)

    def recheck(self) -> None:
        """Cancel the tasks waiting for a runtime that no node offers any more (its node left)."""
        offered = self.cluster.resources()
        for ref, (what, c) in list(self.pending.items()):
            if what == "build" and not get_target(c.target).builds_where_it_runs:
                continue
            missing = missing_resources(c.resources, offered)
            if missing:
                self.cluster.connect().cancel(ref, force=True)
                self.pending.pop(ref)
                rec = c.record or self.failed(c, "")
                self.finish(c, rec.model_copy(update={
                    "status": "not_run", "reason": no_node_reason(c, missing) + " (the node that offered it left)"}))

    def execute(self) -> None:
        for c in self.cells:
            if c.record is None:
                self.submit_build(c)
            elif c.needs_verify:
                self.submit_verify(c)
        last = time.monotonic()
        while self.pending:
            ready, _ = self.cluster.connect().wait(list(self.pending), num_returns=1, timeout=10.0)
            for ref in ready:
                what, c = self.pending.pop(ref)
                self.collect(what, c, ref)
            if self.pending and time.monotonic() - last > 10:
                last = time.monotonic()
                self.recheck()
