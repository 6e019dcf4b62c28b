"""``from mlfleet import track``: log metrics and params from inside a job.

It writes JSON lines to the file named by ``MLFLEET_METRICS_FILE`` (the
agent sets it; the format is documented in mlfleet.core.tracking.ingest and
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
import stat
import threading
import time
from typing import Any, Mapping

__all__ = ["log", "log_params", "params", "set_tags", "summary", "log_artifact", "ArtifactRefused", "flush", "run_id"]

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


class ArtifactRefused(ValueError):
    """A path that is not a regular file in a folder this run may share (the agent would not serve it)."""


def _artifact_roots(writer: _Writer) -> list[str]:
    """Where this run's artifacts may be: the agent says (MLFLEET_ARTIFACT_ROOTS), else its folder and cwd."""
    listed = os.environ.get("MLFLEET_ARTIFACT_ROOTS")
    folders = listed.split(os.pathsep) if listed else [os.path.dirname(writer.path or ""), os.getcwd()]
    return [os.path.realpath(f) for f in folders if f and os.path.isabs(f)]


def _check_inside(real: str, shown: str, roots: list[str]) -> None:
    if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots):
        shown = shown if real == shown else f"{shown} ({real})"
        raise ArtifactRefused(f"artifact {shown} is outside the run's folder and its workdir "
                              f"({', '.join(roots)}), so the agent would not serve it; write it there, or ask for "
                              "its folder in the host's artifact_roots")


def log_artifact(path: str | os.PathLike[str]) -> list[str]:
    """Record a file (or every file under a folder) that the run produced; return the paths recorded.

    The file stays where it is, on the node; its size and sha256 are taken
    here, now, so that ``mlfleet runs artifact get`` can prove that what it
    fetches later is what the run wrote. Log an artifact once it is complete.
    It must be a regular file inside the run's workdir or folder (or a folder
    the host allows: ``artifact_roots``), after following symlinks; anything
    else raises :class:`ArtifactRefused`. Symlinks found under a logged
    folder are skipped. Outside mlfleet nothing is hashed or written.
    """
    writer = _get()
    if not writer.path:
        return []
    shown = os.fspath(path)
    root = os.path.realpath(shown)
    _check_inside(root, shown, _artifact_roots(writer))
    if os.path.isdir(root):
        files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
    elif os.path.isfile(root):
        files = [root]
    elif os.path.lexists(root):
        raise ArtifactRefused(f"artifact {shown} is not a regular file or a folder")
    else:
        raise FileNotFoundError(f"no file or folder {shown!r} to log as an artifact")
    recorded = []
    for name in files:
        measured = _sha256(name)
        if measured is None:  # a symlink, FIFO or device: never an artifact
            if name == root:
                raise ArtifactRefused(f"artifact {shown} is not a regular file")
            continue
        digest, size = measured
        writer.write({"ts": time.time(), "artifact": {"path": name, "size": size, "sha256": digest}})
        recorded.append(name)
    return recorded


def _sha256(path: str) -> tuple[str, int] | None:
    """sha256 and size of a regular file, or None for anything else (opened without following a symlink,
    and without blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        os.set_blocking(fd, True)
        h = hashlib.sha256()
        size = 0
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


def params(default: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The job's params as the spec (and ``--set``, or its sweep point) gave them; ``default`` outside mlfleet.

    The controller passes them as JSON in ``MLFLEET_PARAMS`` (and one by one as
    ``MLFLEET_PARAM_<NAME>`` for programs that are not Python); they are
    already recorded as the run's params, so there is no need to log them again.
    A key in ``default`` the job was not given keeps its default.
    """
    text = os.environ.get("MLFLEET_PARAMS")
    given = json.loads(text) if text else {}
    return {**dict(default or {}), **(given if isinstance(given, dict) else {})}
