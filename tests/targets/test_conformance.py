"""Every registered target, the same checks: a new backend is covered as soon as it is registered.

For each target: its declaration is complete; it builds on a small model and its artifact runs
through the runner lifecycle with parity against eager (or reports, visibly, that it cannot
build or run here); the "not run on this machine" path is never reported as passed; a parity
bundle round-trips through ``verify``; bad options are one-line errors.
"""
import json

import numpy as np
import pytest

from edgeexport import pipeline
from edgeexport.errors import UserError
from edgeexport.recipe import Recipe
from edgeexport.targets import Availability, BuildRecord, TargetOptions, get_target, list_targets, make_runner
from tests.conftest import assert_one_line_error

NAMES = [t.name for t in list_targets()]
MODEL, SHAPE = "mobilenetv3_small", [1, 3, 64, 64]
# The most faithful artifact of targets whose default options build a reduced-precision one.
FAITHFUL = {"quantize": {"mode": "fp16"}}


def recipe_for(name: str, out, **extra) -> Recipe:
    t = get_target(name)
    opts = FAITHFUL.get(name, {})
    stages = {"onnx": None, name: [opts] if t.multiple else opts} if name != "onnx" else {"onnx": opts}
    return Recipe.from_dict({"model": MODEL, "input_shape": SHAPE, "output": str(out), "stages": stages,
                             "inputs": {"images": 2}, "bench": {"runs": 3, "warmup": 1}, **extra})


def own(report, name: str):
    """The artifact the target itself built (not one it required)."""
    return next(a for a in report.artifacts.values() if a.target == name and a.required_by is None)


def own_kind(name: str) -> str:
    t = get_target(name)
    return t.format_for(t.Options(**FAITHFUL.get(name, {}))).kind


@pytest.fixture(scope="module", params=NAMES)
def built(request, tmp_path_factory):
    """One run per target: its artifact, checked and timed, and a parity bundle of it."""
    name = request.param
    out = tmp_path_factory.mktemp(name)
    r = recipe_for(name, out)
    r.stages.bundle = {"artifacts": [own_kind(name)]}
    report = pipeline.run(r)
    return name, out, report


def test_declaration_is_complete():
    kinds, suffixes = set(), set()
    for t in list_targets():
        assert t.name and t.title and t.backend and t.help and t.install, t
        assert issubclass(t.Options, TargetOptions) and issubclass(t.Record, BuildRecord)
        assert t.Options.model_config.get("extra") == "forbid"
        assert t.formats and t.format_for(t.Options()) in t.formats
        for f in t.formats:
            assert f.kind not in kinds and f.suffix not in suffixes, f  # one table of formats, no clashes
            kinds.add(f.kind)
            suffixes.add(f.suffix)
            assert f.precision in ("fp32", "fp16", "int8")
        assert isinstance(t.build_availability(), Availability) and isinstance(t.run_availability(), Availability)


def test_a_target_without_build_or_runner_is_refused_at_registration():
    from edgeexport.targets import Format, Target, register_target
    from edgeexport.targets.registry import _TARGETS

    class HalfDone(Target):
        name = title = backend = help = "halfdone"
        formats = (Format(kind="halfdone", suffix=".halfdone", precision="fp32", runs_on="cpu"),)

        def build(self, ctx, options, art):
            art.finish(BuildRecord(), None)

    with pytest.raises(TypeError, match=r"does not implement \['runner'\]"):
        register_target(HalfDone)
    assert "halfdone" not in _TARGETS


@pytest.mark.parametrize("name", NAMES)
def test_format_options_build_that_format(name):
    """Each format's ``options`` build exactly that format, so an artifact kind names a build
    (``edgeexport matrix --targets onnx-int8``) and the table cannot drift from ``format_for``."""
    from edgeexport.targets import options_for_kind

    t = get_target(name)
    for fmt in t.formats:
        assert t.format_for(t.Options(**fmt.options)) == fmt, fmt.kind
        target, options = options_for_kind(fmt.kind)
        assert target is t and options == t.Options(**fmt.options)


def test_build_check_and_runner_lifecycle(built):
    name, out, report = built
    t = get_target(name)
    art = own(report, name)
    if not t.build_availability().ok:
        assert not art.built and art.path is None
        assert art.status == "not_run" and "not built on this machine" in art.reason
        return
    assert art.error is None, art.error
    assert art.built and art.runner.target == name
    assert isinstance(art.record(), t.Record)  # the record round-trips through the report JSON
    if not t.run_availability().ok:
        assert art.status == "not_run" and "not run on this machine" in art.reason
        assert art.latency is None
        return
    assert art.status == "passed", art.model_dump_json()[:2000]
    assert art.latency.median_ms > 0
    # the runner lifecycle, from the spec recorded in the report
    runner = make_runner(art.runner, threads=1)
    x = np.zeros(SHAPE, np.float32)
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer({"input": x})
    with runner:
        got = runner.infer({"input": x})
        assert set(got) == {"logits"} and got["logits"].shape == (1, 1000)
        assert all(isinstance(v, np.ndarray) for v in got.values())
    assert not runner.is_active


def test_not_run_here_is_never_passed(tmp_path, monkeypatch):
    """The pipeline's checks when a runtime is missing: "not run here", untimed, distinct from passed.
    (The pipeline calls every target the same way; each target's own path is in the bundle test.)"""
    from edgeexport.report import ReportBuilder
    from edgeexport.report.text import summary_rows

    t = get_target("onnx")
    # Build with the machine as it is (the ONNX build checks its graph with ONNX Runtime), then take
    # the runtime away for the checks, as on a build-only host.
    ctx = pipeline.prepare(recipe_for("onnx", tmp_path, bench={"enabled": True, "runs": 1, "warmup": 0}))
    for target_cls, options, required_by in pipeline.plan(ctx):
        ctx.artifacts.append(pipeline.build(ctx, target_cls, options, required_by))
    with monkeypatch.context() as m:
        m.setattr(t, "run_availability", classmethod(lambda cls: Availability(False, "simulated absence")))
        for a in ctx.artifacts:
            pipeline.check_artifact(ctx, a)
        pipeline.time_all(ctx)
    report = pipeline.report_of(ctx, ReportBuilder())
    art = own(report, "onnx")
    assert art.latency is None  # nothing that did not run is timed
    assert art.status == "not_run"
    assert art.reason == "not run on this machine: simulated absence"
    row = next(r for r in summary_rows(report) if r[0] == art.name)
    assert row[4] == "not run here" and "passed" not in row[4]
    assert report.verdict == "passed" and report.failed == []  # not run is not a failure either
    assert report.fastest(passing=True) is None  # ...and never the fastest passing artifact


@pytest.mark.parametrize("name", NAMES)
def test_missing_converter_is_exit_2_with_the_install_hint(name, cli, tmp_path, monkeypatch):
    t = get_target(name)
    monkeypatch.setattr(t, "build_availability", classmethod(lambda cls: Availability(False, "simulated absence")))
    args = [name, MODEL, "--shape", "1x3x64x64", "--images", "1", "--no-bench", "-o", tmp_path]
    if name in FAITHFUL:
        args[2:2] = [f"--{k}={v}" for k, v in FAITHFUL[name].items()]
    code, _, err = cli(*args)
    assert_one_line_error(code, err, f"{t.title} is not available: simulated absence")
    assert t.install.split()[0] in err
    assert not [p for p in tmp_path.iterdir() if any(p.name.endswith(f.suffix) for f in t.formats)]


def test_bundle_round_trip(built, monkeypatch):
    """The run's bundle verifies with the target's runtime alone; without the runtime it is "not run"."""
    from edgeexport.bundle import verify_bundle

    name, out, report = built
    art = own(report, name)
    if art.error or not art.built:
        pytest.skip(f"{name} built nothing here: {art.reason}")
    bundle = out / f"{MODEL}.{art.kind}.bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["runner"]["target"] == name and manifest["artifact"]["kind"] == art.kind
    t = get_target(name)
    verified = verify_bundle(bundle, threads=1, runs=2, warmup=0).artifacts[art.kind]
    if t.run_availability().ok:
        assert verified.status == "passed", verified.parity
        assert verified.latency.median_ms > 0
    else:
        assert verified.status == "not_run"
    monkeypatch.setattr(t, "run_availability", classmethod(lambda cls: Availability(False, "simulated absence")))
    absent = verify_bundle(bundle, threads=1, runs=2, warmup=0).artifacts[art.kind]
    assert absent.status == "not_run" and "simulated absence" in absent.reason
    assert absent.latency is None


@pytest.mark.parametrize("name", NAMES)
def test_bad_options(name, cli, tmp_path):
    t = get_target(name)
    stage = [{"no_such_option": 1}] if t.multiple else {"no_such_option": 1}
    with pytest.raises(UserError, match=rf"stages\.{name}.*no_such_option: unknown key \(known: "):
        Recipe.from_dict({"model": MODEL, "stages": {name: stage}})
    code, _, err = cli(name, MODEL, "--no-such-option", "1", "-o", tmp_path)
    assert code == 2 and "no-such-option" in err
    # a value outside a choice is one line naming the option
    choice = next(((n, f) for n, f in t.Options.model_fields.items()
                   if "Literal" in str(f.annotation) and (f.json_schema_extra or {}).get("cli") is not False), None)
    if choice is not None:
        flag = (choice[1].json_schema_extra or {}).get("flag") or "--" + choice[0].replace("_", "-")
        code, _, err = cli(name, MODEL, flag, "no-such-value", "-o", tmp_path)
        assert_one_line_error(code, err, choice[0])
