"""``from mlfleet import serve``: capture a model server's inputs and outputs, for drift checks later.

``serve.capture(inputs, outputs)`` appends ``{"ts", "inputs", "outputs"}`` as
one JSON line to the file named by ``MLFLEET_CAPTURE_FILE`` (the agent sets
it for a deployment's replica: ``<run>/capture.jsonl``, read by the
controller through the agent's ``read`` RPC, stream ``capture``). Without
that variable every call is a cheap no-op, so the same server runs on a
laptop unchanged. Only the standard library is used, as in ``mlfleet.track``.

Why it is built like this:

* **It never raises into the server** and never blocks a request on disk:
  a call samples (``rate``, else ``MLFLEET_CAPTURE_RATE``, else 1.0),
  encodes and appends to a buffer under a lock; a daemon thread writes the
  buffer at least every second, and at exit (atexit). A call that finds the
  buffer large asks for a write only if no other write is going on.
* **A line is never split**: each batch of whole lines is one ``os.write``
  on an ``O_APPEND`` descriptor, under an ``flock`` shared by every process
  writing the file (a server with several workers). A process killed in the
  middle of a write (SIGKILL can cut a large write at a page boundary) leaves
  an unfinished last line; the next writer, holding the lock, cuts the file
  back to its last newline before it appends, so the partial line never
  merges with a whole one. The agent serves whole lines only, so nothing of
  a partial line is ever read before it is removed.
* Values JSON cannot encode become ``str()`` (numpy arrays and scalars
  become lists and numbers; NaN and infinities the strings ``"nan"``,
  ``"inf"``, ``"-inf"``); a line over 1 MiB (the agent's line limit) is dropped.
* **Bounded**: the file stops growing at ``MLFLEET_CAPTURE_MAX_SIZE`` bytes
  (the replica's ``capture_max_size``; 256 MiB when not set): past it new
  captures are dropped, counted, and said once on stderr. The buffer holds
  at most 64 MiB; a full disk drops lines likewise. :func:`stats` says how
  many were captured, sampled out and dropped.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import math
import os
import random
import sys
import threading
import time
from typing import Any

__all__ = ["capture", "flush", "stats"]

_FLUSH_EVERY_S = 1.0
_WRITE_AT_BYTES = 1 << 20  # a call that finds this much buffered asks for a write
MAX_BUFFER = 64 << 20
MAX_LINE = 1 << 20  # the agent's MAX_METRIC_LINE: a longer line would be served as a skipped one
DEFAULT_MAX_SIZE = 256 * 1024**2  # ServicePlan.capture_max_size's default


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that json can encode: the slow path, taken only when the fast one failed."""
    if depth > 64:
        return _text(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else _text(k)): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    for method in ("tolist", "item"):  # numpy arrays and scalars, torch tensors
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return _jsonable(convert(), depth + 1)
            except Exception:  # noqa: BLE001
                break
    return _text(value)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a __str__ that raises must not reach the server
        return f"<unprintable {type(value).__name__}>"


def _default(value: Any) -> Any:
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            return convert()
    return str(value)


_encoder = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _encode(record: dict[str, Any]) -> str:
    try:
        return _encoder.encode(record)
    except Exception:  # noqa: BLE001 - NaN, odd keys, a circular list, a default() that raised: the slow path
        return _encoder.encode(_jsonable(record))


class _Writer:
    def __init__(self) -> None:
        self.path = os.environ.get("MLFLEET_CAPTURE_FILE") or None
        self.rate = min(1.0, max(0.0, _float_env("MLFLEET_CAPTURE_RATE", 1.0)))
        self.max_size = int(max(0.0, _float_env("MLFLEET_CAPTURE_MAX_SIZE", DEFAULT_MAX_SIZE)))
        self.pid = os.getpid()
        self.lines: list[bytes] = []
        self.buffered = 0
        self.lock = threading.Lock()  # the buffer
        self.writing = threading.Lock()  # one write at a time, batches in order
        self.random = random.Random()
        self.captured = self.sampled_out = self.dropped = 0
        self.said_full = False
        if self.path:
            atexit.register(self.flush)
            threading.Thread(target=self._flush_periodically, name="mlfleet-capture", daemon=True).start()

    def _flush_periodically(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY_S)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                pass

    def add(self, inputs: Any, outputs: Any, rate: float | None) -> None:
        chance = self.rate if rate is None else rate
        try:
            chance = float(chance)
        except (TypeError, ValueError):
            chance = self.rate
        if not chance >= 1.0 and not self.random.random() < chance:  # NaN: never captured
            with self.lock:
                self.sampled_out += 1
            return
        line = (_encode({"ts": time.time(), "inputs": inputs, "outputs": outputs}) + "\n").encode("utf-8", "replace")
        with self.lock:
            if len(line) > MAX_LINE or self.buffered + len(line) > MAX_BUFFER:
                self.dropped += 1
                return
            self.lines.append(line)
            self.buffered += len(line)
            due = self.buffered >= _WRITE_AT_BYTES
        if due and self.writing.acquire(blocking=False):  # a write in progress takes this batch next
            try:
                self._write_locked()
            finally:
                self.writing.release()

    def flush(self) -> None:
        if not self.path:
            return
        with self.writing:
            self._write_locked()

    def _write_locked(self) -> None:
        with self.lock:
            lines, self.lines, self.buffered = self.lines, [], 0
        if not lines:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)  # read: _repair
        except OSError:
            self._drop(len(lines))
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = _repair(fd)
            room = self.max_size - size
            batch, kept = [], 0
            for line in lines:
                if kept + len(line) > room:
                    break
                batch.append(line)
                kept += len(line)
            if len(batch) < len(lines):
                self._drop(len(lines) - len(batch), full=True)
            if batch:
                data = b"".join(batch)
                written = os.write(fd, data)
                if written < len(data):  # a full disk: the rest of the batch is lost, and no line is left half
                    self._drop(data.count(b"\n", written))
                    _repair(fd)
                with self.lock:
                    self.captured += data.count(b"\n", 0, written)
        except OSError:
            self._drop(len(lines))
            try:
                _repair(fd)
            except OSError:
                pass
        finally:
            os.close(fd)  # the flock goes with it

    def _drop(self, count: int, full: bool = False) -> None:
        with self.lock:
            self.dropped += count
            say = full and not self.said_full
            self.said_full = self.said_full or full
        if say:
            try:
                print(f"mlfleet.serve: {self.path} reached its cap of {self.max_size} bytes (capture_max_size); "
                      "new captures are dropped and counted from now on", file=sys.stderr, flush=True)
            except Exception:  # noqa: BLE001
                pass


def _repair(fd: int) -> int:
    """Cut an unfinished last line (left by a writer killed mid-write) back to the last newline; the size after."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        piece = os.pread(fd, end - start, start)
        newline = piece.rfind(b"\n")
        if newline != -1:
            os.ftruncate(fd, start + newline + 1)
            return start + newline + 1
        end = start
    os.ftruncate(fd, 0)
    return 0


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _get() -> _Writer:
    global _writer  # one writer per process: it owns the buffer behind atexit
    writer = _writer
    if writer is None or writer.pid != os.getpid():
        with _writer_lock:
            if _writer is None or _writer.pid != os.getpid():
                _writer = _Writer()
            writer = _writer
    return writer


def capture(inputs: Any, outputs: Any = None, *, rate: float | None = None) -> None:
    """Record one request's ``inputs`` (and ``outputs``), sampled at ``rate`` (0..1); never raises."""
    try:
        writer = _get()
        if writer.path:
            writer.add(inputs, outputs, rate)
    except Exception:  # noqa: BLE001 - capturing must never fail a request
        pass


def flush() -> None:
    """Write buffered captures now (they are also written every second and at exit); never raises."""
    try:
        _get().flush()
    except Exception:  # noqa: BLE001
        pass


def stats() -> dict[str, int]:
    """Captures written, sampled out, and dropped (cap reached, full disk, a line over 1 MiB) by this process."""
    writer = _get()
    with writer.lock:
        return {"captured": writer.captured, "sampled_out": writer.sampled_out, "dropped": writer.dropped}
