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
  target's packages). A cell whose key is in the cache is not run again when its entry passes its file
  check: a signed record (``files.json``) of every file's SHA-256, checked on every hit, with no file
  changed, missing or added and no symlink (an entry that fails is not trusted: the cell is built again
  and the report says why). Its artifacts and bundle are **copied** from it (never hard-linked) and its
  reports rewritten; a verification is cached with its cell once it ran. Only finished pipeline runs are cached: a crashed task, an input error or "no node can run"
  is tried again. Artifacts travel from the nodes to the cache through Ray's object store, bundles
  from the cache to verifying nodes the same way, so nodes need no shared folder.
* **Resume.** Each finished cell is written atomically to ``OUTPUT/cells/MODEL/KIND.json`` as it
  finishes; ``--resume`` continues the interrupted matrix in OUTPUT: it replays its plan
  (``matrix.plan.json``: models, kinds, threads, overrides; other models are refused) and keeps every
  finished cell whose key is unchanged, cache or not. The plan and the records are validated first.
* **Temporaries.** The driver owns a run folder (``$TMPDIR/edgeexport-matrix-*``) where every cell task on
  this machine keeps its ``edgeexport-cell-*`` folder; it is removed however the run ends, Ctrl-C and
  SIGTERM included.
* **Failures stay local.** A failing cell is a row. A worker process that dies mid-task is retried by
  Ray (``retries``); each attempt bumps a counter file (``CACHE/attempts/RUN/KEY``) before it starts,
  and the report gives the attempts per cell (counted per node when the cache folder is not shared).
* **Report.** ``OUTPUT/matrix.report.{json,md,html}``: one :class:`~edgeexport.report.Report` whose
  artifacts are the cells (``MODEL/KIND``, each with the node that built it and the one that verified
  it, cache state, attempts and wall time); the HTML page is ``make bench``'s matrix page
  (:func:`edgeexport.report.html.render_matrix`), each model linking to a report of its cells
  (``OUTPUT/models/MODEL.report.html``).

The package is split by job: :mod:`~edgeexport.matrix.plan` (cells and their recipes),
:mod:`~edgeexport.matrix.keys` (cache keys), :mod:`~edgeexport.matrix.cache`,
:mod:`~edgeexport.matrix.cluster`, :mod:`~edgeexport.matrix.tasks` (what runs on the nodes),
:mod:`~edgeexport.matrix.records` (a finished cell), :mod:`~edgeexport.matrix.run` (the run loop) and
:mod:`~edgeexport.matrix.report`.
"""
from edgeexport.matrix.cache import Cache, sign_bundle  # noqa: F401
from edgeexport.matrix.cluster import Cluster, start_local_cluster  # noqa: F401
from edgeexport.matrix.plan import CellPlan, cell_recipe, find_recipe, plan_cells, resolve_model  # noqa: F401
from edgeexport.matrix.report import model_reports, write_matrix_html  # noqa: F401
from edgeexport.matrix.run import run_matrix  # noqa: F401
