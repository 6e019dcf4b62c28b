"""Serving statistics from scrapes: hand-computed rates, restarts of a server, quantiles against a brute force."""

from __future__ import annotations

import bisect
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.deploy.serving_stats import (bucket_increase, buckets_of, compare_versions, counter_increase,
                                               histogram_quantile)

INF = math.inf
LE = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def cumulative(latencies: list[float], bounds: list[float] = LE) -> list[tuple[float, float]]:
    """What a Prometheus client's histogram exposes for these observations."""
    return [(le, float(sum(x <= le for x in latencies))) for le in bounds] + [(INF, float(len(latencies)))]


def row(version: int, replica: str, ts: float, requests: float, errors: float = 0.0, latencies: list[float] = (),
        **gauges: float) -> dict:
    lat = list(latencies)
    return {"deployment": "iris", "version": version, "replica_id": replica, "run_id": f"run-{replica}", "ts": ts,
            "requests": requests, "errors": errors, "latency_buckets": cumulative(lat), "latency_sum": sum(lat),
            "latency_count": float(len(lat)), "gauges": gauges}


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)  # rank 20 in (0.1, 0.5]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.04)  # the lowest bucket starts at 0
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * (39.6 - 30) / 10)


def test_a_rank_in_the_inf_bucket_answers_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, [(0.1, 5.0), (1.0, 50.0), (INF, 100.0)]) == 1.0


def test_no_quantile_from_nothing() -> None:
    assert histogram_quantile(0.5, []) is None
    assert histogram_quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert histogram_quantile(0.5, [(0.1, 3.0), (1.0, 5.0)]) is None  # no +Inf: cannot be read, as in Prometheus
    with pytest.raises(ValueError):
        histogram_quantile(1.5, [(0.1, 1.0), (INF, 1.0)])


def test_counter_resets_are_restarts() -> None:
    assert counter_increase([10, 15, 30]) == 20
    assert counter_increase([10, 15, 3, 8]) == 5 + 3 + 5  # restarted between 15 and 3: 3 new requests
    assert counter_increase([None, 5, None, 7]) == 2
    assert counter_increase([]) == 0


def test_histogram_resets_as_a_whole() -> None:
    first = cumulative([0.02] * 10 + [0.3] * 5)
    later = cumulative([0.02] * 12 + [0.3] * 9)
    after_restart = cumulative([0.3] * 2)  # the 0.025 bucket went down: restarted
    got = dict(bucket_increase([first, later, after_restart], [15, 21, 2]))
    assert got[0.025] == 2 + 0 and got[0.5] == 6 + 2 and got[INF] == 6 + 2


def test_buckets_from_a_stored_row_as_json() -> None:
    assert buckets_of('[[0.1, 3], [null, 5]]') == [(0.1, 3.0), (INF, 5.0)]
    assert buckets_of([["+Inf", 5], [0.1, 3]]) == [(0.1, 3.0), (INF, 5.0)]
    assert buckets_of("not json") == [] and buckets_of([["x", 1]]) == []


def test_two_versions_compared_over_a_window() -> None:
    fast, slow = [0.02] * 90, [0.3] * 90
    rows = [
        # v1: two replicas, 100 requests each in 10 s, 1 error each
        row(1, "a", 95, 1000, 10, fast[:0]), row(1, "a", 100, 1000, 10), row(1, "a", 110, 1100, 11, fast, inflight=2),
        row(1, "b", 100, 50, 0), row(1, "b", 110, 150, 1, fast, inflight=4),
        # v2: one replica that restarted in the window: 40 before, 30 after the restart
        row(2, "c", 100, 200, 0), row(2, "c", 105, 240, 20), row(2, "c", 110, 30, 10, slow[:30], inflight=1),
        row(2, "c", 200, 999, 999),  # after now: not counted
    ]
    v1, v2 = compare_versions(rows, since=100, now=110)
    assert v1["version"] == 1 and v1["replicas"] == 2 and v1["requests"] == 200 and v1["errors"] == 2
    assert v1["rps"] == pytest.approx(20.0) and v1["error_rate"] == pytest.approx(0.01)
    assert 0.01 < v1["p50"] <= 0.025 and v1["latency_mean"] == pytest.approx(0.02)
    assert v1["gauges"] == {"inflight": 3.0}
    assert v2["requests"] == 70 and v2["errors"] == 30 and v2["rps"] == pytest.approx(7.0)
    assert 0.25 < v2["p99"] <= 0.5 and v2["error_rate"] == pytest.approx(30 / 70)


def test_failed_scrapes_and_empty_windows() -> None:
    rows = [row(1, "a", 100, 10), {"version": 1, "replica_id": "a", "ts": 105, "error": "connection refused"},
            row(1, "a", 110, 20)]
    (v1,) = compare_versions(rows, 100, 110)
    assert v1["requests"] == 10 and v1["p50"] is None and v1["latency_mean"] is None
    assert compare_versions(rows, 200, 300) == []  # no scrape in the window
    (one,) = compare_versions([row(1, "a", 105, 10)], 100, 110)
    assert one["rps"] is None and one["requests"] == 0 and one["error_rate"] is None


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2000), q=st.floats(0.01, 0.99))
def test_quantile_against_the_brute_force(seed: int, n: int, q: float) -> None:
    """The estimate lies in the bucket of the true quantile: off by at most that bucket's width."""
    rnd = random.Random(seed)
    latencies = sorted(rnd.lognormvariate(-3, 1.5) for _ in range(n))
    true = latencies[max(0, math.ceil(q * n) - 1)]  # the smallest x with at least q*n observations <= x
    estimate = histogram_quantile(q, cumulative(latencies))
    assert estimate is not None
    i = bisect.bisect_left(LE, true)
    if i == len(LE):  # beyond the highest finite bound: Prometheus answers that bound
        assert estimate == LE[-1]
    else:
        lower, upper = (LE[i - 1] if i else 0.0), LE[i]
        assert lower - 1e-12 <= estimate <= upper + 1e-12, (true, estimate, lower, upper)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), restarts=st.integers(0, 3))
def test_window_increase_against_the_brute_force(seed: int, restarts: int) -> None:
    """Scrapes of a server that restarts now and then: the requests and quantiles of what it served in the window."""
    rnd = random.Random(seed)
    restart_at = set(rnd.sample(range(1, 20), restarts))
    served: list[float] = []  # this process's observations
    seen_in_window: list[float] = []
    rows = []
    for k in range(20):
        count = rnd.randint(0, 30)
        if k in restart_at:
            # a restart is seen when the counter went down (one that served more at once is not, as in Prometheus)
            count = rnd.randint(0, max(0, len(served) - 1))
            served = []
        new = [rnd.expovariate(8) for _ in range(count)]
        served += new
        if k > 0:  # the scrape at since (k == 0) is the baseline
            seen_in_window += new
        rows.append({"version": 1, "replica_id": "a", "ts": 100.0 + k, "requests": float(len(served)),
                     "latency_buckets": cumulative(served), "latency_count": float(len(served)),
                     "latency_sum": sum(served)})
    (v,) = compare_versions(rows, since=100.0, now=200.0)
    assert v["requests"] == len(seen_in_window)
    if seen_in_window:
        assert v["latency_mean"] == pytest.approx(sum(seen_in_window) / len(seen_in_window))
        assert v["p50"] == pytest.approx(histogram_quantile(0.5, cumulative(seen_in_window)))
