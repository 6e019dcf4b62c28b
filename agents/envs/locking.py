"""The per-environment build lock: an ``flock`` that a waiting run can still be cancelled out of.

WHY flock: it belongs to the open file, so a builder that dies (kill -9,
a reboot) lets go of it with no stale lock file to clean; the file itself
stays and is reused.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from mlfleet.agents.envs.install import EnvBuildCancelled

_POLL_S = 0.05


class EnvLock:
    """Held while one environment is checked and built; ``on_wait`` is called once if another holds it."""

    def __init__(self, path: Path, cancelled: Callable[[], bool], env_hash: str,
                 on_wait: Callable[[], None] | None = None) -> None:
        self.path = path
        self.cancelled = cancelled
        self.env_hash = env_hash
        self.on_wait = on_wait
        self._fd: int | None = None

    def __enter__(self) -> "EnvLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self.cancelled():
                    os.close(fd)
                    raise EnvBuildCancelled(self.env_hash, "cancelled while waiting for its environment") from None
                if not told and self.on_wait is not None:
                    self.on_wait()
                    told = True
                time.sleep(_POLL_S)
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None
