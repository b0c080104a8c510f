"""Progress wherever the output goes: plain start / done lines, flushed as each stage starts and ends, when stderr
is not a terminal (CI, ``| tee``); a rich display with nested rows on a terminal; nothing with ``--quiet``."""
import io
import os
import re
import subprocess
import sys
import time

from tests.conftest import ROOT

DONE = re.compile(r"^edgeexport: done  (.+) \((\d+\.\d) s\)$")


def _run(tmp_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "edgeexport", "onnx", "mobilenetv3_small", "--shape", "1x3x64x64", "--images", "1",
           "--no-bench", "-o", str(tmp_path), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path.parent, env=env)


def test_off_a_terminal_each_stage_is_a_line_as_it_happens(tmp_path):
    proc = _run(tmp_path / "run")
    first = proc.stderr.readline()
    running = proc.poll() is None  # the first line arrived while the run was still going: not held in a buffer
    t_first = time.monotonic()
    out, rest = proc.communicate(timeout=300)
    t_end = time.monotonic()
    assert proc.returncode == 0, rest
    assert first.startswith("edgeexport: start Loading mobilenetv3_small"), first
    assert running and t_end - t_first > 0.5, (running, t_end - t_first)
    lines = [first.rstrip("\n"), *rest.splitlines()]
    starts = [ln.removeprefix("edgeexport: start ") for ln in lines if ln.startswith("edgeexport: start ")]
    done = [m.group(1) for ln in lines if (m := DONE.match(ln))]
    assert sorted(starts) == sorted(done) and len(starts) >= 3, lines  # every stage that starts ends, with seconds
    assert any(s.startswith("Exporting mobilenetv3_small to ONNX") for s in starts)
    assert any(s.startswith("Parity: onnx vs eager") for s in starts)


def test_quiet_silences_the_progress(tmp_path):
    proc = _run(tmp_path / "run", "--quiet")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "edgeexport: start" not in err and "edgeexport: done" not in err, err


def test_on_a_terminal_nested_stages_are_rows_of_one_display():
    from rich.console import Console

    from edgeexport.cli.app import status_for

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100)
    status = status_for(con)
    with status("Exporting m to ONNX"):
        with status("Simplifying with onnxsim"):  # nested: a second row, not a second live display
            time.sleep(0.15)
        with status("Parity: onnx vs eager"):
            pass
    text = buf.getvalue()
    assert "Exporting m to ONNX" in text and "Simplifying with onnxsim" in text
    assert "0:00:00" in text  # the elapsed-time column
    assert "edgeexport: start" not in text  # the plain lines are for consoles that are not terminals
