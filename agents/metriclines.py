"""Whole lines of a run's metric stream, read in chunks; a line over the limit is one skipped line.

The controller numbers metric lines as it ingests them (``seq`` is the line
number), so every way of cutting the stream into chunks must count a line
exactly once. A line longer than :data:`MAX_METRIC_LINE` is never sent: the
reader finds its end (however far away, across as many reads as it takes)
and answers with a chunk that covers exactly that line, no data and
``long_lines=1``; the parser counts it as one bad line. A line shorter than
the limit but longer than the bytes asked for comes whole, so a small budget
never splits a line in two. Scanning for the end of a very long line is
remembered between reads (``scans``), so a job writing one endless line
costs each poll a bounded slice of disk reading, not the whole line again.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from mlfleet.core.base.models import MAX_METRIC_LINE

SCAN_SLICE = 1 << 20  # bytes read at a time while looking for the end of a long line
SCAN_BUDGET = 64 << 20  # bytes one read may scan before it answers "not yet"


class Lines(NamedTuple):
    """``data`` holds whole lines from the offset asked for to ``end``, after ``long_lines`` skipped ones."""

    end: int
    data: bytes
    long_lines: int  # 0 or 1: a long line comes alone, with no data
    size: int  # the file's size when it was read


Scans = dict[str, tuple[int, int]]  # key -> (start of a long line, how far its end has been looked for)


def read_lines(path: str | os.PathLike[str], offset: int, max_bytes: int, final: bool, scans: Scans, key: str,
               max_line: int = MAX_METRIC_LINE, scan_budget: int = SCAN_BUDGET) -> Lines:
    """Whole lines from ``offset``; ``final``: the writer has exited, so an unfinished last line counts as a line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return Lines(offset, b"", 0, 0)
    try:
        size = os.fstat(fd).st_size
        if offset >= size:
            return Lines(offset, b"", 0, size)
        data = os.pread(fd, max(1, max_bytes), offset)
        at_end = offset + len(data) >= size
        long_at = _first_long_line(data, max_line)
        if long_at is not None and long_at > 0:
            return Lines(offset + long_at, data[:long_at], 0, size)  # the lines before it; the long one comes next
        if long_at is None:
            cut = data.rfind(b"\n") + 1
            if final and at_end:
                return Lines(offset + len(data), data, 0, size)  # the last line needs no newline
            if cut > 0:
                return Lines(offset + cut, data[:cut], 0, size)
            if len(data) <= max_line:  # the first line is longer than the read: read on, up to the limit
                more = data + os.pread(fd, max_line + 1 - len(data), offset + len(data)) if not at_end else data
                newline = more.find(b"\n")
                if 0 <= newline <= max_line:
                    return Lines(offset + newline + 1, more[:newline + 1], 0, size)
                if len(more) <= max_line:  # unfinished and still short: wait for the rest
                    if final and offset + len(more) >= size:
                        return Lines(offset + len(more), more, 0, size)
                    return Lines(offset, b"", 0, size)
        return _skip_long_line(fd, offset, size, final, scans, key, max_line, scan_budget)
    finally:
        os.close(fd)


def _first_long_line(data: bytes, max_line: int) -> int | None:
    """Where the first line longer than ``max_line`` starts in ``data``, or None.

    A line over the limit holds a whole aligned block of about half the limit
    with no newline in it, so looking for a newline in each such block (a
    memchr each) finds every candidate without walking line by line.
    """
    if len(data) <= max_line:  # no line in it can be longer than the limit
        return None
    block = max(1, (max_line + 1) // 2)
    at = 0
    while at + block <= len(data):
        if data.find(b"\n", at, at + block) != -1:
            at += block
            continue
        start = data.rfind(b"\n", 0, at) + 1
        newline = data.find(b"\n", at + block)
        end = newline if newline != -1 else len(data)
        if end - start > max_line:  # over the limit, finished or not
            return start
        if newline == -1:  # an unfinished last line, still short
            return None
        at = newline + 1
    return None


def _skip_long_line(fd: int, start: int, size: int, final: bool, scans: Scans, key: str, max_line: int,
                    scan_budget: int) -> Lines:
    """The chunk that is exactly the long line at ``start`` once its end is found, else an empty one."""
    known_start, scanned = scans.get(key, (start, start + max_line))
    if known_start != start:
        scanned = start + max_line
    budget_end = scanned + scan_budget
    while scanned < size and scanned < budget_end:
        piece = os.pread(fd, min(SCAN_SLICE, size - scanned, budget_end - scanned), scanned)
        if not piece:
            break
        newline = piece.find(b"\n")
        if newline != -1:
            scans.pop(key, None)
            return Lines(scanned + newline + 1, b"", 1, size)
        scanned += len(piece)
    if final and scanned >= size:
        scans.pop(key, None)
        return Lines(size, b"", 1, size)  # the writer is gone: the unfinished last line was one line
    scans[key] = (start, scanned)
    return Lines(start, b"", 0, size)
