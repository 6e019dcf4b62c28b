"""``audit verify`` over a long chain: the check's own cost, and the command end to end.

    .venv/bin/python benchmarks/audit_verify_bench.py [--events 1000000] [--repeat 5] [--keep DIR]

Builds a real store file (``Store``, so the schema is the shipped one) in a
temporary folder: ``--events`` chained events (the hashes computed in Python
by chain.py, as the writer does, then inserted in batches of 100,000 as
column arrays), and a head file with one line per event (the worst case: a
controller whose every write adds one event). Then times
``verify.verify`` (what the ``audit_verify`` RPC runs, on its own
connection) ``--repeat`` times, and ``mlfleet audit verify`` end to end
(client, socket, controller, answer) against a controller started
beforehand on that home; then ``--writes`` audited writes through the
store's writer with and without the head file's fsynced line (its cost).
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from mlfleet.core.audit import chain, head_file, verify
from mlfleet.core.store.db import Store

BATCH = 100_000
ACTIONS = ("job.submit", "job.cancel", "deploy.rollout", "model.alias", "job.priority")


def build(home: Path, events: int) -> float:
    """``events`` chained events in home's store file and one head line each; returns the seconds it took."""
    started = time.perf_counter()
    store = Store(home / "mlfleet.duckdb")
    con = store.con
    prev, seq = chain.GENESIS, 0
    base_us = chain.to_micros(time.time()) - events * 1000
    lines = bytearray()
    with open(home / "audit-head.log", "wb") as heads:
        while seq < events:
            n = min(BATCH, events - seq)
            cols: dict[str, list] = {k: [] for k in ("seq", "ts", "actor", "action", "target", "detail", "prev", "hash")}
            for _ in range(n):
                seq += 1
                ts_us = base_us + seq * 1000
                action = ACTIONS[seq % len(ACTIONS)]
                target = f"j{seq:08x}"
                detail = json.dumps({"name": "train-resnet", "project": "vision", "spec_hash": f"{seq:064x}",
                                     "note": "l'été \"quoted\"" if seq % 97 == 0 else None})
                digest = chain.event_hash(chain.Event(seq, ts_us, "alice", action, target, detail), prev)
                for key, value in (("seq", seq), ("ts", ts_us), ("actor", "alice"), ("action", action),
                                   ("target", target), ("detail", detail), ("prev", prev), ("hash", digest)):
                    cols[key].append(value)
                lines += head_file.format_line(chain.Head(seq, digest, ts_us)).encode("ascii")
                prev = digest
            arrays = {k: np.array(v, dtype=np.int64 if k in ("seq", "ts") else object) for k, v in cols.items()}
            con.register("_bench", arrays)
            con.execute("""insert into audit (ts, actor, action, target, detail, seq, prev_hash, hash)
                           select make_timestamp(ts)::timestamptz, actor, action, target, detail, seq, prev, hash
                           from _bench order by seq""")
            con.unregister("_bench")
            heads.write(lines)
            lines.clear()
    store.close()
    return time.perf_counter() - started


def time_function(db: Path, heads: Path, repeat: int) -> tuple[list[float], list[float], dict]:
    """Wall seconds and CPU seconds (all threads: what the check costs however loaded the machine) per call."""
    import resource

    con = duckdb.connect(str(db), read_only=True)
    times, cpu, answer = [], [], {}
    for _ in range(repeat):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        answer = verify.verify(con, heads)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    con.close()
    return times, cpu, answer


def time_cli(home: Path, repeat: int) -> list[float]:
    env = {**os.environ, "MLFLEET_HOME": str(home)}
    exe = str(Path(sys.executable).with_name("mlfleet"))
    subprocess.run([exe, "controller", "start"], env=env, check=True, capture_output=True, timeout=300)
    times = []
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            done = subprocess.run([exe, "audit", "verify"], env=env, capture_output=True, text=True, timeout=300)
            times.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        subprocess.run([exe, "controller", "stop"], env=env, capture_output=True, timeout=120)
    return times


def time_writes(home: Path, writes: int) -> tuple[float, float]:
    """Milliseconds per audited write through the store's writer, with and without the head file's fsynced line."""
    import asyncio

    from mlfleet.core.audit.records import audit

    async def go() -> tuple[float, float]:
        store = Store(home / "mlfleet.duckdb")
        heads = head_file.HeadFile(home / "audit-head.log")
        await store.run(heads.catch_up)
        per_write = []
        for hooked in (True, False):
            store.after_write[:] = [heads.after_write] if hooked else []
            t0 = time.perf_counter()
            for i in range(writes):
                await store.run(audit, "bench", "job.priority", f"j{i}", {"from": 0, "to": 1})
            per_write.append((time.perf_counter() - t0) / writes * 1000)
        store.close()
        return per_write[0], per_write[1]

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writes", type=int, default=300, help="audited writes timed with and without the head file")
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (a folder already built "
                                                  "by --keep is used as it is)")
    args = parser.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="mlfacb", dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        reused = (home / "mlfleet.duckdb").exists()
        built = 0.0 if reused else build(home, args.events)
        size = (home / "mlfleet.duckdb").stat().st_size
        heads = (home / "audit-head.log").stat().st_size
        fn_times, fn_cpu, answer = time_function(home / "mlfleet.duckdb", home / "audit-head.log", args.repeat)
        assert answer["ok"] and (reused or answer["events"] == args.events), answer
        cli_times = time_cli(home, args.repeat)
        hooked_ms, bare_ms = time_writes(home, args.writes)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end")
    print(f"built {args.events:,} events in {built:.1f} s: store file {size / 2**20:.0f} MiB, "
          f"head file {heads / 2**20:.0f} MiB\n")
    print("| what | events | min (s) | median (s) | max (s) |")
    print("|---|---|---|---|---|")
    for what, times in (("verify.verify (the RPC's function)", fn_times), ("`mlfleet audit verify` end to end", cli_times)):
        print(f"| {what} | {args.events:,} | {min(times):.2f} | {statistics.median(times):.2f} | {max(times):.2f} |")
    print(f"\nCPU seconds per verify.verify call (all threads): min {min(fn_cpu):.2f}, "
          f"median {statistics.median(fn_cpu):.2f}")
    print(f"one audited write through the store's writer on that chain ({args.writes} each): "
          f"{hooked_ms:.2f} ms with the head file's fsynced line, {bare_ms:.2f} ms without it")


if __name__ == "__main__":
    main()
