"""The README, tested as documentation: its Python examples run as written (one after another, like a
notebook, in a fresh interpreter and an empty folder), and its picture of the layers is the contract."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SKETCH = "# a sketch"  # a block that shows the shape of code without being runnable (a target's file)


def python_blocks() -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if not b.startswith(SKETCH)]


def test_the_readme_has_runnable_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2 and "edgeexport.export(" in blocks[0] and "webbrowser.open" in blocks[0]


def test_the_python_examples_run_as_written(tmp_path):
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(python_blocks()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BROWSER": "true"}  # `true URL`: a browser that opens nothing
    env.pop("EDGEEXPORT_EXPORTER", None)  # the default exporter, as a reader of the README gets it
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0] in ("passed", "failed") and "verdict:" in res.stdout
    assert (tmp_path / "out" / "tiny" / "report.html").is_file()
    assert (tmp_path / "out" / "tiny" / "Sequential.report.json").is_file()
    assert "passed" in lines  # the check of the ONNX file built by export()


def test_the_layers_in_the_readme_are_the_contract():
    contract = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if c.get("containers") == ["edgeexport"])
    block = README[README.index("## Architecture"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    drawn = [re.split(r"\s{2,}", line.strip())[0] for line in block.strip().splitlines()]
    assert drawn == [layer for layer in contract["layers"] if layer != "__main__"]
