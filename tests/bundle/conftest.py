"""Fixtures of the bundle tests: a synthetic bundle and two key pairs."""
import shutil

import pytest

from tests.bundle.synthetic import _write_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A valid bundle and, beside it, things a hostile manifest may point at."""
    base = tmp_path_factory.mktemp("synthetic")
    _write_synthetic(base / "template")
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(base / "template" / "m.onnx", outside / "m.onnx")  # same bytes, same hash, outside
    (outside / "secret").write_text("not yours")
    return base


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two key pairs made by `edgeexport keygen`: A signs, B is someone else."""
    from typer.testing import CliRunner

    from edgeexport.cli import app

    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("a", "b"):
        res = CliRunner().invoke(app, ["keygen", "--output", str(folder), "--name", name])
        assert res.exit_code == 0, res.stderr
        fp = res.stdout.split("key fingerprint: ")[1].split()[0]
        out[name] = (folder / f"{name}.key", folder / f"{name}.pub", fp)
    return out
