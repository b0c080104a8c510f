"""`make bench`: eager PyTorch vs every artifact, medians with the same threads, in one run.

Each case is a recipe run through the normal pipeline (so the numbers are the ones a
user's report shows); this script only collects the reports into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeexport import pipeline  # noqa: E402
from edgeexport.doctor import installed_versions as versions  # noqa: E402
from edgeexport.recipe import Recipe  # noqa: E402
from edgeexport.report import STATUS_TEXT, Report, report_from_dict  # noqa: E402

from benchmarks import int8_corpus  # noqa: E402
from benchmarks.repair import repair_section, reused_repair, run_repair  # noqa: E402
from tests.support.faults import CASES as FAULTS  # noqa: E402

# Option sets per target for the head cases (only targets registered here are used).
STAGES = {
    "onnx": {},
    "quantize": [{"mode": "int8"}, {"mode": "fp16"}],
    "trt": {"precision": "fp16"},  # built where TensorRT and a GPU exist; here: pre-flight, "not run here"
    "coreml": [{"precision": "fp16"}],  # converted and validated here, predicted on macOS only
    "executorch": [{"quantize": "none"}, {"quantize": "int8"}],
    "litert": [{"quantize": "none"}, {"quantize": "int8"}],
    "ncnn": [{"precision": "fp32"}, {"precision": "fp16"}],
    "openvino": [{"quantize": "none"}, {"quantize": "int8"}],
}

# The issues' targets, checked in the tables: (artifact kind, what, limit). "x_fp32" is the latency
# against the fp32 ONNX graph of the same run; "drop" the task metric's drop against eager, in points.
INT8_SEG = [("onnx-int8", "x_fp32", 0.70), ("onnx-int8", "drop", 0.5), ("executorch-int8", "drop", 0.5)]
INT8_CLS = [("onnx-int8", "x_fp32", 0.50), ("onnx-int8", "drop", 0.5)]
FAITHFUL = [(k, "drop", 0.1) for k in ("onnx", "onnx-fp16", "executorch", "litert", "ncnn", "ncnn-fp16", "openvino")]
FP32_PARITY = [(k, "max_abs_scaled", 1e-4) for k in ("litert", "ncnn", "openvino")]

# name -> (recipe fields, targets)
CASES = {
    "lraspp_mobilenetv3:shapes": ({"model": "lraspp_mobilenetv3", "weights": "lraspp_mobilenetv3:shapes",
                                   "input_shape": [1, 3, 520, 520]}, INT8_SEG + FAITHFUL + FP32_PARITY),
    "lraspp_mobilenetv3_small:shapes": ({"model": "lraspp_mobilenetv3_small",
                                         "weights": "lraspp_mobilenetv3_small:shapes",
                                         "input_shape": [1, 3, 520, 520]}, FAITHFUL),
    "pyconvresnet18:shapes": ({"model": "pyconvresnet18", "weights": "pyconvresnet18:shapes",
                               "input_shape": [1, 3, 224, 224]}, INT8_CLS + FAITHFUL),
    "pyconvresnet50:shapes": ({"model": "pyconvresnet50", "weights": "pyconvresnet50:shapes",
                               "input_shape": [1, 3, 224, 224]}, INT8_CLS + FAITHFUL),
    "lraspp_mobilenetv3 (torchvision checkpoint)": (
        {"model": "lraspp_mobilenetv3", "input_shape": [1, 3, 520, 520], "weights": "TORCHVISION",
         "inputs": {"eval_data": "none"}}, [("onnx", "x_eager", 0.45)] + FP32_PARITY),
}


def torchvision_checkpoint() -> str:
    """A torchvision lraspp_mobilenet_v3_large state dict (see tests/fixtures/make_reference_fixtures.py)."""
    from tests.support.reference import Reference

    path = ROOT / "out" / "bench" / "torchvision_lraspp_mobilenet_v3_large.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    Reference("torchvision_lraspp_mobilenet_v3_large").save_checkpoint(path)
    return str(path)


def stages(args) -> dict:
    from edgeexport.targets import list_targets

    names = {t.name for t in list_targets()}
    skip = set(args.skip_targets or [])
    return {k: v for k, v in STAGES.items() if k in names and k not in skip}


def case_folder(name: str) -> Path:
    return ROOT / "out" / "bench" / (name.replace(":", "-").split()[0] + ("-tv" if "torchvision" in name else ""))


def reused_case(name: str) -> Report:
    """A head case's report as its last run left it (``--reuse-cases``)."""
    path = case_folder(name) / "bench-case.json"
    try:
        return report_from_dict(json.loads(path.read_text()), str(path))
    except (OSError, ValueError):
        sys.exit(f"--reuse-cases: no earlier run of {name} left {path.relative_to(ROOT)} (run it with --only)")


def run_case(name: str, fields: dict, args) -> Report:
    fields = dict(fields)
    if fields.get("weights") == "TORCHVISION":
        fields["weights"] = torchvision_checkpoint()
    inputs = {"images": args.images, "eval_images": args.eval_images, **fields.pop("inputs", {})}
    recipe = Recipe.from_dict({
        **fields, "output": str(case_folder(name)), "dynamic": "none", "inputs": inputs,
        "stages": stages(args),
        "bench": {"warmup": args.warmup, "runs": args.runs, "budget_s": args.budget, "threads": args.threads},
    })
    t0 = time.perf_counter()
    rep = pipeline.run(recipe)
    print(f"{name}: {time.perf_counter() - t0:.0f} s, verdict {rep.verdict}", file=sys.stderr)
    (case_folder(name) / "bench-case.json").write_text(rep.to_json())
    return rep


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def measures(rep: Report) -> dict[str, dict]:
    """Per artifact kind: x_eager, x_fp32 (against the fp32 ONNX graph of the same run), drop, max_abs_scaled."""
    base = rep.artifacts.get("onnx")
    base = base.latency if base else None
    return {kind: {"x_eager": a.ratio_to_eager,
                   "x_fp32": a.latency.median_ms / base.median_ms if a.latency and base else None,
                   "drop": a.task.drop_points if a.task else None, "max_abs_scaled": a.worst("max_abs_scaled")}
            for kind, a in rep.artifacts.items()}


def target_rows(name: str, rep: Report) -> list[tuple[str, str, float, float | None, bool | None]]:
    got = measures(rep)
    rows = []
    for kind, what, limit in CASES[name][1]:
        if kind not in got:
            continue
        v = got[kind][what]
        rows.append((kind, what, limit, v, None if v is None else v <= limit))
    return rows


def _parity_status(a) -> str:
    return STATUS_TEXT.get(a.status, a.status)


def _mark(ok):
    return "" if ok is None else (" ✓" if ok else " ✗")


def render(reports: dict[str, Report], args) -> str:
    any_rep = next(iter(reports.values()))
    mach = any_rep.machine.model_dump()
    lines = [
        "# Benchmarks", "",
        f"Generated by `make bench` on {dt.date.today().isoformat()}. Every latency is a median over "
        f"up to {args.runs} timed runs after {args.warmup} warm-up runs, measured through the same runner loop, "
        f"with **{mach['threads']} threads for every backend**, all ratios from the same run.", "",
        *([f"Assembled from separate runs of `benchmarks/run.py` (`--reuse-cases` / `--reuse-matrix`): each head "
           f"case's ratios come from one run of that case; the reports' own dates: "
           f"{', '.join(sorted({r.created[:10] for r in reports.values()}))}.", ""]
          if args.reuse_cases or args.reuse_matrix else []),
        f"- machine: {mach['cpu']} ({mach['cores']} cores available, {mach['machine']}), {mach['os']}, "
        f"Python {mach['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items() if v),
        "- weights: the reference checkpoints trained here on the built-in shapes task (`MODEL:shapes`, see "
        "`edgeexport info MODEL`), and a torchvision LR-ASPP checkpoint (ImageNet/COCO-trained weights, no labels "
        "here: tensor parity only). Task metrics on the `shapes_*:eval` split (synthetic, see the README); parity "
        "on the bundled evaluation photographs; static input shapes.", "",
        "## Task accuracy on trained weights", "",
        "Each artifact's task metric on the labeled evaluation images, its drop against eager PyTorch in points "
        "(negative: above eager), and its latency against eager and against the fp32 ONNX graph of the same run.",
        "",
        "| weights | input | artifact | precision | metric | value | drop (points) | x eager | x fp32 ONNX | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in reports.items():
        et = rep.eager.task
        if not et:
            continue
        shape = "x".join(map(str, rep.model.input_shape))
        lines.append(f"| {name} | {shape} | torch eager | fp32 | {et.metric} ({et.images} images) | "
                     f"{et.value:.4f} | – | 1.00 | – | reference |")
        got = measures(rep)
        for a in rep.artifacts.values():
            t, m = a.task, got[a.kind]
            lines.append(f"| {name} | {shape} | {a.kind} ({a.backend}) | {a.precision} | "
                         f"{t.metric if t else '–'} | {fmt(t and t.value, '.4f')} | "
                         f"{fmt(t and t.drop_points, '+.2f')} | {fmt(m['x_eager'], '.2f')} | "
                         f"{fmt(m['x_fp32'], '.2f')} | {_parity_status(a)} |")
    lines += ["", "## Targets", "", "| weights | artifact | measure | limit | measured | |", "|---|---|---|---|---|---|"]
    for name, rep in reports.items():
        for kind, what, limit, v, ok in target_rows(name, rep):
            lines.append(f"| {name} | {kind} | {what} | ≤ {limit:g} | {fmt(v, '.3g')} |{_mark(ok)} |")
    lines += [
        "", "## Parity and latency", "",
        "| weights | input | artifact | precision | size | median ms | p90 ms | x eager | x fp32 ONNX | parity | "
        "max err / scale | SNR dB | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rep in reports.items():
        shape = "x".join(map(str, rep.model.input_shape))
        e = rep.eager.latency
        lines.append(f"| {name} | {shape} | torch eager | fp32 | – | {fmt(e and e.median_ms, '.1f')} | "
                     f"{fmt(e and e.p90_ms, '.1f')} | 1.00 | – | reference | – | – | – |")
        got = measures(rep)
        for a in rep.artifacts.values():
            lat = a.latency
            size = f"{a.size_bytes / 1e6:.1f} MB" if a.size_bytes else "–"
            status = ("build failed: " + a.error.replace("|", "/")[:120]) if a.error else _parity_status(a)
            if a.failures:
                status += " (" + "; ".join(a.failures) + ")"
            lines.append(
                f"| {name} | {shape} | {a.kind} ({a.backend}) | {a.precision} | {size} | "
                f"{fmt(lat and lat.median_ms, '.1f')} | {fmt(lat and lat.p90_ms, '.1f')} | "
                f"{fmt(a.ratio_to_eager, '.2f')} | {fmt(got[a.kind]['x_fp32'], '.2f')} | {status} | "
                f"{fmt(a.worst('max_abs_scaled'), '.2e')} | {fmt(a.worst('snr_db'), '.1f')} | "
                f"{fmt(a.worst('agreement'), '.4f')} |")
    lines += ["", "Raw reports: `out/bench/<case>/<model>.report.json`.", ""]
    return "\n".join(lines)


MATRIX_OUT = ROOT / "out" / "bench" / "matrix"
MATRIX_PAGE = MATRIX_OUT / "matrix.report.html"
MATRIX_SECTION = MATRIX_OUT / "benchmarks-section.md"  # what --reuse-matrix puts in BENCHMARKS.md
MATRIX_KINDS = ["onnx", "onnx-int8", "executorch", "litert", "ncnn", "openvino", "coreml"]
# The matrix-vs-serial comparison runs on these models' cells (both ways, same cells); the full serial
# pass over the whole zoo (--matrix-serial-all) doubles the benchmark's longest section.
SERIAL_MODELS = ["lraspp_mobilenetv3_large", "mobilenetv3_small", "pyconvresnet18", "res2net50_26w_4s", "scnet50",
                 "panet_mobilenetv3"]


def _matrix_metric(rec, key: str):
    return rec.worst(key) if rec is not None else None


def _matrix_status(rec) -> str:
    if rec is None:
        return "–"
    if rec.status in ("build_failed", "error"):
        return "**failed**: " + (rec.why() or "").replace("|", "/")[:100]
    if rec.status == "not_run" and rec.built:
        return f"converted, not run here ({(rec.reason or '').split(' (')[0]})"
    return _parity_status(rec)


def zoo_matrix(args) -> str:
    """Every zoo model from its recipe (fp32 ONNX parity) plus int8, ExecuTorch and CoreML, at native size,
    through ``edgeexport matrix --cluster local`` (edgeexport.matrix): one Ray task per model and artifact
    kind, 1 thread each. Measures the matrix's wall time against the same cells one after another (a
    1-CPU local cluster) and a re-run with nothing changed (every cell from the cache). The matrix page
    (out/bench/matrix/matrix.report.html) links every model's report of its cells."""
    from edgeexport.matrix import run_matrix
    from edgeexport.zoo import list_models

    every = list_models()
    models = [n for n in every if n in args.matrix_models] if args.matrix_models else every
    left_out = [n for n in every if n not in models]
    load0 = os.getloadavg()[0]
    overrides = {"inputs": {"images": 2}, "bench": {"runs": args.matrix_runs, "warmup": 2, "budget_s": 15.0}}
    common = dict(cache=MATRIX_OUT.parent / "matrix-cache", overrides=overrides, threads=1,
                  log=lambda m: print(f"zoo {m}", file=sys.stderr))
    m = run_matrix(models, MATRIX_KINDS, use_cache=False, output=MATRIX_OUT, **common)
    again = run_matrix(models, MATRIX_KINDS, output=MATRIX_OUT, **common)
    cores = m.machine.cores
    timing = [f"- `--cluster local` on {cores} cores: **{m.elapsed_s:.0f} s** for {len(m.artifacts)} cells "
              f"(their own wall times add up to {m.matrix.cells_s:.0f} s)"]
    if args.matrix_serial:  # the same cells one after another, built again (not from the cache)
        # named models (--matrix-models) are compared on all their cells; the whole zoo on SERIAL_MODELS
        subset = models if args.matrix_serial_all or args.matrix_models else \
            [n for n in args.matrix_serial_models or SERIAL_MODELS if n in models]
        par = m if subset == models else run_matrix(subset, MATRIX_KINDS, use_cache=False,
                                                    output=MATRIX_OUT.parent / "matrix-subset", html=False, **common)
        serial = run_matrix(subset, MATRIX_KINDS, cpus=1, use_cache=False, output=MATRIX_OUT.parent / "matrix-serial",
                            html=False, **common)
        ratio = par.elapsed_s / serial.elapsed_s
        which = "every cell" if subset == models else f"the {len(par.artifacts)} cells of {', '.join(subset)}"
        timing.append(f"- {which}: {par.elapsed_s:.0f} s as a matrix, {serial.elapsed_s:.0f} s one after another "
                      f"(a 1-CPU local cluster): **{ratio:.2f}x** (target ≤ 0.7x){' ✓' if ratio <= 0.7 else ' ✗'}")
    else:
        timing.append("- the same cells one after another: not timed in this run (--no-matrix-serial)")
    rerun = again.elapsed_s / m.elapsed_s
    timing.append(f"- a re-run with nothing changed: {again.elapsed_s:.1f} s, every cell from the cache "
                  f"({again.matrix.cache['hits']} hits, Ray not started): **{rerun:.3f}x** the first run (target ≤ 0.05x)"
                  f"{' ✓' if rerun <= 0.05 else ' ✗'}")
    page = MATRIX_PAGE.relative_to(ROOT)
    lines = ["", "## Every zoo model through every target", "",
             f"As one page, with each model's report (latency samples, error histograms, worst images, int8 "
             f"layers and plans) a click away: [{page}]({page}) (written by `make bench`).", "",
             "Run by `edgeexport matrix --cluster local`: each model's recipe (`recipes/NAME.yaml`, its fp32 ONNX "
             "stage, weights, tolerances and parity settings) restricted to one artifact kind per cell, a Ray task "
             "each (an int8 cell builds its own fp32 graph): the fp32 ONNX graph, an int8 build, fp32 ExecuTorch, LiteRT, "
             "ncnn and OpenVINO artifacts and a CoreML fp16 package, at the recipe's input shape (default weights: "
             "int8 accuracy here is on untrained weights and says little). **Latencies here are at 1 thread** "
             f"(each cell is a 1-CPU task), medians over up to {args.matrix_runs} interleaved runs against eager "
             "PyTorch at 1 thread in the same cell. CoreML: converted and validated here; its prediction needs a "
             "macOS node (`no node can run coreml` on this Linux machine).", "",
             *([f"Left out of this run (`--matrix-models`): {', '.join(left_out)}; "
                f"`edgeexport matrix {' '.join(left_out)} --targets {','.join(MATRIX_KINDS)}` runs them.", ""]
               if left_out else []),
             f"Matrix wall time, measured on {dt.date.today().isoformat()} (1-minute load average "
             f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on {cores} cores: above {cores} "
             "means other work shared the machine and every time here is inflated):", "", *timing, "",
             "| model | input | fp32 ONNX parity (max err / scale) | ONNX x eager | int8 x fp32 | int8 SNR dB | "
             "int8 agreement | ExecuTorch (max err / scale) | LiteRT | ncnn | OpenVINO | x eager: ET / LiteRT / ncnn / "
             "OpenVINO | CoreML |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    recs = {(a.model, a.kind): a for a in m.artifacts.values()}

    def fp32_cell(r):
        return f"{_matrix_status(r)} ({fmt(_matrix_metric(r, 'max_abs_scaled'), '.1e')})"

    def ratio(r, key):
        return getattr(r, key) if r is not None else None

    for name in models:
        onnx, int8, et, lrt, nc, ov, cm = (recs.get((name, k)) for k in MATRIX_KINDS)
        cells = (onnx, int8, et, lrt, nc, ov, cm)
        shape = "x".join(map(str, next((r.cell.shape for r in cells if r and r.cell.shape), []))) or "–"
        ratios = " / ".join(fmt(ratio(r, "ratio_to_eager"), ".2f") for r in (et, lrt, nc, ov))
        lines.append(
            f"| {name} | {shape} | {fp32_cell(onnx)} | "
            f"{fmt(ratio(onnx, 'ratio_to_eager'), '.2f')} | {fmt(ratio(int8, 'ratio_to_fp32'), '.2f')} | "
            f"{fmt(_matrix_metric(int8, 'snr_db'), '.1f')} | {fmt(_matrix_metric(int8, 'agreement'), '.3f')} | "
            f"{fp32_cell(et)} | {fp32_cell(lrt)} | {fp32_cell(nc)} | {fp32_cell(ov)} | {ratios} | {_matrix_status(cm)} |")
    print(f"wrote {MATRIX_PAGE}", file=sys.stderr)
    text = "\n".join(lines) + "\n"
    MATRIX_SECTION.write_text(text)
    return text


def reused_matrix() -> str:
    """The zoo-matrix section as the last full matrix run wrote it (``--reuse-matrix``)."""
    try:
        return MATRIX_SECTION.read_text()
    except OSError:
        sys.exit(f"--reuse-matrix: no earlier zoo matrix run left {MATRIX_SECTION.relative_to(ROOT)}")


CORPUS_OUT = ROOT / "out" / "bench" / "corpus"
CORPUS_SECTION = CORPUS_OUT / "benchmarks-section.md"  # what --reuse-corpus puts in BENCHMARKS.md


def _corpus_cell(rec) -> str:
    """A corpus cell: its verdict with the figure that decided it, "unsupported: OP at MODULE", or not run."""
    if rec is None:
        return "–"
    if rec.status == "unsupported":
        return f"**unsupported**: `{rec.op}` at `{(rec.module or '?').split(' (')[0]}`"
    if rec.status == "not_run" and rec.built:
        return "converted, not run here"
    if rec.precision == "int8" and rec.parity:
        return f"{_matrix_status(rec)} (SNR {fmt(_matrix_metric(rec, 'snr_db'), '.1f')} dB)"
    if rec.parity:
        return f"{_matrix_status(rec)} ({fmt(_matrix_metric(rec, 'max_abs_scaled'), '.0e')})"
    return _matrix_status(rec)


def corpus_matrix(args) -> str:
    """The public-architecture corpus (recipes/corpus: timm and torchvision models, seeded, BatchNorm settled
    on photographs) through every target, by ``edgeexport matrix --cluster local``: a model x target table
    where every cell is a verdict, "unsupported: OP at MODULE" or "not run here", and the pass rate per target."""
    from edgeexport.matrix import run_matrix
    from tests.support.corpus import KINDS, corpus

    entries = [e for e in corpus() if not args.corpus_models or e.row in args.corpus_models]
    overrides = {"bench": {"runs": args.matrix_runs, "warmup": 2, "budget_s": 15.0}}
    # in phases, every model's fp32 cells first (the verdicts that must hold), then int8, then ExecuTorch's int8
    # (PT2E's conv-BN folding and XNNPACK lowering: minutes a cell); the cache is shared, the table merged
    phases = [("fp32", [k for k in KINDS if "int8" not in k]),
              ("int8", [k for k in KINDS if "int8" in k and not k.startswith("executorch")]),
              ("executorch-int8", [k for k in KINDS if k == "executorch-int8"])]
    recs, elapsed, pages, cores = {}, 0.0, [], None
    for phase, kinds in phases:
        out = CORPUS_OUT / phase
        m = run_matrix([str(e.path) for e in entries], kinds, use_cache=args.corpus_cached_ok, threads=1,
                       output=out, cache=CORPUS_OUT.parent / "corpus-cache", overrides=overrides,
                       log=lambda msg: print(f"corpus {msg}", file=sys.stderr))
        recs.update({(a.model, a.kind): a for a in m.artifacts.values()})
        elapsed += m.elapsed_s
        cores = m.machine.cores
        pages.append((out / "matrix.report.html").relative_to(ROOT))
    fp32 = [k for k in KINDS if "int8" not in k and k != "coreml"]
    lines = ["", "## Public architectures through every target", "",
             "Models nobody here wrote: the corpus of `recipes/corpus/` (torchvision and timm architectures built "
             "offline with their own seeded initialisation, BatchNorm statistics settled on the bundled calibration "
             "photographs, `--settle-bn`), run by `edgeexport matrix recipes/corpus/*.yaml --targets "
             f"{','.join(KINDS)}` (three passes sharing one cache: fp32, int8, ExecuTorch int8) on {cores} cores in "
             f"{elapsed / 60:.0f} min. Parity is on 2 bundled "
             "photographs against eager PyTorch. fp32 cells give the largest error relative to the output's range; "
             "**int8 cells (marked \*) on seeded weights are a plumbing check**: they show the artifact builds, runs "
             "and tracks the fp32 model (SNR), not what int8 costs a trained model, which the sections above "
             "measure with task metrics. CoreML is converted and validated here; its prediction needs macOS. "
             "Every cell's report: " + ", ".join(f"[{pg}]({pg})" for pg in pages) + ".", "",
             "| model | brings | " + " | ".join(k + ("\*" if "int8" in k else "") for k in KINDS) + " |",
             "|---|---|" + "---|" * len(KINDS)]
    for e in entries:
        row = Path(e.path).stem
        lines.append(f"| {row} | {e.brings} | " + " | ".join(_corpus_cell(recs.get((row, k))) for k in KINDS) + " |")
    lines += ["", "Pass rate per target (unsupported cells count as not passed):", "",
              "| target | passed | failed | unsupported | other |", "|---|---|---|---|---|"]
    for k in KINDS:
        cells = [recs.get((Path(e.path).stem, k)) for e in entries]
        count = {s: sum(1 for r in cells if r is not None and r.status == s) for s in ("passed", "failed", "unsupported")}
        other = len(cells) - sum(count.values())
        lines.append(f"| {k}{' (plumbing)' if 'int8' in k else ''} | {count['passed']}/{len(cells)} | {count['failed']} "
                     f"| {count['unsupported']} | {other}{' (converted, not run here)' if k == 'coreml' else ''} |")
    cells = [recs.get((Path(e.path).stem, k)) for e in entries for k in fp32]
    passed = sum(1 for r in cells if r is not None and r.status == "passed")
    lines += ["", f"fp32 cells that pass parity: **{passed}/{len(cells)} ({100 * passed / len(cells):.0f}%)**; "
              "the rest are unsupported with the op and module named (target ≥ 90%).", ""]
    text = "\n".join(lines) + "\n"
    CORPUS_OUT.mkdir(parents=True, exist_ok=True)
    CORPUS_SECTION.write_text(text)
    return text


def _hetconv_stack():
    """Two HetConv(64 -> 64, P=4) layers with BN/ReLU: small enough for the reference form to export."""
    import torch
    from torch import nn

    from edgeexport.zoo.hetconv import HetConv

    torch.manual_seed(0)
    return nn.Sequential(HetConv(64, 64, 4, form="reference"), nn.BatchNorm2d(64), nn.ReLU(),
                         HetConv(64, 64, 4, form="reference"), nn.BatchNorm2d(64), nn.ReLU()).eval()


def rewrite_cases():
    """(case, model factory, input shape, {variant label: rewrite names or a callable}, exporter)."""
    from edgeexport.rewrite.hetconv import to_dense, to_grouped
    from edgeexport.zoo import create_model

    return [
        ("HetConv: reference -> dense / grouped (2 layers, 64 ch, P=4)", _hetconv_stack, (1, 64, 56, 56),
         {"reference": [], "dense": to_dense, "grouped": to_grouped}, "torchscript"),
        ("HetConv ResNet-34 (P=4): dense vs grouped", lambda: create_model("hetconv_resnet34_p4"), (1, 3, 224, 224),
         {"dense": to_dense, "grouped": to_grouped}, "torchscript"),
        ("BatchNorm folding, PyConvResNet-50 (dynamo exporter)", lambda: create_model("pyconvresnet50"),
         (1, 3, 224, 224), {"without": [], "fold_bn": ["fold_bn"]}, "dynamo"),
        ("9x9 adaptive pooling of a 60x60 map, PyConvSegNet-50 (dynamo exporter)",
         lambda: create_model("pyconvsegnet50"), (1, 3, 473, 473),
         {"dynamo's own decomposition": [], "adaptive_pool (MatMul)": ["adaptive_pool"]}, "dynamo"),
    ]


def rewrite_section(args) -> str:
    """Node count, file size, parity and latency of each rewrite against its original, in one run."""
    import contextlib
    import copy

    import numpy as np
    import torch

    from edgeexport.bench import benchmark_interleaved
    from edgeexport.targets.onnx import ExportFailed, export_onnx, simplify_onnx
    from edgeexport.rewrite import apply_rewrites
    from edgeexport.runners.onnxruntime import OnnxRuntimeRunner
    from edgeexport.source import NamedOutputs
    from edgeexport.util import default_threads

    threads = args.threads or default_threads()
    lines = ["", "## Export-friendly rewrites", "",
             "Each variant exported to ONNX (simplified with onnxsim) from the same weights; parity against the "
             "original eager module on one input; ONNX Runtime medians interleaved across the variants of a case.", "",
             "| case | variant | ONNX nodes | size | max err / scale vs eager | ORT median ms | x first variant |",
             "|---|---|---|---|---|---|---|"]
    for case, factory, shape, variants, exporter in rewrite_cases():
        base = factory()
        x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        with torch.no_grad():
            out = base(x)
        kind = "dict" if isinstance(out, dict) else "tensor"
        names = list(out) if kind == "dict" else ["out"]
        ref = (out[names[0]] if kind == "dict" else out).numpy()
        folder = ROOT / "out" / "bench" / "rewrites" / case.split(":")[0].split(",")[0].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        paths, rows = {}, {}
        for label, how in variants.items():
            model = copy.deepcopy(base)
            if callable(how):
                how(model)
            else:
                model, _ = apply_rewrites(model, how)
            wrapped = NamedOutputs(model, names, kind)
            path = folder / f"{label.split()[0].replace(chr(39), '')}.onnx"
            t0 = time.perf_counter()
            try:
                export_onnx(wrapped, x, path, input_name="input", output_names=names, opset=18, dynamic="none",
                            exporter=exporter)
                simplify_onnx(path, {"input": x.numpy()})
            except ExportFailed as exc:
                rows[label] = f"| {case} | {label} | export failed: {str(exc)[:80]} | | | | |"
                continue
            import onnx

            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            with OnnxRuntimeRunner(path, threads=threads) as r:
                got = r.infer({"input": x.numpy()})[names[0]]
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            paths[label] = path
            rows[label] = (nodes, path.stat().st_size, err, time.perf_counter() - t0)
        runners = {k: OnnxRuntimeRunner(p, threads=threads) for k, p in paths.items()}
        with contextlib.ExitStack() as stack:
            for r in runners.values():
                stack.enter_context(r)
            stats = benchmark_interleaved(runners, {"input": x.numpy()}, warmup=2, runs=args.matrix_runs * 2,
                                          budget_s=20)
        first = None
        for label in variants:
            row = rows.get(label)
            if isinstance(row, str) or row is None:
                lines.append(row or f"| {case} | {label} | – | | | | |")
                continue
            nodes, size, err, _ = row
            ms = stats[label].median_ms
            first = first or ms
            lines.append(f"| {case} | {label} | {nodes} | {size / 1e6:.2f} MB | {err:.1e} | {ms:.2f} | "
                         f"{ms / first:.2f} |")
        print(f"rewrites: {case} done", file=sys.stderr)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default="BENCHMARKS.md")
    ap.add_argument("--only", nargs="*", choices=list(CASES), metavar="CASE")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--eval-images", type=int, default=None, help="labeled images (default: the task's eval set)")
    ap.add_argument("--skip-targets", nargs="*", metavar="TARGET", help="targets left out of the head cases")
    ap.add_argument("--no-matrix", action="store_true", help="skip every-zoo-model-through-every-target (long)")
    ap.add_argument("--no-rewrites", action="store_true", help="skip the rewrite comparison")
    ap.add_argument("--cases-only", action="store_true", help="only the rewrite / matrix sections, no head cases")
    ap.add_argument("--reuse-cases", action="store_true",
                    help="head cases not named by --only come from their last run's report instead of running again")
    ap.add_argument("--reuse-matrix", action="store_true",
                    help="take the zoo-matrix section from the last matrix run (out/bench/matrix) instead of running it")
    ap.add_argument("--matrix-models", nargs="*", metavar="MODEL", help="zoo models in the matrix (default: every one)")
    ap.add_argument("--no-corpus", action="store_true", help="skip the public-architecture corpus (long)")
    ap.add_argument("--reuse-corpus", action="store_true",
                    help="take the corpus section from the last corpus run (out/bench/corpus) instead of running it")
    ap.add_argument("--corpus-models", nargs="*", metavar="ROW", help="corpus rows to run (default: every one)")
    ap.add_argument("--corpus-cached-ok", action="store_true", help="take unchanged corpus cells from the cache")
    ap.add_argument("--no-int8-corpus", action="store_true", help="skip the quantization-hostile corpus")
    ap.add_argument("--reuse-int8-corpus", action="store_true", help="its section from its last run (out/bench/int8corpus)")
    ap.add_argument("--no-repair", action="store_true", help="skip the int8 budget runs (recipes/budget)")
    ap.add_argument("--reuse-repair", action="store_true",
                    help="take the repair section from the last budget run (out/bench/repair) instead of running it")
    ap.add_argument("--matrix-serial-models", nargs="*", metavar="MODEL",
                    help="the models whose cells are timed both ways (default: SERIAL_MODELS)")
    ap.add_argument("--matrix-runs", type=int, default=10)
    ap.add_argument("--no-matrix-serial", dest="matrix_serial", action="store_false",
                    help="skip timing the zoo matrix's cells one after another (the 0.7x target needs it)")
    ap.add_argument("--matrix-serial-all", action="store_true",
                    help="compare on every zoo cell, not on the SERIAL_MODELS subset (twice as long)")
    args = ap.parse_args()
    def case(name):  # --reuse-cases: only the cases --only names run again
        fresh = not args.reuse_cases or name in (args.only or [])
        return run_case(name, CASES[name][0], args) if fresh else reused_case(name)

    reports = {} if args.cases_only else \
        {name: case(name) for name in (CASES if args.reuse_cases else args.only or CASES)}
    text = render(reports, args) if reports else "# Benchmarks\n"
    if not args.no_rewrites:
        text += rewrite_section(args)
    if args.reuse_repair or not args.no_repair:
        text += repair_section(reused_repair() if args.reuse_repair else run_repair(args.threads))
    if args.reuse_int8_corpus or not args.no_int8_corpus:  # the quantization-hostile corpus (benchmarks/int8_corpus.py)
        text += int8_corpus.SECTION.read_text() if args.reuse_int8_corpus else int8_corpus.run(list(FAULTS),
                                                                                               list(int8_corpus.TARGETS))
    if args.reuse_matrix:
        text += reused_matrix()
    elif not args.no_matrix:
        text += zoo_matrix(args)
    if args.reuse_corpus:
        try:
            text += CORPUS_SECTION.read_text()
        except OSError:
            sys.exit(f"--reuse-corpus: no earlier corpus run left {CORPUS_SECTION.relative_to(ROOT)}")
    elif not args.no_corpus:
        text += corpus_matrix(args)
    Path(args.output).write_text(text)
    (ROOT / "out" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "out" / "bench" / "summary.json").write_text(json.dumps(
        {n: {"eager_ms": r.eager.latency.median_ms if r.eager.latency else None,
             **{a.kind: {"ms": a.latency.median_ms if a.latency else None, "x_eager": a.ratio_to_eager,
                         "x_fp32": a.ratio_to_fp32, "size": a.size_bytes, "parity": a.status}
                for a in r.artifacts.values()}} for n, r in reports.items()}, indent=2))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
