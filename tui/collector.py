"""Python's full garbage collections, moved to moments when nobody is pressing keys.

A full collection walks every container object the process holds. In the
TUI that is 20-70 ms on a small machine, and CPython starts one whenever
enough objects have survived, which in practice is during a frame: a key
press that lands there waits for it (the bench saw it as the slowest 5 % of
presses). The TUI freezes what exists at start (imports: never garbage),
turns automatic full collections off, and runs one itself when the user
has been idle for a moment. The young generations stay automatic; they
take well under a millisecond.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

NEVER = 1_000_000_000  # gen1 collections before an automatic full one: never, in practice


class IdleCollector:
    """Decides when to collect: after ``every_s``, once input has rested ``quiet_s``; at ``latest_s`` regardless."""

    def __init__(self, every_s: float = 30.0, quiet_s: float = 1.0, latest_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.quiet_s, self.latest_s, self.clock = every_s, quiet_s, latest_s, clock
        self.last_collect = self.last_input = clock()

    def take_over(self) -> None:
        """Freeze what exists now and stop automatic full collections (process-wide: call it from the entry point)."""
        gc.freeze()
        young, middle, _old = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)

    def saw_input(self) -> None:
        self.last_input = self.clock()

    def due(self) -> bool:
        now = self.clock()
        since = now - self.last_collect
        return since >= self.latest_s or (since >= self.every_s and now - self.last_input >= self.quiet_s)

    def collect_if_due(self) -> bool:
        if not self.due():
            return False
        gc.collect()
        self.last_collect = self.clock()
        return True
