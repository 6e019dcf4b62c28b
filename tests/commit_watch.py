"""Tell the moment the controller commits to its DuckDB file, from outside, with inotify.

Why: a controller killed after it recorded a job but before its answer left
is the case idempotent submit exists for, and that window is a fraction of
a millisecond. Rather than slow the answer path with a test hook, the test
watches the real thing: DuckDB appends a transaction to ``<db>.wal`` when it
commits, and inotify wakes the test on that write, so a SIGKILL sent right
then lands in or around the window (the test counts how often it did).
Linux only (ctypes on libc's inotify; no package needed).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

_IN_MODIFY = 0x002
_IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded


class CommitWatch:
    """Wakes on each write to the WAL of the DuckDB file at ``db_path`` (made after this watch starts)."""

    def __init__(self, db_path: Path) -> None:
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if self._libc.inotify_add_watch(self.fd, str(db_path.parent).encode(), _IN_MODIFY | _IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {db_path.parent}")
        self.name: bytes | None = (db_path.name + ".wal").encode()

    def wait(self, timeout: float) -> bool:
        """True at the first write to the WAL, False after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return False
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            at = 0
            while at < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size:at + _EVENT.size + length].rstrip(b"\0")
                at += _EVENT.size + length
                if self.name is None or name == self.name:
                    return True
        return False

    def close(self) -> None:
        os.close(self.fd)

    @classmethod
    def any_file_in(cls, folder: Path) -> "CommitWatch":
        """Wakes on the first file made or written in ``folder`` (e.g. the code cache: a submit was received)."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        watch = cls(folder / "_")
        watch.name = None
        return watch

    def __enter__(self) -> "CommitWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kill_at_commit(db_path: Path, pid: int, timeout: float = 30.0) -> "subprocess.Popen[str]":
    """A watcher process that SIGKILLs ``pid`` at the next commit to ``db_path`` (exit 0), or exits 1 after ``timeout``.

    A process of its own, for a test whose client runs in the test's own event
    loop (the TUI): a thread there would wait for the GIL while the answer,
    already on its way, is read.
    """
    proc = subprocess.Popen([sys.executable, __file__, str(db_path), str(pid), str(timeout)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "watching\n"
    return proc


if __name__ == "__main__":
    with CommitWatch(Path(sys.argv[1])) as _watch:
        print("watching", flush=True)
        if not _watch.wait(float(sys.argv[3])):
            sys.exit(1)
        os.kill(int(sys.argv[2]), signal.SIGKILL)
