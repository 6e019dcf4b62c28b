"""The audit trail's rows: who did what, appended by every capability, listed by ``audit list``.

Plain functions over a DuckDB connection, run on the store's writer thread;
a capability writes its audit rows inside its own transaction. Every row is
a link of the hash chain (chain.py): :func:`audit` and :func:`audit_many`
are the only writers, so nothing reaches the table unchained.
"""

from __future__ import annotations

from typing import Any, Iterable

import duckdb

from mlfleet.core.audit import chain
from mlfleet.core.store.db import now
from mlfleet.core.store.rows import rows


def audit(con: duckdb.DuckDBPyConnection, actor: str, action: str, target: str | None,
          detail: dict[str, Any] | None = None) -> None:
    """One event on the chain, after its head (inside the caller's transaction, if any)."""
    chain.append_events(con, now(), [(actor, action, target, chain.detail_text(detail))])


def audit_many(con: duckdb.DuckDBPyConnection, actor: str, action: str,
               events: Iterable[tuple[str | None, dict[str, Any] | str | None]]) -> None:
    """Many events of one actor and action, (target, detail) each, chained in the order given, with one insert."""
    chain.append_events(con, now(), [(actor, action, target, chain.detail_text(detail)) for target, detail in events])


def list_audit(con: duckdb.DuckDBPyConnection, limit: int = 200, action: str | None = None) -> list[dict[str, Any]]:
    where, params = "", []
    if action:
        where, params = "where action = ?", [action]
    return rows(con, f"""select id, seq, ts, actor, action, target, detail, hash from audit {where}
                         order by seq desc, id desc limit ?""", params + [limit])
