"""An artifact's status, and how reports say it."""
from __future__ import annotations

from typing import Literal

Status = Literal["passed", "failed", "not_run", "skipped", "build_failed", "unsupported", "error"]
FAILING: tuple[str, ...] = ("failed", "build_failed", "unsupported", "error")
STATUS_TEXT = {"passed": "passed", "failed": "FAILED", "not_run": "not run here", "skipped": "skipped",
               "build_failed": "BUILD FAILED", "unsupported": "UNSUPPORTED", "error": "ERROR"}
