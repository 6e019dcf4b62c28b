"""Nothing lost, nothing twice, under load: a controller SIGKILLed mid-stream resumes to the exact table."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import duckdb

from conftest import Fleet

BURSTS, PER_BURST = 60, 5000  # 300,000 lines of two points each, over ~8 s
STREAM = f"""\
import time
from mlfleet import track
track.log_params({{"bursts": {BURSTS}}})
track.summary("loss", "min")
for burst in range({BURSTS}):
    for i in range(burst * {PER_BURST}, (burst + 1) * {PER_BURST}):
        track.log({{"loss": (i * 7919 % 10007) / 10007.0, "i": i}}, step=i)
    track.flush()
    time.sleep(0.1)
"""


def _count(fleet: Fleet, run_id: str) -> int:
    return fleet.cli_json("db", "query", f"select count(*) from metrics where run_id = '{run_id}'")["rows"][0][0]


def _checksum(rows: list[tuple]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_sigkill_of_the_controller_mid_stream_leaves_exactly_the_files_points(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "stream.py").write_text(STREAM)
    spec = fleet.write_spec("stream", "name: stream\ncommand: [python, stream.py]\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    run_id = fleet.wait_state(job_id, {"running"})["run_id"]
    seen = fleet.wait_for(lambda: _count(fleet, run_id), what="the first points")
    assert 0 < seen < BURSTS * PER_BURST * 2
    os.kill(fleet.controller_pid, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
    assert fleet.job(job_id)["state"] == "running"  # the next command restarted it; the job never noticed

    final = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
    assert final["state"] == "succeeded" and len(final["runs"]) == 1
    fleet.cli("controller", "stop", check=True)

    stream = fleet.home.local_agent_dir / "runs" / run_id / "metrics.jsonl"
    expected = []
    lines = stream.read_text().split("\n")[:-1]
    for seq, line in enumerate(lines):
        record = json.loads(line)
        for key, value in (record.get("metrics") or {}).items():
            expected.append((seq, key, record.get("step"), float(value)))
    expected.sort()
    with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
        actual = con.execute("select seq, key, step, value from metrics where run_id = ? order by seq, key",
                             [run_id]).fetchall()
        offset = con.execute("select byte_offset, lines, bad_lines, complete from ingest_offsets where run_id = ?",
                             [run_id]).fetchall()
        summary = con.execute("select key, mode from metric_summaries where run_id = ?", [run_id]).fetchall()
    assert len(expected) == BURSTS * PER_BURST * 2
    assert len(actual) == len(expected)
    assert _checksum(actual) == _checksum(expected)
    assert actual == expected
    assert offset == [(stream.stat().st_size, len(lines), 0, True)]
    assert summary == [("loss", "min")]
