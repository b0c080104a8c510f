"""Latency measurement through the runner interface: warm-up, then N runs or a time budget.

Every backend is timed by the same loop around ``runner.infer`` with the same thread
count, so ratios between backends measured in one run are comparable. Timed tests are
not part of the suite; speed claims come from ``make bench``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
from pydantic import ConfigDict

from edgeexport.util import Data


class LatencyStats(Data):
    """Latency of one runner: order statistics of every timed run, and the runs themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runs: int
    warmup: int
    threads: int | None
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = []  # every timed sample, in the order measured (the report's latency plot)

    @classmethod
    def from_samples(cls, samples_ms: list[float], warmup: int, threads: int | None) -> "LatencyStats":
        if not samples_ms:
            raise ValueError("no latency samples")
        a = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            runs=len(a), warmup=warmup, threads=threads,
            median_ms=float(np.median(a)),
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            mean_ms=float(a.mean()),
            std_ms=float(statistics.stdev(a)) if len(a) > 1 else 0.0,
            min_ms=float(a.min()), max_ms=float(a.max()),
            samples_ms=[round(float(v), 3) for v in a],
        )


def measure(fn, warmup: int = 5, runs: int = 50, budget_s: float | None = None, min_runs: int = 5,
            threads: int | None = None) -> LatencyStats:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed calls, stopping early once
    ``budget_s`` seconds of timed calls have passed (but never before ``min_runs``)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(max(runs, 1)):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if budget_s is not None and i + 1 >= min_runs and time.perf_counter() - start >= budget_s:
            break
    return LatencyStats.from_samples(samples, warmup, threads)


def benchmark(runner, feed: dict[str, np.ndarray], warmup: int = 5, runs: int = 50,
              budget_s: float | None = None) -> LatencyStats:
    """Median-centred latency of an active runner on one fixed input."""
    return measure(lambda: runner.infer(feed), warmup=warmup, runs=runs, budget_s=budget_s, threads=runner.threads)


SWITCH_PAUSE_S = 0.05  # lets the previous runtime's spinning worker threads go to sleep


def benchmark_interleaved(runners: dict[str, object], feed: dict[str, np.ndarray], warmup: int = 5, runs: int = 50,
                          budget_s: float | None = None, rounds: int = 5, min_runs: int = 5) -> dict[str, LatencyStats]:
    """Time several active runners on the same input, alternating between them in ``rounds``.

    Interleaving spreads any drift of the machine's load evenly over all backends, so the
    ratios between them are fair even on a shared or throttling machine. ``budget_s`` bounds
    the timed seconds of each runner.
    """
    for r in runners.values():
        for _ in range(warmup):
            r.infer(feed)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    spent = {name: 0.0 for name in runners}
    per_round = max(1, -(-runs // rounds))

    def done(name: str) -> bool:
        n = len(samples[name])
        return n >= runs or (budget_s is not None and n >= min_runs and spent[name] >= budget_s)

    for _ in range(rounds):
        for name, r in runners.items():
            if done(name):
                continue
            # A pause, then one untimed call per block: the previous runner's idle threads (ONNX Runtime
            # spin-waits, OpenMP's spin barrier in ncnn and torch) keep the cores busy for a while after
            # its last call, which doubled the first measured calls after a switch here.
            time.sleep(SWITCH_PAUSE_S)
            r.infer(feed)
            for _ in range(per_round):
                if done(name):
                    break
                t0 = time.perf_counter_ns()
                r.infer(feed)
                dt = (time.perf_counter_ns() - t0) / 1e6
                samples[name].append(dt)
                spent[name] += dt / 1e3
    return {name: LatencyStats.from_samples(s, warmup, runners[name].threads) for name, s in samples.items()}


def median_ops(per_run: list[dict[str, float]]) -> dict[str, float]:
    """ms per operator type from a runtime's profiler: the median over runs (a run the shared machine
    preempted does not skew it), the biggest first."""
    names = {k for r in per_run for k in r}
    med = {k: float(np.median([r.get(k, 0.0) for r in per_run])) for k in names}
    return {k: round(v, 4) for k, v in sorted(med.items(), key=lambda kv: -kv[1])}
