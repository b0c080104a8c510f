import statistics

import numpy as np
import pytest

from edgeexport.bench import LatencyStats, benchmark, benchmark_interleaved, measure


def test_stats_known_answers():
    s = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0, 100.0], warmup=2, threads=2)
    assert s.median_ms == 3.0 and s.mean_ms == 22.0 and s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 90))
    assert s.p99_ms == pytest.approx(np.percentile([1, 2, 3, 4, 100], 99))
    assert s.std_ms == pytest.approx(statistics.stdev([1, 2, 3, 4, 100]))
    assert s.runs == 5 and s.warmup == 2 and s.threads == 2


def test_empty_samples_rejected():
    with pytest.raises(ValueError):
        LatencyStats.from_samples([], 0, 1)


def test_measure_counts_warmup_and_runs():
    calls = []
    s = measure(lambda: calls.append(1), warmup=3, runs=7)
    assert len(calls) == 10 and s.runs == 7


def test_measure_stops_at_budget_but_not_before_min_runs():
    import time

    s = measure(lambda: time.sleep(0.01), warmup=0, runs=1000, budget_s=0.05, min_runs=3)
    assert 3 <= s.runs < 20
    assert s.median_ms >= 9


def test_benchmark_goes_through_the_runner_interface():
    class Fake:
        threads = 4
        n = 0

        def infer(self, feed):
            self.n += 1
            return {"y": feed["x"]}

    f = Fake()
    s = benchmark(f, {"x": np.zeros(3)}, warmup=1, runs=4)
    assert f.n == 5 and s.threads == 4


def test_interleaved_alternates_between_runners():
    order = []

    class R:
        threads = 2

        def __init__(self, name):
            self.name = name

        def infer(self, feed):
            order.append(self.name)

    stats = benchmark_interleaved({"a": R("a"), "b": R("b")}, {}, warmup=1, runs=6, rounds=3)
    assert stats["a"].runs == 6 and stats["b"].runs == 6
    timed = order[2:]
    # per round: one untimed call after each switch (the previous runner's idle threads may still
    # spin), then two timed runs; alternating
    assert timed == ["a", "a", "a", "b", "b", "b"] * 3
