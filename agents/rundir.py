"""The agent's journal: one folder per run, written so that nothing is lost.

Layout of ``STATE_DIR/runs/RUN_ID/``::

    launch.json   what to run (LaunchRequest), written before anything starts
    runner.json   the runner's pid and process start time
    preparing.json  when the run's environment began to be built (and ended), if it has one (agents/envs/)
    started.json  the job's pid/pgid and start time, once it started (a restarted server's: its latest process,
                  ``process_started_at`` its start, ``started_at`` still the run's first)
    service.json  a service run's port ({"port": N}), written before the runner starts (agents/supervisor.py)
    restarts.json a service run's server exits so far: count, last_exit_code, last_exit_signal, last_exit_at,
                  backoff (the wait before the next start), restart_at (agents/runner.py)
    capture.jsonl a service run's captured requests (mlfleet.serve.capture)
    exit.json     exit code, signal and reason, once it ended
    lineage.json  inputs' sha256, Python and packages hash, taken before the job starts
    stdout.log, stderr.log, metrics.jsonl
    logs.json     where each log file sits in its stream once its oldest part was cut (agents/logcap.py)
    logs.lock     held while a log file is cut, and by readers while they read one
    work/         the run's own copy of its code snapshot, where the job starts (its files are the run's)

Every JSON file is written to a temporary name and renamed, so a crash
leaves either the old file or the new one, never half of one. The folder's
existence is the idempotency key of a launch (``mkdir`` is atomic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WORK_DIR = "work"
STREAMS = {"stdout": "stdout.log", "stderr": "stderr.log", "metrics": "metrics.jsonl"}


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (/proc): unlike wall-clock times, a clock jump never moves it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON by rename, readable by the owner only (a launch holds the job's environment)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


class RunDir:
    """Paths and records of one run on this node."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def run_id(self) -> str:
        return self.root.name

    def file(self, name: str) -> Path:
        return self.root / name

    def stream_path(self, stream: str) -> Path:
        return self.root / STREAMS[stream]

    @property
    def launch(self) -> dict[str, Any] | None:
        return read_json(self.file("launch.json"))

    @property
    def runner(self) -> dict[str, Any] | None:
        return read_json(self.file("runner.json"))

    @property
    def started(self) -> dict[str, Any] | None:
        return read_json(self.file("started.json"))

    @property
    def exit(self) -> dict[str, Any] | None:
        return read_json(self.file("exit.json"))
