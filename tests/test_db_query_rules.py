"""The rules of ``mlfleet db query``, checked on a real store file: what passes runs, what is refused says why.

The stories through the CLI and a real controller are in test_db_query.py;
here the checker (core/store/user_query.py) and the pool
(core/store/query_pool.py) are driven directly, with DuckDB's own lists of
functions as the adversary: whatever this DuckDB calls side-effecting, or
any table function not on our lists, must be refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path

import duckdb
import msgspec
import pytest

from db_query_corpus import EVERYDAY, RUNAWAY, hostile
from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.store.rows import rows
from mlfleet.core.store.db import MAX_RESULT_BYTES, Store, read_only_query
from mlfleet.core.store.query_pool import QueryStoppedError, StatementStopped, Stoppable
from mlfleet.core.store.user_query import (FILE_TABLE_FUNCTIONS, SAFE_TABLE_FUNCTIONS, Catalog, QueryRefused, Walk,
                                           check_query)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    s = Store(tmp_path_factory.mktemp("store") / "mlfleet.duckdb")
    yield s
    s.close()


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("attack")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


def _run(store: Store, sql: str, allow_file_reads: bool = False) -> dict:
    cursor = store.con.cursor()
    try:
        return read_only_query(cursor, sql, 100, allow_file_reads)
    finally:
        cursor.close()


@pytest.mark.parametrize("sql", EVERYDAY)
def test_everyday_queries_pass_and_run(store: Store, sql: str) -> None:
    result = _run(store, sql)
    assert result["columns"], sql


def test_the_hostile_corpus_is_refused_each_in_one_sentence_naming_what(store: Store, attack: Path) -> None:
    for sql, what in hostile(attack):
        with pytest.raises(QueryRefused) as refused:
            _run(store, sql)
        message = str(refused.value)
        assert what in message, (sql, message)
        assert "\n" not in message and message.count(". ") == 0, message
    assert sorted(p.name for p in attack.iterdir()) == ["data.csv"]


def test_every_function_duckdb_marks_as_side_effecting_is_refused(store: Store) -> None:
    effectful = [name for (name,) in store.con.execute(
        "select distinct function_name from duckdb_functions() where has_side_effects").fetchall()]
    assert "nextval" in effectful  # the list is DuckDB's own; it must be the one we think
    harmless = {"random", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "error", "current_query",
                "current_query_id", "current_connection_id", "current_transaction_id", "stats", "vector_type",
                "sleep_ms"}
    for name in effectful:
        if name in harmless:
            continue
        with pytest.raises(QueryRefused, match=rf"refused {name}\(\): it has side effects"):
            _run(store, f"select {name}('audit_seq')")


def test_every_table_function_outside_the_lists_is_refused_and_file_readers_need_the_setting(store: Store) -> None:
    names = [name for (name,) in store.con.execute(
        "select distinct function_name from duckdb_functions() where function_type in ('table', 'table_macro')"
    ).fetchall()]
    assert "checkpoint" in names and "read_csv" in names
    for name in names:
        sql = f"select * from {name}('x')"
        if name in SAFE_TABLE_FUNCTIONS:
            continue
        with pytest.raises(QueryRefused, match=rf"refused {name}\(\)"):
            _run(store, sql)
        if name not in FILE_TABLE_FUNCTIONS:
            with pytest.raises(QueryRefused, match=rf"refused {name}\(\)"):
                _run(store, sql, allow_file_reads=True)


def test_with_file_reads_allowed_a_file_is_read_and_still_nothing_is_written(store: Store, attack: Path) -> None:
    data = attack / "data.csv"
    assert _run(store, f"select * from read_csv('{data}')", True)["rows"] == [[1, 2]]
    assert _run(store, f"select b from '{data}'", True)["rows"] == [[2]]
    for sql, what in [(f"select * from read_csv('{data}', store_rejects = true)", "store_rejects"),
                      (f"select * from read_csv('{data}', rejects_table := 'jobs')", "rejects_table"),
                      (f"copy (select 1) to '{attack}/out.csv'", "COPY"),
                      ("select * from sqlite_scan('x.db', 't')", "sqlite_scan"),
                      ("select nextval('audit_seq')", "nextval")]:
        with pytest.raises(QueryRefused, match=what):
            _run(store, sql, True)
    # No extension is ever fetched: a URL needs httpfs, and it stays unloaded.
    with pytest.raises(Exception, match="httpfs"):
        _run(store, "select * from 'https://example.com/x.csv'", True)
    assert sorted(p.name for p in attack.iterdir()) == ["data.csv"]


def test_sql_nested_deeper_than_the_checker_can_walk_is_refused_not_crashed(store: Store) -> None:
    with pytest.raises(QueryRefused, match="nested this deeply"):
        _run(store, "select " + " + ".join(["1"] * 900))
    assert _run(store, "select " + " + ".join(["1"] * 200))["rows"] == [[200]]


def test_sql_too_long_to_check_cheaply_is_refused(store: Store) -> None:
    with pytest.raises(QueryRefused, match="256 KiB at most"):
        _run(store, "select " + ",".join(["1"] * 140_000))
    assert len(_run(store, "select " + ",".join(["1"] * 1000))["columns"]) == 1000


def test_a_huge_result_is_cut_to_what_one_answer_can_carry(store: Store) -> None:
    cursor = store.con.cursor()
    try:
        result = read_only_query(cursor, "select repeat('x', 1000) as filler from range(100000)", 10**9)
    finally:
        cursor.close()
    assert result["truncated"] and 1000 < len(result["rows"]) < 100_000
    assert len(msgspec.json.encode(result)) <= MAX_RESULT_BYTES + 2048


def test_a_node_kind_the_checker_does_not_know_is_refused(store: Store) -> None:
    catalog = Catalog.of(store.con)
    tree = json.loads(store.con.execute("select json_serialize_sql('select * from jobs')").fetchone()[0])
    node = tree["statements"][0]["node"]
    node["from_table"]["type"] = "DELTA_SCAN"  # what a later DuckDB might add
    with pytest.raises(QueryRefused, match="does not check a delta scan in FROM"):
        Walk(catalog, allow_file_reads=True).visit(tree["statements"], frozenset())
    node["from_table"] = {"type": "BASE_TABLE", "sample": None, "table_name": "jobs", "schema_name": "",
                          "catalog_name": ""}
    node["select_list"] = [{"class": "MATCH_RECOGNIZE", "type": "MATCH_RECOGNIZE"}]
    with pytest.raises(QueryRefused, match="match_recognize"):
        Walk(catalog, allow_file_reads=True).visit(tree["statements"], frozenset())


def test_the_store_cannot_be_reconfigured_even_from_inside(store: Store) -> None:
    """Belt and braces: were a SET to slip past the checker, the locked configuration still refuses it."""
    cursor = store.con.cursor()
    try:
        for sql in ("set memory_limit = '8MB'", "set threads = 1", "set autoload_known_extensions = true",
                    "set lock_configuration = false", "set enable_profiling = 'json'"):
            with pytest.raises(duckdb.Error, match="locked"):
                cursor.execute(sql)
    finally:
        cursor.close()
    check_query(store.con, "select 1", Catalog.of(store.con))


def test_a_statement_stopped_before_it_starts_never_starts() -> None:
    stoppable = Stoppable()
    stoppable.stop("the client went away")
    with pytest.raises(StatementStopped, match="client went away"):
        stoppable.attach(duckdb.connect())


def test_a_cancelled_read_frees_its_reader(store: Store) -> None:
    """Both internal readers get a runaway read whose caller gives up; the next read still gets a reader."""

    started = [threading.Event(), threading.Event()]

    def runaway(con: duckdb.DuckDBPyConnection, started: threading.Event) -> list:
        started.set()
        return con.execute(RUNAWAY).fetchall()

    async def story() -> list[dict]:
        runaway_reads = [asyncio.create_task(store.read(runaway, event)) for event in started]
        while not all(event.is_set() for event in started):
            await asyncio.sleep(0.05)
        for task in runaway_reads:
            task.cancel()
        return await asyncio.wait_for(store.read(rows, "select 42 as answer"), 60)

    assert asyncio.run(story()) == [{"answer": 42}]


def test_users_queries_wait_for_a_free_worker_and_a_stopped_one_frees_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "mlfleet.duckdb", query_workers=1)

    async def story() -> tuple[str, dict, dict]:
        first = asyncio.create_task(store.query(RUNAWAY, 10, time_limit=600))
        while store.queries.running < 1:
            await asyncio.sleep(0.05)
        second = asyncio.create_task(store.query("select 42", 10, time_limit=600))
        await asyncio.sleep(0.3)
        waited = "waiting" if not second.done() else "ran"
        busy = r"waited past query.time_limit \(0.2 s\) for a free query worker \(1 of 1 busy\)"
        with pytest.raises(QueryStoppedError, match=busy):
            await store.query("select 1", 10, time_limit=0.2)
        first.cancel()
        answer = await asyncio.wait_for(second, 60)
        with pytest.raises(QueryStoppedError, match=r"query.time_limit \(0.5 s\)"):
            await store.query(RUNAWAY, 10, time_limit=0.5)
        internal = await store.read(rows, "select count(*) as n from jobs")
        return waited, answer, internal[0]

    waited, answer, internal = asyncio.run(story())
    assert waited == "waiting" and answer["rows"] == [[42]] and internal == {"n": 0}
    started = time.monotonic()
    store.close()
    assert store.queries.running == 0, time.monotonic() - started


def test_a_crowd_of_runaway_queries_all_end_at_the_time_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "mlfleet.duckdb", query_workers=2)

    async def story() -> tuple[list[str], float, int, dict]:
        started = time.monotonic()
        # A limit of 2 s: pairs one after another would take 6 s, so 4.5 s leaves room for a loaded machine.
        outcomes = await asyncio.gather(*(store.query(RUNAWAY, 10, time_limit=2.0) for _ in range(6)),
                                        return_exceptions=True)
        ended = time.monotonic() - started
        while store.queries.running:  # the interrupted statements finish ending
            await asyncio.sleep(0.05)
        after = await store.query("select 42", 10, time_limit=5)
        return [str(o).split(" (")[0] for o in outcomes], ended, store.queries.running, after

    outcomes, ended, running, after = asyncio.run(story())
    ran, waited = "the query ran past query.time_limit", "the query waited past query.time_limit"
    # Both workers ran one; the other four waited out the same limit. A waiter whose deadline falls as a
    # worker frees may take it and be stopped at once: it then "ran past" too. What may not happen is the
    # crowd ending one pair after another (6 s and more): every query ends at its own limit.
    assert set(outcomes) <= {ran, waited} and outcomes.count(ran) >= 2, outcomes
    assert ended < 4.5, f"the six queries took {ended:.1f} s: they ended one after another, not at their limit"
    assert running == 0 and after["rows"] == [[42]]
    store.close()


def test_a_closing_store_stops_a_running_query_and_refuses_new_ones(tmp_path: Path) -> None:
    store = Store(tmp_path / "mlfleet.duckdb")

    async def story() -> Exception:
        query = asyncio.create_task(store.query(RUNAWAY, 10, time_limit=600))
        while store.queries.running < 1:
            await asyncio.sleep(0.05)
        await store.queries.stop_all("the controller is stopping")
        try:
            await query
        except UnavailableError as exc:
            stopped = exc
        with pytest.raises(UnavailableError, match="stopping"):
            await store.query("select 1", 10, time_limit=5)
        return stopped

    assert str(asyncio.run(story())) == "the query was stopped: the controller is stopping"
    store.close()


@pytest.mark.parametrize("sql, words", [
    ("install httpfs", "refused this INSTALL statement"),
    ("checkpoint", "refused this CHECKPOINT statement"),
    ("use memory", "refused this USE statement"),
    ("/* a comment */ attach 'x.db' as x", "refused this ATTACH statement"),
    ("with t as (select 1) insert into runs select * from t", "refused this INSERT statement"),
    ("explain install httpfs", "refused EXPLAIN of this INSTALL statement"),
])
def test_a_refused_statement_is_named_by_what_the_user_typed(store: Store, sql: str, words: str) -> None:
    """DuckDB calls INSTALL a LOAD and USE a SET; the sentence names what was written, with the right article."""
    with pytest.raises(QueryRefused, match=words):
        check_query(store.con, sql, store.catalog)


@pytest.mark.parametrize("sql, words", [
    ("select len(range(100000000))", "range(): it builds about 781,250 KiB per row, over 128 KiB"),
    ("select length(repeat('x', 1000000000))", "repeat(): it builds about"),
    ("select list_sort(range(40000000))[1]", "range(): it builds about"),
    ("select list_resize([1], 100000000)", "list_resize(): it builds about"),
    ("select lpad('x', 1000000, 'y')", "lpad(): it builds about"),
    ("select range(16000), range(2000)", "with the query's other range(), repeat(), lpad()... calls"),
    ("select range(10 * 1000)", "range() as a value takes constant bounds only"),
    ("select repeat('#', (random() * 20)::int)", "for a bar chart use bar(x, min, max, width)"),
    ("select repeat([1, 2], 1000000)", "takes at most 16 copies"),
    ("select list_transform([1, 2], x -> range(x))", "inside a lambda"),
    ("select printf('%0100000000d', 1)", "pads to at most 10,000 characters"),
    ("select format('{:>100000000}', 'x')", "pads to at most 10,000 characters"),
    ("select printf(f, 1) from (select '%d' as f)", "takes a constant format string"),
])
def test_values_duckdb_does_not_count_against_the_memory_limit_are_bounded(store: Store, sql: str, words: str) -> None:
    """A scalar call building gigabytes in one row (2.8 GB past a 512 MiB limit) is refused before it runs."""
    with pytest.raises(QueryRefused, match=re.escape(words)):
        check_query(store.con, sql, store.catalog)


@pytest.mark.parametrize("sql", [
    "select range(10)", "select generate_series(1, 100, 2)", "select range(16000)", "select list(range) from range(5)",
    "select count(*) from range(100000000)", "select repeat('ab', 3)", "select repeat(s, 3) from (select 'x' s)",
    "select printf('%d items, %5.2f', 3, 1.5)", "select bar(5, 0, 10, 20)", "select lpad('7', 3, '0')",
])
def test_everyday_uses_of_the_same_functions_still_run(store: Store, sql: str) -> None:
    assert "rows" in _run(store, sql)
