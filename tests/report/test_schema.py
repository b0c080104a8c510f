"""The report's JSON: a published JSON Schema that matches the code, reports written since schema 1 that
still load (stored examples of a run, a bundle verification and a matrix), and one-line refusals of
files that are not reports or come from a newer edgeexport."""
import json
from pathlib import Path

import jsonschema
import pytest

from edgeexport.errors import UserError
from edgeexport.report import SCHEMA_VERSION, load_report, report_from_dict
from edgeexport.report.schema import json_schema

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "tests" / "fixtures" / "reports"
EXAMPLES = sorted(STORED.glob("schema-*/*.report.json"))
PUBLISHED = ROOT / "schemas" / "report.schema.json"


def test_the_published_schema_is_the_code_s():
    assert json.loads(PUBLISHED.read_text()) == json.loads(json.dumps(json_schema(), sort_keys=True)), \
        "schemas/report.schema.json is stale: run `make schema`"


def test_there_is_a_stored_example_of_every_kind_for_the_current_schema():
    kinds = {json.loads(p.read_text())["kind"] for p in STORED.glob(f"schema-{SCHEMA_VERSION}/*.report.json")}
    assert kinds == {"run", "verify", "matrix"}


def contains(big, small) -> bool:
    """Every key and value of ``small`` is in ``big`` (which may have more keys: fields added since)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return big == small


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_reports_load_validate_and_round_trip(path):
    raw = json.loads(path.read_text())
    report = load_report(path)
    assert report.kind == raw["kind"] and report.verdict == raw["verdict"] and report.failed == raw["failed"]
    again = json.loads(report.to_json())
    jsonschema.validate(again, json.loads(PUBLISHED.read_text()))  # what it reads as is what the schema publishes
    if raw["schema_version"] == SCHEMA_VERSION:
        jsonschema.validate(raw, json.loads(PUBLISHED.read_text()))
        assert again == raw  # nothing lost or invented
    else:  # an older report: upgraded, nothing it said lost
        assert again["schema_version"] == SCHEMA_VERSION
        assert contains(again, {k: v for k, v in raw.items() if k != "schema_version"})


@pytest.mark.parametrize("version", sorted({p.parent.name for p in EXAMPLES}))
def test_what_the_stored_examples_hold(version):
    run = load_report(STORED / version / "run.report.json")
    assert list(run.artifacts) == ["onnx", "onnx-int8", "coreml"] and run.verdict == "passed"
    assert run.artifacts["coreml"].status == "not_run" and run.fastest(passing=True).name in ("onnx", "onnx-int8")
    assert run.eager.task.metric == "miou" and run.artifacts["onnx-int8"].task.drop_points is not None
    assert run.artifacts["onnx-int8"].record().plan in {"all", "float_stem", "dense"}
    verify = load_report(STORED / version / "verify.report.json")
    assert verify.kind == "verify" and verify.signature.status == "unsigned"
    matrix = load_report(STORED / version / "matrix.report.json")
    assert matrix.matrix.kinds == ["onnx", "coreml"] and matrix.artifacts["mnv3s/coreml"].cell.cache == "miss"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_report_command_renders_stored_reports(path, cli, tmp_path):
    name = path.name.removesuffix(".report.json")
    copy = tmp_path / path.name
    copy.write_text(path.read_text())
    code, out, err = cli("report", copy, "--html")
    assert code == 0, err
    assert "verdict: passed" in out and (tmp_path / f"{name}.report.html").is_file()


def test_derived_fields_are_recomputed_not_read():
    raw = json.loads((STORED / f"schema-{SCHEMA_VERSION}" / "run.report.json").read_text())
    raw["artifacts"]["onnx"]["status"] = "failed"
    raw["verdict"], raw["failed"] = "passed", []  # what a hand-edited file might claim
    report = report_from_dict(raw)
    assert report.verdict == "failed" and report.failed == ["onnx"]


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), "is newer than this edgeexport's"),
    (lambda r: r.pop("schema_version"), "before reports had a schema"),
    (lambda r: r.update(schema_version="1"), "is not a report schema version"),
    (lambda r: r.update(artifacts=[]), "not a valid edgeexport report: artifacts"),
    (lambda r: r.pop("edgeexport"), "not an edgeexport report"),
])
def test_files_that_are_not_readable_reports_are_one_line_errors(edit, needle, tmp_path):
    raw = json.loads((STORED / f"schema-{SCHEMA_VERSION}" / "verify.report.json").read_text())
    edit(raw)
    path = tmp_path / "x.report.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError, match=needle) as exc:
        load_report(path)
    assert "\n" not in str(exc.value)
