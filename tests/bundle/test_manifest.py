"""Bundles are untrusted input: ``load_bundle`` reads what another machine wrote. Every path a manifest
names must stay inside the bundle, and anything malformed is a one-line ``UserError`` (never a
traceback). The fuzz property runs on a synthetic bundle written by the real writer (no model needed);
the regressions it found are explicit tests below it.
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
from tests.bundle.synthetic import _assert_contained, _copy, _hash_or_junk

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


