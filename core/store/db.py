"""The DuckDB file: one writer (the controller), schema migrated at open.

All calls are synchronous and are meant to run on the store's own thread
(see ``Store.run``): DuckDB work never blocks the controller's event loop,
and writes are serialised by that one thread. Read-only user SQL runs on a
second connection so a slow query never delays ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import duckdb

from mlfleet.core.errors import MlfleetError, StoreVersionError, UnavailableError, UsageError

from . import schema

T = TypeVar("T")

_READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}


class Store:
    """The controller's handle on the DuckDB file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = str(path)
        try:
            self.con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" in text.lower():
                raise UnavailableError(f"{path} is in use by another process (is another controller running?)") from None
            raise UnavailableError(f"cannot open {path}: {text.splitlines()[0]}") from None
        except duckdb.Error as exc:
            raise UnavailableError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
        try:
            self.version = schema.migrate(self.con, self.label)
        except StoreVersionError:
            self.con.close()
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
        # Cursors are made here, on one thread; each reader call borrows one.
        self._cursors: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        for _ in range(2):
            self._cursors.put(self.con.cursor())

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(self.con, ...)`` on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(fn, self.con, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(cursor, ...)`` on a reader thread with its own cursor."""

        def call() -> T:
            cursor = self._cursors.get()
            try:
                return fn(cursor, *args, **kwargs)
            finally:
                self._cursors.put(cursor)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, call)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        while not self._cursors.empty():
            self._cursors.get().close()
        with contextlib.suppress(duckdb.Error):
            self.con.execute("checkpoint")
        self.con.close()


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    else:
        con.execute("commit")


def now() -> float:
    return time.time()


def read_only_query(con: duckdb.DuckDBPyConnection, sql: str, limit: int = 10_000) -> dict[str, Any]:
    """Run user SQL that may only read: one SELECT (or EXPLAIN), rolled back whatever it does."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UsageError(f"SQL does not parse: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise UsageError(f"give exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in _READ_ONLY_STATEMENTS:
        raise UsageError(f"db query is read-only: a {kind} statement is not allowed; use SELECT")
    if kind == "EXPLAIN" and re.match(r"\s*explain\s+analy[sz]e\b", sql, re.IGNORECASE):
        raise UsageError("db query is read-only: EXPLAIN ANALYZE runs its statement; use EXPLAIN alone")
    con.execute("begin transaction")
    try:
        rel = con.execute(sql)
        columns = [d[0] for d in rel.description or []]
        rows = rel.fetchmany(limit + 1)
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {_first_line(exc)}") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
    truncated = len(rows) > limit
    return {"columns": columns, "rows": [list(map(jsonable, r)) for r in rows[:limit]], "truncated": truncated}


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def jsonable(value: Any) -> Any:
    """A DuckDB value as something JSON can carry (times as ISO text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


__all__ = ["Store", "transaction", "read_only_query", "jsonable", "MlfleetError"]
