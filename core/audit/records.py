"""The audit trail's rows: who did what, appended by every capability, listed by ``audit list``.

Plain functions over a DuckDB connection, run on the store's threads; a
capability writes its audit row inside its own transaction.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.store.db import now
from mlfleet.core.store.rows import rows


def audit(con: duckdb.DuckDBPyConnection, actor: str, action: str, target: str | None,
          detail: dict[str, Any] | None = None) -> None:
    con.execute("insert into audit (ts, actor, action, target, detail) values (to_timestamp(?), ?, ?, ?, ?)",
                [now(), actor, action, target, json.dumps(detail or {})])


def list_audit(con: duckdb.DuckDBPyConnection, limit: int = 200, action: str | None = None) -> list[dict[str, Any]]:
    where, params = "", []
    if action:
        where, params = "where action = ?", [action]
    return rows(con, f"select id, ts, actor, action, target, detail from audit {where} order by id desc limit ?",
                params + [limit])

