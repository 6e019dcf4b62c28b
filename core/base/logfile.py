"""Bounded daemon logs: a size cap with rotation, and repeats rate-limited.

The controller and the local agent are started with stdout and stderr
redirected to a file in ``logs/``, so that even a crash of the interpreter
(or a C library's message) lands there. Rotation therefore works on the
descriptors, not on a handler's own file: when the file under fd 2 passes
``max_size`` it is renamed to ``.1`` (older ones shift up to ``backups``) and
a fresh file is ``dup2``-ed onto fds 1 and 2, so every writer follows. With
``backups=0`` the file is emptied in place instead.

A daemon in trouble tends to say the same thing thousands of times a second
(an accept loop out of descriptors, a host that keeps failing): a message
(same logger, level, text and exception type) passes ``burst`` times
per ``window`` seconds; the next one after the window says how many were
held back. Nothing here is global state beyond the logging tree it is handed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlfleet.core.base.private import open_private, private_dir

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_MAX_SIZE = 10 * 1024**2
DEFAULT_BACKUPS = 3


class RepeatFilter(logging.Filter):
    """Let each kind of message through ``burst`` times per ``window`` s; count the rest."""

    def __init__(self, burst: int = 5, window: float = 60.0, max_kinds: int = 1000) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.max_kinds = max_kinds
        self._seen: dict[tuple[Any, ...], list[float]] = {}  # kind -> [window start, passed, held back]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        try:
            text = record.getMessage()[:300]
        except Exception:  # a record whose arguments do not fit its text: let logging itself say so
            return True
        kind = (record.name, record.levelno, text, exc)  # identical messages only: distinct ones all pass
        now = time.monotonic()
        with self._lock:
            state = self._seen.get(kind)
            if state is None or now - state[0] >= self.window:
                held = int(state[2]) if state else 0
                if len(self._seen) >= self.max_kinds:  # a flood of distinct texts: forget the oldest kinds
                    for old in list(self._seen)[: self.max_kinds // 2]:
                        del self._seen[old]
                self._seen[kind] = [now, 1, 0]
                if held:
                    record.msg = f"{record.msg} (and {held} more like it in the last {self.window:.0f} s, not logged)"
                return True
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            return False


class RotatingStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Log to stderr; when stderr is ``path`` and has grown past ``max_size``, rotate it (fds 1 and 2 follow)."""

    def __init__(self, path: Path | None, max_size: int = DEFAULT_MAX_SIZE, backups: int = DEFAULT_BACKUPS) -> None:
        super().__init__(sys.stderr)
        self.path = path
        self.max_size = max_size
        self.backups = backups
        self.owned = path is not None and _is_stderr(path)  # a terminal or someone else's file is left alone

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.follow()
        except Exception:  # a full disk, a removed folder, a planted file: go on logging to what we have
            pass
        self.stream = sys.stderr
        super().emit(record)
        try:
            self.rotate_if_needed()
        except Exception:
            pass

    def follow(self) -> bool:
        """Reopen the log when someone removed or renamed it (logrotate): fd 2 would grow unseen, unbounded."""
        if self.path is None or not self.owned or _is_stderr(self.path):
            return False
        _point_stdio_at(self.path)
        return True

    def rotate_if_needed(self) -> bool:
        """Rotate when the log is over its size."""
        if self.path is None or not self.owned or not _is_stderr(self.path):
            return False
        if os.fstat(2).st_size <= self.max_size:
            return False
        if self.backups == 0:
            sys.stdout.flush()
            sys.stderr.flush()
            os.ftruncate(2, 0)  # opened with O_APPEND: writing goes on at the new end
            return True
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        _point_stdio_at(self.path)
        return True


def _point_stdio_at(path: Path) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = open_private(path)  # 0600, appending; a file planted by another user is refused
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def _is_stderr(path: Path) -> bool:
    try:
        ours, there = os.fstat(2), os.stat(path)
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino)


def take_over(path: Path) -> None:
    """Point stdout and stderr at ``path`` (appending), so that everything the process writes is bounded."""
    private_dir(path.parent)
    if not _is_stderr(path):
        _point_stdio_at(path)


def install(path: Path | None, max_size: int = DEFAULT_MAX_SIZE, backups: int = DEFAULT_BACKUPS,
            level: int = logging.INFO) -> RotatingStderr:
    """Log INFO and up to stderr with a size cap on ``path`` (when stderr is that file) and repeats rate-limited.

    Uncaught exceptions of threads and warnings go through the same handler,
    so they are bounded too.
    """
    handler = RotatingStderr(path, max_size, backups)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)

    def thread_died(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        logging.getLogger("thread").error("thread %s died", getattr(args.thread, "name", "?"),
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = thread_died
    return handler
