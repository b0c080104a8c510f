"""`make bench`'s repair section: LR-ASPP-Large with its trained weights on every int8 target under one accuracy
budget (recipes/budget/lraspp_mobilenetv3.yaml): the modules each keeps in float, and what they cost."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeexport import pipeline  # noqa: E402
from edgeexport.recipe import Recipe  # noqa: E402
from edgeexport.report import Report, report_from_dict  # noqa: E402

RECIPE = ROOT / "recipes" / "budget" / "lraspp_mobilenetv3.yaml"
OUT = ROOT / "out" / "bench" / "repair"
REPORT = OUT / "bench-repair.json"


def run_repair(threads: int | None) -> Report:
    recipe = Recipe.from_yaml(RECIPE)
    recipe = Recipe.from_dict({**recipe.model_dump(mode="json"), "output": str(OUT),
                               "bench": {**recipe.bench.model_dump(mode="json"), "threads": threads}})
    t0 = time.perf_counter()
    rep = pipeline.run(recipe)
    print(f"repair: {time.perf_counter() - t0:.0f} s, verdict {rep.verdict}", file=sys.stderr)
    REPORT.write_text(rep.to_json())
    return rep


def reused_repair() -> Report:
    try:
        return report_from_dict(json.loads(REPORT.read_text()), str(REPORT))
    except (OSError, ValueError):
        sys.exit(f"--reuse-repair: no earlier run left {REPORT.relative_to(ROOT)}")


def _m(metrics: dict, key: str, spec: str) -> str:
    v = metrics.get(key)
    return "–" if v is None else format(v, spec)


def repair_section(rep: Report) -> str:
    threads = rep.machine.threads if rep.machine else None
    lines = ["", "## Kept in float to meet a budget (the repair)", "",
             f"`edgeexport run {RECIPE.relative_to(ROOT)}`: LR-ASPP-Large, trained weights, "
             f"{'x'.join(map(str, rep.model.input_shape)) if rep.model else ''}, every int8 target with the budget "
             "`miou_drop=0.5, snr_db=25` (mIoU on the 40 labeled images; int8 already holds mIoU here, so the SNR "
             "limit is what makes the search work). Before / after: the artifact as built and the one kept; "
             f"latency: the all-int8 and the repaired artifact timed interleaved in the same run ({threads} threads).",
             "", "| int8 target | search | kept in float | builds | search s | SNR dB before → after | "
                 "mIoU drop before → after (pts) | all-int8 ms | repaired ms | cost |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in rep.artifacts.values():
        r = a.repair
        if r is None:
            continue
        first = r.steps[0].metrics
        last = next((s.metrics for s in reversed(r.steps) if s.float_modules == r.float_modules and s.metrics),
                    first)
        how = "node loop (ONNX Runtime's int8 builder)" if "node-level" in r.search else \
            "NNCF accuracy control" if "NNCF" in r.search else "diff-guided" + (
                " (ranked on the PT2E program)" if r.ranked_on and "PyTorch" in r.ranked_on else "")
        kept = (", ".join(f"`{m}`" for m in r.float_modules) or "nothing") + ("" if r.met else " (**budget not met**)")
        lines.append(f"| {a.name} | {how} | {kept} | {len(r.steps)} | {r.seconds:.0f} | "
                     f"{_m(first, 'snr_db', '.1f')} → {_m(last, 'snr_db', '.1f')} | "
                     f"{_m(first, 'task_drop', '+.2f')} → {_m(last, 'task_drop', '+.2f')} | "
                     f"{_m({'v': r.int8_ms}, 'v', '.1f')} | {_m({'v': r.repaired_ms}, 'v', '.1f')} | "
                     f"{_m({'v': r.cost}, 'v', '.2f')}x |")
    return "\n".join(lines) + "\n"
