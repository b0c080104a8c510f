"""``edgeexport matrix`` on a local Ray cluster (loopback only, 2 CPUs, started once for the module).

Small cells (mobilenetv3_small at 1x3x64x64, two evaluation photos, short timings): a matrix end to
end (ONNX and ExecuTorch built, checked and timed in parallel tasks, CoreML converted here and
reported "no node can run coreml" at once), a second run served from the cache, a TensorRT cell
that no node can build, a worker killed mid-task and retried, and ``--resume`` after a run whose
cell kept crashing. Worker kills use the test-only hook ``EDGEEXPORT_MATRIX_CRASH=MODEL/KIND@N``
(the first N attempts of that cell ``os._exit(1)``; ``@*``: every attempt).
"""
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import time

import numpy as np
import pytest
import yaml

from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'edgeexport[ray]'): edgeexport matrix "
                                       "runs its cells as Ray tasks")

ROW = "mnv3s"
RECIPE = {"model": "mobilenetv3_small", "name": ROW, "input_shape": "1x3x64x64",
          "inputs": {"images": 2, "eval_data": "none"}, "bench": {"runs": 5, "warmup": 1, "budget_s": 2}}


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a matrix must report every cell, never wait on one forever."""
    def expired(*_):
        raise TimeoutError(f"the matrix did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cells(m: dict) -> dict:
    return {r["kind"]: r for r in m["cells"]}


@pytest.fixture(scope="module")
def ray_cluster():
    from edgeexport.matrix import start_local_cluster

    start_local_cluster(cpus=2)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipes") / f"{ROW}.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


@pytest.fixture(scope="module")
def first(ray_cluster, recipe, tmp_path_factory):
    from edgeexport.matrix import run_matrix

    root = tmp_path_factory.mktemp("matrix")
    t0 = time.perf_counter()
    with deadline(240):
        m = run_matrix([str(recipe)], ["onnx", "executorch", "coreml"], cache=root / "cache", output=root / "out",
                       log=lambda msg: None)
    return m, root, time.perf_counter() - t0


def test_the_local_cluster_listens_on_loopback_only(ray_cluster):
    nodes = ray_cluster.nodes()
    assert len(nodes) == 1 and nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray_cluster.cluster_resources()["CPU"] == 2


def test_small_matrix_end_to_end(first):
    from edgeexport.targets import RunnerSpec, make_runner

    m, root, _ = first
    out = root / "out"
    c = cells(m)
    assert m["models"] == [ROW] and m["kinds"] == ["onnx", "executorch", "coreml"]
    for kind in ("onnx", "executorch"):
        r = c[kind]
        assert r["status"] == "passed", r["reason"]
        assert r["cache"] == "miss" and r["attempts"] == 1
        assert r["node"]["hostname"] == socket.gethostname() and len(r["node"]["node_id"]) == 56
        a = r["artifact"]
        worst = max(o["metrics"]["max_abs_scaled"] for o in a["parity"]["checks"][0]["outputs"])
        assert worst <= 1e-4, worst  # fp32 parity against eager, through the artifact's own runtime
        assert a["latency"]["threads"] == 1 and a["latency"]["median_ms"] > 0
        cell_report = json.loads((out / r["report"]).read_text())
        assert cell_report["machine"]["threads"] == 1  # every backend timed with the task's one CPU
        with make_runner(RunnerSpec.model_validate(a["runner"]), threads=1) as runner:  # the file in OUTPUT runs
            assert str(out) in a["runner"]["artifact"]
            y = runner.infer({"input": np.zeros((1, 3, 64, 64), np.float32)})["logits"]
        assert y.shape == (1, 1000) and np.isfinite(y).all() and y.std() > 0
    assert c["onnx"]["required"] == [] and c["executorch"]["required"] == []  # ExecuTorch does not need ONNX
    assert "1 thread per cell" in m["latency_note"]
    # three cells on two CPUs: they overlapped, so the run took less than the cells one after another
    assert m["elapsed_s"] < m["cells_s"], (m["elapsed_s"], m["cells_s"])
    md = (out / "matrix.report.md").read_text()
    assert f"| {ROW} | 1x3x64x64 | passed" in md and "no node can run coreml" in md
    page = (out / "matrix.report.html").read_text()
    assert "no node can run coreml" in page and f'href="models/{ROW}.report.html"' in page
    # one node ran every cell: said once in the header, not repeated in every cell
    assert page.count(f"Every cell ran on {socket.gethostname()}") == 1 and "built on" not in page
    assert (out / "models" / f"{ROW}.report.html").is_file()
    written = json.loads((out / "matrix.report.json").read_text())
    assert written["cells"] == json.loads(json.dumps(m["cells"], default=str))


def test_report_command_re_renders_the_matrix_page(first, cli):
    m, root, _ = first
    out = root / "out"
    page = out / "matrix.report.html"
    page.unlink()
    (out / "models" / f"{ROW}.report.html").unlink()
    code, stdout, err = cli("report", out / "matrix.report.json", "--html")
    assert code == 0, err
    assert f"report: {page}" in stdout and "no node can run coreml" in stdout  # the matrix table, then the page
    text = page.read_text()
    assert "no node can run coreml" in text and f'href="models/{ROW}.report.html"' in text
    assert (out / "models" / f"{ROW}.report.html").is_file()  # the page's links work again
    code, _, err = cli("report", out / "matrix.report.json", "--html", "-o", root / "elsewhere.html")
    assert_one_line_error(code, err, "beside its JSON")


def test_a_cell_no_node_can_run_is_reported_at_once(first):
    from edgeexport.bundle import load_bundle, load_public_key

    m, root, _ = first
    r = cells(m)["coreml"]
    assert r["status"] == "not_run" and r["reason"].startswith("no node can run coreml"), r["reason"]
    assert '"coreml"' in r["reason"] and "doctor --ray-resources" in r["reason"]
    assert r["artifact"]["built"] and r["artifact"]["error"] is None  # converted and validated here
    # the bundle it would ship to a Mac is signed by the cache's key and loads only with it
    bundle = root / "out" / r["bundle"]
    manifest, inputs, refs = load_bundle(bundle, trust_keys=[load_public_key(root / "cache" / "keys" / "matrix.pub")])
    assert manifest["signature"]["algorithm"] == "ed25519" and len(inputs) == len(refs) > 0
    assert m["verdict"] == "passed"  # not run is not a failure


def test_second_run_is_served_from_the_cache(first, recipe, cli):
    m1, root, first_s = first
    t0 = time.perf_counter()
    with deadline(120):
        code, out, err = cli("matrix", recipe, "--targets", "onnx,executorch,coreml", "--cache", root / "cache",
                             "-o", root / "again", "--json")
    second_s = time.perf_counter() - t0
    assert code == 0, err
    m2 = json.loads(out)
    assert [r["cache"] for r in m2["cells"]] == ["hit", "hit", "hit"]
    assert m2["cells_s"] == 0  # no task ran
    assert [r["status"] for r in m2["cells"]] == [r["status"] for r in m1["cells"]]
    assert [r["key"] for r in m2["cells"]] == [r["key"] for r in m1["cells"]]
    assert second_s < 0.3 * first_s, (second_s, first_s)
    onnx = cells(m2)["onnx"]
    assert (root / "again" / onnx["folder"] / f"{ROW}.onnx").is_file()
    assert str(root / "again") in onnx["artifact"]["path"]  # paths point into this run's output


def test_a_changed_option_is_a_different_cell(first, recipe):
    from edgeexport.matrix import plan_cells

    m, _, _ = first
    same = plan_cells([str(recipe)], ["onnx"])[0]
    assert same.key == cells(m)["onnx"]["key"]
    assert plan_cells([str(recipe)], ["onnx"], threads=2)[0].key != same.key
    assert plan_cells([str(recipe)], ["onnx"], overrides={"inputs": {"images": 3}})[0].key != same.key


def test_tensorrt_cell_without_a_gpu_node(ray_cluster, recipe, tmp_path):
    """TensorRT engines are built on the GPU that runs them: without such a node nothing is built."""
    from edgeexport.matrix import run_matrix

    if "tensorrt" in ray_cluster.cluster_resources():
        pytest.skip("this machine offers TensorRT")
    with deadline(60):
        m = run_matrix([str(recipe)], ["tensorrt"], cache=tmp_path / "cache", output=tmp_path / "out",
                       log=lambda msg: None, html=False)
    r = m["cells"][0]
    assert r["status"] == "not_run" and r["reason"].startswith("no node can run tensorrt"), r["reason"]
    assert '"GPU"' in r["reason"] and '"tensorrt"' in r["reason"] and r["node"] is None


@pytest.fixture(scope="module")
def interrupted(ray_cluster, recipe, tmp_path_factory):
    """One run where the onnx cell's worker dies on its first attempt and the coreml cell's on every
    attempt (1 retry), then ``--resume`` of it without the crashes. Neither run reads the cache, so
    what the resume keeps comes from the interrupted run's own records."""
    from edgeexport.matrix import CRASH_ENV, run_matrix

    root = tmp_path_factory.mktemp("resume")
    args = dict(cache=root / "cache", output=root / "out", use_cache=False, log=lambda msg: None, html=False)
    os.environ[CRASH_ENV] = f"{ROW}/onnx@1,{ROW}/coreml@*"
    try:
        with deadline(180):
            crashed = run_matrix([str(recipe)], ["onnx", "coreml"], retries=1, **args)
    finally:
        del os.environ[CRASH_ENV]
    progress = json.loads((root / "out" / "cells" / ROW / "onnx.json").read_text())
    with deadline(180):
        resumed = run_matrix(None, resume=True, **args)
    return crashed, progress, resumed


def test_a_killed_worker_is_retried(interrupted):
    crashed, _, _ = interrupted
    c = cells(crashed)
    assert c["onnx"]["status"] == "passed" and c["onnx"]["attempts"] == 2  # died once, then built
    assert c["coreml"]["status"] == "error" and c["coreml"]["attempts"] == 2
    assert "worker died (2 attempts)" in c["coreml"]["reason"], c["coreml"]["reason"]
    assert crashed["verdict"] == "failed" and crashed["failed"] == [f"{ROW}/coreml"]  # one row, not the end


def test_resume_keeps_finished_cells(interrupted):
    crashed, progress, resumed = interrupted
    c = cells(resumed)
    assert progress["status"] == "passed" and progress["key"] == c["onnx"]["key"]
    assert c["onnx"]["cache"] == "resumed" and c["onnx"]["wall_s"] == cells(crashed)["onnx"]["wall_s"]
    assert c["coreml"]["cache"] == "miss" and c["coreml"]["attempts"] == 1
    assert c["coreml"]["reason"].startswith("no node can run coreml")
    assert resumed["kinds"] == ["onnx", "coreml"] and resumed["cache"]["resumed"] == 1
    assert resumed["cells_s"] == pytest.approx(c["coreml"]["wall_s"], abs=0.1)  # only the coreml cell ran


def test_doctor_ray_resources_is_what_runs_here(cli):
    from edgeexport.targets import list_targets

    code, out, err = cli("doctor", "--ray-resources")
    assert code == 0, err
    offered = json.loads(out)
    for t in list_targets():
        assert (t.backend in offered) == any(u.backend == t.backend and u.run_availability().ok for u in list_targets())
    assert all(v == 1 for v in offered.values()) and "onnxruntime" in offered


@pytest.mark.parametrize("args, needle", [
    (["mobilenetv3_small", "--targets", "onnx,bogus"], "unknown artifact kind 'bogus'"),
    (["mobilenetv3_smal"], "unknown model"),
    (["mobilenetv3_small", "--cluster", "not an address"], "--cluster"),
    (["--resume"], "no matrix to continue"),
])
def test_bad_input_is_one_line(cli, tmp_path, args, needle):
    code, _, err = cli("matrix", *args, "-o", tmp_path / "out", "--cache", tmp_path / "cache")
    assert_one_line_error(code, err, needle)



def test_verification_task_checks_the_signature_and_reports_what_ran(first, tmp_path):
    """What a node offering ``coreml`` runs for a cell built elsewhere: ``verify_cell`` on the signed
    bundle, in this process (Ray 2.60 lets no second node join a loopback-only head, so no test here
    schedules it on another node). The signature is checked against the matrix's key, a bundle signed
    by another key is refused, and the merged cell says truthfully that CoreML could not run here."""
    from edgeexport.bundle import generate_keypair, load_private_key, load_public_key
    from edgeexport.matrix import _apply_verify, _pack, sign_bundle, verify_cell

    m, root, _ = first
    rec = json.loads(json.dumps(cells(m)["coreml"]))
    bundle = root / "out" / rec["bundle"]
    public = load_public_key(root / "cache" / "keys" / "matrix.pub")
    spec = {"label": "x", "key": rec["key"], "attempts_dir": str(tmp_path / "attempts"), "threads": 1, "runs": 2,
            "warmup": 0, "trust_key": public.hex()}
    result = verify_cell(spec, _pack(bundle))
    assert result["ok"], result.get("error")
    assert result["attempt"] == 1 and result["node"]["hostname"] == socket.gethostname()
    sig = result["report"]["signature"]
    assert sig["signed"] and sig["trusted"] and sig["key_fingerprint"] == m["signing_key"]
    out = tmp_path / "out"
    (out / rec["folder"]).mkdir(parents=True)
    _apply_verify(rec, result, out)
    assert rec["status"] == "not_run" and "CoreML prediction needs macOS" in rec["reason"], rec["reason"]
    assert (out / rec["verify"]["report"]).is_file()
    # the same bundle re-signed by a key the matrix does not trust is refused before anything runs
    other = tmp_path / "other"
    generate_keypair(tmp_path, "other")
    shutil.copytree(bundle, other)
    sign_bundle(other, load_private_key(tmp_path / "other.key"), load_public_key(tmp_path / "other.pub"))
    refused = verify_cell({**spec, "attempts_dir": str(tmp_path / "attempts2")}, _pack(other))
    assert not refused["ok"] and "not a trusted key" in refused["error"], refused
