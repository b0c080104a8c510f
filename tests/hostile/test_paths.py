"""Everything a command writes is inside its output folder, under one plain file name, and nothing is deleted
that edgeexport did not create: a file or folder in the way is an error, found before any work."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from tests.hostile.support import listing, run_fresh, run_here, unchanged

EXPORT = ["--model", "tinynet:build", "--shape", "1x3x32x32", "--no-bench", "--images", "1", "--task",
          "classification"]


@pytest.mark.parametrize("name", ["../../x", "/tmp/edgeexport-hostile-x", "sub/dir/x", "a\x00b", "x" * 300, "..",
                                  ".hidden", "a b", "tiny\x1b[2J"])
def test_an_artifact_name_is_one_plain_file_name(folder, tmp_path, name):
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tinynet:build", "name": name, "input_shape": [1, 3, 32, 32],
                                      "task": "classification", "output": "out"}))
    before = listing(tmp_path)
    line = run_here(["run", recipe]).one_line_error("name")
    assert "\x1b" not in line and "\x00" not in line
    assert unchanged(before, listing(tmp_path))
    assert not os.path.lexists("/tmp/edgeexport-hostile-x")


def test_a_folder_of_the_users_named_like_a_report_is_never_replaced(folder):
    out = folder / "mine"
    (out / "tiny.report.json").mkdir(parents=True)
    (out / "tiny.report.json" / "thesis.tex").write_text("years of work")
    (out / "notes.txt").write_text("mine too")
    before = listing(folder)
    run_here(["onnx", "tiny", *EXPORT, "-o", out]).one_line_error("tiny.report.json is a folder")
    assert unchanged(before, listing(folder))  # refused before the export: no tiny.onnx either


def test_a_folder_where_the_artifact_goes_is_never_replaced(folder):
    (folder / "out" / "tiny.onnx").mkdir(parents=True)
    (folder / "out" / "tiny.onnx" / "keep").write_text("x")
    before = listing(folder)
    run_here(["onnx", "tiny", *EXPORT, "-o", "out"]).one_line_error("tiny.onnx is a folder")
    assert unchanged(before, listing(folder))


def test_a_symlink_where_a_report_goes_is_not_followed(folder, tmp_path):
    target = tmp_path / "elsewhere.md"
    target.write_text("not the tool's")
    (folder / "out").mkdir()
    os.symlink(target, folder / "out" / "tiny.report.md")
    run_here(["onnx", "tiny", *EXPORT, "-o", "out"]).one_line_error("is a symlink")
    assert target.read_text() == "not the tool's"
    assert not (folder / "out" / "tiny.onnx").exists()


def test_a_rerun_replaces_the_tools_own_files(folder):
    for _ in range(2):
        res = run_here(["onnx", "tiny", *EXPORT, "-o", "out"])
        assert res.code == 0, res.stderr[-1500:]
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["tiny.onnx", "tiny.report.html",
                                                                 "tiny.report.json", "tiny.report.md"]


@pytest.fixture
def artifact(folder, tiny_onnx):
    p = folder / "tiny.onnx"
    shutil.copy(tiny_onnx[0], p)
    return p


def test_bundle_output_under_a_missing_folder_or_onto_the_users_folder(folder, artifact):
    args = ["bundle", "tiny", "--artifact", artifact, "--model", "tinynet:build", "--shape", "1x3x32x32",
            "--images", "1"]
    run_here([*args, "-o", folder / "missing" / "x.bundle"]).one_line_error("does not exist")
    mine = folder / "photos"
    mine.mkdir()
    (mine / "a.jpg").write_bytes(b"\xff\xd8")
    before = listing(folder)
    run_here([*args, "-o", mine]).one_line_error("is a folder edgeexport did not write")
    assert unchanged(before, listing(folder))
    res = run_here([*args, "-o", folder / "b.bundle"])  # the control: a new folder, then an earlier bundle
    assert res.code == 0, res.stderr
    assert run_here([*args, "-o", folder / "b.bundle"]).code == 0


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: os.symlink("/dev/zero", p), "not a regular file"),
])
def test_an_artifact_that_is_not_a_regular_file_is_bad_input(folder, make, needle):
    p = folder / "x.onnx"
    make(p)
    run_here(["check", p, "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32"]).one_line_error(needle)


def test_diff_on_a_fifo_does_not_block(folder, home):
    os.mkfifo(folder / "f.onnx")
    res = run_fresh(["diff", folder / "f.onnx", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32"],
                    home=home, cwd=folder, timeout=60)
    res.one_line_error("is not a regular file")
