"""The matrix's cache and output folders are data someone else may have touched. A cache entry is reused only
when every one of its files is what its signed record (``files.json``) says, with no symlink or other
non-regular file in it; an entry that is not is rebuilt, and the report says why. Outputs are copies of the
cache, never links. ``--resume`` replays the stored plan, validated first, as are the cells' records. A run
interrupted by Ctrl-C leaves no temporary folder behind.

Cheap cells: a tiny classifier at 1x3x32x32 to ONNX only, one photo, no timings, on a one-CPU local Ray
instance started once for the module."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.hostile.support import fresh_env, listing, run_here, unchanged
from tests.support.deadline import deadline

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'edgeexport[ray]'): edgeexport matrix "
                                       "runs its cells as Ray tasks")

ROW = "tiny"
RECIPE = {"model": "tests.support.models:tiny_classifier", "name": ROW, "input_shape": "1x3x32x32",
          "inputs": {"images": 1, "eval_data": "none"}, "bench": {"enabled": False}}
CELL = f"cells/{ROW}/onnx"


def slow_classifier(num_classes: int = 10):
    """A model whose factory takes two minutes and ignores SIGTERM and SIGINT, like a worker stuck in native code:
    Ray has to kill its process outright, so no ``finally`` of the task removes its temporary folder."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    time.sleep(120)
    from tests.support.models import tiny_classifier

    return tiny_classifier(num_classes)


def writable(p: Path) -> Path:
    p.chmod(0o644)  # the cache's files are read-only
    return p




# ---------------------------------------------------------------- interrupted: no temporary folder left (first: before this module's Ray instance starts)


def test_sigterm_raises_and_the_handler_is_restored():
    from edgeexport.matrix.run import run_folder, sigterm_raises

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exc, run_folder() as tmp, sigterm_raises():
        (tmp / "edgeexport-cell-x").mkdir()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert exc.value.code == 128 + signal.SIGTERM and not tmp.exists()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_ctrl_c_mid_cell_leaves_no_temporary_folder(tmp_path):
    """A matrix run in a fresh process, interrupted (SIGINT) while its cell runs: exit 130 with one line, no
    traceback, and nothing of the run left in the temporary folder (its own short one: Ray's sockets live there)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="eex", dir="/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model": "tests.hostile.test_matrix_cache:slow_classifier",
                                      "name": "slow"}))
    env = fresh_env(home, TMPDIR=tmpdir)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgeexport", "matrix", recipe, "--targets", "onnx", "--cpus", "1",
                             "-o", tmp_path / "out", "--cache", tmp_path / "cache"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not list(tmpdir.glob("edgeexport-matrix-*/edgeexport-cell-*")) + list(tmpdir.glob("edgeexport-cell-*")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 90, "no cell started within 90 s"
            time.sleep(0.2)
        time.sleep(0.5)  # the cell is in its model's factory
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        assert err.strip().splitlines()[-1] == "edgeexport: error: interrupted", err[-2000:]
        assert "continue with --resume" in err
        left = [str(p) for p in tmpdir.rglob("edgeexport-*")]
        assert left == [], left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_here():
    import ray

    from edgeexport.matrix import start_local_cluster

    started = not ray.is_initialized()
    if started:
        start_local_cluster(cpus=1)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def first(ray_here, tmp_path_factory):
    """One run of the one-cell matrix: (root, recipe, cache entry, the report)."""
    from edgeexport.matrix import run_matrix

    root = tmp_path_factory.mktemp("mx")
    recipe = root / f"{ROW}.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    with deadline(120):
        m = run_matrix([str(recipe)], ["onnx"], cache=root / "cache", output=root / "out", log=lambda _: None,
                       html=False)
    a = m.artifacts[f"{ROW}/onnx"]
    assert a.status == "passed" and a.cell.cache == "miss", a.why()
    return root, recipe, root / "cache" / "cells" / a.cell.key, m


def matrix(root: Path, recipe: Path, out: Path, *extra):
    """``edgeexport matrix RECIPE --targets onnx`` in this process, on the module's Ray instance."""
    res = run_here(["matrix", recipe, "--targets", "onnx", "--cache", root / "cache", "-o", out, "--json", *extra])
    from edgeexport.report import report_from_dict

    return res, (report_from_dict(json.loads(res.stdout)) if res.code in (0, 1) and res.stdout.strip() else None)


def no_symlinks(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_symlink()]


# ---------------------------------------------------------------- outputs are copies, never links


def test_outputs_are_copies_of_the_cache_never_links(first):
    root, recipe, entry, _ = first
    with deadline(60):
        res, m = matrix(root, recipe, root / "hit")
    assert res.code == 0, res.stderr
    assert m.artifacts[f"{ROW}/onnx"].cell.cache == "hit"
    cached = entry / "files" / f"{ROW}.onnx"
    outputs = [root / "out" / CELL / f"{ROW}.onnx", root / "hit" / CELL / f"{ROW}.onnx"]
    for out in outputs:  # its own inode, its only name
        assert out.stat().st_ino != cached.stat().st_ino and out.stat().st_nlink == 1
        assert out.read_bytes() == cached.read_bytes()
    assert cached.stat().st_nlink == 1
    original = cached.read_bytes()
    before = {p: p.read_bytes() for p in outputs}
    try:
        writable(cached).write_bytes(b"edited in the cache")  # editing the cache never edits an earlier output
        assert {p: p.read_bytes() for p in outputs} == before
        with open(outputs[1], "r+b") as fh:  # nor the other way round
            fh.write(b"edited in the output")
        assert outputs[0].read_bytes() == original and cached.read_bytes() == b"edited in the cache"
    finally:
        cached.write_bytes(original)
        cached.chmod(0o444)
    from edgeexport.matrix.cache import Cache

    assert Cache(root / "cache").get(entry.name) is not None  # restored: the entry passes its check again


# ---------------------------------------------------------------- every tampering fails the file check


def _edit_json(p: Path, change) -> None:
    data = json.loads(p.read_text())
    change(data)
    writable(p).write_text(json.dumps(data))


def _rehash(entry: Path, key: str, sign_with=None) -> None:
    """What an attacker who rewrites the record does: every hash again (signed with a key of their own, or the
    old signature kept)."""
    from edgeexport.matrix.entry import RECORD, make_record

    old = json.loads((entry / RECORD).read_text())
    if sign_with is not None:
        data = make_record(entry, key, sign_with)
    else:
        class Keep:
            def sign(self, _):
                return bytes.fromhex(old["signature"])

        data = make_record(entry, key, Keep())
    writable(entry / RECORD).write_bytes(data)


def _another_key():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def _pass(data):
    data["report"]["artifacts"]["onnx"].update(status="passed", notes=["hand-edited"])


TAMPERING = {
    "a file edited": (lambda e, k: writable(e / "files" / f"{ROW}.onnx").write_bytes(b"x" * 10), f"{ROW}.onnx changed"),
    "a file replaced by text": (lambda e, k: (writable(e / "files" / f"{ROW}.onnx").unlink(),
                                              (e / "files" / f"{ROW}.onnx").write_text("not a model")),
                                f"{ROW}.onnx changed"),
    "a file missing": (lambda e, k: (e / "files" / f"{ROW}.report.md").unlink(), f"{ROW}.report.md missing"),
    "an extra file": (lambda e, k: (e / "files" / "extra.bin").write_bytes(b"\0"), "extra file extra.bin"),
    "a symlink out": (lambda e, k: (e / "files" / "escape").symlink_to("/etc/passwd"), "escape is a symlink"),
    "a file swapped for a symlink to the same bytes": (
        lambda e, k: (shutil.copy(e / "files" / f"{ROW}.onnx", e.parent / "same.onnx"),
                      (e / "files" / f"{ROW}.onnx").unlink(),
                      (e / "files" / f"{ROW}.onnx").symlink_to(e.parent / "same.onnx")), f"{ROW}.onnx is a symlink"),
    "a FIFO": (lambda e, k: os.mkfifo(e / "files" / "pipe"), "pipe is not a regular file"),
    "a symlinked folder": (lambda e, k: (e / "files" / "sub").symlink_to(e.parent), "sub is a symlink"),
    "result.json says passed": (lambda e, k: _edit_json(e / "result.json", _pass), "result.json changed"),
    "a hand-written verify.json": (lambda e, k: (e / "verify.json").write_text('{"ok": true, "report": {}}'),
                                   "extra file verify.json"),
    "re-hashed, old signature": (lambda e, k: (_edit_json(e / "result.json", _pass), _rehash(e, k)),
                                 "files.json is not signed by this cache's key"),
    "re-hashed, signed by another key": (lambda e, k: (_edit_json(e / "result.json", _pass),
                                                       _rehash(e, k, _another_key())),
                                         "files.json is not signed by this cache's key"),
    "the record malformed": (lambda e, k: writable(e / "files.json").write_text('{"files": {}}'),
                             "files.json is malformed"),
    "the record not JSON": (lambda e, k: writable(e / "files.json").write_text("{"), "files.json is malformed"),
    "the record missing": (lambda e, k: (e / "files.json").unlink(), "files.json missing"),
    "the record a symlink": (lambda e, k: (shutil.copy(e / "files.json", e.parent / "rec.json"),
                                           (e / "files.json").unlink(),
                                           (e / "files.json").symlink_to(e.parent / "rec.json")),
                             "files.json is a symlink"),
    "another cell's entry": (lambda e, k: _rehash_as(e, k), "files.json is another cell's"),
    "the entry a symlink": (lambda e, k: (shutil.move(e, e.parent / "moved"), e.symlink_to(e.parent / "moved")),
                            "the entry is a symlink"),
}


def _rehash_as(entry: Path, key: str) -> None:  # an entry of another key, moved under this one
    other = entry.with_name("f" * 64)
    shutil.move(entry, other)
    from edgeexport.matrix.cache import Cache

    priv = Cache(entry.parent.parent).signing_key()[0]
    _rehash(other, "f" * 64, priv)
    shutil.move(other, entry)


@pytest.mark.parametrize("case", list(TAMPERING))
def test_every_tampering_fails_the_file_check(first, tmp_path, case):
    from edgeexport.matrix.cache import Cache
    from edgeexport.matrix.entry import UntrustedEntry

    _, _, entry, _ = first
    cache = tmp_path / "cache"
    shutil.copytree(entry.parent.parent / "keys", cache / "keys")
    copy = cache / "cells" / entry.name
    shutil.copytree(entry, copy)
    store = Cache(cache)
    assert store.get(entry.name)["report"]["artifacts"]["onnx"]["status"] == "passed"  # the pristine copy is trusted
    change, reason = TAMPERING[case]
    change(copy, entry.name)
    with pytest.raises(UntrustedEntry) as exc:
        store.get(entry.name)
    assert reason in exc.value.reason, exc.value.reason


def test_a_stored_verification_is_covered_by_the_record(first, tmp_path):
    from edgeexport.matrix.cache import Cache
    from edgeexport.matrix.entry import UntrustedEntry

    _, _, entry, _ = first
    cache = tmp_path / "cache"
    shutil.copytree(entry.parent.parent / "keys", cache / "keys")
    copy = cache / "cells" / entry.name
    shutil.copytree(entry, copy)
    store = Cache(cache)
    report = json.loads((entry / "result.json").read_text())["report"]  # a real report stands in for verify's
    verify = {"ok": True, "attempt": 1, "node": {"hostname": "mac"}, "report": report, "workdir": "/x", "wall_s": 1.0}
    assert not store.put_verify(entry.name, {**verify, "ok": False})  # only a verification that ran is kept
    assert store.put_verify(entry.name, verify)
    assert store.get(entry.name)["verify"]["node"] == {"hostname": "mac"}
    _edit_json(copy / "verify.json", lambda d: d["report"]["artifacts"]["onnx"].update(status="passed"))
    with pytest.raises(UntrustedEntry, match="verify.json changed"):
        store.get(entry.name)
    assert not store.put_verify(entry.name, verify)  # an entry that fails its check is not added to


# ---------------------------------------------------------------- the attack of the issue, end to end


def test_a_tampered_entry_is_rebuilt_and_never_reaches_the_output(first, tmp_path):
    """Edit the entry's JSON to say "passed", replace its ONNX file with text, add a symlink out of it and a
    verify.json; run the same matrix into the same output again: rebuilt (not "passed (hit)"), said so, the
    real file in the output and no symlink anywhere."""
    import onnx

    from edgeexport.matrix.cache import Cache

    root, recipe, entry, _ = first
    outside = tmp_path / "outside.txt"
    outside.write_text("not the cache's")
    _edit_json(entry / "result.json", _pass)
    (entry / "verify.json").write_text(json.dumps({"ok": True, "report": {"artifacts": {"onnx": {"status": "passed"}}}}))
    writable(entry / "files" / f"{ROW}.onnx").unlink()
    (entry / "files" / f"{ROW}.onnx").write_text("a text file, not a model")
    (entry / "files" / "escape").symlink_to(outside)
    with deadline(120):
        res, m = matrix(root, recipe, root / "out")  # the earlier run's output folder: replaced, it is ours
    assert res.code == 0, res.stderr  # the exit code of the rebuilt cell
    a = m.artifacts[f"{ROW}/onnx"]
    assert a.cell.cache == "miss" and a.status == "passed" and "hand-edited" not in a.notes
    note = next(n for n in a.notes if n.startswith("rebuilt: cache entry failed its file check ("))
    assert f"{ROW}.onnx changed" in note and "escape is a symlink" in note, note
    assert "passed (hit)" not in res.stderr and "failed its file check" in res.stderr
    assert "rebuilt: cache entry failed its file check" in (root / "out" / "models" / f"{ROW}.report.md").read_text()
    assert "cache rebuilt" in (root / "out" / "matrix.report.html").read_text()
    out = root / "out"
    assert no_symlinks(out) == [] and not (out / CELL / "escape").exists()
    onnx.checker.check_model(onnx.load(out / CELL / f"{ROW}.onnx"))  # the real model, rebuilt
    assert outside.read_text() == "not the cache's"  # what the symlink pointed at is untouched
    # the entry was replaced by a trusted one, with the real file and no symlink
    hit = Cache(root / "cache").get(entry.name)
    assert hit is not None and no_symlinks(entry) == [] and not (entry / "verify.json").exists()
    assert (entry / "files" / f"{ROW}.onnx").read_bytes() == (out / CELL / f"{ROW}.onnx").read_bytes()


def test_a_folder_in_the_way_is_never_replaced(first, tmp_path):
    """An output whose cell folder is someone else's folder, or a symlink: refused in one line, nothing changed."""
    root, recipe, _, _ = first
    mine = tmp_path / "out" / CELL
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    before = listing(mine)
    res, _ = matrix(root, recipe, tmp_path / "out")
    res.one_line_error("did not write")
    assert unchanged(before, listing(mine)) and (mine / "notes.txt").read_text() == "mine"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (tmp_path / "out2" / "cells").mkdir(parents=True)
    (tmp_path / "out2" / "cells" / ROW).symlink_to(elsewhere)
    before = listing(elsewhere)
    res, _ = matrix(root, recipe, tmp_path / "out2")
    res.one_line_error("is a symlink")
    assert unchanged(before, listing(elsewhere))


# ---------------------------------------------------------------- --resume replays the validated plan


@pytest.fixture
def interrupted(first, tmp_path):
    """A copy of the first run's output, as an interrupted run leaves it (its plan and its cells' records)."""
    root, recipe, _, _ = first
    out = tmp_path / "out"
    shutil.copytree(root / "out", out, symlinks=True)
    for p in ("matrix.report.json", "matrix.report.md", "matrix.report.html", "models"):
        shutil.rmtree(out / p, ignore_errors=True) if (out / p).is_dir() else (out / p).unlink(missing_ok=True)
    return root, recipe, out


def test_resume_replays_the_stored_plan_not_the_default_targets(interrupted):
    root, recipe, out = interrupted
    res = run_here(["matrix", "--resume", "--cache", root / "cache", "-o", out, "--json"])
    assert res.code == 0, res.stderr
    from edgeexport.report import report_from_dict

    m = report_from_dict(json.loads(res.stdout))
    assert m.matrix.kinds == ["onnx"] and list(m.artifacts) == [f"{ROW}/onnx"]  # the plan's, not the default set
    assert m.artifacts[f"{ROW}/onnx"].cell.cache == "resumed"
    # other targets with --resume: the stored plan is what runs, and the log says what was not used
    res = run_here(["matrix", recipe, "--resume", "--targets", "coreml", "--cache", root / "cache", "-o", out, "--json"])
    assert res.code == 0, res.stderr
    assert "not used: --targets coreml" in res.stderr
    assert report_from_dict(json.loads(res.stdout)).matrix.kinds == ["onnx"]
    # other models with --resume: refused
    res = run_here(["matrix", "mobilenetv3_small", "--resume", "--cache", root / "cache", "-o", out])
    res.one_line_error("--resume continues the matrix in")


PLANS = {
    "not JSON": lambda p: p.write_text("{"),
    "an unknown field": lambda p: _edit_json(p, lambda d: d.update(run="rm -rf ~")),
    "threads a string": lambda p: _edit_json(p, lambda d: d.update(threads="2")),
    "no models": lambda p: _edit_json(p, lambda d: d.update(models=[])),
    "a kind that is a path": lambda p: _edit_json(p, lambda d: d.update(kinds=["../../etc"])),
    "a model with a control character": lambda p: _edit_json(p, lambda d: d.update(models=["tiny\x1b[2J"])),
    "a bad cell key": lambda p: _edit_json(p, lambda d: d.update(cells={"tiny/onnx": "../x"})),
}


@pytest.mark.parametrize("case", list(PLANS))
def test_a_malformed_plan_is_one_line(interrupted, case):
    root, _, out = interrupted
    PLANS[case](out / "matrix.plan.json")
    before = listing(out, root / "cache")
    res = run_here(["matrix", "--resume", "--cache", root / "cache", "-o", out])
    res.one_line_error("is not a matrix plan edgeexport wrote")
    assert unchanged(before, listing(out, root / "cache"))


def test_a_plan_that_is_a_symlink_is_refused(interrupted, tmp_path):
    root, _, out = interrupted
    real = tmp_path / "plan.json"
    shutil.move(out / "matrix.plan.json", real)
    (out / "matrix.plan.json").symlink_to(real)
    run_here(["matrix", "--resume", "--cache", root / "cache", "-o", out]).one_line_error("no matrix to continue")


def _cell(d, **change):
    d["cell"].update(change)


RECORDS = {
    "not JSON": (lambda p: p.write_text("{"), "is not a cell record"),
    "an unknown field": (lambda p: _edit_json(p, lambda d: d.update(evil=1)), "is not a cell record"),
    "its folder outside": (lambda p: _edit_json(p, lambda d: _cell(d, folder="../../../etc")), "its folder is"),
    "its folder absolute": (lambda p: _edit_json(p, lambda d: _cell(d, folder="/etc")), "its folder is"),
    "its report absolute": (lambda p: _edit_json(p, lambda d: _cell(d, report="/etc/passwd")),
                            "not a plain relative path"),
    "its bundle climbing out": (lambda p: _edit_json(p, lambda d: _cell(d, bundle=f"{CELL}/../../../../home")),
                                "not a plain relative path"),
    "its verify report elsewhere": (lambda p: _edit_json(p, lambda d: _cell(d, verify={"report": "cells/x.json"})),
                                    "not a plain relative path inside"),
    "another cell's": (lambda p: _edit_json(p, lambda d: d.update(name="other/onnx", model="other")),
                       "is cell other/onnx's"),
    "a symlink": (lambda p: (shutil.move(p, p.with_name("real.json")), p.symlink_to(p.with_name("real.json"))),
                  "it is a symlink"),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_malformed_cell_record_is_one_line(interrupted, case):
    root, _, out = interrupted
    change, needle = RECORDS[case]
    change(out / "cells" / ROW / "onnx.json")
    res = run_here(["matrix", "--resume", "--cache", root / "cache", "-o", out])
    line = res.one_line_error("--resume:")
    assert needle in line, line


def test_a_cell_folder_that_became_a_symlink_is_refused(interrupted, tmp_path):
    root, _, out = interrupted
    shutil.move(out / CELL, tmp_path / "moved")
    (out / CELL).symlink_to(tmp_path / "moved")
    before = listing(tmp_path / "moved")
    run_here(["matrix", "--resume", "--cache", root / "cache", "-o", out]).one_line_error("is a symlink")
    assert unchanged(before, listing(tmp_path / "moved"))
