"""The quantization-hostile corpus through every int8 target (``make bench``; ``--only-corpus-int8`` alone):
for each fault of ``tests/support/faults.py`` on the trained PyConvResNet-18 and each int8 target, the int8 SNR
of the clean model, of the faulted model as built (``equalize: off``), with ``equalize: auto``, and after the
budget search (``equalize: off``, budget 2 dB under the clean model's SNR), with its float-set size.

Usage: ``python benchmarks/int8_corpus.py [--cases a,b] [--targets onnx-int8,...] [--side 224]``; each
measurement is cached as JSON in ``out/bench/int8corpus`` (``--fresh`` measures again), and the markdown
section is written to ``out/bench/int8corpus/benchmarks-section.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "out" / "bench" / "int8corpus"
SECTION = OUT / "benchmarks-section.md"
TARGETS = {"onnx-int8": {"calib_size": 8}, "openvino-int8": {"quantize": "int8", "calib_size": 8},
           "executorch-int8": {"quantize": "int8", "calib_size": 8},
           "litert-int8": {"quantize": "int8", "calib_size": 8}}
SPIKE_METHODS = {"onnx-int8": {"method": "percentile"}}  # where the target lets the calibration method be chosen


def _export(model, kind, opts, side, threads):
    import edgeexport

    with tempfile.TemporaryDirectory() as tmp:
        rep = edgeexport.export(model, (1, 3, side, side), {kind: opts}, images=2, bench=False, output=tmp,
                                threads=threads)
        art = rep.artifacts[kind]
        snr = art.worst("snr_db") if art.parity else None
        r = art.repair
        return {"snr_db": snr, "error": art.error, "notes": list(art.notes),
                "met": None if r is None else r.met,
                "float_modules": [] if r is None else list(r.float_modules),
                "builds": None if r is None else len(r.steps)}


def measure(case: str, kind: str, side: int, threads: int, fresh: bool) -> dict:
    from tests.support.faults import faulted, trained_pyconvresnet18

    path = OUT / f"{case}.{kind}.{side}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    clean_model = trained_pyconvresnet18()
    broken = faulted(case, clean_model)
    base = {**TARGETS[kind], "equalize": "off"}
    memo = OUT / f"clean.{kind}.{side}.json"  # the clean model's int8 is the same for every case
    if memo.exists() and not fresh:
        clean = json.loads(memo.read_text())
    else:
        clean = _export(clean_model, kind, base, side, threads)
        OUT.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps(clean))
    row = {"case": case, "target": kind, "side": side, "clean": clean["snr_db"],
           "built": _export(broken, kind, base, side, threads)["snr_db"]}
    auto = _export(broken, kind, {**base, "equalize": "auto"}, side, threads)
    row["auto"], row["auto_notes"] = auto["snr_db"], [n for n in auto["notes"] if n.startswith("equalize")]
    if case == "rare_spikes" and kind in SPIKE_METHODS:
        row["method"] = _export(broken, kind, {**base, **SPIKE_METHODS[kind]}, side, threads)["snr_db"]
    budget = round(clean["snr_db"] - 2.0, 2)
    search = _export(broken, kind, {**base, "budget": {"snr_db": budget}}, side, threads)
    row.update(budget=budget, search=search["snr_db"], met=search["met"], float_modules=search["float_modules"],
               builds=search["builds"])
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    return row


def _f(v):
    return "—" if v is None else f"{v:.2f}"


def section(rows: list[dict]) -> str:
    lines = ["## int8 on models that int8 finds hard (equalization and the float set)", "",
             "The trained PyConvResNet-18 with function-preserving faults (`tests/support/faults.py`; logits within "
             "2e-6 of the clean model's scale), one image pair at {side}x{side}, 8 calibration batches, default "
             "options otherwise (`python benchmarks/int8_corpus.py`). SNR in dB against eager PyTorch: the clean "
             "model's int8, the faulted model's as built (`equalize: off`), with `equalize: auto`, and after the "
             "search (`equalize: off`, budget 2 dB under clean) with the size of its float set.".format(
                 side=rows[0]["side"] if rows else 224), "",
             "| fault | target | clean | as built | equalize auto | search (budget) | float set | builds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = {True: "met", False: "missed", None: "—"}[r["met"]]
        extra = f"; percentile calibration {_f(r['method'])}" if r.get("method") is not None else ""
        lines.append(f"| {r['case']} | {r['target']} | {_f(r['clean'])} | {_f(r['built'])}{extra} | {_f(r['auto'])} "
                     f"| {_f(r['search'])} ({met} {_f(r['budget'])}) | {len(r['float_modules'])}: "
                     f"{', '.join(f'`{m}`' for m in r['float_modules']) or 'none'} | {r['builds'] or '—'} |")
    channel = [r for r in rows if r["case"] in ("wide_channel", "outlier_weight") and r["auto"] is not None]
    near = sum(r["auto"] >= r["clean"] - 1.0 for r in channel)
    met = [r for r in rows if r["met"]]
    most = max((len(r["float_modules"]) for r in met), default=0)
    lines += ["", f"`equalize: auto` comes within 1 dB of the clean model on {near} of {len(channel)} channel-range rows "
              "(the residual add and the spikes are out of its reach: auto measures them, builds as is, and says so); "
              f"the search meets its budget on {len(met)} of {len(rows)} rows with at most {most} module(s) in float. Measured {time.strftime('%Y-%m-%d')}; ONNX graphs exported "
              "with the "
              f"{os.environ.get('EDGEEXPORT_EXPORTER', 'dynamo')} exporter."]
    return "\n".join(lines) + "\n\n"


def run(cases, targets, side=224, threads=2, fresh=False) -> str:
    rows = []
    for case in cases:
        for kind in targets:
            rows.append(measure(case, kind, side, threads, fresh))
            print(json.dumps({k: rows[-1][k] for k in ("case", "target", "clean", "built", "auto", "search", "met")}),
                  flush=True)
    text = section(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    SECTION.write_text(text)
    return text


def main():
    from tests.support.faults import CASES

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true")
    a = ap.parse_args()
    print(run(a.cases.split(","), a.targets.split(","), a.side, a.threads, a.fresh))


if __name__ == "__main__":
    main()
