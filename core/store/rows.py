"""Shared helpers for the capabilities' queries: rows as plain values, ids from a unique prefix.

Each capability keeps its own queries (core/<capability>/records.py); what
they all need lives here, so core/store depends on no capability.
"""

from __future__ import annotations

from typing import Any

import duckdb

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.store.db import jsonable


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    names = [d[0] for d in rel.description or []]
    return [{n: jsonable(v) for n, v in zip(names, r)} for r in rel.fetchall()]



def resolve(con: duckdb.DuckDBPyConnection, table: str, column: str, ident: str, what: str) -> str:
    """An id of ``table`` from a whole id or a unique prefix of one (like git and docker)."""
    ident = ident.strip()
    if not ident:
        raise UsageError(f"give a {what} id")
    exact = con.execute(f"select {column} from {table} where {column} = ?", [ident]).fetchall()
    if exact:
        return exact[0][0]
    found = [r[0] for r in con.execute(f"select {column} from {table} where starts_with({column}, ?) limit 5",
                                       [ident]).fetchall()]
    if not found:
        raise NotFoundError(f"no {what} {ident!r}; list them with 'mlfleet {what}s list'")
    if len(found) > 1:
        raise UsageError(f"{what} id {ident!r} is ambiguous ({', '.join(found)}, ...); give more characters")
    return found[0]

