"""The ``edgeexport`` command line: a thin typer layer over the library (:mod:`edgeexport.api`).

One command per registered target (``edgeexport onnx``, ``quantize``, ``trt``, ``coreml``,
``executorch``, ...) is generated from the target registry (:mod:`~edgeexport.cli.targets`): its
options come from the target's typed options, the rest from one shared ``Common`` object. Each builds a
:class:`~edgeexport.recipe.Recipe` and runs it like ``edgeexport run RECIPE``; the other commands are in
:mod:`~edgeexport.cli.commands`.

Exit codes: 0 parity holds, 1 parity (or a build) failed with the report still written,
2 bad input or a backend this machine lacks (one line on stderr).
"""
from __future__ import annotations

import sys

import typer

from edgeexport.cli import commands  # noqa: F401  (registers its commands)
from edgeexport.cli.app import app, err, parse_budget  # noqa: F401
from edgeexport.cli.targets import register_target_commands

register_target_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line on stderr and exit 2."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Abort:
        err("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors from the (vendored) click layer
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgeexport`: show the help
            print(message, file=sys.stderr)
            sys.exit(2)
        err((message.splitlines() or [type(exc).__name__])[0])
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    sys.exit(rv or 0)
