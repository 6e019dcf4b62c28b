"""Run comparison cost: curves of N runs x M points each, downsampled in DuckDB.

    .venv/bin/python benchmarks/compare_bench.py [--runs 10] [--points-per-run 1000000] [--buckets 500]
                                                 [--repeat 7] [--keep DIR]

Builds a real store file (``Store``, so the schema is the shipped one) in a
temporary folder, fills ``metrics`` and ``metric_keys`` through the ingest
path (``records.ingest_metrics``, one chunk of 100,000 points per key),
checkpoints it, then times ``run_compare.compare_runs`` (the whole call: run
ids, one query for every curve, best values, params) and prints the minimum
and median of ``--repeat`` calls. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mlfleet.core.tracking.ingest import ParsedBatch
from mlfleet.core.tracking import records
from mlfleet.core.tracking import run_compare
from mlfleet.core.store.db import Store

BATCH = 100_000  # points per insert, like a large ingest chunk


def build(path: Path, runs: int, per_run: int, extra_key: bool, seed: int = 7) -> list[str]:
    """``runs`` runs with ``per_run`` points of ``loss`` (and as many of ``acc`` with ``extra_key``)."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    con = store.con
    ids = []
    for r in range(runs):
        run_id = f"jbench{r:03d}-1"
        ids.append(run_id)
        con.execute("""insert into runs (run_id, job_id, attempt, project, name, owner, host, state, created_at)
                       values (?, ?, 1, 'bench', ?, 'bench', 'local', 'succeeded', now())""",
                    [run_id, run_id[:-2], f"run-{r}"])
        con.execute("insert into params (run_id, key, value, value_text, value_num) values (?, 'lr', ?, ?, ?)",
                    [run_id, json.dumps(10 ** -(r % 4 + 1)), json.dumps(10 ** -(r % 4 + 1)), 10 ** -(r % 4 + 1)])
        keys = ["loss", "acc"] if extra_key else ["loss"]
        con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', 0, 0)",
                    [run_id])
        chunk = 0
        for start in range(0, per_run, BATCH):
            n = min(BATCH, per_run - start)
            steps = np.arange(start, start + n, dtype=np.int64)
            for k, key in enumerate(keys):
                base = np.exp(-steps / per_run * 3) if key == "loss" else 1 - np.exp(-steps / per_run * 3)
                batch = ParsedBatch(keys=[key] * n, steps=steps.tolist(),
                                    values=(base + rng.normal(0, 0.02, n)).tolist(), timestamps=[None] * n,
                                    seqs=(steps * len(keys) + k).tolist())
                assert records.ingest_metrics(con, run_id, chunk, chunk + 1, batch)  # points and metric_keys
                chunk += 1
    store.close()
    return ids


def timed(con, ids: list[str], metrics: list[str] | None, buckets: int, repeat: int) -> tuple[float, float, int]:
    times = []
    curves = 0
    for _ in range(repeat):
        started = time.perf_counter()
        out = run_compare.compare_runs(con, ids, metrics, buckets)
        times.append((time.perf_counter() - started) * 1000)
        curves = sum(len(m["curves"]) for m in out["metrics"].values())
    return min(times), statistics.median(times), curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points-per-run", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", metavar="DIR", help="build the stores in DIR once and reuse them on later runs")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print()
    print("| store | runs x points per key | keys compared | buckets | curves | min (ms) | median (ms) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mlfleet-bench-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for extra in (False, True):
            path = folder / f"bench-{args.runs}x{args.points_per_run}-{int(extra)}.duckdb"
            started = time.perf_counter()
            ids = [f"jbench{r:03d}-1" for r in range(args.runs)]
            if not path.exists():
                ids = build(path, args.runs, args.points_per_run, extra)
            built = time.perf_counter() - started
            store = Store(path)
            try:
                con = store.con.cursor()
                what = "loss + acc" if extra else "loss only"
                cases = [(None, "all (loss)")] if not extra else [(["loss"], "loss"), (None, "all (loss, acc)")]
                for metrics, label in cases:
                    best, median, curves = timed(con, ids, metrics, args.buckets, args.repeat)
                    print(f"| {what} (built in {built:.0f} s) | {args.runs} x {args.points_per_run:,} | {label} | "
                          f"{args.buckets} | {curves} | {best:.0f} | {median:.0f} |")
                con.close()
            finally:
                store.close()


if __name__ == "__main__":
    main()
