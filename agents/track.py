"""``from mlfleet import track``: log metrics and params from inside a job.

It writes JSON lines to the file named by ``MLFLEET_METRICS_FILE`` (the
agent sets it; the format is documented in mlfleet.core.ingest). Lines are
buffered and flushed every second and at exit, so calling ``log`` in a tight
training loop costs microseconds and no network. Outside mlfleet (no
``MLFLEET_METRICS_FILE``) every call is a cheap no-op, so the same script
runs on a laptop unchanged. Only the standard library is used here, so a
job can import it from any Python.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import threading
import time
from typing import Any, Mapping

__all__ = ["log", "log_params", "set_tags", "flush", "run_id"]

_FLUSH_EVERY_S = 1.0
_FLUSH_EVERY_LINES = 10_000


def _clean(value: Any) -> Any:
    """Non-finite floats as strings, since JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            return value
    return value


class _Writer:
    def __init__(self) -> None:
        self.path = os.environ.get("MLFLEET_METRICS_FILE")
        self.lines: list[str] = []
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()
        self.pid = os.getpid()
        if self.path:
            atexit.register(self.flush)
            # A job that logs once and then computes for an hour still shows that point.
            threading.Thread(target=self._flush_periodically, name="mlfleet-track", daemon=True).start()

    def _flush_periodically(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY_S)
            self.flush()

    def write(self, record: dict[str, Any]) -> None:
        if not self.path:
            return
        line = json.dumps(record, default=str, separators=(",", ":"), allow_nan=False)
        with self.lock:
            self.lines.append(line)
            due = len(self.lines) >= _FLUSH_EVERY_LINES or time.monotonic() - self.last_flush >= _FLUSH_EVERY_S
        if due:
            self.flush()

    def flush(self) -> None:
        if not self.path:
            return
        with self.lock:
            if not self.lines:
                return
            text = "\n".join(self.lines) + "\n"
            self.lines = []
            self.last_flush = time.monotonic()
            # One write of whole lines, in append mode: readers never see half a line
            # followed by another writer's line.
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(text)


_writer: _Writer | None = None


def _get() -> _Writer:
    global _writer  # one writer per process: it owns the buffer behind atexit
    if _writer is None or _writer.pid != os.getpid():
        _writer = _Writer()
    return _writer


def log(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Record metric values (numbers) at ``step``."""
    record: dict[str, Any] = {"ts": time.time(), "metrics": {str(k): _clean(v) for k, v in metrics.items()}}
    if step is not None:
        record["step"] = int(step)
    _get().write(record)


def log_params(params: Mapping[str, Any]) -> None:
    """Record the run's parameters (any JSON values)."""
    _get().write({"ts": time.time(), "params": {str(k): _clean(v) for k, v in params.items()}})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Record free-form tags (strings)."""
    _get().write({"ts": time.time(), "tags": {str(k): str(v) for k, v in tags.items()}})


def flush() -> None:
    """Write buffered lines now (they are also written every second and at exit)."""
    _get().flush()


def run_id() -> str | None:
    """The mlfleet run this process belongs to, or None outside mlfleet."""
    return os.environ.get("MLFLEET_RUN_ID")
