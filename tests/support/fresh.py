"""Run Python code in a fresh interpreter: what it imports, forks or prints is its own, not the test
process's (which has already imported every backend)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fresh_python(code: str, timeout: int = 120) -> str:
    """Run ``code`` with ``python -c`` from the repository root; assert it exits 0 and return its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                         env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout
