"""Data drift: mlfleet (DuckDB, exact) beside Evidently's DataDriftPreset (pandas), same files, one run.

    .venv/bin/python benchmarks/drift_bench.py [--rows 10000000] [--current-rows 1000000]
        [--evidently-python /tmp/evvenv/bin/python] [--evidently-sample 1000000] [--cap-gib 12]

Evidently is never a dependency of mlfleet: install it in its own venv
(python3 -m venv /tmp/evvenv && /tmp/evvenv/bin/pip install evidently "pandas<3").
Data: a reference of --rows rows x 20 columns (12 numeric, 8 categorical,
written by DuckDB to Parquet) and a current set of --current-rows rows with
drift in 4 numeric and 2 categorical columns. Each contender runs in a
child process; wall time and peak RSS (getrusage of that child; a poller
kills it past --cap-gib or --timeout) are measured from outside. Evidently
first gets the whole reference; if it is killed, it runs again on a
--evidently-sample row sample of it, and the table says so. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psutil

NUMERIC = [f"n{i:02d}" for i in range(12)]
CATEGORICAL = [f"c{i:02d}" for i in range(8)]
CARDINALITY = [2, 3, 5, 10, 20, 50, 100, 1000]


def _normal() -> str:
    return "sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())"


def generate(path: Path, rows: int, drifted: bool) -> None:
    """Mixed columns: normals, lognormals, uniforms, integers with ties, nulls; strings of several cardinalities."""
    if path.exists():
        return
    shift = 0.25 if drifted else 0.0
    cols = []
    for i, name in enumerate(NUMERIC):
        move = shift if i < 4 else 0.0
        kind = i % 4
        if kind == 0:
            expr = f"{10 + move * 4} + 4 * {_normal()}"
        elif kind == 1:
            expr = f"exp({3 + move} + 0.5 * {_normal()})"
        elif kind == 2:
            expr = f"random() * {100 + move * 100}"
        else:
            expr = f"floor(random() * {60 + move * 40})::bigint + 18"
        if i == 5:  # 2 % nulls
            expr = f"case when random() < 0.02 then null else {expr} end"
        cols.append(f"{expr} as {name}")
    for i, (name, card) in enumerate(zip(CATEGORICAL, CARDINALITY)):
        skew = 1.6 if (drifted and i in (2, 6)) else 1.0  # drifted: mass moves toward the first values
        cols.append(f"'v' || floor({card} * pow(random(), {skew}))::int as {name}")
    con = duckdb.connect()
    con.execute("set enable_progress_bar = false")
    con.execute("set preserve_insertion_order = false")
    con.execute(f"copy (select {', '.join(cols)} from range({rows})) to '{path}' (format parquet, "
                "row_group_size 1000000)")
    con.close()


def sample(source: Path, path: Path, rows: int) -> None:
    if not path.exists():
        con = duckdb.connect()
        con.execute(f"copy (select * from read_parquet('{source}') using sample {rows} rows (reservoir, 7)) "
                    f"to '{path}' (format parquet)")
        con.close()


def measure(cmd: list[str], cap_bytes: int, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run a child; wall time, peak RSS and whether it was killed (why).

    Peak RSS is GNU time's %M (the child's ru_maxrss): measured through /usr/bin/time because a
    child forked straight from this process would inherit this process's high-water mark.
    """
    rss_file = Path(f"/tmp/drift-bench-rss-{os.getpid()}")
    rss_file.unlink(missing_ok=True)
    started = time.monotonic()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    killed: list[str] = []

    def kill_workload(p: psutil.Process) -> None:
        """Kill what GNU time runs (not time itself, so that it still reports the peak)."""
        for child in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()

    def watch() -> None:
        try:
            p = psutil.Process(proc.pid)
            while proc.poll() is None:
                rss = sum(x.memory_info().rss for x in p.children(recursive=True))
                if rss > cap_bytes:
                    killed.append(f"killed at the {cap_bytes / 2**30:.1f} GiB memory cap")
                    kill_workload(p)
                    return
                if time.monotonic() - started > timeout:
                    killed.append(f"killed after the {timeout:.0f} s time limit")
                    kill_workload(p)
                    return
                time.sleep(0.2)
        except psutil.Error:
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    readers = [threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),
               threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))]
    for r in readers:
        r.start()
    proc.wait()
    wall = time.monotonic() - started
    for r in readers:
        r.join()
    try:
        peak_kib = int(rss_file.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        peak_kib = 0
    rss_file.unlink(missing_ok=True)
    result = {"wall_s": wall, "peak_rss_gib": peak_kib * 1024 / 2**30, "code": proc.returncode,
              "killed": killed[0] if killed else None}
    out = [line for line in "".join(out_chunks).splitlines() if line.startswith("{")]
    if proc.returncode == 0 and out:
        result["result"] = json.loads(out[-1])
    elif not killed:
        result["error"] = "".join(err_chunks).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return result


MLFLEET_CHILD = """
import json, sys
from pathlib import Path
from mlfleet.core.drift.check import build_profile, run_check
from mlfleet.core.drift.config import DriftConfig
from mlfleet.core.drift.sources import resolve_files
mode, ref, cur, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
config = DriftConfig()
if mode == "profile":
    p = build_profile(config, resolve_files(ref, "reference"), Path(extra), "bench")
    Path(extra, "profile.json").write_text(json.dumps(p))
    print(json.dumps({"rows": p["rows"], "columns": len(p["columns"])}))
else:
    reference = json.loads(Path(extra, "profile.json").read_text()) if mode == "check-profile" \\
        else resolve_files(ref, "reference")
    r = run_check(config, reference, resolve_files(cur, "current"))
    print(json.dumps({"drifted": r["drifted"], "drifted_columns": r["drifted_columns"],
                      "columns": r["column_count"],
                      "drifted_names": [c["column"] for c in r["columns"] if c["drifted"]]}))
"""

EVIDENTLY_CHILD = """
import json, sys
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref = pd.read_parquet(sys.argv[1])
cur = pd.read_parquet(sys.argv[2])
snap = Report([DataDriftPreset()]).run(cur, ref)
metrics = snap.dict()["metrics"]
count = metrics[0]["value"]
names = [m["config"]["column"] for m in metrics[1:]
         if isinstance(m.get("value"), (int, float)) and "threshold" in m["config"]
         and ((m["value"] >= m["config"]["threshold"]) if "p_value" not in m["metric_name"].lower()
              else (m["value"] < m["config"]["threshold"]))]
print(json.dumps({"drifted_columns": int(count["count"]), "share": count["share"],
                  "methods": sorted({m["config"].get("method", "") for m in metrics[1:]})}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--current-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/mlfleet-drift-bench")
    parser.add_argument("--evidently-python", default="/tmp/evvenv/bin/python")
    parser.add_argument("--evidently-sample", type=int, default=1_000_000)
    parser.add_argument("--cap-gib", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--skip-evidently-full", action="store_true", help="only the sample for Evidently")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ref, cur = work / f"reference-{args.rows}.parquet", work / f"current-{args.current_rows}.parquet"
    ref_sample = work / f"reference-sample-{args.evidently_sample}.parquet"
    t = time.monotonic()
    generate(ref, args.rows, False)
    generate(cur, args.current_rows, True)
    sample(ref, ref_sample, args.evidently_sample)
    print(f"data ready in {time.monotonic() - t:.0f} s: {ref} ({ref.stat().st_size / 2**20:.0f} MiB), {cur}",
          file=sys.stderr)
    cap = int(args.cap_gib * 2**30)
    rows = []

    def run(label: str, cmd: list[str], ref_rows: int) -> dict:
        print(f"running {label} ...", file=sys.stderr)
        load_before = os.getloadavg()[0]
        r = measure(cmd, cap, args.timeout)
        r.update(label=label, ref_rows=ref_rows, load=(load_before + os.getloadavg()[0]) / 2)
        print(json.dumps(r), file=sys.stderr)
        rows.append(r)
        return r

    me = [sys.executable, "-c", MLFLEET_CHILD]
    profile_dir = work / "profile"
    run("mlfleet drift check (files)", me + ["check", str(ref), str(cur), "-"], args.rows)
    run("mlfleet drift profile (once)", me + ["profile", str(ref), str(cur), str(profile_dir)], args.rows)
    run("mlfleet drift check (profile)", me + ["check-profile", str(ref), str(cur), str(profile_dir)], args.rows)
    run("mlfleet drift check (files, sample)", me + ["check", str(ref_sample), str(cur), "-"], args.evidently_sample)
    ev = [args.evidently_python, "-c", EVIDENTLY_CHILD]
    if not args.skip_evidently_full:
        run("Evidently DataDriftPreset (full)", ev + [str(ref), str(cur)], args.rows)
    run("Evidently DataDriftPreset (sample)", ev + [str(ref_sample), str(cur)], args.evidently_sample)

    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {platform.machine()} {cpu}, {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
          f"DuckDB {duckdb.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"reference {args.rows:,} x 20 columns, current {args.current_rows:,} x 20 (Parquet)\n")
    print("| run | reference rows | wall (s) | peak RSS (GiB) | load avg | outcome |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("killed"):
            outcome = r["killed"]
        elif "result" in r:
            res = r["result"]
            outcome = (f"{res['drifted_columns']} drifted column(s)" if "drifted_columns" in res
                       else f"{res['columns']} columns profiled")
        else:
            outcome = f"failed: {' '.join(r.get('error', []))[:80]}"
        print(f"| {r['label']} | {r['ref_rows']:,} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['load']:.1f} "
              f"| {outcome} |")


if __name__ == "__main__":
    main()
