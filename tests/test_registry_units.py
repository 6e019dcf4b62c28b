"""The registry's pure parts and its public records over a real (in-memory) DuckDB migrated like the store:
references, times for --at, resolve and alias_version as core/deploy will call them."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.registry import records
from mlfleet.core.registry.refs import check_reason, parse_ref
from mlfleet.core.base.when import parse_at
from mlfleet.core.store import schema


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    db = duckdb.connect()
    schema.migrate(db, ":memory:")
    yield db
    db.close()


def _version(con: duckdb.DuckDBPyConnection, name: str, sha: str, alias: str | None = None) -> dict:
    artifact = {"run_id": f"run-{sha[:4]}", "path": f"/x/{sha[:4]}/model.bin", "sha256": sha, "size": 10}
    return records.insert_version(con, name, artifact, "model.bin", {"job_id": "j1", "inputs": []}, "ann", alias)


def test_references_name_an_alias_a_version_or_the_latest() -> None:
    assert parse_ref("iris@production") == ("iris", "production", None)
    assert parse_ref("iris:3") == ("iris", None, 3)
    assert parse_ref("iris") == ("iris", None, None)
    for bad, words in (("iris@3", "is not an alias"), ("iris:x", "whole number"), ("iris:0", "from 1"),
                       ("../iris", "is not a name"), ("a/b:1", "is not a name"), ("", "give a model"),
                       ("iris:٣", "whole number")):
        with pytest.raises(UsageError, match=words):
            parse_ref(bad)
    assert check_reason("  ") is None and check_reason("ok") == "ok"
    with pytest.raises(UsageError, match="keep it to 1000"):
        check_reason("x" * 1001)


def test_times_for_at_are_iso_local_relative_or_unix_seconds() -> None:
    now = 1_764_000_000.0
    assert parse_at("2h", now) == now - 7200
    assert parse_at("1d12h ago", now) == now - 36 * 3600
    assert parse_at("now", now) == now
    assert parse_at("@1700000000.5", now) == 1_700_000_000.5
    assert parse_at("2026-11-28T14:30:00+01:00", now) == dt.datetime(2026, 11, 28, 13, 30,
                                                                        tzinfo=dt.timezone.utc).timestamp()
    assert parse_at("2026-11-28 14:30", now) == dt.datetime(2026, 11, 28, 14, 30).astimezone().timestamp()
    for bad in ("yesterday", "2h later", "@soon", "", "99999-01-01"):
        with pytest.raises(UsageError, match="not a time|out of the range"):
            parse_at(bad, now)


def test_resolve_follows_aliases_versions_and_the_latest(con: duckdb.DuckDBPyConnection) -> None:
    assert _version(con, "iris", "a" * 64, alias="staging")["version"] == 1
    assert _version(con, "iris", "b" * 64)["version"] == 2
    assert _version(con, "other", "c" * 64)["version"] == 1  # numbered per name
    assert records.resolve(con, "iris") == {"name": "iris", "version": 2, "sha256": "b" * 64, "file_name": "model.bin",
                                            "size": 10, "run_id": "run-bbbb", "alias": None}
    assert records.resolve(con, "iris@staging")["version"] == 1
    assert records.resolve(con, "iris@staging")["alias"] == "staging"
    assert records.resolve(con, "iris:2")["sha256"] == "b" * 64
    assert records.alias_version(con, "iris", "staging") == 1
    assert records.alias_version(con, "iris", "production") is None

    moved = records.move_alias(con, "iris", "staging", 2, "bob", "v2 is better")
    assert (moved["from_version"], moved["to_version"], moved["changed"]) == (1, 2, True)
    assert records.resolve(con, "iris@staging")["version"] == 2
    assert [(m["from_version"], m["to_version"], m["actor"]) for m in records.history(con, "iris")] == [
        (1, 2, "bob"), (None, 1, "ann")]
    audits = con.execute("select action, target from audit order by id").fetchall()
    assert audits == [("model.register", "iris:1"), ("model.alias", "iris@staging"), ("model.register", "iris:2"),
                      ("model.register", "other:1"), ("model.alias", "iris@staging")]

    for ref, words in (("iris@production", "has no alias 'production'"), ("iris:9", "has no version 9"),
                       ("nosuch", "no model named 'nosuch'")):
        with pytest.raises(NotFoundError, match=words):
            records.resolve(con, ref)
    with pytest.raises(NotFoundError, match="has no version 5"):
        records.move_alias(con, "iris", "staging", 5, "bob")
    assert records.alias_version(con, "iris", "staging") == 2  # the refused move left nothing behind
