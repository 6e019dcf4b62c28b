"""The chain's head, appended to a file outside the DuckDB file (docs/audit.md, "The head file").

Whoever can rewrite the database can recompute every hash after an edit,
or cut the newest rows off and leave a chain that checks; the head file
is a second record of where the chain had got to. After each write that
added events commits, the writer appends one line ``SEQ HASH TS`` and
fsyncs it, so the file never holds a head the table did not commit (a
crash between the commit and the line leaves the file one head behind,
which verifies). ``audit verify`` then checks the line with the highest
seq: the table must hold that row with that hash. By the chain, that one
row vouches for every row before it.

Lines are fixed width (seq zero-padded to 19 digits, the 64 hex digits of
the hash, an ISO UTC time), so a million heads are read and searched as
one numpy array in milliseconds, and a half-written last line (a crash
mid-append) is plain to see and left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import duckdb
import numpy as np

from mlfleet.core.audit import chain
from mlfleet.core.base.private import open_private

log = logging.getLogger(__name__)
SEQ_WIDTH = 19
LINE = SEQ_WIDTH + 1 + 64 + 1 + 27 + 1  # "SEQ HASH 2026-12-03T08:41:08.123456Z\n"


class FileHead(NamedTuple):
    """One line of the head file; ``line`` counts from 1."""

    seq: int
    hash: str
    ts: str
    line: int


def iso(ts_us: int) -> str:
    """An event's time as the head file writes it: ISO 8601 UTC, to the microsecond, always 27 characters."""
    return chain.micros_to_datetime(ts_us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_line(head: chain.Head) -> str:
    return f"{head.seq:0{SEQ_WIDTH}d} {head.hash} {iso(head.ts_us)}\n"


class HeadFile:
    """The append side: one line per committed write that moved the head, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: chain.Head | None = None

    def append(self, head: chain.Head) -> None:
        line = format_line(head).encode("ascii")
        assert len(line) == LINE
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size % LINE:  # a line a crash left half-written was never fsynced whole: drop it
                os.ftruncate(fd, size - size % LINE)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written = head

    def after_write(self, con: duckdb.DuckDBPyConnection) -> None:
        """The store's after-write hook: append the head if this write moved it (and it committed)."""
        if not chain.take_moved(con):
            return
        head = chain.read_head(con)
        if head is not None and head != self.written:
            self.append(head)

    def catch_up(self, con: duckdb.DuckDBPyConnection) -> chain.Head | None:
        """At start: append the table's head if the file is missing or behind it (an upgrade, a crash after a commit).

        A file *ahead* of the table is left as it is: that is what ``audit
        verify`` names as a cut tail, and no start may paper over it.
        Returns the head appended, if any.
        """
        head = chain.read_head(con)
        if head is None:
            return None
        newest = read_newest(self.path)
        self.written = None
        if newest is None or newest.seq < head.seq:
            self.append(head)
            return head
        if newest.seq == head.seq and newest.hash == head.hash:
            self.written = head
        return None


def read_all(path: Path) -> np.ndarray | None:
    """The file's whole lines as a (lines, LINE) byte array, or None when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    whole = len(data) - len(data) % LINE
    return np.frombuffer(data, dtype=np.uint8, count=whole).reshape(-1, LINE)


def seqs(lines: np.ndarray) -> np.ndarray:
    """Each line's seq, vectorised (a line whose seq field is not digits reads as -1)."""
    digits = lines[:, :SEQ_WIDTH].astype(np.int64) - ord("0")
    bad = ((digits < 0) | (digits > 9)).any(axis=1)
    values = digits @ (10 ** np.arange(SEQ_WIDTH - 1, -1, -1, dtype=np.int64))
    values[bad] = -1
    return values


def parse(lines: np.ndarray, index: int) -> FileHead:
    text = bytes(lines[index]).decode("ascii", errors="replace")
    seq_text, hash_text, ts_text = (text.rstrip("\n").split(" ") + ["", "", ""])[:3]
    return FileHead(int(seq_text) if seq_text.isdigit() else -1, hash_text, ts_text, index + 1)


def read_newest(path: Path) -> FileHead | None:
    """The line with the highest seq (the first such), or None for a missing or empty file.

    Not simply the last line: after a cut tail, the next controller start
    appends heads with lower seqs than the one the file already holds.
    """
    lines = read_all(path)
    if lines is None or not len(lines):
        return None
    return parse(lines, int(np.argmax(seqs(lines))))


def read_last(path: Path) -> FileHead | None:
    lines = read_all(path)
    if lines is None or not len(lines):
        return None
    return parse(lines, len(lines) - 1)

