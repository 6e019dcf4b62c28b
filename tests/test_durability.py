"""Nothing lost, nothing twice: crashes of the controller and the agent, clean stops."""

from __future__ import annotations

import os
import signal
import stat

import duckdb
import psutil

from conftest import Fleet

# 40 steps over ~8 s, one metric line per step: long enough to kill things mid-run.
STEADY = """name: steady
command: [python, -c, "from mlfleet import track; import time\\nfor s in range(40):\\n    track.log({'loss': 1.0 / (s + 1)}, step=s); track.flush(); time.sleep(0.2)"]
"""


def _points(fleet: Fleet, run_id: str) -> list[list]:
    return fleet.cli_json("db", "query", f"select step, count(*) from metrics where run_id = '{run_id}' "
                                         "group by step order by step")["rows"]


def test_sigkill_of_the_controller_after_a_job_finished_loses_no_metrics(fleet: Fleet) -> None:
    done = fleet.cli("submit", str(fleet.write_spec("s", STEADY)), "--wait", "--json", timeout=120)
    assert done.code == 0
    run_id = done.json()["run_id"]
    before = _points(fleet, run_id)
    assert len(before) == 40

    os.kill(fleet.controller_pid, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")

    # The next command starts a fresh controller on the same file.
    assert _points(fleet, run_id) == before
    assert fleet.job(done.json()["job_id"])["state"] == "succeeded"


def test_sigkill_of_the_controller_mid_job_resumes_exactly_once(fleet: Fleet) -> None:
    job_id = fleet.cli("submit", str(fleet.write_spec("s", STEADY)), check=True).out.strip()
    job = fleet.wait_state(job_id, {"running"})
    fleet.wait_for(lambda: len(_points(fleet, job["run_id"])) >= 5, what="some points")
    os.kill(fleet.controller_pid, signal.SIGKILL)

    done = fleet.cli_json("jobs", "show", job_id)  # restarts the controller
    assert done["state"] in {"running", "succeeded"}
    final = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert final["state"] == "succeeded"
    assert len(final["runs"]) == 1  # never started twice
    assert _points(fleet, job["run_id"]) == [[step, 1] for step in range(40)]


def test_sigkill_of_the_agent_mid_job_keeps_the_job_and_every_point(fleet: Fleet) -> None:
    job_id = fleet.cli("submit", str(fleet.write_spec("s", STEADY)), check=True).out.strip()
    job = fleet.wait_state(job_id, {"running"})
    agent = fleet.agent_pid
    job_pid = fleet.wait_for(lambda: _job_pid(fleet, job["run_id"]), what="the job's pid")
    os.kill(agent, signal.SIGKILL)
    fleet.wait_for(lambda: fleet.agent_pid not in (None, agent), what="a new agent", timeout=40)
    assert psutil.pid_exists(job_pid)  # the job did not notice

    final = fleet.wait_state(job_id, {"succeeded", "failed"})
    assert final["state"] == "succeeded" and len(final["runs"]) == 1
    assert _points(fleet, job["run_id"]) == [[step, 1] for step in range(40)]


def test_controller_stop_is_clean_and_a_restart_sees_everything(fleet: Fleet) -> None:
    done = fleet.cli("submit", str(fleet.write_spec("s", STEADY)), "--wait", "--json", timeout=120)
    assert done.code == 0
    assert fleet.cli("controller", "stop").code == 0
    assert fleet.controller_pid is None
    assert fleet.cli("controller", "status").code == 5

    # With no controller the file is free: any DuckDB tool can open it.
    with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
        assert con.execute("select count(*) from metrics").fetchall() == [(40,)]
        actions = [r[0] for r in con.execute("select action from audit order by id").fetchall()]
    assert actions == ["controller.start", "job.submit", "controller.stop"]
    assert fleet.cli("controller", "start").code == 0
    assert fleet.job(done.json()["job_id"])["state"] == "succeeded"


def test_sockets_are_private_to_the_user(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: fleet.home.local_agent_socket.exists(), what="the agent socket")
    for path in (fleet.home.controller_socket, fleet.home.local_agent_socket):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, f"{path} has mode {oct(mode)}"


def test_a_newer_database_file_is_refused_and_left_untouched(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.cli("controller", "stop", check=True)
    with duckdb.connect(str(fleet.home.db_path)) as con:
        con.execute("insert into schema_version (version, name) values (999, '0999_future.sql')")
    before = fleet.home.db_path.read_bytes()

    result = fleet.cli("jobs", "list")
    assert result.code == 5
    assert "schema version 999" in result.err and "upgrade mlfleet" in result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
    assert fleet.home.db_path.read_bytes() == before


def test_db_query_is_read_only(fleet: Fleet) -> None:
    for sql in ("delete from jobs", "drop table metrics", "copy jobs to '/tmp/x.csv'", "select 1; delete from jobs",
                "explain analyze delete from audit"):
        result = fleet.cli("db", "query", sql)
        assert result.code == 2, sql
        assert result.err.startswith("mlfleet: ") and "Traceback" not in result.err
    assert fleet.cli_json("db", "query", "select count(*) from jobs")["rows"] == [[0]]


def _job_pid(fleet: Fleet, run_id: str) -> int | None:
    import json

    path = fleet.home.local_agent_dir / "runs" / run_id / "started.json"
    try:
        return json.loads(path.read_text())["pid"]
    except (OSError, ValueError):
        return None
