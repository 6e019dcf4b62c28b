"""A job's stdout and stderr kept under ``logs.max_size`` each, newest output kept, the job never held up.

The job writes straight into ``stdout.log`` / ``stderr.log`` (opened
``O_APPEND`` by its runner), so nothing stands between the job and its
output: a runner that dies never breaks the job's pipe, because there is
none. The runner's :class:`LogKeeper` looks at the files' sizes every few
milliseconds and, when one has grown past the limit, cuts its oldest part
so that about three quarters of the limit remain, in the first way the file
system offers:

``collapse``  ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` (ext4, XFS): the
              oldest blocks are taken out of the file and the rest moves
              down, atomically with respect to the job's appends.
``punch``     ``fallocate(FALLOC_FL_PUNCH_HOLE)`` (tmpfs, btrfs, ZFS,
              NFS 4.2): the oldest blocks are freed; the file keeps its
              length (``ls`` shows it, ``du`` does not count it).
``truncate``  the last resort: the file is emptied (once the job has
              ended, its newest part is kept). A few bytes the job writes
              in the instant between the size check and the cut may be lost
              with the rest, and less than the limit may remain.

Readers keep using one offset space, the bytes the job has written since
it started: ``logs.json`` records per stream where the file's first byte
sits in it (``base``) and where the output still kept begins
(``dropped``). The keeper changes a file and its record under an exclusive
``flock`` of ``logs.lock``; readers hold it shared for one read, so they
never pair a file with the wrong record.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from mlfleet.agents.rundir import RunDir, read_json, write_json_atomic

log = logging.getLogger(__name__)

LAYOUT_FILE = "logs.json"
LOCK_FILE = "logs.lock"
CHECK_EVERY_S = 0.02
METHODS = ("collapse", "punch", "truncate")
_COLLAPSE_RANGE, _PUNCH_HOLE, _KEEP_SIZE = 0x08, 0x02, 0x01
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENOTTY}
_LOCK_WAIT_S = 5.0


class _Unsupported(Exception):
    """This way of cutting is not offered by the file system."""


class Layout(NamedTuple):
    """Where a stream's file sits in the stream: byte ``n`` of the stream is byte ``n - base`` of the file."""

    base: int = 0
    dropped: int = 0  # the stream's bytes before this offset are no longer kept


def layout(run: RunDir, stream: str) -> Layout:
    entry = (read_json(run.file(LAYOUT_FILE)) or {}).get(stream) or {}
    try:
        return Layout(int(entry.get("base", 0)), int(entry.get("dropped", 0)))
    except (TypeError, ValueError):
        return Layout()


@contextlib.contextmanager
def shared_lock(run: RunDir) -> Iterator[None]:
    """Hold the run's log lock shared (a reader); no lock file: nothing was ever cut, nothing to hold."""
    try:
        fd = os.open(run.file(LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:  # a keeper stopped mid-cut (SIGSTOP): read anyway
                    break
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)


def _fallocate() -> object | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate
    except (OSError, AttributeError):  # not Linux
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


class _Stream:
    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd
        self.base = 0
        self.dropped = 0
        self.method = 0  # index into the keeper's methods


class LogKeeper:
    """The runner's side: cuts each stream's oldest output once the stream's file passes ``max_size``."""

    def __init__(self, run: RunDir, files: dict[str, int], max_size: int,
                 methods: tuple[str, ...] = METHODS) -> None:
        self.run = run
        self.max_size = max(int(max_size), 64 * 1024)
        self.keep = self.max_size * 3 // 4
        self.methods = methods
        self.streams = [_Stream(name, fd) for name, fd in files.items()]
        self._fallocate = _fallocate()
        self._lock_fd = os.open(run.file(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mlfleet-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and make a last check, so the files a finished run leaves are within the limit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.check(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            self.check()

    def check(self, final: bool = False) -> None:
        """Cut any stream over the limit; ``final``: the job and its group are gone, nothing writes any more."""
        for stream in self.streams:
            try:
                if os.fstat(stream.fd).st_size - (stream.dropped - stream.base) > self.max_size:
                    self._cut(stream, final)
            except Exception:  # the cap must never take the run down: log it and keep going
                log.exception("keeping %s under %d bytes failed", stream.name, self.max_size)

    def _cut(self, stream: _Stream, final: bool) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            while stream.method < len(self.methods):
                method = self.methods[stream.method]
                try:
                    if getattr(self, f"_{method}")(stream, final):
                        self._record()
                    return
                except _Unsupported as exc:
                    log.info("%s: %s is not supported here (%s); trying the next way", stream.name, method, exc)
                    stream.method += 1
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _cut_length(self, fd: int, physical_size: int, physical_start: int) -> int:
        """Bytes to cut from ``physical_start`` so about ``keep`` remain, in whole file-system blocks."""
        block = max(4096, os.fstatvfs(fd).f_bsize)
        return (physical_size - self.keep - physical_start) // block * block

    def _collapse(self, stream: _Stream, final: bool) -> bool:
        length = self._cut_length(stream.fd, os.fstat(stream.fd).st_size, 0)
        if length <= 0:
            return False
        self._call(stream.fd, _COLLAPSE_RANGE, 0, length)
        stream.base += length
        stream.dropped = stream.base
        return True

    def _punch(self, stream: _Stream, final: bool) -> bool:
        start = stream.dropped - stream.base  # where the hole punched so far ends
        length = self._cut_length(stream.fd, os.fstat(stream.fd).st_size, start)
        if length <= 0:
            return False
        self._call(stream.fd, _PUNCH_HOLE | _KEEP_SIZE, start, length)
        stream.dropped += length
        return True

    def _truncate(self, stream: _Stream, final: bool) -> bool:
        size = os.fstat(stream.fd).st_size
        if final:  # nobody writes any more: the newest part can be kept without losing a byte
            tail = os.pread(stream.fd, self.keep, size - self.keep)
            os.ftruncate(stream.fd, 0)
            os.write(stream.fd, tail)  # O_APPEND: at the start of the now empty file
            stream.base += size - len(tail)
        else:  # the job may write at any moment: empty it (what it writes in between may be lost)
            os.ftruncate(stream.fd, 0)
            stream.base += size
        stream.dropped = stream.base
        return True

    def _call(self, fd: int, mode: int, offset: int, length: int) -> None:
        if self._fallocate is None:
            raise _Unsupported("fallocate is not available here")
        if self._fallocate(fd, mode, offset, length) != 0:  # type: ignore[operator]
            code = ctypes.get_errno()
            if code in _UNSUPPORTED:  # the file system does not do it (EINVAL: not for this file system)
                raise _Unsupported(os.strerror(code))
            raise OSError(code, os.strerror(code))

    def _record(self) -> None:
        write_json_atomic(self.run.file(LAYOUT_FILE), {
            s.name: {"base": s.base, "dropped": s.dropped, "method": self.methods[min(s.method, len(self.methods) - 1)]}
            for s in self.streams} | {"max_size": self.max_size})


class LogRead(NamedTuple):
    start: int  # where ``data`` begins in the stream (past ``offset`` when output there was dropped)
    data: bytes
    size: int  # the stream's length: every byte the job has written
    dropped: int  # bytes between the offset asked for and ``start`` that are no longer kept


def read_log(run: RunDir, stream: str, path: Path, offset: int, max_bytes: int) -> LogRead:
    """Bytes of a log stream from ``offset`` (an offset in the stream, not in the file)."""
    with shared_lock(run):
        where = layout(run, stream)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return LogRead(offset, b"", 0, 0)
        try:
            size = where.base + os.fstat(fd).st_size
            start = max(offset, where.dropped)
            if start > offset and start < size:  # the kept output begins mid-line: show it from the next line
                head = os.pread(fd, 64 * 1024, start - where.base)
                newline = head.find(b"\n")
                if newline != -1:
                    start += newline + 1
            data = os.pread(fd, max_bytes, start - where.base) if start < size else b""
        finally:
            os.close(fd)
    return LogRead(start, data, size, start - offset if start > offset else 0)
