"""The typer application, its error handling and output helpers: what every command shares."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

import typer

from edgeexport.errors import BackendMissing, EdgeExportError, UserError
from edgeexport.report.text import print_report
from edgeexport.targets.base import BUDGET_METRICS
from edgeexport.util import capture_warnings, stdout_to_stderr, terminal_safe

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Export PyTorch vision models to edge runtimes and prove "
                                              "parity and speed against eager PyTorch.")


def err(msg: str) -> None:
    print(f"edgeexport: error: {msg}", file=sys.stderr)


_JSON_OUT: list = []  # the real standard output while a --json command runs (everything else goes to stderr)


def handle_errors(fn):
    """Bad input -> one line on stderr and exit 2; other deliberate failures -> exit 1. While the command runs,
    libraries' warnings go into its report instead of the terminal, and with ``--json`` whatever the model's
    code or a runtime prints goes to stderr, so that stdout carries the JSON document alone."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(capture_warnings())
                stack.enter_context(terminate_as_interrupt())
                if kwargs.get("as_json"):
                    _JSON_OUT.append(stack.enter_context(stdout_to_stderr()))
                    stack.callback(_JSON_OUT.pop)
                return fn(*args, **kwargs)
        except UserError as exc:
            err(terminal_safe(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__)
            raise typer.Exit(2) from None
        except EdgeExportError as exc:
            err(terminal_safe(str(exc).splitlines()[0]))
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get("EDGEEXPORT_DEBUG"):
                raise
            err(terminal_safe(f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} "
                              "(set EDGEEXPORT_DEBUG=1 for the traceback)"))
            raise typer.Exit(1) from None

    return wrapper


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM during the command ends it as Ctrl-C does: every ``finally`` runs, so temporary folders and
    half-written files are removed on that exit path too (only in the main thread, where signals arrive)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def console(quiet: bool = False, stderr: bool = True):
    """A rich console that shows every string from a report, an artifact or a manifest as what it is: characters
    that would steer the terminal (escape sequences, bidirectional overrides) are printed as their escapes."""
    from rich.console import Console
    from rich.segment import Segment

    class SafeConsole(Console):
        def _render_buffer(self, buffer):
            return super()._render_buffer(s if s.control else Segment(terminal_safe(s.text), s.style, s.control)
                                          for s in buffer)

    probe = Console(stderr=stderr)
    return SafeConsole(stderr=stderr, quiet=quiet, width=None if probe.is_terminal else 200)


def status_for(con):
    """Where a run is, wherever its output goes (``--quiet`` silences both): on a terminal, a transient rich
    progress display with one row per running stage (nested stages under it) and its elapsed time; off a terminal
    (CI, ``| tee``, a notebook), one plain line when a stage starts and one when it ends, with its elapsed
    seconds, each written and flushed at once (:data:`PROGRESS` matches them)."""
    return Stages(con)


PROGRESS = re.compile(r"^edgeexport: (start|done ) ")


class Stages:
    def __init__(self, con):
        self.con, self.progress, self.running = con, None, 0

    @contextlib.contextmanager
    def __call__(self, msg: str):
        import time

        if self.con.quiet:
            yield
            return
        t0 = time.perf_counter()
        if self.con.is_terminal:
            with self._row(msg):
                yield
            return
        self._line(f"start {msg}")
        yield  # a stage that fails says nothing more: the error's own line follows
        self._line(f"done  {msg} ({time.perf_counter() - t0:.1f} s)")

    def _line(self, text: str) -> None:
        self.con.print(f"edgeexport: {text}", markup=False, highlight=False, soft_wrap=True)
        with contextlib.suppress(Exception):
            self.con.file.flush()

    @contextlib.contextmanager
    def _row(self, msg: str):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if self.progress is None:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                                     TimeElapsedColumn(), console=self.con, transient=True)
            self.progress.start()
        task = self.progress.add_task(terminal_safe(msg), total=None)
        self.running += 1
        try:
            yield
        finally:
            self.progress.remove_task(task)
            self.running -= 1
            if not self.running:
                self.progress.stop()
                self.progress = None


def command_line() -> str | None:
    """This process's command line, when it is the edgeexport command (recorded in the report)."""
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 != "edgeexport" and not sys.argv[0].endswith(os.path.join("edgeexport", "__main__.py")):
        return None
    return shlex.join(["edgeexport", *sys.argv[1:]])


def show(report, quiet: bool, as_json: bool, pages=()) -> None:
    """The report on stdout: JSON, or the table and the paths of the pages written."""
    if as_json:
        print_json(report.to_json())
    elif not quiet:
        out = console(stderr=False)
        print_report(report, out)
        for page in pages:
            if Path(page).exists():
                out.print(f"report: {page}", markup=False, highlight=False)


def print_json(document) -> None:
    """A JSON document (text, or data to serialise) on the real standard output (see :func:`handle_errors`)."""
    text = document if isinstance(document, str) else json.dumps(document, indent=2)
    print(text, file=_JSON_OUT[-1] if _JSON_OUT else sys.stdout, flush=True)


def exit_with(report) -> None:
    """Exit 0 when every check passed (or could not run here), 1 otherwise."""
    raise typer.Exit(0 if report.verdict == "passed" else 1)


def refuse_not_run(artifact) -> None:
    """A check this machine could not run is a missing backend (exit 2), never a pass."""
    if artifact.status == "not_run":
        raise BackendMissing(artifact.backend, (artifact.reason or "").removeprefix("not run on this machine: "))


def parse_budget(items: list[str]) -> dict[str, float] | None:
    """``["snr_db=25", "miou_drop=0.5"]`` -> {"snr_db": 25.0, "miou_drop": 0.5}."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in BUDGET_METRICS:
            raise UserError(f"--budget {item!r}: expected METRIC=VALUE with METRIC one of {', '.join(BUDGET_METRICS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise UserError(f"--budget {item!r}: {value!r} is not a number") from None
    return out


def parse_options(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs; values are JSON when they parse (``true``, ``2``, ``{"in0": "input"}``)."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options
