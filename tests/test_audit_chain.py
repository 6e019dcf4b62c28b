"""The audit chain: someone with the DuckDB file in hand edits, deletes, forges, reorders or cuts events while
the controller is down, and ``mlfleet audit verify`` names what was done and where; an untouched store, an
upgraded one and one written by 50 clients at once verify.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Fleet
from mlfleet.core.audit import chain
from mlfleet.core.controller.client import connect
from mlfleet.core.store import schema

EVENTS = 12  # submits before the tampering: the chain is longer than that (controller start and stop too)


def _spec(fleet: Fleet, i: int) -> dict[str, Any]:
    return {"name": f"step-{i}", "command": [sys.executable, "-c", "pass"], "workdir": str(fleet.root)}


async def _submit(fleet: Fleet, count: int, concurrently: bool = False) -> list[str]:
    async def one(i: int) -> str:
        async with await connect(fleet.home) as client:
            return (await client.call("submit", spec=_spec(fleet, i)))["job_id"]

    if concurrently:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    return [await one(i) for i in range(count)]


def _stopped_store(fleet: Fleet) -> duckdb.DuckDBPyConnection:
    """The controller stopped, its file opened as anyone with read-write access to it could."""
    asyncio.run(_submit(fleet, EVENTS))
    fleet.cli("controller", "stop", check=True)
    return duckdb.connect(str(fleet.home.db_path))


def _verify(fleet: Fleet) -> tuple[int, dict[str, Any]]:
    result = fleet.cli("audit", "verify", "--json")
    assert result.err.strip() == "" or "Traceback" not in result.err, result.err
    return result.code, result.json()


def _row(con: duckdb.DuckDBPyConnection, seq: int) -> dict[str, Any]:
    ident, action = con.execute("select id, action from audit where seq = ?", [seq]).fetchall()[0]
    return {"id": ident, "action": action}


def test_an_untouched_store_verifies_and_its_head_is_printable_for_a_notary(fleet: Fleet) -> None:
    asyncio.run(_submit(fleet, EVENTS))
    code, answer = _verify(fleet)
    assert code == 0 and answer["ok"], answer
    assert answer["events"] >= EVENTS + 1  # the submits and the controller's start
    head = fleet.cli_json("audit", "head")["head"]
    assert head["seq"] == answer["head"]["seq"] and head["hash"] == answer["head"]["hash"]
    printed = fleet.cli("audit", "head", check=True).out.split()
    assert int(printed[0]) == head["seq"] and printed[1] == head["hash"]
    lines = fleet.home.audit_head_file.read_text().splitlines()
    assert lines[-1].split()[:2] == printed[:2]  # the file outside the database holds the same head
    assert fleet.cli("audit", "verify").out.startswith("the audit chain is intact")


def test_an_edited_detail_is_named_at_its_row(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    victim = _row(con, 5)
    con.execute("""update audit set detail = '{"name": "someone-else"}' where seq = 5""")
    con.close()
    code, answer = _verify(fleet)
    assert code == 1 and answer["kind"] == "edited", answer
    assert answer["broken"]["seq"] == 5 and answer["broken"]["id"] == victim["id"]
    assert f"at seq 5 (id {victim['id']}, {victim['action']}" in answer["message"]
    human = fleet.cli("audit", "verify")
    assert human.code == 1 and "broken at seq 5" in human.out and "edited" in human.out


def test_a_deleted_middle_row_is_named_by_the_gap_it_leaves(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    after = _row(con, 7)
    con.execute("delete from audit where seq = 6")
    con.close()
    code, answer = _verify(fleet)
    assert code == 1 and answer["kind"] == "deleted", answer
    assert answer["broken"]["seq"] == 7 and answer["broken"]["id"] == after["id"]
    assert "seq 6 is missing" in answer["message"]


def test_a_forged_row_with_a_hash_of_its_own_is_named_as_inserted(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    ts_us = con.execute("select epoch_us(ts) from audit where seq = 4").fetchall()[0][0] + 1
    forged_id = con.execute("select max(id) + 100 from audit").fetchall()[0][0]
    detail = json.dumps({"name": "payroll", "note": "looks like every other row"})
    wrong_prev = "ab" * 32
    digest = chain.event_hash(chain.Event(4, ts_us, "alice", "job.cancel", "j-forged", detail), wrong_prev)
    con.execute("""insert into audit (id, ts, actor, action, target, detail, seq, prev_hash, hash)
                   values (?, ?, 'alice', 'job.cancel', 'j-forged', ?, 4, ?, ?)""",
                [forged_id, chain.micros_to_datetime(ts_us), detail, wrong_prev, digest])
    con.close()
    code, answer = _verify(fleet)
    assert code == 1 and answer.get("kind") == "inserted", answer
    assert answer["broken"]["id"] == forged_id and answer["broken"]["seq"] == 4
    assert f"the row id {forged_id} was inserted" in answer["message"]


def test_two_rows_swapped_are_named_as_reordered(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    moved = _row(con, 9)
    con.execute("update audit set seq = -1 where seq = 8")
    con.execute("update audit set seq = 8 where seq = 9")
    con.execute("update audit set seq = 9 where seq = -1")
    con.close()
    code, answer = _verify(fleet)
    assert code == 1 and answer["kind"] == "reordered", answer
    assert answer["broken"]["seq"] == 8 and answer["broken"]["id"] == moved["id"]


def test_a_cut_tail_is_caught_by_the_head_file_even_after_the_chain_grew_again(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    last = con.execute("select max(seq) from audit").fetchall()[0][0]
    con.execute("delete from audit where seq > ?", [last - 3])
    con.close()
    code, answer = _verify(fleet)  # the controller's start has appended a new event onto the shortened chain
    assert code == 1 and answer["kind"] == "truncated", answer
    assert answer["file_head"]["seq"] == last
    assert f"recorded seq {last}" in answer["message"] and f"ends at seq {last - 2}" in answer["message"]
    fleet.cli("audit", "list", check=True)  # more events on top do not wash it out
    assert _verify(fleet)[1]["kind"] == "truncated"


def test_a_row_added_by_hand_without_a_hash_is_not_sealed_at_the_next_start(fleet: Fleet) -> None:
    con = _stopped_store(fleet)
    last = con.execute("select max(seq) from audit").fetchall()[0][0]
    con.execute("""insert into audit (ts, actor, action, target, detail, seq)
                   values (now(), 'mallory', 'model.alias', 'iris@production', '{}', ?)""", [last + 1])
    con.close()
    code, answer = _verify(fleet)  # this start writes controller.start after it: still named, never chained in
    assert code == 1 and answer["kind"] == "unchained", answer
    assert answer["broken"]["seq"] == last + 1 and answer["broken"]["actor"] == "mallory"


def test_a_store_from_before_the_chain_is_chained_at_its_first_start(fleet: Fleet) -> None:
    fleet.root.mkdir(exist_ok=True)
    con = duckdb.connect(str(fleet.home.db_path))
    con.execute("create table schema_version (version integer primary key, name varchar, "
                "applied_at timestamptz default current_timestamp)")
    for version, name, sql in schema.migrations():
        if version < 13:
            con.execute(sql)
            con.execute("insert into schema_version (version, name) values (?, ?)", [version, name])
    for i in range(30):
        con.execute("insert into audit (ts, actor, action, target, detail) values (now(), 'bob', 'job.submit', ?, ?)",
                    [f"j{i}", json.dumps({"name": f"old-{i}", "quote": "it's \"old\"\n"})])
    con.close()
    code, answer = _verify(fleet)
    assert code == 0 and answer["ok"], answer
    assert answer["events"] >= 31
    old = fleet.cli_json("audit", "list", "--action", "job.submit", "--limit", "100")
    assert sorted(e["seq"] for e in old) == list(range(1, 31))


def test_fifty_clients_at_once_leave_one_linear_chain(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)  # one controller, then fifty clients on its socket at once
    jobs = asyncio.run(_submit(fleet, 50, concurrently=True))
    assert len(set(jobs)) == 50
    code, answer = _verify(fleet)  # the jobs are running meanwhile: their lifecycle is on the chain too
    assert code == 0, answer
    fleet.cli("controller", "stop", check=True)
    con = duckdb.connect(str(fleet.home.db_path), read_only=True)
    seqs = [r[0] for r in con.execute("select seq from audit order by seq").fetchall()]
    submits = con.execute("select count(*) from audit where action = 'job.submit'").fetchall()[0][0]
    con.close()
    assert seqs == list(range(1, len(seqs) + 1)) and submits == 50
    assert _verify(fleet)[0] == 0


def test_export_writes_jsonl_and_parquet_for_an_auditor_and_refuses_bad_input(fleet: Fleet) -> None:
    asyncio.run(_submit(fleet, 5))
    out = fleet.files / "audit.jsonl"
    done = fleet.cli_json("audit", "export", "--since", "2026-01-01", "--format", "jsonl", "--output", str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert done["rows"] == len(lines) >= 6 and [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert {"seq", "prev_hash", "hash", "detail"} <= set(lines[0])
    again = fleet.cli("audit", "export", "--format", "jsonl", "--output", str(out))
    assert again.code != 0 and "Traceback" not in again.err and "exists" in (again.err + again.out)
    parquet = fleet.files / "audit.parquet"
    fleet.cli_json("audit", "export", "--format", "parquet", "--output", str(parquet))
    rows = duckdb.connect().execute("select count(*), min(seq) from read_parquet(?)", [str(parquet)]).fetchall()[0]
    assert rows[0] >= 6 and rows[1] == 1
    bad = fleet.cli("audit", "export", "--since", "last tuesday", "--output", str(fleet.files / "x.jsonl"))
    assert bad.code == 2 and "--since 'last tuesday' is not a time" in bad.err and "Traceback" not in bad.err
    future = fleet.cli_json("audit", "export", "--since", "2999-01-01", "--output", str(fleet.files / "none.jsonl"))
    assert future["rows"] == 0


# Hostile text: unicode beyond the BMP, quotes, backslashes, newlines, NULs, the encoding's own ':', '|' and '~'.
HOSTILE = st.text(alphabet=st.sampled_from(list("a:|~\"'\\\n\r\t\x00é€😀 ,{}[]")) | st.characters(), max_size=40)


@pytest.fixture(scope="module")
def mem() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    schema.migrate(con, ":memory:")
    return con


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(HOSTILE, HOSTILE, st.none() | HOSTILE,
                          st.none() | st.dictionaries(HOSTILE, HOSTILE | st.integers() | st.none(), max_size=3)),
                min_size=1, max_size=4),
       st.floats(min_value=0, max_value=4e9))
def test_python_and_sql_hash_every_event_the_same(mem: duckdb.DuckDBPyConnection, events: list[Any], ts: float) -> None:
    mem.execute("delete from audit")
    chain.append_events(mem, ts, [(a or "x", b or "y", t, json.dumps(d) if d is not None else None)
                                  for a, b, t, d in events])
    found = mem.execute(f"select seq, hash, {chain.HASH_SQL} from audit order by seq").fetchall()
    assert [r[0] for r in found] == list(range(1, len(events) + 1))
    assert all(stored == computed for _, stored, computed in found), found


def test_a_detail_of_unicode_quotes_newlines_and_nuls_hashes_the_same_in_sql(mem: Any, tmp_path: Path) -> None:
    mem.execute("delete from audit")
    detail = json.dumps({"why": "l'été \"quoted\"\nnext line\x00after a NUL 😀"}, ensure_ascii=False)
    chain.append_events(mem, 1764751234.5678915, [("ünïcode", "job.submit", "t\x00\n'\"", detail),
                                                  ("x", "y", None, None)])
    stored, computed = mem.execute(f"select list(hash order by seq), list({chain.HASH_SQL} order by seq) "
                                   "from audit").fetchall()[0]
    assert stored == computed


def test_a_sweep_submitted_and_cancelled_as_groups_is_on_the_chain_one_event_per_job(fleet: Fleet) -> None:
    spec = fleet.write_spec("long", "name: long\ncommand: \"sleep 60\"\nsweep:\n  grid:\n    params.i: [1, 2, 3, 4, 5]\n"
                                    "  max_parallel: 1\n")
    assert fleet.cli("submit", str(spec)).code == 0  # five jobs in one transaction (audit_many)
    assert fleet.cli_json("sweeps", "cancel", "long")["cancelled"] >= 4  # the queued ones in one transaction
    code, answer = _verify(fleet)
    assert code == 0, answer
    events = fleet.cli_json("audit", "list", "--limit", "100")
    submits = [e for e in events if e["action"] == "job.submit"]
    cancels = [e for e in events if e["action"] == "job.cancel" and json.loads(e["detail"]) == {"state": "pending"}]
    assert len(submits) == 5 and len({e["target"] for e in submits}) == 5 and len(cancels) >= 4
    assert sorted(e["seq"] for e in events) == list(range(1, len(events) + 1))


def test_a_head_file_left_behind_by_a_crash_after_a_commit_verifies_and_catches_up(fleet: Fleet) -> None:
    _stopped_store(fleet).close()
    heads = fleet.home.audit_head_file
    lines = heads.read_bytes().splitlines(keepends=True)
    heads.write_bytes(b"".join(lines[:-2]) + lines[-2][:40])  # the last head never written, the one before half
    code, answer = _verify(fleet)
    assert code == 0 and answer["ok"], answer
    newest = heads.read_text().splitlines()[-1].split()
    assert int(newest[0]) == answer["head"]["seq"] and newest[1] == answer["head"]["hash"]
