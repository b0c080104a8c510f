"""Bundles that can be trusted when they cross machines: containment, hostile manifests, signatures.

``load_bundle`` reads what another machine wrote: every path a manifest names must stay inside the
bundle, anything malformed is a one-line ``UserError`` (never a traceback), and ``verify
--trust-key`` refuses a bundle that was not signed by a trusted key or was changed after signing.
The fuzz property runs on a synthetic bundle written by the real writer (no model needed); the
end-to-end tests use one real mobilenetv3_small ONNX bundle, built once for the module.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from edgeexport import bundle as B
from edgeexport.errors import UserError
from tests.conftest import assert_one_line_error

settings.register_profile("bundle-fuzz", max_examples=300, deadline=1000, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("bundle-fuzz-long", parent=settings.get_profile("bundle-fuzz"), max_examples=20000)
FUZZ = settings.get_profile(os.environ.get("EDGEEXPORT_FUZZ_PROFILE", "bundle-fuzz"))


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


def _check_load(bundle: Path, trust: bool = False):
    from cryptography.hazmat.primitives import serialization

    key = _fuzz_key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        manifest, inputs, refs = B.load_bundle(bundle, trust_keys=[key] if trust else None)
    except UserError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "\r" not in msg and len(msg) < 1000, repr(msg)
        event("refused")
        return None
    event("accepted (signed, trusted)" if trust else "accepted")
    _assert_contained(bundle, manifest)
    assert inputs and len(refs) == len(inputs) and all(refs)
    if trust:  # accepted under trust: signed by that key, over exactly this manifest
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        assert manifest["signature"]["public_key"] == key.hex()
        Ed25519PublicKey.from_public_bytes(key).verify(bytes.fromhex(manifest["signature"]["value"]),
                                                       B.signed_bytes(manifest))
    return manifest


# ---------------------------------------------------------------- the fuzz property

OUTSIDE = "<outside>"  # replaced by the absolute path of a file outside the bundle (with its real hash)
HOSTILE_NAMES = [OUTSIDE, "../outside/m.onnx", "../../etc/passwd", "/etc/passwd", "adir/../m.onnx", "adir/m.onnx",
                 "./m.onnx", "link_out", "dir_out", "dir_out/m.onnx", "loop", "link_in", "adir", ".", "..", "",
                 "m.onnx\x00.txt", "a\nb", "m.onnx/", "\\..\\x", "C:\\x", "~/x", "ｍ.onnx", "m\u202e.onnx",
                 "x" * 300, "nothere.bin", "manifest.json", "inputs.npz"]
json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**200)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
             | st.sampled_from(HOSTILE_NAMES))
json_value = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                             max_size=3),
                          max_leaves=8)


def _key_paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _key_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _key_paths(v, prefix + (i,))


def _template_manifest() -> dict:
    import edgeexport

    # the same structure write_bundle produces (the fuzz only needs the key paths)
    return {"format": 0, "edgeexport": edgeexport.__version__, "created": "",
            "artifact": {"file": "", "kind": "", "target": "", "precision": "", "backend": "", "sha256": "",
                         "size_bytes": 0},
            "runner": {"target": "", "artifact": "", "files": [""], "input_names": [""], "output_names": [""],
                       "options": {}},
            "input_name": "", "input_shapes": [[0, 0, 0, 0]], "outputs": {"out": [0, 0]},
            "tasks": {"out": ""}, "tolerance": {"max_abs_scaled": 0.0, "min_cosine": 0.0},
            "model": {"name": "", "input_shape": [0], "images": [""]}, "build_host_versions": {"x": ""},
            "build_host_latency_ms": None, "hashes": {"inputs.npz": "", "reference.npz": "", "m.bin": ""},
            "signature": {"algorithm": "", "public_key": "", "value": ""}}


KEY_PATHS = [p for p in _key_paths(_template_manifest()) if p]
op = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEY_PATHS), json_value),
    st.tuples(st.just("delete"), st.sampled_from(KEY_PATHS), st.none()),
    st.tuples(st.just("point_artifact"), st.sampled_from(HOSTILE_NAMES) | st.text(max_size=8), st.none()),
    st.tuples(st.just("point_companion"), st.sampled_from(HOSTILE_NAMES) | st.text(max_size=8), st.none()),
    st.tuples(st.just("hash_name"), st.sampled_from(HOSTILE_NAMES) | st.text(max_size=8), st.none()),
    st.tuples(st.just("file"), st.sampled_from(["inputs.npz", "reference.npz", "m.bin"]),
              st.sampled_from(["garbage", "empty", "npy", "truncated", "folder", "other_npz", "link_out"])),
    st.tuples(st.just("sign"), st.none(), st.none()),  # sign what the ops made so far (with FUZZ_KEY)
)
raw_text = st.sampled_from(["", "{", "null", "[]", "[1, 2]", '"x"', "1" * 5000, '{"format": ' + "9" * 5000 + "}",
                            "[" * 50000 + "]" * 50000, '{"format": NaN}', "\udcff", "\x00"])


def _fuzz_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _resolve_name(name: str, base: Path) -> str:
    return str(base / "outside" / "m.onnx") if name == OUTSIDE else name


def _set(m, path, value):
    cur = m
    for k in path[:-1]:
        cur = cur[k]
    if isinstance(cur, list):
        cur[path[-1]] = value
    else:
        cur[path[-1]] = value


def _apply(bundle: Path, base: Path, manifest: dict, ops) -> dict:
    for kind, a, b in ops:
        try:
            if kind == "set":
                _set(manifest, a, _resolve_name(b, base) if isinstance(b, str) else b)
            elif kind == "delete":
                cur = manifest
                for k in a[:-1]:
                    cur = cur[k]
                del cur[a[-1]]
            elif kind == "point_artifact":  # the attack, with the target's real hash
                name = _resolve_name(a, base)
                manifest["artifact"]["file"] = manifest["runner"]["artifact"] = name
                manifest["artifact"]["sha256"] = _hash_or_junk(bundle / name) if "\x00" not in name else "0" * 64
            elif kind == "point_companion":
                name = _resolve_name(a, base)
                manifest["runner"]["files"] = [name]
                manifest["hashes"][name] = _hash_or_junk(bundle / name) if "\x00" not in name else "0" * 64
            elif kind == "hash_name":
                name = _resolve_name(a, base)
                manifest["hashes"][name] = _hash_or_junk(bundle / name) if "\x00" not in name else "0" * 64
            elif kind == "file":  # replace a file and rewrite its hash, so the hash alone cannot catch it
                p = bundle / a
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                if b == "garbage":
                    p.write_bytes(b"PK\x03\x04 not really a zip")
                elif b == "empty":
                    p.write_bytes(b"")
                elif b == "npy":
                    with open(p, "wb") as fh:
                        np.save(fh, np.zeros(3))
                elif b == "truncated":
                    p.write_bytes((base / "template" / a).read_bytes()[:60])
                elif b == "folder":
                    p.mkdir()
                elif b == "other_npz":
                    with open(p, "wb") as fh:
                        np.savez(fh, **{"x": np.zeros(2), "7/out": np.zeros(2), "-1/out": np.zeros(2)})
                elif b == "link_out":
                    os.symlink(base / "outside" / "secret", p)
                if isinstance(manifest.get("hashes"), dict):
                    manifest["hashes"][a] = _hash_or_junk(p)
            elif kind == "sign":
                manifest["signature"] = B.sign_manifest(manifest, _fuzz_key())
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            pass  # an earlier op changed the structure (or made it unsignable): this one does not apply
    return manifest


@FUZZ
@given(ops=st.lists(op, min_size=1, max_size=4), raw=st.none() | raw_text, trust=st.booleans())
@example(ops=[("point_artifact", OUTSIDE, None)], raw=None, trust=False)  # the attack
@example(ops=[("point_artifact", "adir/m.onnx", None)], raw=None, trust=False)  # hashed adir/m.onnx, ran m.onnx
@example(ops=[("point_artifact", "a\nb", None)], raw=None, trust=False)  # a two-line error message
@example(ops=[("point_companion", "a\nb", None)], raw=None, trust=False)
@example(ops=[("set", ("runner", "files", 0), [])], raw=None, trust=False)  # unhashable list
@example(ops=[("set", ("runner", "files"), None)], raw=None, trust=False)
@example(ops=[("set", ("runner", "target"), None)], raw=None, trust=False)  # an invalid runner spec accepted
@example(ops=[("file", "inputs.npz", "other_npz")], raw=None, trust=False)  # inputs without references
@example(ops=[("file", "inputs.npz", "folder")], raw=None, trust=False)
@example(ops=[("file", "inputs.npz", "garbage")], raw=None, trust=False)  # BadZipFile
@example(ops=[("hash_name", "nothere.bin", None)], raw=None, trust=False)
@example(ops=[("hash_name", "m.onnx\x00.txt", None)], raw=None, trust=False)
@example(ops=[("hash_name", "loop", None)], raw=None, trust=False)
@example(ops=[("set", ("runner", "files"), 5)], raw=None, trust=False)
@example(ops=[("set", ("hashes",), ["ab"])], raw=None, trust=False)
@example(ops=[("set", ("tolerance", "max_abs_scaled"), float("nan"))], raw=None, trust=False)
@example(ops=[("file", "inputs.npz", "npy")], raw=None, trust=False)
@example(ops=[("file", "inputs.npz", "empty")], raw=None, trust=False)
@example(ops=[("file", "reference.npz", "truncated")], raw=None, trust=False)
@example(ops=[("file", "reference.npz", "other_npz")], raw=None, trust=False)
@example(ops=[("set", ("format",), 0)], raw="1" * 5000, trust=False)
@example(ops=[("set", ("format",), 0)], raw="[" * 50000 + "]" * 50000, trust=False)
@example(ops=[("set", ("runner", "files"), ["m.bin"]), ("sign", None, None)], raw=None, trust=True)
@example(ops=[("set", ("hashes",), {}), ("sign", None, None)], raw=None, trust=True)  # signed, but nothing hashed
def test_load_bundle_never_escapes_and_fails_in_one_line(synthetic, ops, raw, trust):
    bundle = _copy(synthetic)
    try:
        manifest = _apply(bundle, synthetic, json.loads((bundle / "manifest.json").read_text()), ops)
        if raw is not None:
            (bundle / "manifest.json").write_text(raw, errors="surrogateescape")
        else:
            (bundle / "manifest.json").write_text(json.dumps(manifest))
        _check_load(bundle, trust)
    finally:
        shutil.rmtree(bundle.parent)


# ---------------------------------------------------------------- regressions the fuzz found (explicit)


def _edit(bundle: Path, fn) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("case, needle", [
    ("hashes_list", "invalid manifest: hashes"),  # dict(["ab"]) used to read as {"a": "b"}
    ("files_int", "invalid manifest: runner.files"),  # runner.files = 5 was a TypeError
    ("nan_tolerance", "unreadable manifest (NaN"),  # a NaN limit makes every comparison pass
    ("reference_unhashed", "does not hash it"),  # a reference.npz without a hash was never checked
    ("npy_inputs", "not an .npz archive"),  # a .npy named inputs.npz was a TypeError
    ("empty_inputs", "unreadable arrays"),  # EOFError
    ("duplicate_key", "duplicate key"),  # which "artifact" counts? neither
    ("old_format", "bundle format 2 is not 3"),
])
def test_malformed_bundles_are_one_line_errors(synthetic, case, needle):
    bundle = _copy(synthetic)
    if case == "hashes_list":
        _edit(bundle, lambda m: m.update(hashes=["ab"]))
    elif case == "files_int":
        _edit(bundle, lambda m: m["runner"].update(files=5))
    elif case == "nan_tolerance":
        (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text()
                                              .replace('"max_abs_scaled": 0.0001', '"max_abs_scaled": NaN'))
    elif case == "reference_unhashed":
        _edit(bundle, lambda m: m["hashes"].pop("reference.npz"))
    elif case in ("npy_inputs", "empty_inputs"):
        with open(bundle / "inputs.npz", "wb") as fh:
            if case == "npy_inputs":
                np.save(fh, np.zeros(3))
        _edit(bundle, lambda m: m["hashes"].update({"inputs.npz": B.sha256(bundle / "inputs.npz")}))
    elif case == "duplicate_key":
        text = (bundle / "manifest.json").read_text()
        text = text.replace('"artifact": {', '"artifact": {"file": "x"}, "artifact": {', 1)
        (bundle / "manifest.json").write_text(text)
    elif case == "old_format":
        _edit(bundle, lambda m: m.update(format=2))
    with pytest.raises(UserError, match=None) as exc:
        B.load_bundle(bundle)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_a_hashed_file_in_a_subfolder_is_not_run_in_place_of_another(synthetic):
    """The runner relocates files by name: a manifest naming adir/m.onnx (hashed) would run m.onnx (not)."""
    bundle = _copy(synthetic)
    (bundle / "m.onnx").write_bytes(b"something else, unhashed")
    _edit(bundle, lambda m: (m["artifact"].update(file="adir/m.onnx"), m["runner"].update(artifact="adir/m.onnx")))
    with pytest.raises(UserError, match="not a file inside the bundle"):
        B.load_bundle(bundle)


def test_a_fifo_is_refused_without_opening_it(synthetic):
    """Reading a FIFO blocks forever: it must be refused as not a regular file (a helper thread unblocks a
    reader after 10 s, so a regression fails instead of hanging)."""
    import threading
    import time

    bundle = _copy(synthetic)
    (bundle / "inputs.npz").unlink()
    os.mkfifo(bundle / "inputs.npz")
    done = threading.Event()

    def unblock():
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not done.is_set():
            try:
                os.close(os.open(bundle / "inputs.npz", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

    threading.Thread(target=unblock, daemon=True).start()
    try:
        with pytest.raises(UserError, match="not a regular file"):
            B.load_bundle(bundle)
    finally:
        done.set()


def test_a_folder_artifact_may_not_hold_a_symlink_out(synthetic):
    bundle = _copy(synthetic)
    pkg = bundle / "m.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    os.symlink(synthetic / "outside" / "secret", pkg / "weights.bin")
    _edit(bundle, lambda m: (m["artifact"].update(file="m.mlpackage", sha256=B.sha256(pkg)),
                             m["runner"].update(artifact="m.mlpackage")))
    with pytest.raises(UserError, match="no symlinks inside a folder artifact"):
        B.load_bundle(bundle)


def test_folder_hashes_are_unambiguous(tmp_path):
    """Name and bytes used to be hashed back to back: one file could stand in for a whole tree."""
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    (a / "Manifest.json").write_bytes(b"{}")
    (a / "data" / "w.bin").write_bytes(b"weights")
    b.mkdir()
    (b / "Manifest.json").write_bytes(b"{}" + b"data/w.bin" + b"weights")  # the old hash's stream
    assert B.sha256(a) != B.sha256(b)
    assert B.sha256(a / "Manifest.json") == __import__("hashlib").sha256(b"{}").hexdigest()  # files: plain SHA-256


def test_the_writer_refuses_names_a_bundle_cannot_hold(tmp_path):
    from edgeexport.targets import RunnerSpec

    odd = tmp_path / "my model.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(UserError, match="plain names"):
        B.write_bundle(tmp_path / "b", runner=RunnerSpec(target="onnx", artifact=str(odd)), kind="onnx",
                       precision="fp32", inputs=[np.zeros((1, 3), np.float32)],
                       references=[{"out": np.zeros((1, 2), np.float32)}], tasks={}, tolerance={}, model={},
                       versions={})
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- keys and signatures (synthetic bundle)


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
    assert rep["artifacts"][0]["parity"]["status"] == "passed"
    note = f"bundle signed by Ed25519 key {keys['a'][2]}: checked against a trusted key"
    assert note in rep["artifacts"][0]["notes"] and note in (bundle / "verify.report.md").read_text()
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
    assert "bundle not signed" in rep["artifacts"][0]["notes"]


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
