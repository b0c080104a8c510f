import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Default weights are cached; share one cache between test workers, inside the checkout.
os.environ.setdefault("EDGEEXPORT_CACHE", str(ROOT / ".cache" / "edgeexport-tests"))
# The TorchScript exporter for every export that names none (it takes a third of the dynamo exporter's time);
# the tests of the default (dynamo) path name it: `--exporter dynamo`, `exporter: dynamo` (see DYNAMO below).
os.environ.setdefault("EDGEEXPORT_EXPORTER", "torchscript")

# pytest-xdist: one CPU per worker. Every backend's default thread count is the CPUs this process may use, so
# two workers on two cores would otherwise run two threads each and their thread pools would spin against
# each other. (tests/test_matrix.py gives its Ray cluster every CPU back.)
ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
_worker, _workers = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _worker.startswith("gw") and 1 < _workers <= len(ALL_CPUS):
    os.sched_setaffinity(0, {ALL_CPUS[int(_worker[2:]) % len(ALL_CPUS)]})


@contextlib.contextmanager
def every_cpu():
    """Every CPU of the machine for this block (a test of thread counts above one)."""
    pinned = os.sched_getaffinity(0) if ALL_CPUS else None
    if ALL_CPUS:
        os.sched_setaffinity(0, set(ALL_CPUS))
    try:
        yield
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)


@pytest.fixture
def cli():
    """Invoke the typer app in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from edgeexport.cli import app

    runner = CliRunner()

    def invoke(*args):
        res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return res.exit_code, res.stdout, res.stderr

    return invoke


def assert_one_line_error(code, stderr, needle=None):
    assert code == 2, stderr
    from edgeexport.cli.app import PROGRESS

    # the error is one line; the progress lines of the stages that ran before it (off a terminal) are not errors
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgeexport: error:"), stderr
    assert "Traceback" not in stderr
    if needle:
        assert needle in lines[0], lines[0]
