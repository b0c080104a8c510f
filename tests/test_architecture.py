"""The package's shape, checked: no import cycles at any level, no module over 600 lines, no shared module
that branches on a backend's name, and an import-linter independence contract that covers every target.
(`lint-imports`, run by `make test`, checks the layers themselves.)"""
import ast
import tomllib
from pathlib import Path

import grimp
import pytest

from edgeexport.targets import all_formats, list_targets, target_modules

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeexport"
MAX_LINES = 600


def test_no_import_cycles_anywhere():
    """Not between siblings only (import-linter's contract) but between any modules, a package and its
    own modules included; imports inside functions count, those under ``if TYPE_CHECKING:`` do not."""
    graph = grimp.build_graph("edgeexport", exclude_type_checking_imports=True)
    cycles = [(m, other) for m in graph.modules for other in graph.find_modules_directly_imported_by(m)
              if graph.chain_exists(importer=other, imported=m)]
    assert not cycles, cycles[:5]


@pytest.mark.parametrize("folder", ["edgeexport", "tests", "benchmarks"])
def test_no_module_over_600_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def _names() -> set[str]:
    names = {t.name for t in list_targets()} | {t.backend for t in list_targets()}
    return names | {f.kind for _, f in all_formats()}


def test_no_shared_module_branches_on_a_target_name():
    """Outside edgeexport/targets/, no comparison against a target's name, backend or artifact kind: what a
    backend needs is declared by its target, not special-cased by the pipeline, reports or the matrix."""
    names, found = _names(), []
    for path in PACKAGE.rglob("*.py"):
        if "targets" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    hits = [e.value for e in elts if isinstance(e, ast.Constant) and e.value in names]
                    found += [f"{path.relative_to(ROOT)}:{node.lineno}: {h!r}" for h in hits]
    assert not found, found


def test_the_independence_contract_covers_every_target():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independence = next(c for c in config if c["type"] == "independence")
    assert sorted(independence["modules"]) == sorted(f"edgeexport.targets.{m}" for m in target_modules())
    layers = next(c for c in config if c.get("containers") == ["edgeexport.targets"])
    assert sorted(layers["layers"][0].replace(" ", "").split("|")) == sorted(target_modules())


def test_the_layers_contract_places_every_top_level_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c.get("containers") == ["edgeexport"])
    placed = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    present = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert layers["exhaustive"] and placed == present, placed ^ present
