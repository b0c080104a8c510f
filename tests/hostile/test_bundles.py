"""A bundle pulled onto a device is someone else's data. Its runtime opens only the files the manifest names and
hashes (from a private copy), its arrays are read within what the manifest accounts for, its runner options
and keys are validated, and whatever it says reaches the terminal escaped. Every refusal: exit 2, one line."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.conftest import SHAPE, edit_manifest
from tests.hostile.support import GIB, listing, run_fresh, run_here, unchanged


def _verify(bundle, *extra, monkeypatch=None, home=None):
    return run_here(["verify", bundle, "--runs", "2", *extra], home=home, monkeypatch=monkeypatch)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temporary folder of the test's own, as the system's: what verify leaves there is visible."""
    import tempfile

    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def test_the_real_bundle_verifies_and_leaves_no_private_copy(bundle, private_tmp, home, monkeypatch):
    res = _verify(bundle, monkeypatch=monkeypatch, home=home)
    assert res.code == 0, res.stderr
    report = json.loads((bundle / "verify.report.json").read_text())
    art = report["artifacts"]["onnx"]
    assert art["status"] == "passed" and art["parity"][0]["outputs"][0]["metrics"]["snr_db"] > 60
    assert art["path"] == str(bundle / "tiny.onnx")  # the report names the bundle's file, not the private copy
    assert list(private_tmp.iterdir()) == []
    assert not (home / ".cache" / "Microsoft").exists()  # ONNX Runtime's telemetry is off


# ---------------------------------------------------------------- only the files the manifest names


def test_onnx_external_data_the_manifest_does_not_name_is_never_opened(bundle, tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx[0]))
    onnx.save_model(model, str(bundle / "tiny.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tiny.onnx.data", size_threshold=0)
    edit_manifest(bundle, lambda m: None)  # the graph's new hash; the weights beside it are not named
    line = _verify(bundle).one_line_error("ONNX Runtime cannot load")
    assert "tiny.onnx" in line
    # the control: named and hashed, the same file is found in the private copy and the bundle passes
    edit_manifest(bundle, lambda m: (m["runner"]["files"].append("tiny.onnx.data"),
                                     m["hashes"].update({"tiny.onnx.data": ""})))
    assert _verify(bundle).code == 0


@pytest.fixture(scope="module")
def openvino_bundle(tmp_path_factory, tiny_onnx, bundle_template):
    """The same bundle with an OpenVINO IR of the model (``tiny.xml`` + ``tiny.bin``, named and hashed)."""
    ov = pytest.importorskip("openvino")
    b = tmp_path_factory.mktemp("ov") / "tiny.openvino.bundle"
    shutil.copytree(bundle_template, b)
    (b / "tiny.onnx").unlink()
    ov.save_model(ov.convert_model(str(tiny_onnx[0])), str(b / "tiny.xml"), compress_to_fp16=False)

    def to_openvino(m):
        m["artifact"].update(file="tiny.xml", kind="openvino", target="openvino", backend="openvino")
        m["runner"].update(target="openvino", artifact="tiny.xml", files=["tiny.bin"])
        m["hashes"]["tiny.bin"] = ""
    edit_manifest(b, to_openvino)
    return b


def test_an_openvino_bin_the_manifest_does_not_name_is_never_read(openvino_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(openvino_bundle, b)
    assert _verify(b).code == 0  # the control: as written, it verifies
    outside = tmp_path / "outside.bin"
    shutil.move(b / "tiny.bin", outside)
    os.symlink(outside, b / "tiny.bin")  # the real weights, outside the bundle, under the name the IR implies

    def unname(m):
        m["runner"]["files"] = []
        del m["hashes"]["tiny.bin"]
    edit_manifest(b, unname)
    _verify(b).one_line_error("the artifact needs 'tiny.bin' beside it")
    edit_manifest(b, lambda m: (m["runner"]["files"].append("tiny.bin"), m["hashes"].update({"tiny.bin": ""})))
    _verify(b).one_line_error("resolves outside the bundle")


# ---------------------------------------------------------------- arrays


def _npz_bomb(path: Path, nbytes: int) -> None:
    """An ``inputs.npz`` whose first member (key 000, float32) inflates to ``nbytes``: a few MB on disk."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("001.npy", "w") as fh:
            np.lib.format.write_array(fh, np.zeros(SHAPE, np.float32))
        with zf.open("000.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            chunk = bytes(64 << 20)
            for _ in range(nbytes // len(chunk)):
                fh.write(chunk)


def test_an_npz_bomb_is_refused_unread_within_bounded_memory(bundle, home, tmp_path):
    _npz_bomb(bundle / "inputs.npz", 2 * GIB)
    assert (bundle / "inputs.npz").stat().st_size < 16 << 20
    edit_manifest(bundle, lambda m: None)
    res = run_fresh(["verify", bundle, "--runs", "2"], home=home, cwd=tmp_path)
    line = res.one_line_error("more than the manifest's shape")
    assert str(bundle / "inputs.npz") in line  # the bundle's file, not the private copy
    assert res.max_rss is None or res.max_rss < 2 * GIB, res.max_rss


def test_a_manifest_that_declares_huge_arrays_is_refused_before_reading(bundle):
    edit_manifest(bundle, lambda m: m.update(input_shapes=[[1, 3, 16384, 16384], [1, 3, 16384, 16384]]))
    _verify(bundle).one_line_error("larger than 1 GiB")


def _rewrite_arrays(bundle: Path, name: str, arrays: dict) -> None:
    np.savez_compressed(bundle / name, **arrays)
    edit_manifest(bundle, lambda m: None)


@pytest.mark.parametrize("dtype", [np.float64, np.bool_, np.int64])
def test_inputs_of_another_dtype_are_refused(bundle, dtype):
    _rewrite_arrays(bundle, "inputs.npz", {f"{i:03d}": np.zeros(SHAPE, dtype) for i in range(2)})
    _verify(bundle).one_line_error(f"is {np.dtype(dtype)}, not float32")


def test_references_holding_nan_are_refused_not_warned_about(bundle):
    refs = {f"{i:03d}/out": np.full((1, 4), np.nan, np.float32) for i in range(2)}
    _rewrite_arrays(bundle, "reference.npz", refs)
    _verify(bundle).one_line_error("holds NaN or infinity")


def test_an_input_name_the_model_does_not_have_is_bad_input(bundle):
    edit_manifest(bundle, lambda m: (m.update(input_name="nope"), m["runner"].update(input_names=["nope"])))
    _verify(bundle).one_line_error("cannot run the bundle's artifact on its inputs")


# ---------------------------------------------------------------- runner options, keys, terminal


@pytest.mark.parametrize("options, needle", [
    ({"bogus": 1}, "'bogus': Extra inputs are not permitted"),
    ({"optimization": "max"}, "'optimization': Input should be"),
    ({"providers": "CPUExecutionProvider"}, "'providers': Input should be a valid list"),
    ({"providers": ["CPUExecutionProvider; rm -rf"]}, "'providers.0'"),
])
def test_runner_options_are_validated_before_a_runtime_sees_them(bundle, options, needle):
    edit_manifest(bundle, lambda m: m["runner"].update(options=options))
    _verify(bundle).one_line_error(needle)


def test_a_small_order_ed25519_key_signs_nothing(bundle, tmp_path):
    zero = "00" * 32
    edit_manifest(bundle, lambda m: m.update(signature={"algorithm": "ed25519", "public_key": zero,
                                                        "value": "00" * 64}))
    _verify(bundle).one_line_error("not a usable Ed25519 public key")
    key = tmp_path / "zero.pub"
    key.write_bytes(bytes(32))
    _verify(bundle, "--trust-key", key).one_line_error("a point of small order")


def test_every_small_order_point_is_refused_and_real_keys_are_not():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from edgeexport.keys import public_key_problem, raw_public

    p = 2**255 - 19
    # the 8 torsion points (libsodium's list) and the non-canonical encodings of two of them
    small = ["0100000000000000000000000000000000000000000000000000000000000000",
             "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
             "0000000000000000000000000000000000000000000000000000000000000080",
             "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
             "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
             "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
             "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
             "0000000000000000000000000000000000000000000000000000000000000000"]
    for h in small:
        assert public_key_problem(bytes.fromhex(h)), h
    assert public_key_problem((p + 1).to_bytes(32, "little")) == "not a canonical encoding of a point of edwards25519"
    for _ in range(20):
        assert public_key_problem(raw_public(ed25519.Ed25519PrivateKey.generate().public_key())) is None


def test_strings_from_a_manifest_reach_the_terminal_escaped(bundle):
    edit_manifest(bundle, lambda m: m["model"].update(name="tiny\x1b]0;owned\x07\x1b[2J\u202eevil"))
    res = _verify(bundle)
    assert res.code == 0, res.stderr
    out = res.stdout + res.stderr
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b" in out


# ---------------------------------------------------------------- the bundle folder itself


def test_verify_never_replaces_a_folder_named_like_its_report(bundle):
    precious = bundle / "verify.report.json"
    precious.mkdir()
    (precious / "mine.txt").write_text("the user's")
    before = listing(bundle)
    _verify(bundle).one_line_error("verify.report.json is a folder")
    assert unchanged(before, listing(bundle))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_bundle_is_bad_input_before_any_work(bundle):
    os.chmod(bundle, 0o555)
    try:
        _verify(bundle).one_line_error("is not writable")
    finally:
        os.chmod(bundle, 0o755)
