import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Default weights are cached; share one cache between test workers, inside the checkout.
os.environ.setdefault("EDGEEXPORT_CACHE", str(ROOT / ".cache" / "edgeexport-tests"))


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
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("edgeexport: error:"), stderr
    assert "Traceback" not in stderr
    if needle:
        assert needle in lines[0], lines[0]
