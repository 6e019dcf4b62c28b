"""A deployment's captured inputs land in Parquet exactly once, whatever happens to the controller, and feed drift.

Real parts throughout: a real controller (tests/capture_controller.py: the stock services, the
capture reads every 0.2 s in small chunks, and one replica-like job queued with a ``service``
block), the real local agent and runner, DuckDB on both ends. The replica's process writes its
captures at full speed, hostile lines among them, and the controller is SIGKILLed again and again
while it ingests them; at the end every row is in Parquet once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from commit_watch import CommitWatch
from conftest import REPO, Fleet
from drift_data import rng, write

from mlfleet.core.deploy.capture import cut
from mlfleet.core.deploy.capture_rows import Batch, add_lines

LINES = 20_000
BASE = 1767225600.0  # 2026-01-01 00:00 UTC; a line every 10 s spans three days
CAPTURE_PATH = """\
import json, os, random, sys, time
path = os.environ.get("MLFLEET_CAPTURE_FILE") or os.path.join(
    os.path.dirname(os.environ["MLFLEET_METRICS_FILE"]), "capture.jsonl")
"""
WRITER = CAPTURE_PATH + f"""\
with open(path, "a", encoding="utf-8") as fh:
    for i in range({LINES}):
        fh.write(json.dumps({{"ts": {BASE} + i * 10, "inputs": {{"id": i, "x": (i * 7919 % 10007) / 10007.0,
                                                                  "city": "abc"[i % 3]}},
                              "outputs": {{"p": i % 2}}}}) + "\\n")
        if i % 2000 == 1000:
            fh.write("{{not json\\n")
            fh.write(json.dumps({{"ts": {BASE} + i * 10, "inputs": [{{"id": 100000 + i}}, {{"id": 200000 + i}}],
                                  "outputs": [0, 1]}}) + "\\n")
        if i == 7000:
            fh.write("x" * (3 * 1024 * 1024) + "\\n")
open(os.path.join(os.path.dirname(path), "written"), "w").close()
time.sleep(3600)  # a server: it serves until cancelled
"""
EXPECTED_IDS = sorted([*range(LINES), *(100000 + i for i in range(1000, LINES, 2000)),
                       *(200000 + i for i in range(1000, LINES, 2000))])
EXPECTED_BAD = 10 + 1  # ten lines that are not JSON, one line of 3 MiB


def _replica_spec(fleet: Fleet, name: str, script: str, deployment: str, version: int) -> Path:
    workdir = fleet.root / f"work-{name}"
    workdir.mkdir()
    (workdir / "serve.py").write_text(script)
    spec = {"name": name, "command": ["python", "serve.py"], "workdir": str(workdir), "project": "default",
            "tags": {"deployment": deployment, "version": str(version)},
            "service": {"deployment": deployment, "version": version, "replica": name}}
    path = fleet.root / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


class Harness:
    """Starts (and restarts) the capture controller of one installation."""

    def __init__(self, fleet: Fleet, spec: Path, interval: float, max_bytes: int) -> None:
        self.fleet, self.argv = fleet, [sys.executable, str(REPO / "tests" / "capture_controller.py"), str(spec),
                                        str(interval), str(max_bytes)]

    def start(self) -> int:
        log = open(self.fleet.root / "harness.log", "ab")
        subprocess.Popen(self.argv, env=self.fleet.env, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, close_fds=True, cwd="/")
        log.close()
        pid = self.fleet.wait_for(lambda: self.fleet.controller_pid, what="the controller to start")
        self.fleet.wait_for(lambda: self.fleet.home.controller_socket.exists(), what="the controller's socket")
        return pid

    def kill(self) -> None:
        pid = self.fleet.controller_pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self.fleet.wait_for(lambda: self.fleet.controller_pid is None, what="the controller to die")


def _query(fleet: Fleet, sql: str) -> list[list[Any]]:
    return fleet.cli_json("db", "query", sql)["rows"]


def _job(fleet: Fleet, name: str) -> tuple[str, str | None]:
    found = fleet.wait_for(lambda: _query(fleet, f"select job_id, run_id from jobs where name = '{name}'"),
                           what=f"job {name} to be queued")
    return found[0][0], found[0][1]


def _committed(fleet: Fleet) -> tuple[int, int] | None:
    """(offset, rows) of the capture as the file has it, read while no controller runs (None: not readable)."""
    try:
        with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
            found = con.execute('select "offset", "rows" from capture_offsets').fetchall()
    except duckdb.Error:
        return None
    return (found[0][0], found[0][1]) if found else (0, 0)


def _newest_day(folder: Path) -> Path | None:
    days = sorted(d for d in folder.glob("*") if d.is_dir()) if folder.is_dir() else []
    return days[-1] if days else None


def _wait_for_a_rename(folder: Path, timeout: float) -> bool:
    """True as soon as a file is renamed into ``folder`` (the moment between a chunk's rename and its commit)."""
    watch = CommitWatch(folder / "_")
    watch._libc.inotify_add_watch(watch.fd, str(folder).encode(), 0x080)  # IN_MOVED_TO only, same watch
    watch.name = None
    try:
        return watch.wait(timeout)
    finally:
        os.close(watch.fd)


def test_sigkilled_controller_leaves_every_captured_row_in_parquet_exactly_once(fleet: Fleet) -> None:
    spec = _replica_spec(fleet, "shop-v1-0", WRITER, "shop", 1)
    harness = Harness(fleet, spec, interval=0.2, max_bytes=32 * 1024)  # ~250 reads: kills land mid-stream
    harness.start()
    job_id, _ = _job(fleet, "shop-v1-0")
    run_id = fleet.wait_state(job_id, {"running"})["run_id"]
    run_dir = fleet.home.local_agent_dir / "runs" / run_id
    fleet.wait_for(lambda: (run_dir / "written").exists(), timeout=60, what="the replica to write its captures")
    size = (run_dir / "capture.jsonl").stat().st_size
    captures = fleet.home.capture_dir / "shop"

    chance = random.Random()
    mid_ingestion = on_rename = between = 0
    for round_ in range(6):
        if round_ % 2 == 0:
            fleet.wait_for(lambda: _newest_day(captures), timeout=60, what="the first Parquet file")
            on_rename += _wait_for_a_rename(_newest_day(captures), timeout=4)
        else:
            time.sleep(chance.uniform(0.05, 1.5))
        harness.kill()
        committed = _committed(fleet)
        if committed is not None and committed[0] < size:
            mid_ingestion += 1
        if committed is not None and list(captures.glob(f"*/{run_id}-{committed[0]:012d}.parquet")):
            between += 1  # killed after a chunk's rename, before its commit: the restart writes that file again
        harness.start()
    assert mid_ingestion >= 2, "the kills should land while the stream was still being taken"

    fleet.cli("jobs", "cancel", job_id, check=True)
    fleet.wait_state(job_id, {"cancelled"}, timeout=60)
    fleet.wait_for(lambda: _query(fleet, "select done from capture_offsets") == [[True]], timeout=90,
                   what="the capture to be read to its end")
    offsets = _query(fleet, 'select run_id, deployment, version, replica_id, "offset", "rows", bad_lines, files '
                            'from capture_offsets')
    fleet.cli("controller", "stop", check=True)

    assert offsets[0][:7] == [run_id, "shop", 1, "shop-v1-0", size, len(EXPECTED_IDS), EXPECTED_BAD]
    files = sorted(captures.rglob("*.parquet"))
    assert len(files) == offsets[0][7]
    assert {f.parent.name for f in files} == {"2026-01-01", "2026-01-02", "2026-01-03"}
    assert not [p for p in captures.rglob("*") if p.is_file() and not p.name.endswith(".parquet")]  # no temp left
    with duckdb.connect() as con:
        got = con.execute(f"select id, ts, version, replica_id, run_id from read_parquet('{captures}/*/*.parquet', "
                          "union_by_name = true) order by id").fetchall()
        types = dict(con.execute(f"select column_name, column_type from (describe select * from "
                                 f"read_parquet('{captures}/*/*.parquet', union_by_name = true))").fetchall())
    ids = [row[0] for row in got]
    assert len(ids) == len(EXPECTED_IDS), f"{len(ids) - len(set(ids))} rows twice, " \
                                          f"{len(set(EXPECTED_IDS) - set(ids))} lost"
    assert hashlib.sha256(repr(ids).encode()).hexdigest() == hashlib.sha256(repr(EXPECTED_IDS).encode()).hexdigest()
    assert {(r[2], r[3], r[4]) for r in got} == {(1, "shop-v1-0", run_id)}
    assert got[LINES - 1][1].timestamp() == pytest.approx(BASE + (LINES - 1) * 10)  # naive UTC
    assert types["ts"] == "TIMESTAMP" and types["x"] == "DOUBLE" and types["city"] == "VARCHAR"
    assert types["output"] == "VARCHAR"
    print(f"kills: 6, mid-ingestion: {mid_ingestion}, right after a rename: {on_rename}, "
          f"between a rename and its commit: {between}")


DRIFT_WRITER = CAPTURE_PATH + """\
g = random.Random(5)
now = time.time()
with open(path, "a", encoding="utf-8") as fh:
    for i in range(3000):  # x moved by 1.5 standard deviations; y and city as in training
        fh.write(json.dumps({"ts": now - 600 + i * 0.1, "inputs": {"x": g.gauss(1.5, 1), "y": g.gauss(5, 2),
                             "city": g.choice("abc")}, "outputs": {"p": 0.5}}) + "\\n")
    for i in range(500):  # three days old, y far off: outside --since 1d
        fh.write(json.dumps({"ts": now - 3 * 86400 + i, "inputs": {"x": g.gauss(0, 1), "y": g.gauss(50, 2),
                             "city": g.choice("abc")}}) + "\\n")
open(os.path.join(os.path.dirname(path), "written"), "w").close()
time.sleep(3600)
"""


def test_drift_check_of_a_deployment_flags_the_one_shifted_feature(fleet: Fleet) -> None:
    g = rng(8)
    reference = write(fleet.files / "train.parquet", {"x": g.normal(0, 1, 4000), "y": g.normal(5, 2, 4000),
                                                      "city": g.choice(["a", "b", "c"], 4000).astype(object)})
    spec = _replica_spec(fleet, "shop-v2-0", DRIFT_WRITER, "shop", 2)
    harness = Harness(fleet, spec, interval=0.2, max_bytes=4 * 1024 * 1024)
    harness.start()
    profile = fleet.cli_json("drift", "profile", str(reference), "--name", "shop-train")
    assert profile["columns"] == ["x", "y", "city"]
    fleet.wait_for(lambda: _query(fleet, 'select "rows" from capture_offsets') == [[3500]], timeout=90,
                   what="the captures in Parquet")

    check = fleet.cli("drift", "check", "--deployment", "shop", "--reference", "shop-train", "--since", "1d",
                      "--fail-on-drift", "--json")
    assert check.code == 0, check.err  # one column of three: under the default drift_share, as for files
    report = check.json()
    assert report["rows_current"] == 3000 and report["deployment"] == "shop" and report["drifted"] is False
    assert report["current"] == "deployment shop captures since 1d ago"
    assert {c["column"]: c["drifted"] for c in report["columns"]} == {"x": True, "y": False, "city": False}
    strict = fleet.files / "drift.yaml"
    strict.write_text("drift_share: 0.3\n")
    gate = fleet.cli("drift", "check", "--deployment", "shop", "--reference", "shop-train", "--since", "1d",
                     "--config", str(strict), "--fail-on-drift")
    assert gate.code == 3 and "DRIFT" in gate.out, gate.err
    table = {line.split()[0]: line.split() for line in gate.out.splitlines() if line.split()}
    assert "DRIFT" in table["x"] and "ok" in table["y"] and "ok" in table["city"]

    everything = fleet.cli_json("drift", "check", "--deployment", "shop", "--reference", str(reference))
    assert everything["rows_current"] == 3500  # no --since: the old captures too, and their y is far off
    assert {c["column"]: c["drifted"] for c in everything["columns"]} == {"x": True, "y": True, "city": False}

    nosuch = fleet.cli("drift", "check", "--deployment", "nosuch", "--reference", "shop-train")
    assert nosuch.code == 2 and "no captured inputs" in nosuch.err and "Traceback" not in nosuch.err
    assert len(nosuch.err.strip().splitlines()) == 1
    both = fleet.cli("drift", "check", "--current", str(reference), "--reference", "shop-train", "--since", "1d")
    assert both.code == 2 and "--since" in both.err
    vague = fleet.cli("drift", "check", "--deployment", "shop", "--reference", "shop-train", "--since", "soon")
    assert vague.code == 2 and "duration" in vague.err
    neither = fleet.cli("drift", "check", "--reference", "shop-train")
    assert neither.code == 2 and "--deployment NAME" in neither.err
    fleet.cli("controller", "stop", check=True)


# ------------------------------------------------------------------ the pure parts, hostile input

def test_a_chunk_is_cut_at_whole_lines_and_a_line_too_long_is_skipped_to_its_end() -> None:
    partial = 'a\n{"b"'
    assert cut({"offset": 10, "end": 16, "data": partial}, 10, False, 100).new_offset == 12
    assert cut({"offset": 10, "end": 16, "data": '{"b"'[:4]}, 10, False, 100).new_offset == 10  # wait for more
    full = cut({"offset": 0, "end": 100, "data": "x" * 100}, 0, False, 100)
    assert (full.new_offset, full.skipping, full.bad_lines, full.text) == (100, True, 1, "")
    on = cut({"offset": 100, "end": 200, "data": "y" * 100}, 100, True, 100)
    assert (on.new_offset, on.skipping, on.bad_lines) == (200, True, 0)
    out = cut({"offset": 200, "end": 210, "data": "yy\nok\npar"}, 200, True, 100)
    assert (out.text, out.new_offset, out.skipping) == ("ok\n", 206, False)
    last = cut({"offset": 0, "end": 5, "data": "a\nbcd", "eof": True}, 0, False, 100)
    assert last.finished and last.text == "a\nbcd" and last.new_offset == 5
    mangled = cut({"offset": 0, "end": 4, "data": "\ufffd\nab"}, 0, False, 100)  # one invalid byte became 3
    assert mangled.new_offset == 2 and mangled.text == "\ufffd\n"


@pytest.mark.parametrize("line", ["", "   ", "null", "[1, 2]", '"text"', '{"ts": 1}', '{"inputs": {"a": 1}}',
                                  '{"ts": "yesterday", "inputs": {"a": 1}}', '{"ts": 1e300, "inputs": {"a": 1}}',
                                  '{"ts": NaN, "inputs": {"a": 1}}', '{"ts": true, "inputs": {"a": 1}}',
                                  "[" * 100000 + "]" * 100000, '{"ts": 1, "inputs": null}'])
def test_a_line_that_is_not_a_capture_is_counted_and_skipped(line: str) -> None:
    batch = Batch()
    add_lines(batch, line + "\n" + json.dumps({"ts": 5, "inputs": {"a": 1}}) + "\n")
    assert batch.rows == 1 and batch.values == {"a": [1]}
    assert batch.bad_lines == (0 if not line.strip() else 1)


def test_inputs_of_every_shape_become_columns() -> None:
    batch = Batch()
    add_lines(batch, "\n".join(json.dumps(r) for r in [
        {"ts": 1, "inputs": {"ts": 3, "Run_ID": "r", "nested": {"a": [1]}, "A": 1, "a": 2.5}},
        {"ts": "2026-01-01T00:00:00", "inputs": [{"q": 1}, {"q": 2}], "outputs": ["x", "y"]},
        {"ts": 2, "inputs": 7.5},
        {"ts": 2, "inputs": [[1, 2], [3, 4]]},
    ]))
    assert batch.rows == 6 and batch.bad_lines == 0
    assert list(batch.values) == ["input_ts", "input_Run_ID", "nested", "A", "a_2", "q", "input", "input_0",
                                  "input_1"]
    assert batch.values["nested"][0] == '{"a":[1]}' and batch.outputs[1:3] == ['"x"', '"y"']
    assert batch.ts_us[1] == 1767225600 * 1_000_000
    assert batch.arrays()["q"][0] == "BIGINT" and batch.arrays()["a_2"][0] == "DOUBLE"
