"""The per-key summary (``metric_keys``) equals the aggregate of the run's points, each counted once.

Brute force is one ``GROUP BY`` over every point in ``metrics``, and a
plain-Python aggregate of the JSON lines themselves; the summary must equal
both for random streams cut into random chunks and replayed, for a store
written before the summary existed (the migration fills it), for a chunk
cut by SIGKILL in the middle of its transaction and taken again, and for a
real controller SIGKILLed three times while it ingests.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Fleet
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.store import schema
from mlfleet.core.tracking import records
from mlfleet.core.store.db import Store
COLUMNS = ("points", "value_count", "value_sum", "min_value", "max_value", "last_value", "last_step", "first_seq",
           "last_seq", "step_count", "min_step", "max_step")
# Brute force: every point of the run, grouped at once (NaN is stored as NULL; nullif catches a stored NaN too).
BRUTE = """select key, count(*), count(nullif(value, 'nan'::double)), coalesce(sum(nullif(value, 'nan'::double)), 0),
                  min(nullif(value, 'nan'::double)), max(nullif(value, 'nan'::double)), arg_max_null(value, seq),
                  arg_max_null(step, seq), min(seq), max(seq), count(step), min(step), max(step)
           from metrics where run_id = ? group by key order by key"""


def summary_rows(con: duckdb.DuckDBPyConnection, run_id: str) -> list[tuple]:
    return con.execute(f"select key, {', '.join(COLUMNS)} from metric_keys where run_id = ? order by key",
                       [run_id]).fetchall()


def same_number(a: Any, b: Any, scale: float | None = None) -> bool:
    """Equal, NaN equal to NaN; a sum (``scale``: the sum of its values' sizes) within what float addition loses."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if scale is not None and math.isfinite(a) and math.isfinite(b):  # chunk sums added vs one pass
            return abs(a - b) <= 1e-12 * scale
    return a == b


def assert_same_summary(got: list[tuple], want: list[tuple], sizes: dict[str, float]) -> None:
    assert [r[0] for r in got] == [r[0] for r in want]
    for g, w in zip(got, want):
        for i, name in enumerate(COLUMNS, start=1):
            scale = sizes[g[0]] if name == "value_sum" else None
            assert same_number(g[i], w[i], scale), (g[0], name, g[i], w[i])


def sizes_of(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, float]:
    return dict(con.execute("select key, coalesce(sum(abs(nullif(value, 'nan'::double))), 0) from metrics "
                            "where run_id = ? group by key", [run_id]).fetchall())


def python_summary(lines: list[str]) -> list[tuple]:
    """The summary of a stream's good lines, computed from the JSON alone (no DuckDB)."""
    keys: dict[str, list[tuple[int, int | None, float]]] = {}
    for seq, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("step")
        for key, raw in (record.get("metrics") or {}).items():
            if isinstance(raw, str) and raw not in ("nan", "inf", "-inf"):
                continue  # not a number: that value is dropped, the line's others are kept
            keys.setdefault(key, []).append((seq, step, float(raw)))
    out = []
    for key in sorted(keys):
        pts = keys[key]
        values = [v for _, _, v in pts if not math.isnan(v)]
        steps = [s for _, s, _ in pts if s is not None]
        last = max(pts)
        out.append((key, len(pts), len(values), _float_sum(values), min(values, default=None), max(values, default=None),
                    None if math.isnan(last[2]) else last[2], last[1], pts[0][0], last[0], len(steps),
                    min(steps, default=None), max(steps, default=None)))
    return out


def _float_sum(values: list[float]) -> float:
    """What a float sum of these gives in any order: exact for finite values (they stay far from overflow here)."""
    if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
        return math.nan
    if math.inf in values or -math.inf in values:
        return math.inf if math.inf in values else -math.inf
    return math.fsum(values)


KEY_NAMES = ["loss", "acc", "", "a*b", "x'y", "日本", "layer.0/w[1]", "k" * 300]
# Finite values stay below 1e300 so that no order of adding them overflows (then float sums legitimately differ).
VALUES = st.one_of(st.floats(-1e300, 1e300), st.integers(-10**6, 10**6),
                   st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-inf", -0.0, 5e-324]))
LINE = st.one_of(
    st.fixed_dictionaries({"metrics": st.dictionaries(st.sampled_from(KEY_NAMES), VALUES, min_size=1, max_size=5)},
                          optional={"step": st.integers(-5, 60), "ts": st.floats(0, 2e9)}),
    st.just({"params": {"lr": 0.1}}), st.just("not json"), st.just({"metrics": {"loss": "high"}}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(LINE, min_size=1, max_size=60), st.lists(st.integers(1, 60), min_size=1, max_size=10), st.randoms())
def test_the_summary_equals_the_aggregate_of_every_point_whatever_the_chunks(tmp_path_factory, lines, cuts,
                                                                              rng) -> None:
    store = Store(tmp_path_factory.mktemp("sum") / "mlfleet.duckdb")
    try:
        texts = [line if isinstance(line, str) else json.dumps(line) for line in lines]
        data = "".join(t + "\n" for t in texts).encode()
        ends = sorted({e for e in itertools.accumulate(len(t.encode()) + 1 for t in texts)})
        bounds = sorted({ends[min(c, len(ends)) - 1] for c in cuts} | {len(data)})
        store.con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values ('r-1', 'metrics', "
                          "0, 0)")
        offset, seq = 0, 0
        for end in bounds:
            chunk = data[offset:end].decode()
            parsed = parse_lines(chunk, seq)
            assert records.ingest_metrics(store.con, "r-1", offset, end, parsed)
            if rng.random() < 0.5:  # the same chunk again (a retry after a lost answer): refused, counted once
                assert not records.ingest_metrics(store.con, "r-1", offset, end, parse_lines(chunk, seq))
            offset, seq = end, seq + parsed.lines
        got, sizes = summary_rows(store.con, "r-1"), sizes_of(store.con, "r-1")
        assert_same_summary(got, store.con.execute(BRUTE, ["r-1"]).fetchall(), sizes)
        assert_same_summary(got, python_summary(texts), sizes)
    finally:
        store.close()


def test_runs_ingested_before_the_table_existed_are_summed_up_by_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))  # a store as mlfleet left it at schema version 5, with points in it
    con.execute("create table schema_version (version integer primary key, name varchar, "
                "applied_at timestamptz default current_timestamp)")
    for version, name, sql in schema.migrations():
        if version <= 5:
            con.execute(sql)
            con.execute("insert into schema_version (version, name) values (?, ?)", [version, name])
    rng = np.random.default_rng(1)
    for run in ("old-1", "old-2"):
        n = 50_000
        values = rng.normal(size=n)
        values[rng.random(n) < 0.05] = np.nan
        con.register("_pts", {"key": np.array([f"k{i}" for i in rng.integers(0, 700, n)], dtype=object),
                              "step": rng.integers(0, 100, n), "has": rng.random(n) < 0.9, "value": values,
                              "seq": np.arange(n)})
        con.execute("insert into metrics select ?, key, case when has then step end, value, null, seq from _pts", [run])
        con.unregister("_pts")
    con.close()

    store = Store(path)
    try:
        assert store.version >= 6
        for run in ("old-1", "old-2"):
            got = summary_rows(store.con, run)
            assert len(got) == 700
            assert_same_summary(got, store.con.execute(BRUTE, [run]).fetchall(), sizes_of(store.con, run))
    finally:
        store.close()


STREAM = """\
import json, os, random, time
rng = random.Random(7)
keys = [f"k{i:05d}" for i in range(20000)]
with open(os.environ["MLFLEET_METRICS_FILE"], "a") as out:
    for burst in range(40):
        for i in range(250):
            line = {"metrics": {k: rng.choice([rng.random(), -rng.random(), "nan", 7.0])
                                for k in rng.sample(keys, 40)}}
            if rng.random() < 0.9:
                line["step"] = burst * 250 + i
            out.write(json.dumps(line) + "\\n")
        out.flush()
        time.sleep(0.2)
"""


def test_sigkills_of_the_controller_mid_stream_leave_the_summary_equal_to_the_points(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "stream.py").write_text(STREAM)
    spec = fleet.write_spec("stream", "name: stream\ncommand: [python, stream.py]\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    run_id = fleet.wait_state(job_id, {"running"})["run_id"]
    count = "select count(*) from metrics where run_id = '{}'".format(run_id)
    seen = 0
    for _ in range(3):  # kill it while it is taking chunks (each an upsert of hundreds of keys)
        seen = fleet.wait_for(lambda: (n := fleet.cli_json("db", "query", count)["rows"][0][0]) > seen and n,
                              timeout=60, what="more points")
        os.kill(fleet.controller_pid, signal.SIGKILL)
        fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
    assert seen < 40 * 250 * 40
    final = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=180)
    assert final["state"] == "succeeded"
    fleet.cli("controller", "stop", check=True)

    lines = (fleet.home.local_agent_dir / "runs" / run_id / "metrics.jsonl").read_text().split("\n")[:-1]
    with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
        got, sizes = summary_rows(con, run_id), sizes_of(con, run_id)
        assert con.execute(count).fetchall()[0][0] == 40 * 250 * 40  # every point once
        assert_same_summary(got, con.execute(BRUTE, [run_id]).fetchall(), sizes)
    assert_same_summary(got, python_summary(lines), sizes)
    assert len(got) <= 20000 and sum(r[1] for r in got) == 40 * 250 * 40


INGEST = """\
import sys
from pathlib import Path
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.tracking import records
from mlfleet.core.store.db import Store
store = Store(Path(sys.argv[1]))
data = Path(sys.argv[2]).read_bytes()
offset, seq = store.con.execute("select byte_offset, lines from ingest_offsets where run_id = 'r-1'").fetchall()[0]
while offset < len(data):
    end = offset
    for _ in range(5):  # five lines a chunk: 50,000 points, most of them keys the run has not had yet
        end = data.index(b"\\n", end) + 1 if end < len(data) else end
    parsed = parse_lines(data[offset:end].decode(), seq)
    print("begin", offset, flush=True)
    assert records.ingest_metrics(store.con, "r-1", offset, end, parsed)
    print("done", end, flush=True)
    offset, seq = end, seq + parsed.lines
store.close()
"""


def test_a_chunk_cut_by_sigkill_mid_transaction_is_taken_again_and_counted_once(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = []
    for i in range(40):  # keys k0..k199999, each line 10,000 of them: chunks mix new keys and updates
        keys = rng.sample(range(200_000), 10_000)
        lines.append(json.dumps({"step": i, "metrics": {f"k{k}": rng.choice([rng.random(), "nan", -1.5])
                                                         for k in keys}}))
    stream = tmp_path / "metrics.jsonl"
    stream.write_text("".join(line + "\n" for line in lines))
    db = tmp_path / "mlfleet.duckdb"
    store = Store(db)
    store.con.execute("insert into ingest_offsets (run_id, stream, byte_offset, lines) values ('r-1', 'metrics', 0, 0)")
    store.close()

    cut_mid_chunk = False
    for attempt in range(5):  # until a kill lands between a chunk's begin and its commit
        child = subprocess.Popen([sys.executable, "-c", INGEST, str(db), str(stream)], stdout=subprocess.PIPE,
                                 text=True)
        seen = []
        for line in child.stdout:
            seen.append(line.split())
            if len([s for s in seen if s[0] == "begin"]) == 2 + attempt:
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait()
        cut_mid_chunk = bool(seen) and seen[-1][0] == "begin"
        if cut_mid_chunk:
            break
    assert cut_mid_chunk
    cut_at = int(seen[-1][1])

    with duckdb.connect(str(db)) as con:  # what was committed: the chunks before the cut, and nothing of it
        assert con.execute("select byte_offset from ingest_offsets").fetchall() == [(cut_at,)]
        assert con.execute("select count(*) from metrics where seq >= (select lines from ingest_offsets)"
                           ).fetchall() == [(0,)]
    resumed = subprocess.run([sys.executable, "-c", INGEST, str(db), str(stream)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split("\n")[0] == f"begin {cut_at}"  # the cut chunk, again, first

    store = Store(db)
    try:
        got, sizes = summary_rows(store.con, "r-1"), sizes_of(store.con, "r-1")
        assert sum(r[1] for r in got) == 40 * 10_000
        assert_same_summary(got, store.con.execute(BRUTE, ["r-1"]).fetchall(), sizes)
        assert_same_summary(got, python_summary(lines), sizes)
    finally:
        store.close()
