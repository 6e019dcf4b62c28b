"""``from mlfleet import track``: log metrics and params from inside a job.

It writes JSON lines to the file named by ``MLFLEET_METRICS_FILE`` (the
agent sets it; the format is documented in mlfleet.core.ingest and
docs/metrics.md). Lines are
buffered and flushed every second and at exit, so calling ``log`` in a tight
training loop costs microseconds and no network. Outside mlfleet (no
``MLFLEET_METRICS_FILE``) every call is a cheap no-op, so the same script
runs on a laptop unchanged. Only the standard library is used here, so a
job can import it from any Python.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import threading
import time
from typing import Any, Mapping

__all__ = ["log", "log_params", "set_tags", "summary", "log_artifact", "flush", "run_id"]

_FLUSH_EVERY_S = 1.0
_FLUSH_EVERY_LINES = 10_000
_SUMMARY_MODES = ("min", "max", "last")


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
        if self.path:
            self.write_line(_encoder.encode(record))

    def write_line(self, line: str) -> None:
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


_encoder = json.JSONEncoder(default=str, separators=(",", ":"), allow_nan=False)
_keys: dict[str, str] = {}  # metric name -> its JSON text, for the fast path of log()


def _metrics_json(metrics: Mapping[str, Any]) -> str | None:
    """``{"loss":0.25}`` for plain finite floats and ints under str keys, else None (the general path).

    ``log`` runs in tight training loops: writing the usual line by hand is
    several times cheaper than ``json.dumps`` and gives the same JSON.
    """
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):  # numpy.float64 too, whose own repr is not JSON
            if value - value != 0.0:  # NaN or infinity: the general path spells them
                return None
            text = float.__repr__(value)
        elif type(value) is int:
            text = str(value)
        else:
            return None
        name = _keys.get(key)
        if name is None:
            if type(key) is not str:
                return None
            name = _encoder.encode(key)
            if len(_keys) < 10_000:
                _keys[key] = name
        parts.append(name + ":" + text)
    return "{" + ",".join(parts) + "}"


def log(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Record metric values (numbers) at ``step``."""
    writer = _get()
    if not writer.path:
        return
    body = _metrics_json(metrics)
    if body is None:
        record: dict[str, Any] = {"ts": time.time(), "metrics": {str(k): _clean(v) for k, v in metrics.items()}}
        if step is not None:
            record["step"] = int(step)
        writer.write(record)
    elif step is None:
        writer.write_line(f'{{"ts":{time.time()!r},"metrics":{body}}}')
    else:
        writer.write_line(f'{{"ts":{time.time()!r},"step":{int(step)},"metrics":{body}}}')


def log_params(params: Mapping[str, Any]) -> None:
    """Record the run's parameters (any JSON values)."""
    _get().write({"ts": time.time(), "params": {str(k): _clean(v) for k, v in params.items()}})


def set_tags(tags: Mapping[str, Any]) -> None:
    """Record free-form tags (strings)."""
    _get().write({"ts": time.time(), "tags": {str(k): str(v) for k, v in tags.items()}})


def summary(key: str, mode: str = "min") -> None:
    """Say which value of metric ``key`` sums the run up: its ``min``, its ``max`` or its ``last``.

    Comparisons use it for the run's "best" value (val_loss: min, accuracy: max).
    """
    if mode not in _SUMMARY_MODES:
        raise ValueError(f"summary mode must be one of {', '.join(_SUMMARY_MODES)}, not {mode!r}")
    _get().write({"ts": time.time(), "summary": {str(key): mode}})


def log_artifact(path: str | os.PathLike[str]) -> list[str]:
    """Record a file (or every file under a folder) that the run produced; return the paths recorded.

    The file stays where it is, on the node; its size and sha256 are taken
    here, now, so that ``mlfleet runs artifact get`` can prove that what it
    fetches later is what the run wrote. Log an artifact once it is complete.
    Outside mlfleet nothing is hashed or written.
    """
    writer = _get()
    if not writer.path:
        return []
    root = os.path.realpath(os.fspath(path))
    if os.path.isdir(root):
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
    elif os.path.isfile(root):
        files = [root]
    else:
        raise FileNotFoundError(f"no file or folder {os.fspath(path)!r} to log as an artifact")
    recorded = []
    for name in files:
        if os.path.islink(name) or not os.path.isfile(name):
            continue
        digest, size = _sha256(name)
        writer.write({"ts": time.time(), "artifact": {"path": name, "size": size, "sha256": digest}})
        recorded.append(name)
    return recorded


def _sha256(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def flush() -> None:
    """Write buffered lines now (they are also written every second and at exit)."""
    _get().flush()


def run_id() -> str | None:
    """The mlfleet run this process belongs to, or None outside mlfleet."""
    return os.environ.get("MLFLEET_RUN_ID")
