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
