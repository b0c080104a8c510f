"""``edgeexport matrix`` on a local Ray cluster (loopback only, 2 CPUs, started once for the module).

Small cells (mobilenetv3_small at 1x3x64x64, two evaluation photos, short timings): a matrix end to
end (ONNX and ExecuTorch built, checked and timed in parallel tasks, CoreML converted here and
reported "no node can run coreml" at once), a second run served from the cache, a TensorRT cell
that no node can build, a worker killed mid-task and retried, and ``--resume`` after a run whose
cell kept crashing. Worker kills come from a model whose factory kills its process on its first
calls (``tests/support/crashing.py``); nothing in edgeexport knows about tests.
"""
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from edgeexport.report import load_report, report_from_dict
from tests.conftest import ROOT, assert_one_line_error
from tests.support.deadline import deadline

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install 'edgeexport[ray]'): edgeexport matrix "
                                       "runs its cells as Ray tasks")

ROW = "mnv3s"
RECIPE = {"model": "mobilenetv3_small", "name": ROW, "input_shape": "1x3x64x64",
          "inputs": {"images": 2, "eval_data": "none"}, "bench": {"runs": 5, "warmup": 1, "budget_s": 2}}




def cells(m) -> dict:
    """The matrix's cells by kind (one model)."""
    return {a.kind: a for a in m.artifacts.values()}


@pytest.fixture(scope="module")
def ray_cluster():
    from edgeexport.matrix import start_local_cluster
    from tests.conftest import every_cpu

    with every_cpu():  # the cluster's processes inherit the CPUs; its two task slots need both
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
    from edgeexport.targets import make_runner

    m, root, _ = first
    out = root / "out"
    c = cells(m)
    assert m.kind == "matrix" and m.matrix.models == [ROW] and m.matrix.kinds == ["onnx", "executorch", "coreml"]
    assert list(m.artifacts) == [f"{ROW}/onnx", f"{ROW}/executorch", f"{ROW}/coreml"]
    for kind in ("onnx", "executorch"):
        r = c[kind]
        assert r.status == "passed", r.why()
        assert r.cell.cache == "miss" and r.cell.attempts == 1
        assert r.cell.node["hostname"] == socket.gethostname() and len(r.cell.node["node_id"]) == 56
        assert r.worst("max_abs_scaled") <= 1e-4  # fp32 parity against eager, through the artifact's own runtime
        assert r.latency.threads == 1 and r.latency.median_ms > 0
        cell_report = load_report(out / r.cell.report)
        assert cell_report.machine.threads == 1  # every backend timed with the task's one CPU
        with make_runner(r.runner, threads=1) as runner:  # the file in OUTPUT runs
            assert str(out) in r.runner.artifact
            y = runner.infer({"input": np.zeros((1, 3, 64, 64), np.float32)})["logits"]
        assert y.shape == (1, 1000) and np.isfinite(y).all() and y.std() > 0
    assert c["onnx"].cell.required == [] and c["executorch"].cell.required == []  # ExecuTorch does not need ONNX
    assert "1 thread per cell" in m.matrix.latency_note
    # three cells on two CPUs: they overlapped, so the run took less than the cells one after another
    assert m.elapsed_s < m.matrix.cells_s, (m.elapsed_s, m.matrix.cells_s)
    md = (out / "matrix.report.md").read_text()
    assert f"| {ROW} | 1x3x64x64 | passed" in md and "no node can run coreml" in md
    page = (out / "matrix.report.html").read_text()
    assert "no node can run coreml" in page and f'href="models/{ROW}.report.html"' in page
    # one node ran every cell: said once in the header, not repeated in every cell
    assert page.count(f"Every cell ran on {socket.gethostname()}") == 1 and "built on" not in page
    assert (out / "models" / f"{ROW}.report.html").is_file()
    assert load_report(out / "matrix.report.json").to_json() == m.to_json()  # the JSON is the whole report


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
    assert r.status == "not_run" and r.reason.startswith("no node can run coreml"), r.reason
    assert '"coreml"' in r.reason and "doctor --ray-resources" in r.reason
    assert r.built and r.error is None  # converted and validated here
    # the bundle it would ship to a Mac is signed by the cache's key and loads only with it
    bundle = root / "out" / r.cell.bundle
    manifest, inputs, refs = load_bundle(bundle, trust_keys=[load_public_key(root / "cache" / "keys" / "matrix.pub")])
    assert manifest["signature"]["algorithm"] == "ed25519" and len(inputs) == len(refs) > 0
    assert m.verdict == "passed" and m.failed == []  # not run is not a failure


def test_second_run_is_served_from_the_cache(first, recipe, cli):
    m1, root, first_s = first
    t0 = time.perf_counter()
    with deadline(120):
        code, out, err = cli("matrix", recipe, "--targets", "onnx,executorch,coreml", "--cache", root / "cache",
                             "-o", root / "again", "--json")
    second_s = time.perf_counter() - t0
    assert code == 0, err
    m2 = report_from_dict(json.loads(out))
    assert [a.cell.cache for a in m2.artifacts.values()] == ["hit", "hit", "hit"]
    assert m2.matrix.cells_s == 0  # no task ran
    assert [a.status for a in m2.artifacts.values()] == [a.status for a in m1.artifacts.values()]
    assert [a.cell.key for a in m2.artifacts.values()] == [a.cell.key for a in m1.artifacts.values()]
    assert second_s < 0.3 * first_s, (second_s, first_s)
    onnx = cells(m2)["onnx"]
    assert (root / "again" / onnx.cell.folder / f"{ROW}.onnx").is_file()
    assert str(root / "again") in onnx.path  # paths point into this run's output


def test_a_run_served_from_the_cache_never_starts_ray(first, recipe):
    """In a fresh process (no Ray running), every cell a hit: the plan is resolved against the cache first and Ray
    is not even imported (the CoreML cell that needs a macOS node is reported from the local resource table)."""
    _, root, _ = first
    code = ("import sys; from edgeexport.cli import main; sys.argv = ['edgeexport', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('RAY', 'ray' in sys.modules, file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "matrix", str(recipe), "--targets", "onnx,executorch,coreml",
                           "--cache", str(root / "cache"), "-o", str(root / "fresh"), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [a["cell"]["cache"] for a in json.loads(proc.stdout)["artifacts"].values()] == ["hit"] * 3
    assert "RAY False" in proc.stderr, proc.stderr[-2000:]


def test_a_changed_option_is_a_different_cell(first, recipe):
    from edgeexport.matrix import plan_cells

    m, _, _ = first
    same = plan_cells([str(recipe)], ["onnx"])[0]
    assert same.key == cells(m)["onnx"].cell.key
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
    r = m.artifacts[f"{ROW}/tensorrt"]
    assert r.status == "not_run" and r.reason.startswith("no node can run tensorrt"), r.reason
    assert '"GPU"' in r.reason and '"tensorrt"' in r.reason and r.cell.node is None and not r.built


def crashing_recipe(folder, row: str, crash) -> str:
    """A recipe of a model whose factory kills its worker on its first ``crash`` calls ("always": every call)."""
    control = folder / f"{row}.control.json"
    control.write_text(json.dumps({"crash": crash}))
    path = folder / f"{row}.yaml"
    path.write_text(yaml.safe_dump({"model": "tests.support.crashing:crashing_classifier", "name": row,
                                    "model_kwargs": {"control": str(control)}, "input_shape": "1x3x32x32",
                                    "inputs": {"images": 2, "eval_data": "none"},
                                    "bench": {"runs": 3, "warmup": 1, "budget_s": 1}}))
    return str(path)


@pytest.fixture(scope="module")
def interrupted(ray_cluster, tmp_path_factory):
    """One run where one cell's worker dies on its first attempt and another's on every attempt (1 retry),
    then ``--resume`` of it with the crashes stopped. Neither run reads the cache, so what the resume
    keeps comes from the interrupted run's own records."""
    from edgeexport.matrix import run_matrix

    root = tmp_path_factory.mktemp("resume")
    models = [crashing_recipe(root, "once", 1), crashing_recipe(root, "always", "always")]
    args = dict(cache=root / "cache", output=root / "out", use_cache=False, log=lambda msg: None, html=False)
    with deadline(180):
        crashed = run_matrix(models, ["onnx"], retries=1, **args)
    progress = json.loads((root / "out" / "cells" / "once" / "onnx.json").read_text())
    (root / "always.control.json").write_text(json.dumps({"crash": 0}))  # not part of the cell's key
    with deadline(180):
        resumed = run_matrix(None, resume=True, **args)
    return crashed, progress, resumed


def test_a_killed_worker_is_retried(interrupted):
    crashed, _, _ = interrupted
    once, always = crashed.artifacts["once/onnx"], crashed.artifacts["always/onnx"]
    assert once.status == "passed" and once.cell.attempts == 2  # died once, then built
    assert always.status == "error" and always.cell.attempts == 2
    assert "worker died (2 attempts)" in always.reason, always.reason
    assert crashed.verdict == "failed" and crashed.failed == ["always/onnx"]  # one row, not the end


def test_resume_keeps_finished_cells(interrupted):
    crashed, progress, resumed = interrupted
    once, always = resumed.artifacts["once/onnx"], resumed.artifacts["always/onnx"]
    assert progress["status"] == "passed" and progress["cell"]["key"] == once.cell.key
    assert once.cell.cache == "resumed" and once.cell.wall_s == crashed.artifacts["once/onnx"].cell.wall_s
    assert always.cell.cache == "miss" and always.cell.attempts == 1 and always.status == "passed"
    assert resumed.matrix.kinds == ["onnx"] and resumed.matrix.cache["resumed"] == 1
    assert resumed.matrix.cells_s == pytest.approx(always.cell.wall_s, abs=0.1)  # only the crashed cell ran
    assert resumed.verdict == "passed"


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
    from edgeexport.matrix import sign_bundle
    from edgeexport.matrix.records import apply_verify
    from edgeexport.matrix.tasks import pack, verify_cell

    m, root, _ = first
    rec = cells(m)["coreml"]
    bundle = root / "out" / rec.cell.bundle
    public = load_public_key(root / "cache" / "keys" / "matrix.pub")
    spec = {"label": "x", "key": rec.cell.key, "attempts_dir": str(tmp_path / "attempts"), "threads": 1, "runs": 2,
            "warmup": 0, "trust_key": public.hex()}
    result = verify_cell(spec, pack(bundle))
    assert result["ok"], result.get("error")
    assert result["attempt"] == 1 and result["node"]["hostname"] == socket.gethostname()
    sig = result["report"]["signature"]
    assert sig["signed"] and sig["trusted"] and sig["key_fingerprint"] == m.matrix.signing_key
    out = tmp_path / "out"
    (out / rec.cell.folder).mkdir(parents=True)
    merged = apply_verify(rec, result, out)
    assert merged.status == "not_run" and "CoreML prediction needs macOS" in merged.reason, merged.reason
    assert (out / merged.cell.verify["report"]).is_file()
    # the same bundle re-signed by a key the matrix does not trust is refused before anything runs
    other = tmp_path / "other"
    generate_keypair(tmp_path, "other")
    shutil.copytree(bundle, other)
    sign_bundle(other, load_private_key(tmp_path / "other.key"), load_public_key(tmp_path / "other.pub"))
    refused = verify_cell({**spec, "attempts_dir": str(tmp_path / "attempts2")}, pack(other))
    assert not refused["ok"] and "not a trusted key" in refused["error"], refused
