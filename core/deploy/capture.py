"""Captured serving inputs into Parquet, exactly once (docs/drift.md, "Captured inputs and drift").

Each replica run (an ActiveRun whose spec has ``service``) writes ``capture.jsonl`` on its node
(mlfleet.serve.capture). :class:`CaptureIngest` reads that stream by byte offset through the
agent's ``read`` RPC, at most every ``interval`` seconds per run (never in the per-tick poll: a
busy model must not slow the fleet's sync), and once more to the end after the run ended.

Why exactly once holds: a chunk's file is named by the offset it starts at, the committed one.
It is written to a temporary name and renamed, and only then is the new offset committed in
``capture_offsets`` (through the store's writer, compare-and-set on the old offset). A crash
between the rename and the commit leaves a file whose name the replay writes again, from the
same offset, so it is replaced, never doubled; any same-named file of that run in another day's
folder (the replay's first row may fall on another day only if the node dropped old lines
meanwhile) is removed first. Memory stays bounded: one chunk of at most ``max_bytes`` per run
in flight, parsed and written off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from mlfleet.core.base.errors import MlfleetError, RemoteError
from mlfleet.core.controller.service import BaseService, ControllerContext
from mlfleet.core.deploy import capture_rows
from mlfleet.core.jobs.service import JobsService
from mlfleet.core.store.db import transaction
from mlfleet.core.store.rows import rows

log = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between two reads of one run's capture stream
MAX_BYTES = 4 * 1024 * 1024  # one read (the agent's own limit); a line longer than this is skipped
CHUNKS_PER_VISIT = 8  # reads of one run in a row before others get their turn
CONCURRENCY = 4  # runs read at once
ENDED_WITHIN = 7 * 86400  # at start, ended replica runs younger than this are read to their end


@dataclass
class Tracked:
    """One replica run's capture stream and how far it has been taken (mirrors its capture_offsets row)."""

    run_id: str
    host: str
    deployment: str
    version: int
    replica: str
    offset: int = 0
    rows: int = 0
    files: int = 0
    bad_lines: int = 0
    skipping: bool = False  # the offset is inside a line too long to keep
    ended: bool = False  # the run is over: read to the end once more, then it is done
    next_at: float = 0.0  # monotonic time of the next read
    complained: str = ""  # the last problem logged, so a lasting one is logged once
    swept: bool = False  # temporary files of a killed controller removed


@dataclass
class Chunk:
    """What one read gives: the text to parse (whole lines) and where the stream is taken to."""

    text: str
    new_offset: int
    bad_lines: int
    skipping: bool
    finished: bool  # eof and everything taken: nothing more will ever come


def _byte_at(data: str, start: int, end: int, index: int) -> int | None:
    """The stream offset of character ``index`` of ``data`` (the chunk ``start``..``end``), or None if unknowable.

    The agent decodes with errors="replace", so a stray invalid byte makes the text longer than the
    bytes; one side of the cut without a replacement character still measures exactly.
    """
    head, tail = data[:index], data[index:]
    if len(data.encode("utf-8")) == end - start or "\ufffd" not in head:
        return start + len(head.encode("utf-8"))
    if "\ufffd" not in tail:
        return end - len(tail.encode("utf-8"))
    return None


def cut(chunk: dict[str, Any], offset: int, skipping: bool, max_bytes: int) -> Chunk:
    """Decide what of a read is taken now (pure): whole lines only, a line too long skipped to its end."""
    data, start, end, eof = chunk.get("data") or "", int(chunk["offset"]), int(chunk["end"]), bool(chunk.get("eof"))
    bad = int(chunk.get("long_lines") or 0)  # an agent that cuts lines itself counts the long ones
    if start > offset:  # the node dropped its oldest lines; what it kept begins at a line
        skipping = False
    if bad and not skipping:  # the agent cut whole lines itself and skipped the long ones: nothing is unfinished
        return Chunk(data, end, bad, False, eof)
    at = 0
    if skipping:
        newline = data.find("\n")
        if newline == -1:
            return Chunk("", end, bad, not eof, eof)
        at = newline + 1
    if eof:
        return Chunk(data[at:], end, bad, False, True)
    last = data.rfind("\n")
    if last >= at:
        where = _byte_at(data, start, end, last + 1)
        if where is None:  # undecodable bytes on both sides of the cut: the unfinished line is skipped
            return Chunk(data[at:last + 1], end, bad + 1, True, False)
        return Chunk(data[at:last + 1], where, bad, False, False)
    if at:  # a skipped line ended here; the line after it is not whole yet
        where = _byte_at(data, start, end, at)
        return Chunk("", end, bad + 1, True, False) if where is None else Chunk("", where, bad, False, False)
    if end - start >= max_bytes:  # a whole read without a line end: a line too long to keep
        return Chunk("", end, bad + 1, True, False)
    return Chunk("", max(start, offset), bad, False, False)  # an unfinished line: wait for its end


# ------------------------------------------------------------------ files

def file_path(capture_dir: Path, deployment: str, run_id: str, start: int, first_ts: float) -> Path:
    day = datetime.fromtimestamp(first_ts, tz=timezone.utc).strftime("%Y-%m-%d")
    return capture_dir / deployment / day / f"{run_id}-{start:012d}.parquet"


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sql_name(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def sweep_temporaries(capture_dir: Path, t: Tracked) -> None:
    """Remove this run's temporary files that a killed controller left (once per run and process)."""
    folder = capture_dir / t.deployment
    if not folder.is_dir():
        return
    for day in os.scandir(folder):
        if day.is_dir():
            for entry in os.scandir(day.path):
                if entry.name.startswith(f".{t.run_id}-") and entry.name.endswith(".tmp"):
                    os.unlink(entry.path)


def write_chunk(capture_dir: Path, t: Tracked, start: int, text: str) -> tuple[int, int, str | None]:
    """Parse ``text`` and write its rows to this chunk's Parquet file (by rename); (rows, bad lines, path).

    Runs on a worker thread with its own in-memory DuckDB connection: the controller's file is
    never touched here, and the event loop never waits on a parse or a write.
    """
    if not t.swept:
        sweep_temporaries(capture_dir, t)
        t.swept = True
    batch = capture_rows.Batch()
    capture_rows.add_lines(batch, text)
    if batch.first_ts is None:
        return 0, batch.bad_lines, None
    import numpy as np

    path = file_path(capture_dir, t.deployment, t.run_id, start, batch.first_ts)
    folder = capture_dir / t.deployment
    if folder.is_dir():  # a crashed attempt's file of the same start in another day's folder
        for day in os.scandir(folder):
            other = Path(day.path) / path.name
            if day.is_dir() and other != path and other.exists():
                other.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: dict[str, Any] = {"ts_us": np.array(batch.ts_us, dtype=np.int64),
                               "output": np.array(batch.outputs, dtype=object)}
    select = ["make_timestamp(ts_us) as ts", f"{int(t.version)}::INTEGER as version",
              f"{_sql_string(t.replica)}::VARCHAR as replica_id", f"{_sql_string(t.run_id)}::VARCHAR as run_id"]
    for i, (name, (duck_type, values)) in enumerate(batch.arrays().items()):
        columns[f"c{i}"] = values
        select.append(f"c{i}::{duck_type} as {_sql_name(name)}")
    select.append("output::VARCHAR as output")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    con = duckdb.connect(":memory:", config={"threads": 1, "memory_limit": "512MB"})
    try:
        con.register("chunk", columns)
        con.execute(f"copy (select {', '.join(select)} from chunk) to {_sql_string(str(tmp))} (format parquet)")
    finally:
        con.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return batch.rows, batch.bad_lines, str(path)


# ------------------------------------------------------------------ store

def load_offsets(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return rows(con, 'select run_id, deployment, version, replica_id, host, "offset", "rows", files, bad_lines, '
                     'skipping from capture_offsets where not done')


def offset_row(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any] | None:
    found = rows(con, 'select "offset", "rows", files, bad_lines, skipping, done from capture_offsets '
                      'where run_id = ?', [run_id])
    return found[0] if found else None


def ended_replica_runs(con: duckdb.DuckDBPyConnection, since: float) -> list[dict[str, Any]]:
    """Replica runs that ended (recently) and whose captures were never read to the end."""
    return rows(con, """
        select r.run_id, r.host,
               json_extract_string(j.spec, '$.service.deployment') as deployment,
               json_extract_string(j.spec, '$.service.version') as version,
               json_extract_string(j.spec, '$.service.replica') as replica
        from runs r join jobs j on j.job_id = r.job_id
        where r.state not in ('dispatched', 'preparing', 'running')
          and json_extract_string(j.spec, '$.service.deployment') is not null
          and r.created_at >= to_timestamp(?)
          and r.run_id not in (select run_id from capture_offsets where done)""", [since])


def commit(con: duckdb.DuckDBPyConnection, t: Tracked, expected: int, new_offset: int, rows_added: int,
           files_added: int, bad_added: int, skipping: bool, done: bool) -> bool:
    """Move a run's offset from ``expected`` to ``new_offset`` (refused when it is elsewhere: False)."""
    with transaction(con):
        found = con.execute('select "offset" from capture_offsets where run_id = ?', [t.run_id]).fetchall()
        if found and found[0][0] != expected or not found and expected != 0:
            return False
        if not found:
            con.execute("insert into capture_offsets (run_id, deployment, version, replica_id, host, updated_at) "
                        "values (?, ?, ?, ?, ?, now())", [t.run_id, t.deployment, t.version, t.replica, t.host])
        con.execute('update capture_offsets set "offset" = ?, "rows" = "rows" + ?, files = files + ?, '
                    'bad_lines = bad_lines + ?, skipping = ?, done = ?, host = ?, updated_at = now() '
                    'where run_id = ?',
                    [new_offset, rows_added, files_added, bad_added, skipping, done, t.host, t.run_id])
    return True


# ------------------------------------------------------------------ the ingest

class CaptureIngest:
    """Reads every replica run's capture stream into Parquet; the deploy service calls :meth:`tick` each tick."""

    def __init__(self, ctx: ControllerContext, jobs: JobsService, interval: float = INTERVAL,
                 max_bytes: int = MAX_BYTES, concurrency: int = CONCURRENCY) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.interval = interval
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self.tracked: dict[str, Tracked] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.loaded = False
        self.finished: set[str] = set()  # runs read to their end by this process (they may stay active a tick)
        self.rows = 0  # since this controller started
        self.bad_lines = 0

    async def load(self) -> None:
        """Rebuild what is being read from the file: open offsets, and replica runs that ended unread."""
        store = self.ctx.store
        for row in await store.read(load_offsets):
            self.tracked[row["run_id"]] = Tracked(
                row["run_id"], row["host"] or "", row["deployment"], int(row["version"]), row["replica_id"] or "",
                offset=int(row["offset"]), rows=int(row["rows"]), files=int(row["files"]),
                bad_lines=int(row["bad_lines"]), skipping=bool(row["skipping"]))
        for row in await store.read(ended_replica_runs, time.time() - ENDED_WITHIN):
            if row["run_id"] not in self.tracked and row["run_id"] not in self.jobs.active:
                self.tracked[row["run_id"]] = Tracked(row["run_id"], row["host"], row["deployment"],
                                                      int(row["version"] or 0), row["replica"] or "", ended=True)
        self.loaded = True

    async def tick(self) -> None:
        """Start the reads that are due; returns at once (the reads run beside the tick)."""
        if not self.loaded:
            await self.load()
        now = time.monotonic()
        for run in self.jobs.active.values():
            plan = run.spec.service
            if plan is None or run.run_id in self.finished:
                continue
            t = self.tracked.get(run.run_id)
            if t is None:
                self.tracked[run.run_id] = Tracked(run.run_id, run.host, plan.deployment, plan.version,
                                                   plan.replica, next_at=now)
            elif not t.ended:
                t.host = run.host
        self.finished &= set(self.jobs.active)  # kept only while the jobs service still holds the run
        for t in self.tracked.values():
            if not t.ended and t.run_id not in self.jobs.active:
                t.ended, t.next_at = True, now  # read it to the end now
        for t in sorted(self.tracked.values(), key=lambda t: t.next_at):
            if len(self.tasks) >= self.concurrency:
                break
            if t.next_at <= now and t.run_id not in self.tasks:
                task = asyncio.get_running_loop().create_task(self._visit(t))
                self.tasks[t.run_id] = task
                task.add_done_callback(lambda _, run_id=t.run_id: self.tasks.pop(run_id, None))

    async def _visit(self, t: Tracked) -> None:
        """Read one run's stream from its offset, a few chunks in a row; then come back after ``interval``."""
        again = self.interval
        try:
            for _ in range(CHUNKS_PER_VISIT):
                more = await self._read_once(t)
                if more is None:  # done: nothing more will come
                    self.tracked.pop(t.run_id, None)
                    self.finished.add(t.run_id)
                    return
                if not more:
                    break
            else:
                again = 0.0  # a backlog: come back at the next tick
            t.complained = ""
        except asyncio.CancelledError:
            raise
        except (MlfleetError, OSError, duckdb.Error) as exc:
            if isinstance(exc, RemoteError) and exc.kind == "NotFoundError" and t.ended:
                log.info("capture of %s: the run is not on %s any more; nothing more to read", t.run_id, t.host)
                await self.ctx.store.run(commit, t, t.offset, t.offset, 0, 0, 0, False, True)
                self.tracked.pop(t.run_id, None)
                self.finished.add(t.run_id)
                return
            words = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, RemoteError) and exc.kind == "NotFoundError":  # dispatched, not launched yet
                t.complained = words
            if words != t.complained:
                log.warning("capture of %s on %s: %s (trying again)", t.run_id, t.host, words)
                t.complained = words
        except Exception:
            log.exception("capture of %s failed (trying again)", t.run_id)
        t.next_at = time.monotonic() + again

    async def _read_once(self, t: Tracked) -> bool | None:
        """One read, written and committed; True: more is waiting, False: caught up, None: finished.

        The committed row is read first and wins over what this process remembers, so no file
        of an offset already committed is ever written again.
        """
        link = self.ctx.links.get(t.host)
        if link is None or not link.up:
            return False
        row = await self.ctx.store.read(offset_row, t.run_id)
        if row is not None:
            if row["done"]:
                return None
            t.offset, t.skipping = int(row["offset"]), bool(row["skipping"])
            t.rows, t.files, t.bad_lines = int(row["rows"]), int(row["files"]), int(row["bad_lines"])
        start = t.offset
        answer = await link.request("read", run_id=t.run_id, stream="capture", offset=start,
                                    max_bytes=self.max_bytes)
        if int(answer["offset"]) > start:
            log.warning("capture of %s: %d bytes were dropped on the node before they were read",
                        t.run_id, int(answer["offset"]) - start)
        chunk = cut(answer, start, t.skipping, self.max_bytes)
        if chunk.new_offset == start and not chunk.finished and not chunk.bad_lines:
            return False
        added, bad, path = await asyncio.to_thread(write_chunk, self.ctx.home.capture_dir, t, start, chunk.text)
        bad += chunk.bad_lines
        files = 1 if path else 0
        if not await self.ctx.store.run(commit, t, start, chunk.new_offset, added, files, bad, chunk.skipping,
                                        chunk.finished):
            raise MlfleetError(f"the committed capture offset of {t.run_id} moved under this reader")
        t.offset, t.skipping = chunk.new_offset, chunk.skipping
        t.rows, t.files, t.bad_lines = t.rows + added, t.files + files, t.bad_lines + bad
        self.rows, self.bad_lines = self.rows + added, self.bad_lines + bad
        if chunk.finished:
            return None
        return bool(answer.get("more"))

    def cancel(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {"runs": len(self.tracked), "reading": len(self.tasks), "rows": self.rows, "bad_lines": self.bad_lines}


class CaptureService(BaseService):
    """The ingest as a service of its own (until the deploy service drives it from its tick)."""

    name = "capture"

    def __init__(self, ctx: ControllerContext, jobs: JobsService, **options: Any) -> None:
        self.ingest = CaptureIngest(ctx, jobs, **options)

    async def start(self) -> None:
        await self.ingest.load()

    async def tick(self) -> None:
        await self.ingest.tick()

    def ticks_ended(self) -> None:
        self.ingest.cancel()

    async def stop(self) -> None:
        await self.ingest.stop()

    def status(self) -> dict[str, Any]:
        return self.ingest.status()
