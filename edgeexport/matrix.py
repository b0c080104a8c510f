"""The model x target matrix on Ray: ``edgeexport matrix MODEL... --targets KINDS``.

A **cell** is one model (a zoo name, or a recipe YAML that gives its shape, weights, tolerances
and inputs) and one artifact kind (``onnx``, ``onnx-int8``, ``executorch``, ``coreml``, ... : the
format table, :func:`~edgeexport.targets.options_for_kind`). Each cell is one Ray task that runs the
normal pipeline for the model's recipe restricted to that kind's stage, plus what the stage requires:
the fp32 ONNX graph an ``onnx-int8`` cell starts from is **rebuilt** inside that cell (with the
recipe's own ONNX options), not shared between cells, so a cell is self-contained and can run on any
node. The recipe's own option set for the kind is used when it has one, else the table's.

* **Clusters.** ``local`` (the default) starts a Ray instance on this machine, loopback only (every
  Ray server binds to 127.0.0.1, no dashboard, no usage statistics), sized to its cores; ``auto`` or
  an address (``ray://HEAD:10001``, ``HEAD:6379``) joins a running cluster, whose nodes must have
  edgeexport installed. Each cell task asks for ``threads`` CPUs (default 1) and times every backend
  with that many threads, so on 2 cores two cells run at once; **latencies in a matrix are at
  ``threads`` threads** (the report says so), not comparable to a run with all cores.
* **Capability scheduling.** Builds need only a CPU. A cell whose runtime cannot run on the node that
  built it (``Target.run_availability()`` is false there: CoreML off macOS) ships the artifact as a
  parity bundle, **signed** by this driver's Ed25519 key (``CACHE/keys/matrix.key``; the private key
  never leaves this machine), to a verification task that asks for the Ray resource named after the
  runtime (``{"coreml": 1}``) and runs ``verify --trust-key`` there. TensorRT engines are built on the
  GPU that runs them: those cells ask for ``{"GPU": 1, "tensorrt": 1}`` to build. Nodes advertise
  runtimes with ``ray start --resources="$(edgeexport doctor --ray-resources)"``. Before a task is
  submitted its resources are compared with the cluster's: one no node offers is reported at once as
  "no node can run <runtime>" (and re-checked while waiting, should that node leave), never pending.
* **Content-addressed cache** (``--cache``, default ``$EDGEEXPORT_CACHE/matrix`` or
  ``~/.cache/edgeexport/matrix``). A cell's key is the SHA-256 of: the code (every ``.py`` of
  edgeexport except the zoo, the command line and rendering, :data:`NOT_IN_KEY`, plus the model's zoo
  module and the zoo modules it imports, or a user model's module file), the weights (file hash for
  trained or user weights; the seed for the default seeded weights), the cell's recipe (stage options,
  tolerances, inputs, shape, bench settings and threads), the input data (bundled photos: the
  scikit-image version; folders: a hash of their files) and the tool versions (edgeexport and every
  target's packages). A cell whose key is in the cache is not run again (its artifacts and bundle are
  hard-linked from it, read-only, and its reports copied); a verification is cached with its cell once
  it ran. Only finished pipeline runs are cached: a crashed task, an input error or "no node can run"
  is tried again. Artifacts travel from the nodes to the cache through Ray's object store, bundles
  from the cache to verifying nodes the same way, so nodes need no shared folder.
* **Resume.** Each finished cell is written atomically to ``OUTPUT/cells/MODEL/KIND.json`` as it
  finishes; ``--resume`` continues the interrupted matrix in OUTPUT (its plan, ``matrix.plan.json``,
  when no models are given) and keeps every finished cell whose key is unchanged, cache or not.
* **Failures stay local.** A failing cell is a row. A worker process that dies mid-task is retried by
  Ray (``retries``); each attempt bumps a counter file (``CACHE/attempts/RUN/KEY``) before it starts,
  and the report gives the attempts per cell (counted per node when the cache folder is not shared).
* **Report.** ``OUTPUT/matrix.report.{json,md,html}``: the matrix table, every cell's verdict, the
  node that built it and the one that verified it, cache hits, attempts and wall time; the HTML page is
  ``make bench``'s matrix page (:mod:`edgeexport.report_html`), each model linking to a report of its
  cells (``OUTPUT/models/MODEL.report.html``).

Test-only hook: ``EDGEEXPORT_MATRIX_CRASH="MODEL/KIND@N"`` (comma-separated) makes the first N attempts
of that cell's task kill their worker process with ``os._exit(1)`` (``@*``: every attempt), as a worker
killed mid-task; it is read by the driver and passed to the task, and is not part of the cell key.
"""
from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import socket
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeexport import __version__
from edgeexport.errors import EdgeExportError, UserError
from edgeexport.targets import get_target, list_targets
from edgeexport.util import atomic_path, format_shape

DEFAULT_KINDS = ("onnx", "onnx-int8", "executorch", "coreml")
CRASH_ENV = "EDGEEXPORT_MATRIX_CRASH"
PACKAGE = Path(__file__).resolve().parent
# Files of edgeexport that do not change a cell's result (the command line, this scheduler, HTML
# rendering, training, doctor); the zoo is keyed per model.
NOT_IN_KEY = {"cli.py", "__main__.py", "matrix.py", "report_html.py", "training.py", "doctor.py"}
STATUS_TEXT = {"passed": "passed", "failed": "FAILED", "build_failed": "BUILD FAILED", "not_run": "not run",
               "skipped": "skipped", "error": "ERROR"}


# ---------------------------------------------------------------- cells


@dataclass
class Cell:
    model: str  # the row: a zoo name or a recipe's name
    kind: str
    target: str
    backend: str
    recipe: dict  # the cell's recipe (output chosen by the task)
    key: str = ""
    resources: dict = field(default_factory=dict)  # what its runtime needs, as Ray resources
    record: dict | None = None  # the finished cell (see _record)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.kind}"


def find_recipe(name: str, search: list[Path] | None = None) -> Path | None:
    """``recipes/NAME.yaml`` for a zoo model (or one of its aliases), in the working folder or beside
    the package (a source checkout)."""
    from edgeexport.zoo import get_entry

    entry = get_entry(name)
    names = list(dict.fromkeys([name, entry.name, *entry.aliases]))
    for folder in search or [Path.cwd() / "recipes", PACKAGE.parent / "recipes"]:
        for n in names:
            if (folder / f"{n}.yaml").is_file():
                return folder / f"{n}.yaml"
    return None


def resolve_model(spec: str):
    """(row name, Recipe, recipe path or None) for a zoo name or a recipe YAML."""
    from edgeexport.recipe import Recipe
    from edgeexport.zoo import resolve_name

    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        recipe = Recipe.from_yaml(spec)
        return recipe.name or Path(spec).stem, recipe, Path(spec)
    resolve_name(spec)  # an unknown name is a one-line error with suggestions
    path = find_recipe(spec)
    recipe = Recipe.from_yaml(path) if path else Recipe.from_dict({"model": spec})
    return spec, recipe, path


def _requires_onnx(target, options, is_onnx: bool) -> bool:
    """Whether a stage starts (directly or through another stage) from the fp32 ONNX graph."""
    from types import SimpleNamespace

    from edgeexport.targets import get_target

    stub = SimpleNamespace(source_onnx="user.onnx" if is_onnx else None)  # what requires() may look at
    try:
        reqs = target.requires(options, stub)
    except AttributeError:  # it asks the context for more: build the fp32 graph too, to be safe
        return True
    for req in reqs:
        if req.target == "onnx":
            return True
        rt = get_target(req.target)
        if _requires_onnx(rt, rt.Options(**req.options), is_onnx):
            return True
    return False


def cell_recipe(recipe, kind: str, threads: int, overrides: dict | None = None) -> dict:
    """The recipe of one cell: the model's recipe with only the stage that builds ``kind`` (the recipe's
    own option set for it when it has one, else the format table's) and the fp32 ONNX stage when that
    stage starts from it; every backend timed with ``threads`` threads."""
    from edgeexport.targets import options_for_kind

    target, options = options_for_kind(kind)
    cfg = getattr(recipe.stages, target.name, None)
    own = [o for o in (cfg if target.multiple else [cfg] if cfg is not None else [])
           if target.format_for(o).kind == kind]
    if own:
        options = own[0]
    data = recipe.model_dump(mode="json")
    is_onnx = recipe.model.endswith(".onnx")
    onnx_opts = (recipe.stages.onnx or options_for_kind("onnx")[1]).model_dump(mode="json")
    own_opts = options.model_dump(mode="json")
    if target.name == "onnx":
        stages = {"onnx": own_opts}
    else:
        stages = {"onnx": onnx_opts if _requires_onnx(target, options, is_onnx) and not is_onnx else None,
                  target.name: [own_opts] if target.multiple else own_opts}
    data["stages"] = stages
    data["bench"]["threads"] = threads
    data["output"] = "."
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    for k in ("weights",):  # relative paths are the working folder's: make them absolute for the task
        v = data.get(k)
        if v and Path(v).exists():
            data[k] = str(Path(v).resolve())
    inputs = data.get("inputs") or {}
    for k in ("folder", "eval_data"):
        v = inputs.get(k)
        if v and Path(v).exists():
            inputs[k] = str(Path(v).resolve())
    for opts in [o for st in stages.values() for o in (st if isinstance(st, list) else [st]) if o]:
        if opts.get("calib_folder") and Path(opts["calib_folder"]).exists():
            opts["calib_folder"] = str(Path(opts["calib_folder"]).resolve())
    return data


def plan_cells(models: list[str], kinds: list[str], threads: int = 1, overrides: dict | None = None) -> list[Cell]:
    """Every cell of models x kinds, validated (bad input fails here, before anything runs)."""
    from edgeexport.recipe import Recipe
    from edgeexport.targets import options_for_kind

    if not models:
        raise UserError("give at least one zoo model or recipe YAML")
    if not kinds:
        raise UserError("--targets needs at least one artifact kind")
    for kind in kinds:
        options_for_kind(kind)  # unknown kinds: one line with the known ones
    if len(set(kinds)) != len(kinds):
        raise UserError(f"--targets names an artifact kind twice: {', '.join(kinds)}")
    cells, rows = [], set()
    for spec in models:
        row, recipe, _ = resolve_model(spec)
        if row in rows:
            raise UserError(f"model {row} is given twice")
        rows.add(row)
        for kind in kinds:
            target, _ = options_for_kind(kind)
            data = cell_recipe(recipe, kind, threads, overrides)
            Recipe.from_dict(data, source=f"{spec} ({kind})")
            cells.append(Cell(row, kind, target.name, target.backend, data,
                              resources={target.backend: 1, **target.ray_resources}))
    keys = Keys()
    for c in cells:
        c.key = keys.cell_key(c)
    return cells


# ---------------------------------------------------------------- keys


def _sha_file(path: Path, h=None):
    own = h is None
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() if own else h


def _sha_tree(paths: list[Path], root: Path | None = None) -> str:
    """SHA-256 over (name, size, bytes) of files, in name order."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: str(p.relative_to(root) if root else p)):
        name = str(p.relative_to(root) if root else p).encode()
        h.update(len(name).to_bytes(8, "big") + name + p.stat().st_size.to_bytes(8, "big"))
        _sha_file(p, h)
    return h.hexdigest()


def _zoo_modules(module: str) -> set[Path]:
    """The source files of a zoo module and of the edgeexport.zoo modules it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        spec = importlib.util.find_spec(todo.pop())
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        path = Path(spec.origin).resolve()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeexport.zoo"):
                todo.append(node.module)
                if node.module == "edgeexport.zoo":
                    todo += [f"edgeexport.zoo.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("edgeexport.zoo")]
    return seen


class Keys:
    """What a cell's key is made of, computed once per run."""

    def __init__(self):
        from edgeexport.report import versions

        core = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts
                and p.relative_to(PACKAGE).parts[0] != "zoo" and p.name not in NOT_IN_KEY]
        self.core = _sha_tree(core, PACKAGE)
        self.versions = {"edgeexport": __version__, **versions(), "python": platform.python_version(),
                         "machine": platform.machine(), "numpy": _dist_version("numpy"),
                         "scikit-image": _dist_version("scikit-image")}
        self._files: dict[str, str] = {}

    def file(self, path) -> str:
        p = Path(path).resolve()
        k = f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        if k not in self._files:
            self._files[k] = (_sha_tree([f for f in p.rglob("*") if f.is_file()], p) if p.is_dir()
                              else _sha_file(p))
        return self._files[k]

    def model_code(self, model: str) -> str:
        if model.endswith(".onnx"):
            return "onnx-file"
        if ":" in model:  # user model package.module:factory: its module's source
            spec = importlib.util.find_spec(model.split(":")[0])
            return self.file(spec.origin) if spec and spec.origin and Path(spec.origin).is_file() else model
        from edgeexport.zoo import get_entry

        entry = get_entry(model)
        files = _zoo_modules(entry.builder.__module__) | _zoo_modules("edgeexport.zoo.registry") \
            | _zoo_modules("edgeexport.zoo.pretrained")
        return _sha_tree(sorted(files), PACKAGE)

    def weights(self, recipe: dict) -> str:
        model, w = recipe["model"], recipe.get("weights")
        if model.endswith(".onnx"):
            return "onnx:" + self.file(model) if Path(model).exists() else "onnx:missing"
        if w in (None, "init"):
            return f"{w or 'default'}:seed=0"  # build_model seeds 0; default BN statistics from the bundled photos
        if ":" not in model:
            from edgeexport.zoo import resolve_name
            from edgeexport.zoo.registry import resolve_weights

            trained = resolve_weights(resolve_name(model), w)
            if trained is not None:
                return f"trained:{trained.spec}:" + (self.file(trained.path()) if trained.available() else "missing")
        return "file:" + self.file(w) if Path(w).exists() else f"missing:{w}"

    def data(self, recipe: dict) -> dict:
        inputs = recipe.get("inputs") or {}
        out = {"photos": f"scikit-image {_dist_version('scikit-image')}"}
        for k in ("folder", "eval_data"):
            v = inputs.get(k)
            if v and Path(v).exists():
                out[k] = self.file(v)
        for stage in (recipe.get("stages") or {}).values():
            for opts in stage if isinstance(stage, list) else [stage] if isinstance(stage, dict) else []:
                v = opts.get("calib_folder")
                if v and Path(v).exists():
                    out[f"calib:{v}"] = self.file(v)
        return out

    def cell_key(self, cell: Cell) -> str:
        recipe = {k: v for k, v in cell.recipe.items() if k != "output"}
        blob = {"kind": cell.kind, "code": self.core, "model": self.model_code(recipe["model"]),
                "weights": self.weights(recipe), "recipe": recipe, "data": self.data(recipe),
                "versions": self.versions}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _dist_version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- the tasks (run on the cluster's nodes)


def _node() -> dict:
    info = {"hostname": socket.gethostname(), "node_id": None, "ip": None, "pid": os.getpid()}
    try:
        import ray

        ctx = ray.get_runtime_context()
        info["node_id"] = ctx.get_node_id()
        info["ip"] = ray.util.get_node_ip_address()
    except Exception:
        pass
    return info


def _bump_attempt(attempts_dir: str, name: str) -> int:
    """Count this attempt (a byte appended to the cell's counter file) before the work starts."""
    try:
        folder = Path(attempts_dir)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "edgeexport-attempts" / Path(attempts_dir).name
        folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "ab") as fh:
        fh.write(b".")
        fh.flush()
        return fh.tell()


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")  # no absolute paths, no links out of the folder


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def build_cell(spec: dict) -> dict:
    """A Ray task: the pipeline for one cell's recipe, on this node. Returns its report and its output
    folder (artifacts, reports, and a bundle when this node cannot run the artifact) as tar bytes."""
    attempt = _bump_attempt(spec["attempts_dir"], spec["key"])
    crash = spec.get("crash", 0)
    if crash and (crash < 0 or attempt <= crash):
        os._exit(1)  # test-only hook (EDGEEXPORT_MATRIX_CRASH): a worker killed mid-task
    t0 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="edgeexport-cell-"))
    logs: list[str] = []
    base = {"attempt": attempt, "node": _node(), "workdir": str(out / "cell")}
    try:
        from edgeexport import pipeline
        from edgeexport.recipe import Recipe
        from edgeexport.targets import get_target

        data = json.loads(json.dumps(spec["recipe"]))
        data["output"] = str(out / "cell")
        runnable = get_target(spec["target"]).run_availability()
        if not runnable.ok:  # verified elsewhere: from a parity bundle
            data["stages"]["bundle"] = {"artifacts": [spec["kind"]]}
        recipe = Recipe.from_dict(data, source=spec["label"])
        rep = pipeline.run(recipe, log=lambda m: logs.append(str(m)))
        return {**base, "ok": True, "report": rep, "files": _pack(out / "cell"), "runnable": runnable.ok,
                "run_reason": runnable.reason, "wall_s": round(time.perf_counter() - t0, 2), "log": logs[-40:]}
    except Exception as exc:  # bad input (weights not on this node, ...) or a crash: this cell's error only
        return {**base, "ok": False, "error": _one_line(exc), "input_error": isinstance(exc, EdgeExportError),
                "wall_s": round(time.perf_counter() - t0, 2), "log": logs[-40:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def verify_cell(spec: dict, bundle: bytes) -> dict:
    """A Ray task on a node with the artifact's runtime: ``verify --trust-key`` of the signed bundle."""
    attempt = _bump_attempt(spec["attempts_dir"], spec["key"] + ".verify")
    t0 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="edgeexport-verify-"))
    base = {"attempt": attempt, "node": _node()}
    try:
        from edgeexport.bundle import verify_bundle

        path = out / "bundle"
        _unpack(bundle, path)
        rep = verify_bundle(path, threads=spec["threads"], runs=spec["runs"], warmup=spec["warmup"],
                            trust_keys=[bytes.fromhex(spec["trust_key"])])
        return {**base, "ok": True, "report": rep, "wall_s": round(time.perf_counter() - t0, 2)}
    except Exception as exc:
        return {**base, "ok": False, "error": _one_line(exc), "wall_s": round(time.perf_counter() - t0, 2)}
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- the cluster


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("edgeexport matrix runs its cells on Ray, which is not installed here "
                        "(pip install 'edgeexport[ray]')") from None
    return ray


def start_local_cluster(cpus: int | None = None, backends: set[str] | None = None) -> None:
    """A Ray instance on this machine only: every server on 127.0.0.1, no dashboard, no usage
    statistics, ``cpus`` CPUs (default: every core) and this machine's runtimes as resources (those of
    ``backends`` only, when given: probing a runtime imports it)."""
    import logging

    from edgeexport.doctor import ray_resources
    from edgeexport.util import default_threads

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's single-machine mode (its default on macOS and Windows): the node's address is the loopback
    # one, so the GCS, raylet, object manager and workers listen on 127.0.0.1 only.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = _ray()
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # the same switch, when ray was imported before the variable was set
    ray.init(address="local", num_cpus=cpus or default_threads(), resources=ray_resources(backends),
             include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             namespace="edgeexport")


class Cluster:
    """The Ray cluster the cells run on, connected on first use (a matrix served entirely from the
    cache starts nothing)."""

    def __init__(self, address: str = "local", cpus: int | None = None, backends: set[str] | None = None):
        if not (address in ("local", "auto") or address.startswith("ray://")
                or re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:\d+", address)):
            raise UserError(f"--cluster {address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT")
        self.address, self.cpus, self.started, self.connected = address, cpus, False, False
        self.backends = backends  # the runtimes a local cluster offers, when this machine runs them
        self._local: dict | None = None

    def connect(self):
        ray = _ray()
        if not self.connected:
            if not ray.is_initialized():
                if self.address == "local":
                    start_local_cluster(self.cpus, self.backends)
                    self.started = True
                else:
                    import logging

                    try:
                        ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR,
                                 namespace="edgeexport")
                    except Exception as exc:
                        raise UserError(f"cannot join the Ray cluster at {self.address}: {_one_line(exc)}") from None
                    self.started = True
            self.connected = True
        return ray

    def resources(self) -> dict:
        running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        if not self.connected and self.address == "local" and not running:  # what a local instance will offer
            if self._local is None:
                from edgeexport.doctor import ray_resources
                from edgeexport.util import default_threads

                self._local = {"CPU": float(self.cpus or default_threads()), **ray_resources(self.backends)}
                for t in list_targets():  # a local instance counts what a runtime here needs (a GPU)
                    if t.backend in self._local:
                        self._local.update({k: float(v) for k, v in t.ray_resources.items()})
            return dict(self._local)
        return dict(self.connect().cluster_resources())

    def nodes(self) -> list[dict]:
        if not self.connected:
            return [{"hostname": socket.gethostname(), "node_id": None, "alive": True, "resources": self.resources()}]
        return [{"hostname": n.get("NodeManagerHostname"), "node_id": n.get("NodeID"),
                 "ip": n.get("NodeManagerAddress"), "alive": n.get("Alive"), "resources": n.get("Resources")}
                for n in self.connect().nodes()]

    def close(self):
        if self.started:
            self.connect().shutdown()
            self.started = self.connected = False


def missing_resources(need: dict, offered: dict) -> list[str]:
    return [r for r, q in need.items() if offered.get(r, 0) < q]


def no_node_reason(cell: Cell, missing: list[str], why_here: str | None = None) -> str:
    names = ", ".join(f'"{m}"' for m in missing)
    plural = "s" if len(missing) > 1 else ""
    text = (f"no node can run {cell.backend} (no node of the cluster offers the Ray resource{plural} "
            f"{names}; on a machine that runs it: ray start --address=HEAD:6379 "
            "--resources=\"$(edgeexport doctor --ray-resources)\")")
    return text + (f"; here: {why_here}" if why_here else "")


# ---------------------------------------------------------------- the cache


class Cache:
    """``DIR/cells/KEY/`` (``result.json``, ``files/``, ``verify.json``), ``DIR/keys/`` (the signing key)
    and ``DIR/attempts/``."""

    def __init__(self, folder: Path):
        self.dir = Path(folder)
        try:
            (self.dir / "cells").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the matrix cache {self.dir}: {exc.strerror}") from None

    @staticmethod
    def default() -> Path:
        from edgeexport.weights import cache_dir

        return cache_dir() / "matrix"

    def entry(self, key: str) -> Path:
        return self.dir / "cells" / key

    def get(self, key: str) -> dict | None:
        e = self.entry(key)
        try:
            result = json.loads((e / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if not (e / "files").is_dir():
            return None
        v = e / "verify.json"
        result["verify"] = json.loads(v.read_text()) if v.is_file() else None
        return result

    def put(self, key: str, result: dict, files: bytes) -> Path:
        e = self.entry(key)
        with atomic_path(e) as tmp:
            tmp.mkdir()
            _unpack(files, tmp / "files")
            for f in (tmp / "files").rglob("*"):  # outputs hard-link these: read-only, so no one edits the cache
                if f.is_file():
                    f.chmod(0o444)
            (tmp / "result.json").write_text(json.dumps(result, indent=1, default=str))
        return e

    def put_verify(self, key: str, verify: dict) -> None:
        with atomic_path(self.entry(key) / "verify.json") as tmp:
            tmp.write_text(json.dumps(verify, indent=1, default=str))

    def signing_key(self):
        """(private key, raw public key, fingerprint) of this cache's Ed25519 key (made once, mode 0600)."""
        from edgeexport.keys import fingerprint, generate_keypair, load_private_key, load_public_key

        folder = self.dir / "keys"
        if not (folder / "matrix.key").is_file():
            generate_keypair(folder, "matrix")
        pub = load_public_key(folder / "matrix.pub")
        return load_private_key(folder / "matrix.key"), pub, fingerprint(pub)


def sign_bundle(path: Path, key, public: bytes) -> None:
    """Sign a bundle's manifest with ``key`` (the hashes are checked first), then check it as a
    verifying node will (``trust_keys=[public]``)."""
    from edgeexport.bundle import MANIFEST, SIGNATURE, load_bundle, sign_manifest

    manifest, _, _ = load_bundle(path)
    manifest.pop(SIGNATURE, None)
    manifest[SIGNATURE] = sign_manifest(manifest, key)
    with atomic_path(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(path, trust_keys=[public])


# ---------------------------------------------------------------- cell records


def _relocate(obj, old: str, new: str):
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, list):
        return [_relocate(v, old, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _relocate(v, old, new) for k, v in obj.items()}
    return obj


def _place(entry: Path, result: dict, dest: Path) -> None:
    """The cell's files from its cache entry into the output: artifacts hard-linked (read-only; copied
    across file systems), its reports copied with their paths pointing at ``dest``."""
    src = entry / "files"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for f in src.rglob("*"):
            rel = f.relative_to(src)
            if f.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if ".report." in f.name and f.parent == src:
                (tmp / rel).write_text(f.read_text(encoding="utf-8").replace(result["workdir"], str(dest)),
                                       encoding="utf-8")
                continue
            try:
                os.link(f, tmp / rel)
            except OSError:
                shutil.copy2(f, tmp / rel)


def _main_artifact(report: dict, kind: str) -> dict | None:
    return next((a for a in report["artifacts"] if a["kind"] == kind), None)


def _bundle_of(art: dict) -> str | None:
    return next((n.split(": ", 1)[1] for n in art.get("notes") or [] if n.startswith("parity bundle: ")), None)


def _why(art: dict) -> str | None:
    """One line on why an artifact did not pass (None when it did)."""
    if art["error"]:
        return art["error"]
    why = list(art.get("failures") or []) + ([art["task"]["issue"]] if (art.get("task") or {}).get("issue") else [])
    for chk in art["parity"].get("checks") or []:
        why += [i["message"] for o in chk["outputs"] for i in o["issues"] if not chk["passed"]]
    return art["parity"].get("reason") or "; ".join(dict.fromkeys(why)) or None


def _record(cell: Cell, result: dict, dest: Path, output: Path, cache_state: str) -> dict:
    """The finished cell as the matrix records it (``OUTPUT/cells/MODEL/KIND.json``)."""
    rec = {"model": cell.model, "kind": cell.kind, "target": cell.target, "backend": cell.backend, "key": cell.key,
           "cache": cache_state, "node": result.get("node"), "attempts": result.get("attempt"),
           "wall_s": result.get("wall_s"), "status": "error", "reason": result.get("error"), "folder": None,
           "report": None, "artifact": None, "required": [], "bundle": None, "eager_ms": None, "shape": None,
           "verify": None, "needs_verify": False}
    if not result.get("ok"):
        return rec
    rep = _relocate(result["report"], result["workdir"], str(dest))
    name = rep["recipe"].get("name") or rep["model"]["name"]
    art = _main_artifact(rep, cell.kind)
    rec.update(folder=str(dest.relative_to(output)), report=str((dest / f"{name}.report.json").relative_to(output)),
               eager_ms=(rep["eager"].get("latency") or {}).get("median_ms"), shape=rep["model"]["input_shape"],
               required=[a["kind"] for a in rep["artifacts"] if a["kind"] != cell.kind])
    if art is None:
        rec["reason"] = f"the pipeline built no {cell.kind} artifact"
        return rec
    rec["artifact"] = {k: v for k, v in art.items() if k not in ("views", "profile")}  # those stay in its report
    status = "build_failed" if art["error"] else art["parity"]["status"]
    rec["status"], rec["reason"] = status, _why(art)
    bundle = _bundle_of(art)
    if bundle:
        rec["bundle"] = str(Path(bundle).relative_to(output)) if Path(bundle).is_relative_to(output) else bundle
    rec["needs_verify"] = status == "not_run" and art["built"] and bundle is not None
    return rec


def _apply_verify(rec: dict, verify: dict, output: Path) -> None:
    """Merge a verification (run on another node from the signed bundle) into the cell."""
    rec["verify"] = {k: verify.get(k) for k in ("node", "attempt", "wall_s", "error")}
    if not verify.get("ok"):
        rec["status"], rec["reason"] = "error", f"verification failed: {verify.get('error')}"
        return
    rep = verify["report"]
    a = rep["artifacts"][0]
    rec["verify"].update(signature=rep.get("signature"), parity=a["parity"], latency=a["latency"],
                         report=str(Path(rec["folder"]) / "verify.report.json"))
    rec["status"] = a["parity"]["status"]
    rec["reason"] = a["parity"].get("reason")
    art = rec["artifact"]
    art["parity"], art["latency"], art["ratio_to_eager"] = a["parity"], a["latency"], None
    host = (verify.get("node") or {}).get("hostname")
    art["notes"] = list(art.get("notes") or []) + [
        f"verified on node {host} from the bundle, {rep['signature']['status']} "
        f"({rep['signature']['key_fingerprint']}); latency measured there"]
    from edgeexport.report import write_reports

    write_reports(rep, output / rec["folder"], "verify")


def _write_progress(output: Path, rec: dict) -> None:
    p = output / "cells" / _safe(rec["model"]) / f"{rec['kind']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(rec, indent=1, default=str))


def _read_progress(output: Path, cell: Cell) -> dict | None:
    p = output / "cells" / _safe(cell.model) / f"{cell.kind}.json"
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if rec.get("key") != cell.key or rec.get("status") == "error" or not rec.get("folder") \
            or not (output / rec["folder"]).is_dir():
        return None
    return rec


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def parse_crash_hook(text: str | None) -> dict[str, int]:
    """``MODEL/KIND@N,...`` -> {"MODEL/KIND": N} (-1: every attempt)."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            label, _, n = item.strip().partition("@")
            out[label] = -1 if n == "*" else int(n or 1)
    return out


# ---------------------------------------------------------------- the run


def run_matrix(models: list[str] | None, kinds: list[str] | None = None, *, cluster: str = "local",
               cache: str | Path | None = None, use_cache: bool = True, resume: bool = False,
               output: str | Path = "out/matrix", threads: int = 1, retries: int = 2, cpus: int | None = None,
               overrides: dict | None = None, log: Callable[[str], None] = print, command: str | None = None,
               html: bool = True) -> dict:
    """Run (or continue, or take from the cache) every cell of models x kinds; write and return the
    matrix report (``OUTPUT/matrix.report.json``). ``use_cache=False`` builds every cell again (and
    caches the results); ``overrides``: recipe sections merged into every cell's recipe (e.g.
    ``{"bench": {"runs": 10}}``); ``cpus``: the size of a local cluster (default: every core)."""
    t0 = time.perf_counter()
    output = Path(output).resolve()
    plan_path = output / "matrix.plan.json"
    if resume and not models:
        try:
            plan = json.loads(plan_path.read_text())
        except (OSError, ValueError):
            raise UserError(f"--resume: {output} has no matrix to continue (no readable {plan_path.name})") from None
        models, kinds = plan["models"], kinds or plan["kinds"]
        threads, overrides = plan.get("threads", threads), overrides or plan.get("overrides")
    if threads < 1 or retries < 0:
        raise UserError("--threads must be at least 1 and --retries at least 0")
    kinds = list(kinds or DEFAULT_KINDS)
    clu = Cluster(cluster, cpus)
    cells = plan_cells(list(models or []), kinds, threads, overrides)
    clu.backends = {c.backend for c in cells}
    from edgeexport.util import ensure_output_dir

    ensure_output_dir(output)
    with atomic_path(plan_path) as tmp:
        tmp.write_text(json.dumps({"models": list(models), "kinds": kinds, "threads": threads, "overrides": overrides,
                                   "cells": {c.label: c.key for c in cells}}, indent=1))
    run = _Run(cells, output, Cache(Path(cache) if cache else Cache.default()), clu, threads, retries, log)
    try:
        run.reuse(resume, use_cache)
        run.execute()
    except KeyboardInterrupt:
        done = sum(c.record is not None for c in cells)
        log(f"interrupted: {done} of {len(cells)} cells finished (in {output / 'cells'}); continue with --resume")
        raise
    finally:
        nodes = offered = None
        with contextlib.suppress(Exception):  # never hide what ended the run
            if run.cluster.connected:
                nodes, offered = run.cluster.nodes(), run.cluster.resources()
        run.cluster.close()
    matrix = _matrix_report(run, kinds, nodes, offered, use_cache, time.perf_counter() - t0, command)
    write_matrix_reports(matrix, output, html=html, log=log)
    return matrix


class _Run:
    """One matrix run: the cells, where they go, and the tasks in flight."""

    def __init__(self, cells: list[Cell], output: Path, store: Cache, cluster: Cluster, threads: int, retries: int,
                 log):
        self.cells, self.output, self.store, self.cluster = cells, output, store, cluster
        self.threads, self.retries, self.log = threads, retries, log
        self.key, self.public, self.fingerprint = store.signing_key()
        run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.attempts_dir = str(store.dir / "attempts" / run_id)
        self.crash = parse_crash_hook(os.environ.get(CRASH_ENV))
        self.pending: dict = {}  # Ray object ref -> ("build" | "verify", cell)
        self.ran_s = 0.0  # wall time of the tasks this run executed, together
        self._remote: dict = {}

    def dest(self, c: Cell) -> Path:
        return self.output / "cells" / _safe(c.model) / c.kind

    def finish(self, c: Cell, rec: dict) -> None:
        rec["needs_verify"] = False
        c.record = rec
        _write_progress(self.output, rec)
        how = f"({rec['cache']})" if rec["cache"] != "miss" else f"in {rec['wall_s'] or 0:.0f} s"
        self.log(f"{c.label}: {STATUS_TEXT.get(rec['status'], rec['status'])} {how}"
                 + (f" after {rec['attempts']} attempts" if (rec["attempts"] or 1) > 1 else "")
                 + (f": {rec['reason']}" if rec["reason"] and rec["status"] != "passed" else ""))

    # ---- 1. what is already done: the interrupted run's finished cells, then the cache
    def reuse(self, resume: bool, use_cache: bool) -> None:
        for c in self.cells:
            rec = _read_progress(self.output, c) if resume else None
            if rec is not None:
                rec["cache"] = "resumed"
                if rec["status"] == "not_run" and rec.get("bundle") and not rec.get("verify"):
                    rec["needs_verify"] = True  # a node with the runtime may have joined since
            else:
                hit = self.store.get(c.key) if use_cache else None
                if hit is None:
                    continue
                _place(self.store.entry(c.key), hit, self.dest(c))
                rec = _record(c, hit, self.dest(c), self.output, "hit")
                if rec["needs_verify"] and hit.get("verify"):
                    _apply_verify(rec, hit["verify"], self.output)
                    rec["needs_verify"] = False
            c.record = rec
            if not rec["needs_verify"]:
                self.finish(c, rec)

    # ---- 2. run what is left, verifying elsewhere what its building node cannot run
    def remote(self, fn):
        if fn.__name__ not in self._remote:
            self._remote[fn.__name__] = self.cluster.connect().remote(fn)
        return self._remote[fn.__name__]

    def task_options(self, c: Cell, what: str, capability: bool) -> dict:
        opts = {"num_cpus": self.threads, "max_retries": self.retries, "name": f"{what} {c.label}"}
        if capability:  # the runtime's own resource (and a GPU for TensorRT)
            opts["resources"] = {r: q for r, q in c.resources.items() if r not in ("CPU", "GPU")}
            opts["num_gpus"] = c.resources.get("GPU", 0)
        return opts

    def unavailable(self, c: Cell, why_here: str | None = None) -> bool:
        """Report the cell at once when no node offers its runtime's resources."""
        missing = missing_resources(c.resources, self.cluster.resources())
        if not missing:
            return False
        rec = c.record or _record(c, {"ok": False}, self.dest(c), self.output, "miss")
        rec.update(status="not_run", reason=no_node_reason(c, missing, why_here))
        self.finish(c, rec)
        return True

    def submit_build(self, c: Cell) -> None:
        where_run = get_target(c.target).builds_where_it_runs
        if where_run and self.unavailable(c):
            return
        spec = {"label": c.label, "key": c.key, "kind": c.kind, "target": c.target, "recipe": c.recipe,
                "attempts_dir": self.attempts_dir, "crash": self.crash.get(c.label, 0)}
        ref = self.remote(build_cell).options(**self.task_options(c, "build", where_run)).remote(spec)
        self.pending[ref] = ("build", c)

    def submit_verify(self, c: Cell) -> None:
        rec = c.record
        here = ((rec["artifact"] or {}).get("parity") or {}).get("reason") or ""
        if self.unavailable(c, here.removeprefix("not run on this machine: ") or None):
            return
        bench = c.recipe.get("bench") or {}
        spec = {"label": c.label, "key": c.key, "attempts_dir": self.attempts_dir, "threads": self.threads,
                "runs": bench.get("runs", 30), "warmup": bench.get("warmup", 5), "trust_key": self.public.hex()}
        bundle = _pack(self.output / rec["bundle"])
        ref = self.remote(verify_cell).options(**self.task_options(c, "verify", True)).remote(spec, bundle)
        self.pending[ref] = ("verify", c)

    def settle_build(self, c: Cell, result: dict) -> dict:
        """A finished build into the cache (its bundles signed first) and the output; its record."""
        files = result.pop("files")
        if not result["runnable"]:
            with tempfile.TemporaryDirectory(prefix="edgeexport-sign-") as tmp:
                _unpack(files, Path(tmp))
                for b in Path(tmp).glob("*.bundle"):
                    sign_bundle(b, self.key, self.public)
                files = _pack(Path(tmp))
        result.pop("log", None)
        self.store.put(c.key, result, files)
        _place(self.store.entry(c.key), result, self.dest(c))
        return _record(c, result, self.dest(c), self.output, "miss")

    def collect(self, what: str, c: Cell, ref) -> None:
        ray = self.cluster.connect()
        try:
            result = ray.get(ref)
        except Exception as exc:  # the worker died on every attempt, or its node was lost
            n = _count_attempts(self.attempts_dir, c.key + (".verify" if what == "verify" else ""))
            n = n or self.retries + 1
            result = {"ok": False, "attempt": n, "error": f"the {what} task's worker died ({n} attempt"
                                                          f"{'s' if n > 1 else ''}): {_one_line(exc)}"}
        self.ran_s += result.get("wall_s") or 0
        if what == "build":
            rec = self.settle_build(c, result) if result.get("ok") else _record(c, result, self.dest(c),
                                                                                 self.output, "miss")
            c.record = rec
            if rec["needs_verify"]:
                self.submit_verify(c)
            else:
                self.finish(c, rec)
            return
        _apply_verify(c.record, result, self.output)
        if result.get("ok") and c.record["status"] in ("passed", "failed"):  # a check that ran, not "not run"
            self.store.put_verify(c.key, result)
        self.finish(c, c.record)

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
                rec = c.record or _record(c, {"ok": False}, self.dest(c), self.output, "miss")
                rec.update(status="not_run", reason=no_node_reason(c, missing) + " (the node that offered it left)")
                self.finish(c, rec)

    def execute(self) -> None:
        for c in self.cells:
            if c.record is None:
                self.submit_build(c)
            elif c.record.get("needs_verify"):
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


def _count_attempts(attempts_dir: str, name: str) -> int | None:
    try:
        return (Path(attempts_dir) / name).stat().st_size
    except OSError:
        return None


# ---------------------------------------------------------------- the report


def _matrix_report(run: _Run, kinds, nodes, offered, use_cache, wall_s, command) -> dict:
    from edgeexport.report import machine_info, versions

    recs = [c.record for c in run.cells]
    threads, store = run.threads, run.store
    count = lambda state: sum(r["cache"] == state for r in recs)  # noqa: E731
    failed = [f"{r['model']}/{r['kind']}" for r in recs if r["status"] in ("failed", "build_failed", "error")]
    models = list(dict.fromkeys(r["model"] for r in recs))
    return {
        "edgeexport": __version__, "kind": "matrix",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "elapsed_s": round(wall_s, 1), "cells_s": round(run.ran_s, 1),
        "threads": threads,
        "latency_note": f"every latency is at {threads} thread{'s' if threads > 1 else ''} per cell (each cell is a "
                        f"Ray task with {threads} CPU{'s' if threads > 1 else ''}); ratios are against eager PyTorch "
                        "timed in the same cell",
        "cluster": {"address": run.cluster.address, "resources": offered, "nodes": nodes},
        "cache": {"dir": str(store.dir), "used": use_cache, "hits": count("hit"), "resumed": count("resumed"),
                  "built": count("miss")},
        "signing_key": run.fingerprint, "machine": machine_info(threads), "versions": versions(),
        "models": models, "kinds": kinds, "cells": recs,
        "verdict": "failed" if failed else "passed", "failed": failed,
    }


def _cell_text(r: dict) -> str:
    if r["status"] == "not_run" and (r["reason"] or "").startswith("no node can run"):
        return f"no node can run {r['backend']}"
    text = STATUS_TEXT.get(r["status"], r["status"])
    a = r.get("artifact") or {}
    if a.get("ratio_to_eager") is not None:
        text += f" {a['ratio_to_eager']:.2f}x"
    return text


def _node_name(node: dict | None) -> str:
    if not node:
        return "–"
    return node.get("hostname") or (node.get("node_id") or "?")[:8]


def to_markdown(m: dict) -> str:
    cells = {(r["model"], r["kind"]): r for r in m["cells"]}
    shapes = {r["model"]: r["shape"] for r in m["cells"] if r.get("shape")}
    nodes = m["cluster"]["nodes"] or []
    c = m["cache"]
    cpus = lambda n: int((n.get("resources") or {}).get("CPU", 0))  # noqa: E731
    where = (f"{len(nodes)} node(s): " + ", ".join(f"{n.get('hostname')} {cpus(n)} CPUs" for n in nodes) if nodes
             else "not started: every cell came from the cache or could not run")
    lines = [f"# edgeexport matrix: {len(m['models'])} model(s) x {len(m['kinds'])} artifact kind(s)", "",
             f"- cluster: {m['cluster']['address']} ({where})",
             f"- wall time: {m['elapsed_s']:.1f} s; the cells run here took {m['cells_s']:.1f} s together",
             f"- cache: {c['dir']}: {c['hits']} hit(s), {c['resumed']} resumed, {c['built']} built",
             f"- latencies: {m['latency_note']}",
             f"- bundles shipped to other nodes are signed by Ed25519 key {m['signing_key']}",
             f"- verdict: **{m['verdict']}**" + (f" (failed: {', '.join(m['failed'])})" if m["failed"] else ""), "",
             "| model | input | " + " | ".join(m["kinds"]) + " |", "|---|---|" + "---|" * len(m["kinds"])]
    for model in m["models"]:
        lines.append(f"| {model} | {format_shape(shapes[model]) if model in shapes else '–'} | "
                     + " | ".join(_cell_text(cells[(model, k)]) for k in m["kinds"]) + " |")
    lines += ["", "## Cells", "",
              "| model | artifact | verdict | built on | verified on | cache | attempts | wall s | median ms | x eager "
              "| x fp32 | reason |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["cells"]:
        a = r.get("artifact") or {}
        lat = (a.get("latency") or {}).get("median_ms")
        v = r.get("verify") or {}
        reason = (r["reason"] or "").replace("|", "/")
        lines.append(f"| {r['model']} | {r['kind']} | {STATUS_TEXT.get(r['status'], r['status'])} | "
                     f"{_node_name(r['node'])} | "
                     f"{_node_name(v.get('node'))} | {r['cache']} | {r['attempts'] or '–'} | "
                     f"{'–' if r['wall_s'] is None else format(r['wall_s'], '.1f')} | "
                     f"{'–' if lat is None else format(lat, '.2f')} | "
                     f"{'–' if a.get('ratio_to_eager') is None else format(a['ratio_to_eager'], '.2f')} | "
                     f"{'–' if a.get('ratio_to_fp32') is None else format(a['ratio_to_fp32'], '.2f')} | {reason} |")
    lines += ["", "Each cell's own report: `cells/MODEL/KIND/`; a model's cells in one report: "
                  "`models/MODEL.report.html`.", ""]
    return "\n".join(lines)


def model_reports(m: dict, output: Path) -> dict[str, dict]:
    """Per model, one report of its cells (the artifact of each cell, the eager figures of the first
    cell that ran): what the matrix page's rows link to."""
    out: dict[str, dict] = {}
    for model in m["models"]:
        recs = [r for r in m["cells"] if r["model"] == model]
        base = None
        for r in recs:
            if r.get("report") and (output / r["report"]).is_file():
                base = json.loads((output / r["report"]).read_text())
                break
        if base is None:
            continue
        arts, views = [], {}
        for r in recs:
            a = r.get("artifact")
            if a is None:
                a = {"kind": r["kind"], "target": r["target"], "backend": r["backend"], "precision": "–",
                     "path": None, "size_bytes": None, "dynamic": "none", "built": False, "required_by": None,
                     "runner": None, "build": {}, "error": None if r["status"] == "not_run" else r["reason"],
                     "notes": [], "parity": {"status": "not_run" if r["status"] == "not_run" else "build_failed",
                                             "reason": r["reason"], "checks": []},
                     "latency": None, "ratio_to_eager": None, "failures": [], "task": None, "views": {}}
            else:
                if r["status"] == "not_run":
                    a = {**a, "parity": {**a["parity"], "reason": r["reason"]}}
                if r.get("report") and (output / r["report"]).is_file():
                    cell_rep = json.loads((output / r["report"]).read_text())
                    full = _main_artifact(cell_rep, r["kind"]) or {}
                    a = {**a, "views": full.get("views") or {}, "profile": full.get("profile")}
                    for k, v in (cell_rep.get("views") or {}).items():
                        views[k] = {**v, **views.get(k, {})} if isinstance(v, dict) else views.get(k, v)
            a = {**a, "notes": list(a.get("notes") or []) + [
                f"matrix cell: built on {_node_name(r['node'])}, cache {r['cache']}, "
                f"attempts {r['attempts'] or '–'}, "
                f"{r['wall_s'] or 0:.0f} s"]}
            arts.append(a)
        failed = [a["kind"] for a in arts if a["parity"]["status"] in ("failed", "build_failed")]
        out[model] = {**base, "artifacts": arts, "views": views, "verdict": "failed" if failed else "passed",
                      "failed": failed, "command": m.get("command")}
    return out


def write_matrix_reports(m: dict, output: Path, html: bool = True, log=None) -> None:
    """``matrix.report.json``, ``.md`` and ``.html`` (with ``models/MODEL.report.*`` the rows link to)."""
    with atomic_path(output / "matrix.report.json") as tmp:
        tmp.write_text(json.dumps(m, indent=2, default=str) + "\n")
    with atomic_path(output / "matrix.report.md") as tmp:
        tmp.write_text(to_markdown(m))
    if not html:
        return
    try:
        write_matrix_html(m, output, log)
    except Exception as exc:  # a page that cannot be rendered costs a warning, never the matrix
        if os.environ.get("EDGEEXPORT_DEBUG"):
            raise
        (log or print)(f"no HTML matrix page: {_one_line(exc)}")


def write_matrix_html(m: dict, output: Path, log=None) -> Path:
    """``OUTPUT/matrix.report.html`` and the ``models/MODEL.report.*`` pages its rows link to (from the
    matrix report and the cells' reports in OUTPUT alone: ``edgeexport report`` re-renders it)."""
    from edgeexport import report as R

    reports = model_reports(m, output)
    links = {}
    for model, rep in reports.items():
        (output / "models").mkdir(exist_ok=True)
        R.write_reports(rep, output / "models", _safe(model), log=log)
        links[model] = f"models/{_safe(model)}.report.html"
    with atomic_path(output / "matrix.report.html") as tmp:
        tmp.write_text(render_html(m, reports, links), encoding="utf-8")
    return output / "matrix.report.html"


def render_html(m: dict, reports: dict[str, dict], links: dict[str, str]) -> str:
    """The matrix page of :mod:`edgeexport.report_html` with every cell's node, cache state, attempts and
    wall time added."""
    from edgeexport.report import html as H

    ctx = H.matrix_context(reports, links, title=f"matrix of {len(m['models'])} model(s) x {len(m['kinds'])} kind(s)",
                           intro=f"{m['latency_note'].capitalize()}. Wall time {m['elapsed_s']:.0f} s "
                                 f"(cells {m['cells_s']:.0f} s together); cache {m['cache']['hits']} hit(s), "
                                 f"{m['cache']['resumed']} resumed, {m['cache']['built']} built.")
    cells = {(r["model"], r["kind"]): r for r in m["cells"]}
    ran_on = [r["node"] for r in m["cells"]] + [(r.get("verify") or {}).get("node") for r in m["cells"]]
    nodes = {_node_name(n) for n in ran_on if n}
    one_node = len(nodes) == 1  # then the node is said once, not in every cell
    if one_node:
        ctx["intro"] += f" Every cell ran on {next(iter(nodes))}."
    ctx["kinds"] = list(m["kinds"])
    for row in ctx["rows"]:
        for kind, c in list(row["cells"].items()):
            r = cells.get((row["name"], kind))
            if r is None:
                row["cells"].pop(kind)  # an artifact a cell required (e.g. the fp32 graph of onnx-int8)
                continue
            v = r.get("verify") or {}
            wall = "" if r["wall_s"] is None else f" · {r['wall_s']:.0f} s"  # the build's time, also on a hit
            c["lines"] = c["lines"] + ([] if one_node else [f"built on {_node_name(r['node'])}"]
                                       + ([f"verified on {_node_name(v.get('node'))}"] if v.get("node") else [])) \
                + [f"cache {r['cache']}" + (f" · {r['attempts']} attempts" if (r["attempts"] or 1) > 1 else "") + wall]
            if r["status"] == "not_run" and (r["reason"] or "").startswith("no node can run"):
                c["text"] = f"no node can run {r['backend']}"
            c["title"] = r["reason"] or c["title"]
    for model in m["models"]:  # a model none of whose cells produced a report: its errors
        if model not in reports:
            ctx["rows"].append({"name": model, "link": None, "shape": "–", "verdict": "failed", "eager_ms": None,
                                "cells": {k: {"kind": k, "precision": "", "status": "failed", "lines": [],
                                              "x_eager": None, "text": _cell_text(cells[(model, k)]),
                                              "title": cells[(model, k)]["reason"] or ""} for k in m["kinds"]}})
    bad = {r["model"] for r in m["cells"] if r["status"] in ("failed", "build_failed", "error")}
    ctx["passed"], ctx["total"] = len(m["models"]) - len(bad), len(m["models"])
    return H._env().get_template("matrix.html.j2").render(**ctx)


def print_matrix(m: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    cells = {(r["model"], r["kind"]): r for r in m["cells"]}
    c = m["cache"]
    t = Table(title=escape(f"matrix · {m['threads']} thread(s) per cell · {m['elapsed_s']:.0f} s · cache "
                           f"{c['hits']} hit(s), {c['resumed']} resumed, {c['built']} built · "
                           f"verdict: {m['verdict']}"))
    t.add_column("model")
    for k in m["kinds"]:
        t.add_column(k)
    for model in m["models"]:
        t.add_row(escape(model), *[escape(_cell_text(cells[(model, k)])) for k in m["kinds"]])
    console.print(t)
    for r in m["cells"]:
        extra = []
        if (r["attempts"] or 1) > 1:
            extra.append(f"{r['attempts']} attempts")
        if r["status"] not in ("passed",) and r["reason"]:
            extra.append(r["reason"])
        if extra:
            style = "red" if r["status"] in ("failed", "build_failed", "error") else "yellow"
            console.print(f"[{style}]{escape(r['model'])}/{escape(r['kind'])}[/]: {escape('; '.join(extra))}")
