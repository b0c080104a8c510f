"""Repair an int8 artifact that misses its accuracy budget: the smallest set of modules kept in float that meets it.

Every int8 target takes ``float_modules`` (module paths of the user's model, kept in float by the target's
own means: ONNX Runtime's excluded nodes, NNCF's ignored scope, an ai-edge-quantizer recipe entry, the XNNPACK
quantizer's module config). A target that does not search its budget itself (:meth:`Target.searches_budget`)
gets this search:

1. measure the artifact as built (``task_drop`` on labeled data, SNR / agreement / cosine against eager);
2. while the budget is missed, diff it layer by layer against eager (:func:`diff_artifact`; where the runtime
   keeps its intermediate tensors to itself, the target's :meth:`Target.quantized_taps`), take the layer that
   loses the most SNR over the layer before it and is not yet in float, put its conv + norm + activation
   group back in float, rebuild and measure again. A step that does not bring the artifact closer to the budget
   is undone (recorded as such) and the next layer of the same ranking is tried, so the kept steps never lower
   the measured metric; the ranking is recomputed from each kept step's artifact. At most ``MAX_STEPS`` builds;
   a search that misses the budget ends with one failure line: the best metric reached and its float set;
3. once met, try each module but the last added back in int8 (the ranking is greedy: an early pick can turn
   out unnecessary) and keep it out of the set when the budget still holds;
4. time the all-int8 artifact and the chosen one interleaved (the latency cost of the repair), then put the
   chosen artifact where the first one was.

Every step is recorded (:class:`~edgeexport.targets.base.Repair`) in the artifact's report.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from pathlib import Path

from edgeexport.bench import benchmark_interleaved
from edgeexport.divergence import ROOT, LayerDiff, align, eager_taps
from edgeexport.parity import budget_missed, meets, resolve_budget, shortfall
from edgeexport.pipeline.context import Context, RunArtifact
from edgeexport.pipeline.divergence import diff_artifact
from edgeexport.provenance import GROUP, user_path, within
from edgeexport.targets import Repair, RepairStep, Target, TargetOptions, make_runner
from edgeexport.util import one_line

MAX_STEPS = 10  # builds of the search at most (kept or undone)
SEARCH = ("diff-guided: the layer losing the most SNR over the one before it goes back to float (its conv + norm + "
          "activation group), rebuilt and re-measured; a step that does not get closer to the budget is undone and "
          "the next layer of the ranking tried; then each earlier pick is tried back in int8")


def wants_search(target_cls: type[Target], options: TargetOptions) -> bool:
    fields = type(options).model_fields
    return ("budget" in fields and "float_modules" in fields and bool(options.budget)
            and not target_cls.searches_budget(options))


def check_budget(ctx: Context, options: TargetOptions) -> None:
    """A budget the run cannot measure (a task metric without labeled data) is bad input, before anything is built."""
    if getattr(options, "budget", None):
        resolve_budget(dict(options.budget or {}), ctx.task_data.task if ctx.task_data is not None else None)


def group(module: str, fused_with: list[str], modules: set[str]) -> str:
    """What to keep in float for a layer: the module and the norm / activation the runtime fused into it (a conv
    whose BatchNorm was folded carries the BatchNorm's scope in some runtimes). Their common parent when it
    holds nothing else (torchvision's Conv2dNormActivation), else the group ``conv+bn+act``."""
    if not fused_with:
        return module
    members = [module, *fused_with]
    parts = [p.split(".") for p in members]
    common = []
    for segs in zip(*parts):
        if len(set(segs)) > 1:
            break
        common.append(segs[0])
    parent = ".".join(common)
    inside = [p for p in modules if p.startswith(parent + ".")] if parent else []
    if inside and all(within(p, members) for p in inside):
        return parent
    return GROUP.join(members)


def rank(diff: LayerDiff, floats: list[str], modules: set[str]) -> list[tuple[str, str]]:
    """Modules to try in float, the most harmful first: (module, why). What a layer loses is its SNR below that
    of its input, taken as the latest layer before it with at least its spatial size (a squeeze-and-excitation
    branch pooled to 1x1 is not the input of the layer after it; the map it was pooled from is its input)."""
    out, seen_layers = [], []
    for r in diff.layers:
        if r.module == ROOT:
            continue
        size = math.prod(r.shape[2:]) if len(r.shape) > 2 else 1
        before = next((p for p, s in reversed(seen_layers) if s >= size), None)
        drop = (before.snr_db - r.snr_db) if before is not None else 0.0
        seen_layers.append((r, size))
        m = group(r.module, r.fused_with, modules)
        if drop > 0 and not all(within(part, floats) for part in m.split(GROUP)):
            out.append((drop, m, f"loses {drop:.1f} dB ({r.module}: {r.snr_db:.1f} dB SNR against eager)"))
    seen, ranked = set(), []
    for _, m, why in sorted(out, key=lambda t: -t[0]):
        if m not in seen:
            seen.add(m)
            ranked.append((m, why))
    return ranked


class Search:
    def __init__(self, ctx: Context, target_cls: type[Target], options: TargetOptions, art: RunArtifact, tmp: Path):
        self.ctx, self.target_cls, self.options, self.art, self.tmp = ctx, target_cls, options, art, tmp
        labeled = ctx.task_data.task if ctx.task_data is not None else None
        self.budget = resolve_budget(dict(options.budget or {}), labeled) or {}
        self.ranked_on: str | None = None
        self.unranked: str | None = None  # why the last diff paired no layer
        self.notes: list[str] = []  # what the search says about itself (added to the artifact's notes at the end)
        self.count = 0
        model = ctx.handle.model  # None for a user's ONNX file: nothing to rank, the artifact stays as built
        self.modules = {user_path(n) for n, _ in model.named_modules()} - {""} if model is not None else set()

    def build(self, floats: list[str]) -> RunArtifact:
        self.count += 1
        folder = self.tmp / f"build-{self.count}"
        folder.mkdir()
        opts = self.options.model_copy(update={"float_modules": list(floats), "budget": None})
        return scratch_build(self.ctx, self.target_cls, opts, folder)

    def measure(self, art: RunArtifact) -> dict:
        return measure(self.ctx, art)

    def diff(self, art: RunArtifact, floats: list[str]) -> LayerDiff:
        d = diff_artifact(self.ctx, art)
        self.unranked = None
        if d.layers:
            self.ranked_on = f"{art.backend}'s own intermediate tensors"
            return d
        names, batch = self.ctx.refs.batches[tuple(self.ctx.shape)][0]
        opts = self.options.model_copy(update={"float_modules": list(floats), "budget": None})
        taps = self.target_cls.quantized_taps(self.ctx, opts, batch[:1]) if self.ctx.handle.model is not None else None
        if not taps:
            self.unranked = d.note
            return d
        why = d.note or "the runtime keeps its intermediate tensors"
        self.ranked_on = f"the quantized program before lowering, run in PyTorch ({why})"
        return align(taps, eager_taps(self.ctx.handle.model, batch[:1]), art.precision)

    def run(self) -> Repair:
        t0 = time.perf_counter()
        floats = list(self.options.float_modules)
        first = self.measure(self.art)
        steps = [RepairStep(float_modules=floats, metrics=first, met=meets(first, self.budget))]
        best = (self.art, floats, first)
        tried: set[str] = set()
        builds = 0
        while not meets(best[2], self.budget) and builds < MAX_STEPS:
            with self.ctx.status(f"Budget {self.options.budget}: ranking {best[0].kind}'s layers"):
                ranked = [r for r in rank(self.diff(best[0], best[1]), best[1], self.modules) if r[0] not in tried]
            if not ranked:
                self.notes.append("the float-set search found no layer left to put back in float"
                                  + (f" ({self.unranked})" if self.unranked else ""))
                break
            kept = False
            for module, why in ranked:  # the most harmful first; a step that does not help is undone
                if builds >= MAX_STEPS:
                    break
                builds += 1
                tried.add(module)
                trial = [*best[1], module]
                with self.ctx.status(f"Budget: {module} back in float ({len(trial)} modules)"):
                    cand = self.build(trial)
                    if cand.error or cand.runner is None:
                        steps.append(RepairStep(float_modules=trial, added=module, why=why, error=cand.error,
                                                kept=False))
                        continue
                    acc = self.measure(cand)
                kept = shortfall(acc, self.budget) < shortfall(best[2], self.budget)
                steps.append(RepairStep(float_modules=trial, added=module, why=why, metrics=acc,
                                        met=meets(acc, self.budget), kept=kept))
                if kept:
                    best = (cand, trial, acc)
                    break
            if not kept:
                break  # every ranked layer tried (or the step limit reached) without getting closer
        if meets(best[2], self.budget):
            best = self.prune(best, steps)
        repair = Repair(search=SEARCH, budget=self.budget, met=meets(best[2], self.budget), float_modules=best[1],
                        steps=steps, ranked_on=self.ranked_on)
        self.best_metrics = best[2]
        if best[0] is not self.art:
            repair.int8_ms, repair.repaired_ms = self.latency(self.art, best[0])
            self.adopt(best[0])
        repair.seconds = round(time.perf_counter() - t0, 1)
        self.art.notes.extend(self.notes)
        return repair

    def prune(self, best, steps: list[RepairStep]):
        """Each module the search added, but the last, tried back in int8 (kept out of the set when the budget
        still holds)."""
        art, floats, acc = best
        added = [m for m in floats if m not in self.options.float_modules]
        for module in added[:-1]:
            trial = [m for m in floats if m != module]
            with self.ctx.status(f"Budget: is {module} needed in float?"):
                cand = self.build(trial)
                if cand.error or cand.runner is None:
                    continue
                got = self.measure(cand)
            ok = meets(got, self.budget)
            steps.append(RepairStep(float_modules=trial, removed=module, metrics=got, met=ok,
                                    why="met without it: dropped from the set" if ok else "needed"))
            if ok:
                art, floats, acc = cand, trial, got
        return art, floats, acc

    def latency(self, plain: RunArtifact, repaired: RunArtifact) -> tuple[float | None, float | None]:
        try:
            runners = {"int8": make_runner(plain.runner, self.ctx.threads),
                       "repaired": make_runner(repaired.runner, self.ctx.threads)}
            with contextlib.ExitStack() as stack:
                for r in runners.values():
                    stack.enter_context(r)
                with self.ctx.status("Budget: timing the all-int8 and the repaired artifact, interleaved"):
                    stats = benchmark_interleaved(runners, self.ctx.feed(), warmup=2, runs=20, budget_s=3.0,
                                                  rounds=5, min_runs=5)
            return round(stats["int8"].median_ms, 3), round(stats["repaired"].median_ms, 3)
        except Exception as exc:  # noqa: BLE001 (the cost is a figure of the report, not a verdict)
            self.notes.append(f"the latency cost of the float set was not measured: {one_line(exc)}")
            return None, None

    def adopt(self, chosen: RunArtifact) -> None:
        adopt(self.art, chosen)


def scratch_build(ctx: Context, target_cls: type[Target], options: TargetOptions, folder: Path) -> RunArtifact:
    """``options``' artifact built into ``folder`` (a candidate: the run's own artifacts stay as they are)."""
    from edgeexport.pipeline.execute import build

    scratch = copy.copy(ctx)
    scratch.out_dir, scratch.artifacts, scratch.root = folder, list(ctx.artifacts), ctx.root or ctx
    return build(scratch, target_cls, options)


def measure(ctx: Context, art: RunArtifact) -> dict:
    """What budgets and choices compare: ``ctx.accuracy`` of the artifact, run by its own runtime."""
    with make_runner(art.runner, ctx.threads) as r:
        return ctx.accuracy(r, art.precision)


def adopt(art: RunArtifact, chosen: RunArtifact) -> None:
    """The chosen candidate's files replace ``art``'s (the same names, in the run's folder)."""
    out = art.path.parent
    for f in [chosen.path, *(Path(p) for p in chosen.runner.files)]:
        os.replace(f, out / Path(f).name)
    art.record, art.runner = chosen.record, chosen.runner.relocated(out)
    art.failures, art.notes = list(chosen.failures), list(chosen.notes)


def search_float_set(ctx: Context, target_cls: type[Target], options: TargetOptions, art: RunArtifact) -> None:
    """Meet ``options.budget`` by keeping modules in float (see the module docstring); fills ``art.repair``."""
    if art.error is not None or art.runner is None or art.path is None:
        return
    ok, reason = target_cls.run_availability()
    if not ok:
        art.notes.append(f"the accuracy budget was not searched: the artifact cannot run here ({reason})")
        return
    with tempfile.TemporaryDirectory(prefix=".repair-", dir=art.path.parent) as tmp:
        search = Search(ctx, target_cls, options, art, Path(tmp))
        art.repair = search.run()
    if not art.repair.met:
        art.failures.append(budget_missed(art.repair.budget, search.best_metrics, art.repair.float_modules))


def price_repair(ctx: Context, target_cls: type[Target], options: TargetOptions, art: RunArtifact) -> None:
    """The latency cost of a float set a target chose itself (NNCF's accuracy control): the same build with
    nothing kept in float, timed interleaved with the artifact."""
    if art.repair is None or not art.repair.float_modules or art.repair.int8_ms is not None or art.runner is None:
        return
    with tempfile.TemporaryDirectory(prefix=".repair-", dir=art.path.parent) as tmp:
        search = Search(ctx, target_cls, options, art, Path(tmp))
        with ctx.status("Budget: building the all-int8 artifact to price the float set"):
            plain = search.build([])
        if plain.error is None and plain.runner is not None:
            art.repair.int8_ms, art.repair.repaired_ms = search.latency(plain, art)
        art.notes.extend(search.notes)
