"""Serving statistics from replicas' scrapes: request and error rates, latency quantiles, per model version.

Pure (rows in, numbers out) so that ``deploy metrics``, the TUI and a
comparison of two versions during a rollout all say the same, and so that
the arithmetic is tested against hand-computed cases and a brute force.

A scrape holds counters as totals since the server started. Rates come
from the increases between consecutive scrapes of one replica; a value
below the previous one means the server restarted (the agent's
supervisor restarts it), and then the new value itself is the increase, as
Prometheus's ``rate`` reads a counter reset. A histogram restarts as a whole
(any bucket or its count going down), so its buckets stay consistent.
Unlike Prometheus there is no extrapolation to the window's edges: the
increase is what was seen, over the time between the first and the last
scrape used (the last one before ``since`` is the baseline).

Quantiles follow Prometheus's ``histogram_quantile``: the bucket holding the
rank, linear interpolation inside it (the lowest bucket starts at 0), a rank
in the ``+Inf`` bucket answers the highest finite bound.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
Buckets = list[tuple[float, float]]  # (upper bound le, cumulative count), ascending, +Inf last


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q``-quantile (0..1) of observations counted in cumulative ``buckets``; None when there are none.

    None also when the buckets end without ``+Inf`` or hold only ``+Inf``
    (Prometheus answers NaN there: nothing can be interpolated).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile is between 0 and 1, got {q}")
    ordered = sorted((float(le), float(c)) for le, c in buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    running = 0.0
    cumulative = []
    for le, c in ordered:  # cumulative counts never go down (a scrape mid-update may have them so)
        running = max(running, c)
        cumulative.append((le, running))
    total = cumulative[-1][1]
    if total <= 0:
        return None
    rank = q * total
    for i, (le, c) in enumerate(cumulative):
        if c >= rank:
            break
    if math.isinf(le):
        return cumulative[-2][0]
    if i == 0:
        lower, below = (0.0, 0.0)
        if le <= 0:
            return le
    else:
        lower, below = cumulative[i - 1]
    in_bucket = c - below
    if in_bucket <= 0:
        return le
    return lower + (le - lower) * (rank - below) / in_bucket


def counter_increase(values: Iterable[float | None]) -> float:
    """The total increase of a counter over its samples in order, a drop read as a restart from 0."""
    total, previous = 0.0, None
    for value in values:
        if value is None or not math.isfinite(value):
            continue
        if previous is not None:
            total += value if value < previous else value - previous
        previous = value
    return total


def buckets_of(raw: Any) -> Buckets:
    """A scrape row's ``latency_buckets`` as pairs: a list, or its JSON text; ``+Inf`` as inf, null or "+Inf"."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    out: Buckets = []
    for item in raw or []:
        try:
            le, count = item
            le = math.inf if le is None or (isinstance(le, str) and le.strip().lower() in ("+inf", "inf")) else float(le)
            out.append((le, float(count)))
        except (TypeError, ValueError):
            return []  # not a histogram we can read: none rather than a wrong one
    return sorted(out)


def _gauges_of(raw: Any) -> dict[str, float]:
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


def bucket_increase(samples: Sequence[Buckets], counts: Sequence[float | None] | None = None) -> Buckets:
    """The buckets' increase over ``samples`` in order (cumulative, by le), a restart of the histogram handled.

    A histogram restarted when any of its buckets (or its ``counts``) went
    down: then that sample's values are the increase. Bounds missing from one
    of two samples are left out of that pair.
    """
    total: dict[float, float] = defaultdict(float)
    previous: dict[float, float] | None = None
    previous_count: float | None = None
    for n, sample in enumerate(samples):
        current = dict(sample)
        count = counts[n] if counts is not None else None
        if not current:
            continue
        if previous is not None:
            shared = current.keys() & previous.keys()
            reset = any(current[le] < previous[le] for le in shared) or (
                count is not None and previous_count is not None and count < previous_count)
            for le in (current.keys() if reset else shared):
                total[le] += current[le] if reset else current[le] - previous[le]
        previous, previous_count = current, count
    return sorted(total.items())


def _sum_count_increase(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """A histogram's ``_sum`` and ``_count`` increase together: either going down is a restart of both.

    Read apart, a restarted server whose first requests were slow would show
    a sum above the old one and be missed.
    """
    total_sum = total_count = 0.0
    previous: tuple[float, float] | None = None
    for value_sum, value_count in pairs:
        if not (math.isfinite(value_sum) and math.isfinite(value_count)):
            continue
        if previous is not None:
            if value_sum < previous[0] or value_count < previous[1]:
                total_sum, total_count = total_sum + value_sum, total_count + value_count
            else:
                total_sum, total_count = total_sum + value_sum - previous[0], total_count + value_count - previous[1]
        previous = (value_sum, value_count)
    return total_sum, total_count


def _merge(into: dict[float, float], buckets: Buckets) -> None:
    for le, c in buckets:
        into[le] += c


def replica_stats(samples: Sequence[Mapping[str, Any]], since: float, now: float) -> dict[str, Any]:
    """One replica's increases and rate over the window from its ts-ordered scrape rows.

    Samples after ``now`` are ignored; the last sample at or before ``since``
    is the baseline the first increase is measured from. Failed scrapes (no
    values) are skipped.
    """
    rows = sorted((s for s in samples if s.get("ts") is not None and s["ts"] <= now and not s.get("error")),
                  key=lambda s: s["ts"])
    before = [s for s in rows if s["ts"] <= since]
    window = ([before[-1]] if before else []) + [s for s in rows if s["ts"] > since]
    with_requests = [s for s in window if s.get("requests") is not None]
    requests = counter_increase(s["requests"] for s in with_requests)
    errors = counter_increase(s.get("errors") for s in window if s.get("errors") is not None)
    span = with_requests[-1]["ts"] - with_requests[0]["ts"] if len(with_requests) >= 2 else 0.0
    histograms = [(buckets_of(s.get("latency_buckets")), s.get("latency_count")) for s in window]
    histograms = [(b, c) for b, c in histograms if b]
    latency = bucket_increase([b for b, _ in histograms], [c for _, c in histograms])
    latency_sum, latency_count = _sum_count_increase(
        [(s["latency_sum"], s["latency_count"]) for s in window
         if s.get("latency_sum") is not None and s.get("latency_count") is not None])
    gauges: dict[str, list[float]] = defaultdict(list)
    for s in window:
        if s["ts"] > since:  # the baseline is before the window
            for name, value in _gauges_of(s.get("gauges")).items():
                gauges[name].append(value)
    return {"requests": requests, "errors": errors, "span": span, "rps": requests / span if span > 0 else None,
            "latency_buckets": latency, "latency_sum": latency_sum, "latency_count": latency_count,
            "gauges": dict(gauges), "samples": len([s for s in window if s["ts"] > since])}


def compare_versions(rows: Iterable[Mapping[str, Any]], since: float, now: float) -> list[dict[str, Any]]:
    """One summary per model version over ``since``..``now``, oldest version first.

    Each: ``version``, ``replicas`` (those with a scrape in the window),
    ``requests`` and ``errors`` (increases), ``rps`` (the replicas' rates
    added up; None without two scrapes of any), ``error_rate`` (errors per
    request; None without requests), ``p50``/``p95``/``p99`` and
    ``latency_mean`` (seconds; None without observations), ``gauges`` (each
    gauge's mean over the window's scrapes of all its replicas).
    """
    by_replica: dict[tuple[Any, Any], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        key = row.get("replica_id") or row.get("run_id")
        by_replica[(row.get("version"), key)].append(row)
    versions: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for (version, _), samples in by_replica.items():
        stats = replica_stats(samples, since, now)
        if stats["samples"]:
            versions[version].append(stats)
    out = []
    for version in sorted(versions, key=lambda v: (v is None, v)):
        replicas = versions[version]
        requests = sum(r["requests"] for r in replicas)
        errors = sum(r["errors"] for r in replicas)
        rates = [r["rps"] for r in replicas if r["rps"] is not None]
        merged: dict[float, float] = defaultdict(float)
        for r in replicas:
            _merge(merged, r["latency_buckets"])
        buckets = sorted(merged.items())
        count = sum(r["latency_count"] for r in replicas)
        gauges: dict[str, list[float]] = defaultdict(list)
        for r in replicas:
            for name, values in r["gauges"].items():
                gauges[name].extend(values)
        summary: dict[str, Any] = {
            "version": version, "replicas": len(replicas), "requests": requests, "errors": errors,
            "rps": sum(rates) if rates else None, "error_rate": errors / requests if requests > 0 else None,
        }
        for name, q in QUANTILES:
            summary[name] = histogram_quantile(q, buckets)
        summary["latency_mean"] = sum(r["latency_sum"] for r in replicas) / count if count > 0 else None
        summary["gauges"] = {name: sum(v) / len(v) for name, v in sorted(gauges.items()) if v}
        out.append(summary)
    return out
