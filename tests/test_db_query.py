"""``mlfleet db query`` reads and nothing else, and a runaway query always ends (real CLI, real controller).

The hostile corpus (db_query_corpus.py) goes to a running controller; then
nothing it aimed at has changed: no file appeared, no setting moved, no
sequence advanced, no database was attached, and ``jobs list`` and
ingestion still work. A query that would run for minutes is stopped by the
time limit, by its client dying (Ctrl-C, SIGKILL) and by ``controller
stop``; two of them never hold up ``jobs list``.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Fleet
from db_query_corpus import RUNAWAY, hostile
from mlfleet.core.controller.client import connect
from mlfleet.core.base.errors import RemoteError

STATE = {
    "settings": "select name, value from duckdb_settings() order by name",
    "sequences": "select sequence_name, last_value from duckdb_sequences() order by 1",
    "extensions": "select extension_name, loaded, installed from duckdb_extensions() order by 1",
    "databases": "select database_name, path from duckdb_databases() order by 1",
    "objects": """select database_name, schema_name, table_name from duckdb_tables()
                  union all select database_name, schema_name, view_name from duckdb_views()
                  union all select database_name, schema_name, function_name from duckdb_functions() where not internal
                  union all select database_name, schema_name, type_name from duckdb_types() where not internal
                  order by all""",
    "audit": "select count(*), max(id) from audit",
}

METRICS_JOB = """name: logs-metrics
command: [python, -c, "from mlfleet import track\\nfor s in range(5):\\n    track.log({'loss': 1.0 / (s + 1)}, step=s)"]
"""


def _state(fleet: Fleet) -> dict[str, list]:
    return {name: fleet.cli_json("db", "query", sql)["rows"] for name, sql in STATE.items()}


def _running_queries(fleet: Fleet) -> int:
    return fleet.cli_json("controller", "status")["db_queries"]


def _query_process(fleet: Fleet, sql: str) -> subprocess.Popen[str]:
    # SIGINT back to its default, as in a terminal: a suite started in the background (`cmd &` in a
    # script) ignores it, Python then never installs its Ctrl-C handler, and the CLI would not hear it.
    return subprocess.Popen([sys.executable, "-m", "mlfleet", "db", "query", sql], env=fleet.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _sendable(sql: str) -> bool:
    """Text the wire can carry (a lone surrogate cannot be encoded; the CLI refuses it before sending)."""
    try:
        sql.encode()
    except UnicodeEncodeError:
        return False
    return True


def _one_sentence(err: str) -> str:
    assert "Traceback" not in err and err.startswith("mlfleet: ") and err.strip().count("\n") == 0, err
    return err.strip()


def test_the_hostile_corpus_is_refused_and_leaves_no_trace(fleet: Fleet) -> None:
    attack = fleet.root / "attack"
    attack.mkdir()
    (attack / "data.csv").write_text("a,b\n1,2\n")
    before = _state(fleet)
    corpus = [(sql, what) for sql, what in hostile(attack) if _sendable(sql)]

    async def attack_over_one_connection() -> list[tuple[str, int, str]]:
        answers = []
        async with await connect(fleet.home, autostart=False) as client:
            for sql, _ in corpus:
                try:
                    await client.call("db_query", sql=sql)
                except RemoteError as exc:
                    answers.append((sql, exc.exit_code, str(exc)))
                else:
                    answers.append((sql, 0, "it ran"))
        return answers

    answers = asyncio.run(attack_over_one_connection())
    for (sql, what), (_, code, message) in zip(corpus, answers):
        assert code == 2 and what in message, (sql, message)

    # Through the real CLI too: exit 2, one sentence naming what was refused and why.
    for sql, what in [("/* x */ EXPLAIN (ANALYZE) delete from audit", "DELETE"),
                      ("set memory_limit = '8MB'", "SET"),
                      ("select nextval('audit_seq')", "side effects"),
                      ("select * from '/etc/passwd'", "query.allow_file_reads"),
                      ("select * from jobz", "not a table or view of the store"),
                      ("selec 1", "does not parse"),
                      ("select '\udcff'", "not UTF-8")]:  # a stray byte in argv
        result = fleet.cli("db", "query", sql)
        assert result.code == 2 and what in _one_sentence(result.err), (sql, result.err)

    assert _state(fleet) == before
    assert sorted(p.name for p in attack.iterdir()) == ["data.csv"]
    assert fleet.cli("jobs", "list").code == 0
    done = fleet.cli("submit", str(fleet.write_spec("m", METRICS_JOB)), "--wait", "--json", timeout=120)
    assert done.code == 0, done.err
    points = fleet.cli_json("db", "query", f"select count(*) from metrics where run_id = '{done.json()['run_id']}'")
    assert points["rows"] == [[5]]


def test_file_reads_are_the_users_choice_and_still_write_nothing(fleet: Fleet) -> None:
    data = fleet.root / "data.csv"
    data.write_text("a,b\n1,2\n")
    assert fleet.cli("db", "query", f"select * from '{data}'").code == 2
    fleet.cli("controller", "stop", check=True)  # settings are read when the controller starts
    fleet.home.config_file.write_text("query:\n  allow_file_reads: true\n")
    assert fleet.cli_json("db", "query", f"select a + b from read_csv('{data}')")["rows"] == [[3]]
    result = fleet.cli("db", "query", f"copy (select 1) to '{fleet.root}/out.csv'")
    assert result.code == 2 and "COPY" in _one_sentence(result.err)
    assert not (fleet.root / "out.csv").exists()


def test_query_settings_are_checked_with_their_line(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("query:\n  time_limit: 2d\n")
    result = fleet.cli("db", "query", "select 1")
    assert result.code == 2 and ":2: query.time_limit: 172800 s is out of range" in _one_sentence(result.err)
    fleet.home.config_file.write_text("query:\n  workers: 0\n")
    result = fleet.cli("db", "query", "select 1")
    assert result.code == 2 and "query.workers" in _one_sentence(result.err)


def test_a_runaway_query_is_stopped_at_the_time_limit(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("query:\n  time_limit: 2s\n")
    result = fleet.cli("db", "query", RUNAWAY, timeout=60)
    assert result.code == 1
    assert "ran past query.time_limit (2 s) and was stopped" in _one_sentence(result.err)
    assert _running_queries(fleet) == 0
    assert fleet.cli_json("db", "query", "select 42")["rows"] == [[42]]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_a_query_whose_client_dies_is_stopped_on_the_controller(fleet: Fleet, how: signal.Signals) -> None:
    fleet.home.config_file.write_text("query:\n  time_limit: 10m\n")
    fleet.cli("controller", "start", check=True)
    proc = _query_process(fleet, RUNAWAY)
    fleet.wait_for(lambda: _running_queries(fleet) == 1, what="the query to reach the controller")

    proc.send_signal(how)
    _, err = proc.communicate(timeout=30)
    if how == signal.SIGINT:
        assert proc.returncode == 130
        assert "query cancelled" in _one_sentence(err)
    # With ten minutes left on its clock, only the interrupt explains the statement ending.
    fleet.wait_for(lambda: _running_queries(fleet) == 0, timeout=30, what="the controller to stop the query")
    assert fleet.cli_json("db", "query", "select 42")["rows"] == [[42]]


def test_clients_killed_at_random_moments_leave_no_query_behind(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("query:\n  time_limit: 10m\n")
    fleet.cli("controller", "start", check=True)
    rng = random.Random(7)
    procs = []
    for _ in range(6):
        proc = _query_process(fleet, RUNAWAY)
        time.sleep(rng.uniform(0, 1.5))  # before it connects, while it asks, while the query runs
        proc.send_signal(rng.choice([signal.SIGINT, signal.SIGKILL]))
        procs.append(proc)
    for proc in procs:
        proc.communicate(timeout=30)
    fleet.wait_for(lambda: _running_queries(fleet) == 0, timeout=30, what="every query to be stopped")
    assert fleet.cli_json("db", "query", "select 42")["rows"] == [[42]]


def test_two_runaway_queries_never_block_jobs_list_and_controller_stop_ends_them(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("query:\n  time_limit: 10m\n")
    fleet.cli("controller", "start", check=True)
    procs = [_query_process(fleet, RUNAWAY) for _ in range(2)]
    fleet.wait_for(lambda: _running_queries(fleet) == 2, what="both queries to run")

    assert fleet.cli("jobs", "list", timeout=30).code == 0
    assert fleet.cli_json("runs", "list") == []
    assert all(p.poll() is None for p in procs) and _running_queries(fleet) == 2  # jobs list did not wait for them

    stop = fleet.cli("controller", "stop", timeout=60)
    assert stop.code == 0 and stop.out.strip() == "controller stopped", stop.err
    assert fleet.controller_pid is None
    for proc in procs:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 5
        assert _one_sentence(err) == "mlfleet: the query was stopped: the controller is stopping"


def test_what_a_stopped_controller_leaves_is_a_clean_file(fleet: Fleet) -> None:
    """After queries were stopped at shutdown, the file opens in any DuckDB and holds what it held."""
    import duckdb

    fleet.home.config_file.write_text("query:\n  time_limit: 10m\n")
    fleet.cli("controller", "start", check=True)
    proc = _query_process(fleet, RUNAWAY)
    fleet.wait_for(lambda: _running_queries(fleet) == 1, what="the query to run")
    assert fleet.cli("controller", "stop", timeout=60).code == 0
    proc.communicate(timeout=30)
    with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
        actions = [a for (a,) in con.execute("select action from audit order by id").fetchall()]
    assert actions[-1] == "controller.stop" and Path(fleet.home.db_path).stat().st_size > 0


HUNGRY = [
    "select list(range) from range(150000000)",  # ~15 GB in the controller, and deaf to interrupts, unbounded
    "select string_agg(repeat('x', 1000), ',') from range(3000000)",
    "select array_agg(repeat('y', 100)) from range(30000000)",
]
FAST_LOGGER = """name: fast-logger
command: [python, -c, "from mlfleet import track\\nfor s in range(60000):\\n    track.log({'loss': 1.0 / (s + 1)}, step=s)"]
"""


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_a_query_hungry_for_memory_fails_fast_within_the_store_bound_and_loses_no_points(fleet: Fleet) -> None:
    """Aggregates that would grow the controller to gigabytes fail at the bound, while a fast job's points all land."""
    fleet.home.config_file.write_text("query:\n  time_limit: 10m\nstore:\n  memory_limit: 1GiB\n")
    job_id = fleet.cli_json("submit", str(fleet.write_spec("fast.yaml", FAST_LOGGER)))["job_id"]
    for sql in HUNGRY:
        started = time.monotonic()
        result = fleet.cli("db", "query", sql, timeout=120)
        # Ten minutes on the clock: only the memory bound explains an answer this soon.
        assert time.monotonic() - started < 60
        assert result.code == 2, result.err
        sentence = _one_sentence(result.err)
        assert "needed more memory than the store may use (1.0 GiB)" in sentence, sentence
        assert "store.memory_limit in config.yaml" in sentence
    assert _peak_rss(fleet.controller_pid) < 2 * 1024**3
    assert fleet.cli("jobs", "list", timeout=30).code == 0

    fleet.wait_state(job_id, {"succeeded"}, timeout=180)
    run_id = fleet.job(job_id)["run_id"]
    counts = fleet.cli_json("db", "query", f"select count(*), count(distinct step) from metrics where run_id = '{run_id}'")
    assert counts["rows"] == [[60000, 60000]]


def test_store_bounds_are_checked_with_their_line(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("store:\n  memory_limit: 1MiB\n")
    result = fleet.cli("jobs", "list")
    assert result.code == 2
    assert ":2: store.memory_limit: 1048576 bytes is out of range; use between 128MiB and 64TiB" in _one_sentence(result.err)
