"""Exceptions with a meaning for the command line and the library.

``UserError`` is bad input: the CLI prints its one-line message and exits 2.
``BackendMissing`` is a ``UserError`` for an optional runtime that is not installed.
``BuildFailed`` is a target that could not build its artifact: the artifact is reported as a failed
build (exit 1), the rest of the run goes on.

This module is the bottom of the package: it imports nothing from edgeexport.
"""
from __future__ import annotations


class EdgeExportError(Exception):
    """Base class of every error edgeexport raises on purpose."""


class UserError(EdgeExportError):
    """Bad input from the user (exit code 2, one line, no traceback)."""

    exit_code = 2


class BackendMissing(UserError):
    """An optional backend that this command needs is not installed or cannot run here."""

    def __init__(self, backend: str, reason: str, hint: str = ""):
        self.backend, self.reason, self.hint = backend, reason, hint
        msg = f"{backend} is not available: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class BuildFailed(EdgeExportError):
    """A target could not build its artifact; the artifact is reported as a failed build."""


class UnsupportedOp(BuildFailed):
    """A converter refused an operator of the model: which op, and the module (path, class) it sits in."""

    def __init__(self, op: str, module: str | None = None, detail: str = ""):
        self.op, self.module, self.detail = op, module, detail
        where = f" at {module}" if module else " (module not found)"
        super().__init__(f"unsupported: {op}{where}" + (f": {detail}" if detail else ""))


class Unsupported(UserError):
    """A target cannot take the model: the target, the op, the module it sits in, and the targets that did
    take the model (``supported_by``; None when they were not tried). ``report``: the run's report, written all
    the same."""

    def __init__(self, target: str, op: str, module: str | None, supported_by: list[str] | None,
                 model: str = "the model", report=None):
        self.target, self.op, self.module, self.supported_by, self.report = target, op, module, supported_by, report
        took = (f"{', '.join(supported_by)} took it" if supported_by else
                "no other target took it" if supported_by is not None else "the other targets were not tried (--no-probe)")
        super().__init__(f"{target} cannot convert {model}: unsupported {op} at {module or 'an unknown module'}; "
                         f"{took}")
