"""A synthetic parity bundle written by the real writer (no model needed), and checks on what a loader did
with one: what the bundle tests share."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeexport import bundle as B
from edgeexport.errors import UserError

# ---------------------------------------------------------------- a synthetic bundle (no model)


def _write_synthetic(out: Path) -> None:
    from edgeexport.targets import RunnerSpec

    src = out.parent / f"{out.name}.src"
    src.mkdir()
    (src / "m.onnx").write_bytes(b"an artifact the loader hashes but never runs")
    (src / "m.bin").write_bytes(b"its companion")
    spec = RunnerSpec(target="onnx", artifact=str(src / "m.onnx"), files=[str(src / "m.bin")],
                      input_names=["input"], output_names=["out"])
    model = {"name": "tiny", "origin": "zoo:tiny", "weights": "default", "task": "classification", "params": 10,
             "input_shape": [1, 3, 4, 4], "mean": [0.5] * 3, "std": [0.25] * 3, "outputs": ["out"],
             "output_tasks": {"out": "classification"}, "dynamic": "none", "images": ["a.png", "b.png"]}
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32) for _ in range(2)]
    refs = [{"out": rng.standard_normal((1, 5)).astype(np.float32)} for _ in range(2)]
    B.write_bundle(out, runner=spec, kind="onnx", precision="fp32", inputs=inputs, references=refs,
                   tasks={"out": "classification"}, model=model, versions={"onnxruntime": "1"},
                   tolerance={"max_abs_scaled": 1e-4, "min_cosine": 0.99999, "min_snr_db": None,
                              "min_agreement": 0.999, "max_task_drop": 0.1})


def _copy(base: Path) -> Path:
    """A fresh copy of the template with hostile neighbours inside it (symlinks out, a loop, a folder)."""
    b = Path(tempfile.mkdtemp(dir=base)) / "b"
    shutil.copytree(base / "template", b, symlinks=True)
    os.symlink(base / "outside" / "m.onnx", b / "link_out")
    os.symlink(base / "outside", b / "dir_out")
    os.symlink("loop", b / "loop")
    os.symlink("m.onnx", b / "link_in")  # a symlink that stays inside is fine
    (b / "adir").mkdir()
    (b / "adir" / "m.onnx").write_bytes((b / "m.onnx").read_bytes())
    return b


def _hash_or_junk(path: Path) -> str:
    try:
        return B.sha256(path)
    except BaseException:
        return "0" * 64


def _assert_contained(bundle: Path, manifest: dict) -> None:
    """Every path the accepted manifest names, and every file its runner would open, is inside."""
    from edgeexport.targets import RunnerSpec

    root = bundle.resolve()
    runner = RunnerSpec.model_validate(manifest["runner"])
    names = [manifest["artifact"]["file"], runner.artifact, *runner.files, *manifest["hashes"]]
    for name in names:
        assert isinstance(name, str) and "/" not in name and "\\" not in name and name not in ("", ".", ".."), name
        assert (bundle / name).resolve().is_relative_to(root), name
    # every file the check relies on is hashed (else a swapped reference would pass, signed or not)
    assert {"inputs.npz", "reference.npz", *runner.files} <= set(manifest["hashes"])
    spec = runner.relocated(bundle)
    # the file the runner opens is the one whose hash was checked
    assert Path(spec.artifact) == bundle / manifest["artifact"]["file"]
    for f in spec.files:
        assert Path(f).resolve().is_relative_to(root) and Path(f).name in manifest["hashes"]
