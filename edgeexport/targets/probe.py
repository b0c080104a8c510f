"""Loading an untrusted artifact in a child process first, so that a runtime that crashes on it (a C++
``terminate``, a segmentation fault in a parser) costs a one-line error, not the process.

:func:`load_in_child` runs ``python -m edgeexport.targets.probe`` with the runner spec on standard input. The
child validates the spec, activates the runner the spec describes (the runtime parses and compiles the artifact)
and deactivates it. Exit 0: the runtime loads it, and the parent loads it for real. A Python exception there is
the runtime refusing the artifact: its one line comes back. A signal (or a hang past the timeout) is a crash:
the parent says so in one line. The child does not put the current folder on the import path (``-P``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from edgeexport.errors import UserError
from edgeexport.targets.base import RunnerSpec

MARK = "edgeexport-probe: "
TIMEOUT_S = 600


def load_in_child(spec: RunnerSpec, what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Load ``spec``'s artifact (``what`` names it in errors) in a child process; a refusal or a crash there is
    a one-line :class:`UserError`."""
    from edgeexport.targets.registry import checked_spec, get_target

    spec = checked_spec(spec)
    title = get_target(spec.target).title
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    try:
        proc = subprocess.run([sys.executable, "-P", "-m", __name__], input=spec.model_dump_json(),
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"{title} did not finish loading {what} within {timeout_s:.0f} s (refused: a malformed "
                        "artifact can make a runtime hang)") from None
    if proc.returncode == 0:
        return
    said = [ln[len(MARK):] for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise UserError(f"{title} crashed loading {what} ({name}): the artifact is malformed or not one this "
                        "runtime reads")
    if said:
        raise UserError(f"{title} cannot load {what}: {json.loads(said[-1])}")
    raise UserError(f"{title} cannot load {what} (the loader exited with code {proc.returncode})")


def _main() -> int:
    from edgeexport.targets.registry import make_runner
    from edgeexport.util import one_line

    try:
        spec = RunnerSpec.model_validate_json(sys.stdin.read())
        with make_runner(spec, 1):
            pass
    except BaseException as exc:  # the runtime refusing the artifact: its one line goes back to the parent
        sys.stdout.write(MARK + json.dumps(one_line(exc, 200)) + "\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(_main())
