"""What the hostile-input tests share: a fresh HOME, file listings before and after, marker files, and a
command run either in this process (fast) or in a fresh one (memory, crashes, the import path), with its exit
code, its one line on stderr and its peak memory asserted.

Every hostile case is a file the test builds and a command whose exit code and line are asserted, with nothing
written or read outside the folders it owns."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def listing(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``roots`` (symlinks not followed) with its type and size: what a command may not change."""
    out = {}
    for root in roots:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
                out[str(p)] = (kind, 0 if kind == "dir" else st.st_size)
    return out


def changed(before: dict, after: dict) -> dict[str, list[str]]:
    """What appeared, disappeared or changed between two listings."""
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def unchanged(before: dict, after: dict) -> bool:
    return not any(changed(before, after).values())


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    max_rss: int | None = None  # bytes, the child's peak resident memory (fresh processes only)

    @property
    def lines(self) -> list[str]:
        from edgeexport.cli.app import PROGRESS

        return [ln for ln in self.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]  # errors, not progress

    def one_line_error(self, needle: str | None = None) -> str:
        """Assert exit 2 and exactly one line on stderr (``edgeexport: error: ...``, no traceback); return it."""
        assert self.code == 2, (self.code, self.stderr[-2000:], self.stdout[-500:])
        assert len(self.lines) == 1, self.stderr[-3000:]
        line = self.lines[0]
        assert line.startswith("edgeexport: error:") and "Traceback" not in self.stderr, line
        assert "internal error" not in line, line
        if needle:
            assert needle in line, line
        return line


def fresh_env(home: Path, **extra) -> dict:
    """The environment of a fresh process: a new HOME (and caches under it), the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEEXPORT_", "PYTEST_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(ROOT),
               EDGEEXPORT_CACHE=os.environ.get("EDGEEXPORT_CACHE", str(home / ".cache" / "edgeexport")))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_fresh(args: list, *, home: Path, cwd: Path, timeout: float = 60, env: dict | None = None,
              input: str | None = None) -> Result:  # noqa: A002
    """``edgeexport ARGS`` in a fresh interpreter (``python -m edgeexport``), from ``cwd``, with a fresh HOME;
    its peak resident memory is measured (ru_maxrss of the waited child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, "-m", "edgeexport", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env or fresh_env(home), input=input)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: only a new maximum is this child's own
    return Result(proc.returncode, proc.stdout, proc.stderr, peak * 1024 if peak > before else None)


def run_here(args: list, *, home: Path | None = None, monkeypatch=None) -> Result:
    """``edgeexport ARGS`` in this process (typer's runner, no interpreter start-up); with ``monkeypatch`` and
    ``home``, HOME points at a fresh folder for the call."""
    from typer.testing import CliRunner

    from edgeexport.cli import app

    if monkeypatch is not None and home is not None:
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)
