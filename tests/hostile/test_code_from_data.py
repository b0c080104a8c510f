"""A recipe is data. It names a model factory, and only a model factory is called: a class that subclasses
``nn.Module``, or a Python function defined outside the standard library. ``model_kwargs`` is plain data with
limits, the current folder is searched for the user's module only, and only while that module is imported."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.hostile.support import GIB, listing, run_fresh, run_here, unchanged


def _recipe(folder, body: dict | str, name="recipe.yaml"):
    p = folder / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return p


@pytest.mark.parametrize("factory, kwargs, needle", [
    ("os:system", {"command": "touch MARKER"}, "os is Python's standard library"),
    ("subprocess:run", {"args": ["touch", "MARKER"]}, "subprocess is Python's standard library"),
    ("code:interact", {}, "code is Python's standard library"),
    ("builtins:input", {}, "builtins is Python's standard library"),
    ("builtins:breakpoint", {}, "builtins is Python's standard library"),
    ("sys:exit", {}, "sys is Python's standard library"),
    ("torch.hub:load", {"repo_or_dir": "x", "model": "y"}, "not a model factory"),
    ("torch:load", {"f": "MARKER"}, "not a model factory"),
    ("tinynet:torch", {}, "not a model factory"),  # a module, not a function or a class
    ("tinynet:nn", {}, "not a model factory"),
])
def test_a_recipe_calls_nothing_that_is_not_a_model_factory(folder, factory, kwargs, needle):
    recipe = _recipe(folder, {"model": factory, "model_kwargs": kwargs, "input_shape": [1, 3, 32, 32]})
    before = listing(folder)
    res = run_here(["run", recipe])
    res.one_line_error(needle)
    assert not (folder / "MARKER").exists()
    assert unchanged(before, listing(folder))  # nothing was built, no output folder appeared


@pytest.mark.parametrize("factory", ["os:abort", "os:fork"])
def test_a_recipe_naming_abort_or_fork_is_refused_in_a_fresh_process(folder, home, factory):
    recipe = _recipe(folder, {"model": factory, "input_shape": [1, 3, 32, 32]})
    run_fresh(["run", recipe], home=home, cwd=folder).one_line_error("os is Python's standard library")


def test_a_factory_that_raises_is_bad_input(folder):
    recipe = _recipe(folder, {"model": "tinynet:raises", "input_shape": [1, 3, 32, 32]})
    run_here(["run", recipe]).one_line_error("boom in the factory")


def test_the_current_folder_is_searched_for_the_users_module_only(folder, home):
    """A stray ``onnxsim.py`` where the user types the command is never imported; ``tinynet.py`` there is."""
    (folder / "onnxsim.py").write_text(f"open({str(folder / 'MARKER')!r}, 'w').write('ran')\n")
    (folder / "onnx.py").write_text(f"open({str(folder / 'MARKER')!r}, 'w').write('ran')\n")
    res = run_fresh(["onnx", "tiny", "--model", "tinynet:build", "--shape", "1x3x32x32", "--no-bench",
                     "--images", "1", "-o", "out", "--task", "classification"], home=home, cwd=folder, timeout=120)
    assert res.code == 0, res.stderr[-2000:]
    assert (folder / "out" / "tiny.onnx").is_file()
    assert not (folder / "MARKER").exists()
    assert not (home / ".cache" / "Microsoft").exists()  # ONNX Runtime's telemetry database


def test_a_yaml_alias_bomb_is_refused_within_bounded_memory(folder, home):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
              for i in range(1, 10)]
    body = "model: tinynet:build\ninput_shape: [1, 3, 32, 32]\nmodel_kwargs:\n" + "\n".join("  " + ln for ln in lines)
    recipe = _recipe(folder, body + "\n")
    assert recipe.stat().st_size < 2048
    res = run_fresh(["run", recipe], home=home, cwd=folder)
    res.one_line_error()
    assert res.max_rss is None or res.max_rss < 2 * GIB, res.max_rss


@pytest.mark.parametrize("kwargs, needle", [
    ("{a: {b: {c: {d: {e: {f: {g: {h: 1}}}}}}}}", "nested"),
    ("{a: [" + ", ".join(["1"] * 2000) + "]}", "values"),
    ("{'not an identifier': 1}", "not an identifier"),
    ("{a: .nan}", "finite"),
    ("{a: " + "9" * 5000 + "}", None),
    ("{a: !!python/object/apply:os.system [touch MARKER]}", None),
])
def test_model_kwargs_are_plain_bounded_data(folder, kwargs, needle):
    recipe = _recipe(folder, f"model: tinynet:build\ninput_shape: [1, 3, 32, 32]\nmodel_kwargs: {kwargs}\n")
    run_here(["run", recipe]).one_line_error(needle)
    assert not (folder / "MARKER").exists()


def test_json_stdout_is_json_alone_when_the_factory_prints(folder):
    res = run_here(["onnx", "tiny", "--model", "tinynet:noisy", "--shape", "1x3x32x32", "--no-bench", "--images",
                    "1", "-o", "out", "--task", "classification", "--json"])
    assert res.code == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["artifacts"]["onnx"]["status"] == "passed"
    assert "hello from the factory" in res.stderr
