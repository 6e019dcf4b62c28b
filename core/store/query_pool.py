"""Statements that can be stopped, and the bounded workers that run users' SQL.

DuckDB's ``interrupt()`` stops what a connection runs *now*. One that comes
before the statement starts is forgotten (duckdb 2.0.1 does so), and one
aimed at a cursor that was already handed to the next caller would stop the
wrong statement. So a worker *attaches* its cursor for as long as it runs,
a stopper interrupts only an attached cursor, both under one lock, and the
stopper keeps interrupting until the worker is done (``stop_until_done``).

Users' SQL (``mlfleet db query``) gets a pool of its own: a fixed number of
slots, each a cursor made on the store's thread, and for each query a fresh
cursor of that slot on a new *daemon* thread. Why each part:

- own slots: two runaway queries never hold the readers ``jobs list`` needs;
- a fresh cursor per query: whatever session state a query could leave
  (a search path, a variable, a prepared statement, a seed) dies with it;
- daemon threads: a statement DuckDB cannot interrupt (a read blocked on a
  FIFO, when file reads are allowed) never keeps the controller from exiting,
  as the joined threads of a ThreadPoolExecutor would;
- the slot comes back only when the thread has ended, so the bound holds even
  for queries whose client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Callable, TypeVar

import duckdb

from mlfleet.core.base.errors import MlfleetError, UnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")
_INTERVAL_S = 0.05


class StatementStopped(Exception):
    """Raised on a worker thread when its statement was stopped (interrupted, or stopped before it began)."""


class QueryStoppedError(MlfleetError):
    """A user's query ran past ``query.time_limit`` and was interrupted."""


class Stoppable:
    """The cursor a worker thread is running a statement on, for another thread to interrupt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self.reason: str | None = None

    def attach(self, cursor: duckdb.DuckDBPyConnection) -> None:
        """Worker thread, before it runs anything on ``cursor``; raises StatementStopped if already stopped."""
        with self._lock:
            if self.reason is not None:
                raise StatementStopped(self.reason)
            self._cursor = cursor

    def detach(self) -> None:
        """Worker thread, when it is done with the cursor: no interrupt may reach it after this."""
        with self._lock:
            self._cursor = None

    def stop(self, reason: str) -> None:
        """Any thread: interrupt the statement now (the first reason given is kept)."""
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._cursor is not None:
                self._cursor.interrupt()


async def stop_until_done(stoppable: Stoppable, done: Callable[[], bool], reason: str,
                          give_up_s: float = 600.0) -> None:
    """Interrupt until the worker says it is done (an interrupt before a statement starts is forgotten).

    A statement blocked in the operating system (a FIFO) never notices; after
    ``give_up_s`` this stops trying and says so, rather than spin for ever.
    """
    deadline = time.monotonic() + give_up_s
    while not done():
        if time.monotonic() > deadline:
            log.warning("a statement did not stop within %.0f s of being interrupted (%s)", give_up_s, reason)
            return
        stoppable.stop(reason)
        await asyncio.sleep(_INTERVAL_S)


def wait_stopping(pairs: list[tuple[Stoppable, Callable[[], bool]]], reason: str, timeout: float) -> bool:
    """The blocking twin of ``stop_until_done`` for many statements at once (closing); True when all ended."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [(s, done) for s, done in pairs if not done()]
        if not pending:
            return True
        if time.monotonic() > deadline:
            return False
        for stoppable, _ in pending:
            stoppable.stop(reason)
        time.sleep(_INTERVAL_S)


class _Query:
    """One user query in the pool: its stopper, its awaiting task, and whether its thread has ended."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.stoppable = Stoppable()
        self.task = task
        self.ended = threading.Event()
        self.ended.set()  # no thread yet: nothing to wait for
        self.answered = False  # the awaiting side has returned (or was cancelled)

    def done(self) -> bool:
        return self.ended.is_set()


class QueryPool:
    """``workers`` slots for users' SQL, each query on a fresh cursor on its own daemon thread."""

    def __init__(self, con: duckdb.DuckDBPyConnection, workers: int) -> None:
        # Made here, on the store's thread: a slot's cursor is only ever used by one worker at a time.
        self._slots = [con.cursor() for _ in range(workers)]
        self._free: asyncio.Queue[duckdb.DuckDBPyConnection] | None = None
        self._queries: set[_Query] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closing: str | None = None

    @property
    def running(self) -> int:
        """Queries waiting for a slot or running, including stopped ones whose statement has not yet ended."""
        self._queries -= {q for q in self._queries if q.answered and q.done()}
        return len(self._queries)

    async def run(self, fn: Callable[..., T], *args: Any, time_limit: float) -> T:
        """``fn(cursor, *args)`` on a fresh cursor; interrupted at ``time_limit`` or when the caller is cancelled."""
        if self._closing:
            raise UnavailableError(f"db query takes no new queries now ({self._closing}); "
                                   "try again when the controller is back")
        if self._free is None:
            self._free = asyncio.Queue()
            for slot in self._slots:
                self._free.put_nowait(slot)
        query = _Query(asyncio.current_task())
        self._queries.add(query)
        slot = None
        try:
            async with asyncio.timeout(time_limit):
                slot = await self._free.get()
                return await self._on_thread(query, slot, fn, args)
        except TimeoutError:
            if slot is None:
                busy = len(self._slots)
                raise QueryStoppedError(f"the query waited past query.time_limit ({time_limit:g} s) for a free "
                                        f"query worker ({busy} of {busy} busy); try again later or raise "
                                        "query.workers in config.yaml") from None
            raise QueryStoppedError(f"the query ran past query.time_limit ({time_limit:g} s) and was stopped; "
                                    "narrow it (WHERE, LIMIT) or raise query.time_limit in config.yaml") from None
        finally:
            query.answered = True
            if query.done():
                self._queries.discard(query)

    async def _on_thread(self, query: _Query, slot: duckdb.DuckDBPyConnection, fn: Callable[..., T],
                         args: tuple[Any, ...]) -> T:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        free = self._free
        assert free is not None

        def settle(ok: bool, value: Any) -> None:  # on the loop, once the thread has ended
            free.put_nowait(slot)
            if query.answered:
                self._queries.discard(query)
            if not answer.done():
                answer.set_result(value) if ok else answer.set_exception(value)

        def work() -> None:
            try:
                outcome = (True, _on_fresh_cursor(slot, query.stoppable, fn, args))
            except BaseException as exc:  # handed to the awaiting side, which raises it
                outcome = (False, exc)
            query.ended.set()
            with contextlib.suppress(RuntimeError):  # the loop is gone: the controller is exiting
                loop.call_soon_threadsafe(settle, *outcome)

        query.ended.clear()
        threading.Thread(target=work, name="db-query", daemon=True).start()
        try:
            return await answer
        except StatementStopped:
            raise UnavailableError(f"the query was stopped: {query.stoppable.reason}") from None
        except asyncio.CancelledError:  # time limit, client gone, controller stopping
            task = loop.create_task(stop_until_done(query.stoppable, query.done, "cancelled"))
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            raise

    async def stop_all(self, reason: str, timeout: float = 10.0) -> None:
        """Stop every query and let each answer its client (``reason``) before connections close."""
        self._closing = reason
        queries = list(self._queries)
        deadline = asyncio.get_running_loop().time() + timeout
        while queries and asyncio.get_running_loop().time() < deadline:
            for query in queries:
                query.stoppable.stop(reason)
            tasks = {q.task for q in queries if q.task is not None and not q.task.done()}
            if tasks:
                await asyncio.wait(tasks, timeout=_INTERVAL_S)
            else:
                await asyncio.sleep(_INTERVAL_S)
            queries = [q for q in queries if not (q.done() and (q.task is None or q.task.done()))]

    def close(self, timeout: float = 10.0) -> None:
        """Stop what still runs (blocking, for Store.close) and close the slots whose threads have ended."""
        self._closing = self._closing or "closing"
        queries = list(self._queries)
        if not wait_stopping([(q.stoppable, q.done) for q in queries], "the store is closing", timeout):
            log.warning("%d db queries did not stop within %.0f s; leaving them to the exit",
                        sum(not q.done() for q in queries), timeout)
            return
        for slot in self._slots:
            with contextlib.suppress(duckdb.Error):
                slot.close()


def _on_fresh_cursor(slot: duckdb.DuckDBPyConnection, stoppable: Stoppable, fn: Callable[..., T],
                     args: tuple[Any, ...]) -> T:
    cursor = slot.cursor()
    try:
        stoppable.attach(cursor)
        try:
            return fn(cursor, *args)
        except duckdb.InterruptException:
            raise StatementStopped(stoppable.reason or "interrupted") from None
        finally:
            stoppable.detach()
    finally:
        cursor.close()
