"""The DuckDB file: one writer (the controller), schema migrated at open.

All calls are synchronous and are meant to run on the store's own thread
(see ``Store.run``): DuckDB work never blocks the controller's event loop,
and writes are serialised by that one thread. Internal reads run on two
reader threads; users' SQL (``db query``) runs in a pool of its own
(query_pool.py), checked first by user_query.py, so a slow query never
delays ingestion or ``jobs list``.

How the database is opened, and why (docs/store.md, "db query"):

- extensions are never autoloaded or autoinstalled, nor community ones
  allowed: what mlfleet needs (parquet, json, icu) is built in, and a query
  naming ``sqlite_scan`` must not fetch code from the network;
- Python replacement scans are off: a table name must never reach a Python
  variable of the controller; mlfleet registers its own frames by name;
- the configuration is locked once migrations are done: no statement, from a
  user or a bug, can change ``memory_limit``, ``threads`` or any other
  setting for the life of the process (``SET search_path``, which DuckDB's
  lock does not cover, is session-local and users get a fresh cursor each);
- external access stays on: ``runs export`` writes Parquet/CSV with COPY to a
  path of the user's choosing, which ``enable_external_access=false`` (a
  global setting) would refuse. Files stay out of users' SQL because the
  parse tree is checked before anything is bound, not by this switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import duckdb
import msgspec

from mlfleet.core.base.errors import MlfleetError, StoreVersionError, UnavailableError, UsageError
from mlfleet.core.base.units import format_size

from mlfleet.core.store import schema
from mlfleet.core.store.query_pool import QueryPool, Stoppable, stop_until_done, wait_stopping
from mlfleet.core.store.user_query import Catalog, check_query, first_line

T = TypeVar("T")
log = logging.getLogger(__name__)

OPEN_CONFIG = {"autoload_known_extensions": False, "autoinstall_known_extensions": False,
               "allow_community_extensions": False, "python_enable_replacements": False}
CLOSE_TIMEOUT_S = 10.0
# A db query answer is one protocol frame (16 MiB at most): rows past this size are left out, never built
# up in the controller's memory (``select * from range(1e9)`` with a huge --limit would otherwise be one).
MAX_RESULT_BYTES = 8 * 1024 * 1024


class Store:
    """The controller's handle on the DuckDB file."""

    def __init__(self, path: Path, query_workers: int = 2, memory_limit: int | None = None,
                 spill_limit: int | None = None) -> None:
        self.path = path
        self.label = str(path)
        try:
            self.con = duckdb.connect(str(path), config=dict(OPEN_CONFIG))
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
        self.memory_limit = memory_limit
        if memory_limit is not None:  # before the lock: nothing may raise it afterwards
            self.con.execute(f"set memory_limit = '{int(memory_limit)}B'")
        if spill_limit is not None:
            self.con.execute(f"set max_temp_directory_size = '{int(spill_limit)}B'")
        self.con.execute("set lock_configuration = true")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-reader")
        # Cursors are made here, on one thread; each reader call borrows one.
        self._cursors: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        for _ in range(2):
            self._cursors.put(self.con.cursor())
        self._reads: dict[Future[Any], Stoppable] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.queries = QueryPool(self.con, query_workers)
        self.catalog = Catalog.of(self.con)  # what db query may name; relations are re-read per query
        # Called on the writer thread after each write, committed or not (the audit chain's head file
        # appends the head once its transaction has committed): a hook's failure is logged, never the write's.
        self.after_write: list[Callable[[duckdb.DuckDBPyConnection], None]] = []

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(self.con, ...)`` on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._write, functools.partial(fn, self.con, *args, **kwargs))

    def _write(self, call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            for hook in self.after_write:
                try:
                    hook(self.con)
                except Exception:
                    log.exception("after-write hook %r failed", hook)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(cursor, ...)`` on a reader thread with its own cursor.

        When the awaiting coroutine is cancelled (its client went away: the
        protocol cancels a closed connection's handlers), the statement
        running on that cursor is interrupted, so nobody's abandoned read
        keeps a reader busy.
        """
        stoppable = Stoppable()

        def call() -> T:
            cursor = self._cursors.get()
            try:
                stoppable.attach(cursor)
                try:
                    return fn(cursor, *args, **kwargs)
                finally:
                    stoppable.detach()
            finally:
                self._cursors.put(cursor)

        future = self._reader.submit(call)
        self._reads[future] = stoppable
        future.add_done_callback(lambda f: self._reads.pop(f, None))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():
                task = asyncio.get_running_loop().create_task(stop_until_done(stoppable, future.done, "cancelled"))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)
            raise

    async def query(self, sql: str, limit: int, *, time_limit: float, allow_file_reads: bool = False) -> dict[str, Any]:
        """A user's read-only SQL (``db query``), checked, in its own pool, stopped at ``time_limit``."""
        try:
            return await self.queries.run(read_only_query, sql, limit, allow_file_reads, self.catalog,
                                          time_limit=time_limit)
        except QueryOutOfMemory as exc:
            bound = f" ({format_size(self.memory_limit)})" if self.memory_limit else ""
            raise UsageError(f"the query needed more memory than the store may use{bound} and was stopped: "
                             f"{exc}; narrow it (WHERE, LIMIT, smaller list() or string_agg()) "
                             "or raise store.memory_limit in config.yaml") from None

    def close(self) -> None:
        """Stop users' queries and the reads still running (interrupted, not waited out), then checkpoint."""
        self.queries.close(CLOSE_TIMEOUT_S)
        reads = list(self._reads.items())
        if not wait_stopping([(s, f.done) for f, s in reads], "the store is closing", CLOSE_TIMEOUT_S):
            log.warning("reads on %s did not stop within %.0f s; waiting for them", self.label, CLOSE_TIMEOUT_S)
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


def read_only_query(con: duckdb.DuckDBPyConnection, sql: str, limit: int = 10_000,
                    allow_file_reads: bool = False, catalog: Catalog | None = None) -> dict[str, Any]:
    """Run user SQL that may only read (user_query.py says what that means), in a transaction rolled back after.

    ``con`` should be a cursor of its own, closed afterwards (``Store.query``
    does so). An interrupt is let through as itself, for the pool to name why.
    """
    check_query(con, sql, Catalog.of(con, catalog), allow_file_reads)
    rows: list[list[Any]] = []
    size, truncated = 0, False
    con.execute("begin transaction")
    try:
        rel = con.execute(sql)
        columns = [d[0] for d in rel.description or []]
        while not truncated and (chunk := rel.fetchmany(1000)):
            for raw in chunk:
                row = list(map(jsonable, raw))
                size += len(msgspec.json.encode(row)) + 1
                if len(rows) == limit or size > MAX_RESULT_BYTES:
                    truncated = True
                    break
                rows.append(row)
    except duckdb.InterruptException:
        raise
    except duckdb.OutOfMemoryException as exc:
        raise QueryOutOfMemory(oom_detail(exc)) from None
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {first_line(exc)}") from None
    finally:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
    return {"columns": columns, "rows": rows, "truncated": truncated}


class QueryOutOfMemory(Exception):
    """A user's query ran into the store's memory bound; Store.query names the bound and what to do."""


def oom_detail(exc: duckdb.Error) -> str:
    """'failed to allocate data of size 2.0 GiB (1.2 GiB/1.8 GiB used)' out of DuckDB's message."""
    line = first_line(exc)
    return line.split(":", 1)[1].strip() if ":" in line else line


def jsonable(value: Any) -> Any:
    """A DuckDB value as something the wire and JSON can carry (times as ISO text, HUGEINTs beyond 64 bits as text)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
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
