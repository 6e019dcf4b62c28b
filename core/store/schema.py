"""Numbered migrations applied at start; a newer file is refused, never touched.

Migrations are ``migrations/NNNN_name.sql``; ``schema_version`` records
each one applied. Every migration runs in its own transaction.
"""

from __future__ import annotations

import re
from importlib import resources

import duckdb

from mlfleet.core.base.errors import StoreVersionError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every shipped migration, in order."""
    folder = resources.files("mlfleet.core.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "select count(*) from information_schema.tables where table_name = 'schema_version'"
    ).fetchall()[0][0]
    if not exists:
        return 0
    row = con.execute("select max(version) from schema_version").fetchall()
    return int(row[0][0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, db_label: str) -> int:
    """Bring the file up to this mlfleet's schema; return the version now in force."""
    have = current_version(con)
    newest = latest_version()
    if have > newest:
        raise StoreVersionError(
            f"{db_label} has schema version {have}, but this mlfleet knows only up to {newest}; "
            "upgrade mlfleet (the file was left untouched)")
    if have == 0:
        con.execute("create table if not exists schema_version (version integer primary key, name varchar, "
                    "applied_at timestamptz default current_timestamp)")
    for version, name, sql in migrations():
        if version <= have:
            continue
        con.execute("begin transaction")
        try:
            con.execute(sql)
            con.execute("insert into schema_version (version, name) values (?, ?)", [version, name])
            con.execute("commit")
        except Exception:
            con.execute("rollback")
            raise
    return newest
