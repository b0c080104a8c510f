"""Signed bundles: keys from ``edgeexport keygen``, the signature over the canonical manifest, and
``verify --trust-key`` refusing a bundle that was not signed by a trusted key or was changed after
signing; end to end on one real mobilenetv3_small ONNX bundle, built once for the module.
"""
import json
import os
import shutil

import numpy as np
import pytest

from edgeexport import bundle as B
from edgeexport.errors import UserError
from tests.conftest import assert_one_line_error
from tests.bundle.synthetic import _copy


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys, cli):
    priv, pub, fp = keys["a"]
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    raw = B.load_public_key(pub)
    assert len(raw) == 32 and B.fingerprint(raw) == fp and len(fp) == 64 and fp != keys["b"][2]
    code, _, err = cli("keygen", "--output", priv.parent, "--name", "a")
    assert_one_line_error(code, err, "already exists")


def test_bad_key_files_are_one_line_errors(keys, tmp_path, cli, synthetic):
    priv, pub, _ = keys["a"]
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    junk_pub = tmp_path / "junk.pub"
    junk_pub.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    bundle = _copy(synthetic)
    for args, needle in [
        (("verify", bundle, "--trust-key", priv), "is a private key"),
        (("verify", bundle, "--trust-key", junk_pub), "not a PEM or raw 32-byte public key"),
        (("verify", bundle, "--trust-key", tmp_path / "none.pub"), "does not exist"),
        (("bundle", "mobilenetv3_small", "--artifact", bundle / "m.onnx", "--sign-key", pub), "cannot load it"),
        (("bundle", "mobilenetv3_small", "--artifact", bundle / "m.onnx", "--sign-key", junk), "cannot load it"),
    ]:
        code, _, err = cli(*args)
        assert_one_line_error(code, err, needle)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UserError, match="not an Ed25519 private key"):
        B.load_private_key(ec_key)


def test_a_recipe_with_a_bad_sign_key_fails_when_it_is_loaded(tmp_path):
    from edgeexport.recipe import Recipe

    with pytest.raises(UserError, match="stages.bundle.sign_key"):
        Recipe.from_dict({"model": "mobilenetv3_small", "stages": {"bundle": {"sign_key": str(tmp_path / "no.key")}}})


@pytest.fixture(scope="module")
def signed_synthetic(tmp_path_factory, keys):
    base = tmp_path_factory.mktemp("signed")
    raw = base / "a.raw"  # the raw 32-byte form of key A signs too
    from cryptography.hazmat.primitives import serialization

    raw.write_bytes(B.load_private_key(keys["a"][0]).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    from edgeexport.targets import RunnerSpec

    (base / "m.onnx").write_bytes(b"artifact")
    B.write_bundle(base / "b", runner=RunnerSpec(target="onnx", artifact=str(base / "m.onnx"), output_names=["out"]),
                   kind="onnx", precision="fp32", inputs=[np.ones((1, 3), np.float32)],
                   references=[{"out": np.ones((1, 2), np.float32)}], tasks={"out": "features"},
                   tolerance={"max_abs_scaled": 1e-4}, versions={},
                   model={"name": "t", "origin": "zoo:t", "params": 1, "input_shape": [1, 3], "dynamic": "none",
                          "outputs": ["out"], "output_tasks": {"out": "features"}}, sign_key=raw)
    return base / "b"


def test_what_is_signed_is_the_canonical_manifest_without_its_signature(signed_synthetic, keys):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    m = json.loads((signed_synthetic / "manifest.json").read_text())
    sig = m.pop("signature")
    assert sig["algorithm"] == "ed25519" and B.fingerprint(bytes.fromhex(sig["public_key"])) == keys["a"][2]
    message = b"edgeexport bundle manifest v3\n" + json.dumps(m, sort_keys=True, separators=(",", ":")).encode()
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig["public_key"])).verify(bytes.fromhex(sig["value"]), message)
    # the signed manifest names the hash of every file the bundle uses
    assert set(m["hashes"]) == {"inputs.npz", "reference.npz"} and len(m["artifact"]["sha256"]) == 64


@pytest.mark.parametrize("change", ["tolerance", "reference_and_hash", "artifact_and_hash", "signature_value",
                                    "foreign_public_key", "strip"])
def test_a_change_after_signing_is_refused_under_trust_key(signed_synthetic, keys, tmp_path, cli, change):
    bundle = tmp_path / "b"
    shutil.copytree(signed_synthetic, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    if change == "tolerance":
        m["tolerance"]["max_abs_scaled"] = 1.0
    elif change == "reference_and_hash":  # the hashes alone cannot catch this one
        with open(bundle / "reference.npz", "wb") as fh:
            np.savez_compressed(fh, **{"000/out": np.zeros((1, 2), np.float32)})
        m["hashes"]["reference.npz"] = B.sha256(bundle / "reference.npz")
    elif change == "artifact_and_hash":
        (bundle / "m.onnx").write_bytes(b"another artifact")
        m["artifact"]["sha256"] = B.sha256(bundle / "m.onnx")
    elif change == "signature_value":
        m["signature"]["value"] = ("0" if m["signature"]["value"][0] != "0" else "1") + m["signature"]["value"][1:]
    elif change == "foreign_public_key":  # claim key B's name with key A's signature
        m["signature"]["public_key"] = B.load_public_key(keys["b"][1]).hex()
    elif change == "strip":
        del m["signature"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli("verify", bundle, "--trust-key", keys["a"][1])
    needle = {"strip": "not signed", "foreign_public_key": "not a trusted key"}.get(change, "changed after signing")
    assert_one_line_error(code, err, needle)
    assert not (bundle / "verify.report.json").exists()
    if change == "strip":  # unsigned, the edited-but-rehashed bundle would load: only a signature tells
        assert B.load_bundle(bundle)[0]["hashes"]
    elif change != "foreign_public_key":  # a signature that does not verify is refused even without --trust-key
        with pytest.raises(UserError, match="changed after signing"):
            B.load_bundle(bundle)


def test_trust_keys_accept_the_signer_and_refuse_others(signed_synthetic, keys):
    a, b = B.load_public_key(keys["a"][1]), B.load_public_key(keys["b"][1])
    assert B.load_bundle(signed_synthetic, trust_keys=[b, a])[0]["signature"]
    with pytest.raises(UserError, match=f"signed by key {keys['a'][2]}, which is not a trusted key"):
        B.load_bundle(signed_synthetic, trust_keys=[b])


# ---------------------------------------------------------------- end to end on a real ONNX bundle


@pytest.fixture(scope="module")
def real(tmp_path_factory, keys):
    """mobilenetv3_small 1x3x64x64: a recipe run whose bundle stage signs with key A (stages.bundle.sign_key)."""
    from edgeexport import pipeline
    from edgeexport.recipe import Recipe

    out = tmp_path_factory.mktemp("real")
    pipeline.run(Recipe.from_dict({"model": "mobilenetv3_small", "input_shape": [1, 3, 64, 64], "output": str(out),
                                   "inputs": {"images": 2, "eval_data": "none"}, "bench": {"enabled": False},
                                   "stages": {"onnx": {}, "bundle": {"sign_key": str(keys["a"][0])}}}),
                 log=lambda *a, **k: None)
    return out, out / "mobilenetv3_small.onnx.bundle"


def _verify(cli, bundle, *extra):
    code, out, err = cli("verify", bundle, "--runs", "3", *extra)
    return code, out, err, json.loads((bundle / "verify.report.json").read_text()) if code in (0, 1) else None


def test_signed_bundle_round_trip_with_the_trusted_key(real, keys, tmp_path, cli):
    bundle = tmp_path / "b"
    shutil.copytree(real[1], bundle)
    code, out, err, rep = _verify(cli, bundle, "--trust-key", keys["b"][1], "--trust-key", keys["a"][1])
    assert code == 0, err
    assert rep["signature"] == {"signed": True, "algorithm": "ed25519", "key_fingerprint": keys["a"][2],
                                "trusted": True, "status": "signed by a trusted key"}
    assert rep["artifacts"]["onnx"]["status"] == "passed"
    note = f"bundle signed by Ed25519 key {keys['a'][2]}: checked against a trusted key"
    assert note in rep["artifacts"]["onnx"]["notes"] and note in (bundle / "verify.report.md").read_text()
    assert keys["a"][2] in out  # the terminal table's notes


def test_signed_bundle_without_trust_key_says_not_checked(real, keys, tmp_path, cli):
    bundle = tmp_path / "b"
    shutil.copytree(real[1], bundle)
    code, _, err, rep = _verify(cli, bundle)
    assert code == 0, err
    assert rep["signature"]["signed"] and rep["signature"]["key_fingerprint"] == keys["a"][2]
    assert not rep["signature"]["trusted"] and rep["signature"]["status"].startswith("signed, not checked")
    assert "not checked against a trusted key" in (bundle / "verify.report.md").read_text()


def test_signed_bundle_from_another_key_is_refused(real, keys, cli):
    code, _, err = cli("verify", real[1], "--trust-key", keys["b"][1])
    assert_one_line_error(code, err, f"signed by key {keys['a'][2]}, which is not a trusted key")


def test_cli_bundle_signs_and_unsigned_is_refused_under_trust_key(real, keys, tmp_path, cli):
    out, _ = real
    code, stdout, err = cli("bundle", "mobilenetv3_small", "--artifact", out / "mobilenetv3_small.onnx",
                            "--shape", "1x3x64x64", "--images", "1", "-o", tmp_path / "signed", "--sign-key",
                            keys["b"][0])
    assert code == 0, err
    assert f"signed by key {keys['b'][2]}" in stdout
    assert B.load_bundle(tmp_path / "signed", trust_keys=[B.load_public_key(keys["b"][1])])
    code, _, err = cli("bundle", "mobilenetv3_small", "--artifact", out / "mobilenetv3_small.onnx",
                       "--shape", "1x3x64x64", "--images", "1", "-o", tmp_path / "unsigned")
    assert code == 0, err
    code, _, err = cli("verify", tmp_path / "unsigned", "--trust-key", keys["b"][1])
    assert_one_line_error(code, err, "not signed")
    code, _, err, rep = _verify(cli, tmp_path / "unsigned")
    assert code == 0, err
    assert rep["signature"] == {"signed": False, "algorithm": None, "key_fingerprint": None, "trusted": False,
                                "status": "unsigned"}
    assert "bundle not signed" in rep["artifacts"]["onnx"]["notes"]


@pytest.mark.parametrize("escape", ["absolute", "parent", "symlink", "companion", "subfolder", "folder_inputs"])
def test_verify_never_runs_a_file_outside_the_bundle(real, tmp_path, cli, escape):
    """The issue's attack and its cousins: each names a file outside (or not the hashed one) with the right hash."""
    bundle = tmp_path / "b"
    shutil.copytree(real[1], bundle)
    (bundle / "manifest.json").write_text(json.dumps({k: v for k, v in json.loads(
        (bundle / "manifest.json").read_text()).items() if k != "signature"}))  # unsigned: hashes are all there is
    art = bundle / "mobilenetv3_small.onnx"
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(art, outside)
    m = json.loads((bundle / "manifest.json").read_text())
    if escape in ("absolute", "parent", "symlink", "subfolder"):
        name = {"absolute": str(outside), "parent": "../elsewhere.onnx", "symlink": "link.onnx",
                "subfolder": "sub/mobilenetv3_small.onnx"}[escape]
        if escape == "symlink":
            os.symlink(outside, bundle / "link.onnx")
        if escape == "subfolder":
            (bundle / "sub").mkdir()
            shutil.copy(art, bundle / "sub" / "mobilenetv3_small.onnx")
            art.write_bytes(b"not the hashed file")
        else:
            art.unlink()
        m["artifact"]["file"] = m["runner"]["artifact"] = name
        m["artifact"]["sha256"] = B.sha256(outside)
    elif escape == "companion":
        m["runner"]["files"] = [str(outside)]
        m["hashes"][str(outside)] = B.sha256(outside)
    elif escape == "folder_inputs":
        (bundle / "inputs.npz").unlink()
        (bundle / "inputs.npz").mkdir()
        m["hashes"]["inputs.npz"] = B.sha256(bundle / "inputs.npz")
    (bundle / "manifest.json").write_text(json.dumps(m))
    code, _, err = cli("verify", bundle)
    needle = {"symlink": "resolves outside the bundle", "folder_inputs": "is a folder, not a file"}.get(
        escape, "not a file inside the bundle")
    assert_one_line_error(code, err, needle)
    assert not (bundle / "verify.report.json").exists()


def test_a_byte_edited_without_its_hash_is_caught(real, tmp_path, cli):
    bundle = tmp_path / "b"
    shutil.copytree(real[1], bundle)
    ref = bundle / "reference.npz"
    ref.write_bytes(ref.read_bytes()[:-1] + bytes([ref.read_bytes()[-1] ^ 1]))
    code, _, err = cli("verify", bundle)
    assert_one_line_error(code, err, "does not match its hash")
