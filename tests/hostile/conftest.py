"""Fixtures of the hostile-input tests: a user's folder with a small model module, a real ONNX artifact of it,
a real parity bundle of that artifact, and a fresh HOME for every test."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TINYNET = '''\
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        return self.body(x)


def build(num_classes=4):
    return Tiny(num_classes).eval()


def noisy():
    print("hello from the factory")
    return Tiny().eval()


def raises():
    raise RuntimeError("boom in the factory")
'''
SHAPE = [1, 3, 32, 32]


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's working folder: ``tinynet.py`` (the user's model module) and nothing else."""
    d = tmp_path_factory.mktemp("user")
    (d / "tinynet.py").write_text(TINYNET)
    return d


@pytest.fixture
def folder(tmp_path, user_dir, monkeypatch):
    """A copy of the user's folder as the current folder: what a command may read and write is watched there."""
    d = tmp_path / "cwd"
    shutil.copytree(user_dir, d)
    monkeypatch.chdir(d)
    return d


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, user_dir):
    """``tiny.onnx``: the user model exported by torch (TorchScript exporter, no edgeexport involved)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("tinynet_fixture", user_dir / "tinynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build()
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(SHAPE), str(out), input_names=["input"], output_names=["out"],
                      dynamo=False)
    return out, model


@pytest.fixture(scope="module")
def bundle_template(tmp_path_factory, tiny_onnx):
    """A real parity bundle of ``tiny.onnx`` (the real writer; references from eager PyTorch), unsigned."""
    import torch

    from edgeexport import bundle as B
    from edgeexport.targets import RunnerSpec

    path, model = tiny_onnx
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    with torch.no_grad():
        refs = [{"out": model(torch.from_numpy(x)).numpy()} for x in inputs]
    out = tmp_path_factory.mktemp("bundles") / "tiny.onnx.bundle"
    B.write_bundle(out, runner=RunnerSpec(target="onnx", artifact=str(path), input_names=["input"],
                                          output_names=["out"]),
                   kind="onnx", precision="fp32", inputs=inputs, references=refs, tasks={"out": "classification"},
                   model={"name": "tiny", "origin": "user:tinynet:build", "weights": "default",
                          "task": "classification", "params": 1, "input_shape": SHAPE, "mean": [0.5] * 3,
                          "std": [0.25] * 3, "outputs": ["out"], "output_tasks": {"out": "classification"},
                          "dynamic": "none", "images": ["a.png", "b.png"]},
                   versions={"onnxruntime": "1"},
                   tolerance={"max_abs_scaled": 1e-4, "min_cosine": 0.99999, "min_snr_db": None,
                              "min_agreement": 0.999, "max_task_drop": 0.1})
    return out


@pytest.fixture
def bundle(tmp_path, bundle_template):
    """A fresh copy of the real bundle, in a folder of its own."""
    b = tmp_path / "work" / "tiny.onnx.bundle"
    b.parent.mkdir()
    shutil.copytree(bundle_template, b)
    return b


def edit_manifest(bundle: Path, change) -> dict:
    """Apply ``change(manifest)`` and rehash every file the manifest hashes (what an attacker of an unsigned
    bundle does)."""
    from edgeexport.util import sha256

    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    change(m)
    m["artifact"]["sha256"] = sha256(bundle / m["artifact"]["file"])
    m["hashes"] = {k: sha256(bundle / k) for k in m["hashes"]}
    p.write_text(json.dumps(m, indent=2))
    return m
