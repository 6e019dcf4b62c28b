"""Store stories that need no controller: what a strange metric line or a late retry does to the file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlfleet.core.base.errors import UsageError
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.jobs import records as job_records
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking import records as run_records
from mlfleet.core.store.db import Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "mlfleet.duckdb")
    yield s
    s.close()


def a_job_with_a_run(con, job_id: str = "j1", run_id: str = "j1-1") -> None:
    job_records.insert_job(con, {"job_id": job_id, "name": "train", "project": "p", "owner": "me", "spec": {"name": "train"},
                             "spec_hash": "h", "priority": 0, "max_attempts": 1, "submitted_at": time.time()}, "me")
    job_records.dispatch(con, job_id, {"run_id": run_id, "attempt": 1, "project": "p", "name": "train", "owner": "me",
                                   "host": "local", "gpus": [], "spec_hash": "h", "workdir": "/tmp",
                                   "command": ["true"]})


def test_a_huge_integer_is_a_bad_line_and_the_stream_moves_on(store: Store) -> None:
    a_job_with_a_run(store.con)
    text = ('{"step": 1, "metrics": {"loss": 1' + "0" * 400 + ', "acc": 0.5}}\n'
            '{"params": {"seed": 1' + "0" * 400 + ', "lr": 0.1}}\n'
            '{"step": 2, "metrics": {"loss": 0.25}}\n')
    parsed = parse_lines(text, 0)
    assert parsed.bad_lines == 1 and "loss" in parsed.first_error

    assert run_records.ingest_metrics(store.con, "j1-1", 0, len(text.encode()), parsed)

    run = run_records.get_run(store.con, "j1-1")
    assert {m["key"]: m["points"] for m in run["metrics"]} == {"acc": 1, "loss": 1}
    assert run["params"]["lr"] == 0.1 and run["params"]["seed"] == int("1" + "0" * 400)
    assert rows(store.con, "select value_num from params where key = 'seed'")[0]["value_num"] is None


def test_nan_points_are_left_out_of_min_and_max_in_run_show(store: Store) -> None:
    a_job_with_a_run(store.con)
    text = ('{"step": 1, "metrics": {"acc": 0.5}}\n{"step": 2, "metrics": {"acc": "nan"}}\n'
            '{"summary": {"acc": "max"}}\n')
    assert run_records.ingest_metrics(store.con, "j1-1", 0, len(text.encode()), parse_lines(text, 0))

    run = run_records.get_run(store.con, "j1-1")
    acc = next(m for m in run["metrics"] if m["key"] == "acc")
    assert (acc["min"], acc["max"], acc["points"]) == (0.5, 0.5, 2)
    assert run["summary"]["acc"] == {"mode": "max", "value": 0.5}


def test_a_job_that_is_running_again_cannot_be_retried(store: Store) -> None:
    a_job_with_a_run(store.con)
    with pytest.raises(UsageError, match="only an ended job can be retried"):
        job_records.retry_job(store.con, "j1", "me")
    assert rows(store.con, "select state from jobs where job_id = 'j1'")[0]["state"] == "dispatched"
