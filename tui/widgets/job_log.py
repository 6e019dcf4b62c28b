"""The tail of one job's stdout or stderr.

The widget keeps where it is in the stream (the byte offset and the run it
belongs to), so each refresh asks the controller only for the bytes after
it and appends them. A retry starts a new run whose log begins at zero: the
widget notices the new run id and starts that run's log from the top.
Where the node dropped output to keep the log under ``logs.max_size``, a
notice line says how much.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from textual.widgets import Log

from mlfleet.core.base.models import TERMINAL_STATES
from mlfleet.core.cli.render import dropped_notice

STREAMS = ("stdout", "stderr")


class LogRequest(NamedTuple):
    """What to ask ``job_logs`` for next."""

    job: str
    stream: str
    offset: int


class JobLog(Log):
    """A ``Log`` that follows one job's stream."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(highlight=False, max_lines=20_000, **kwargs)
        self.job_id: str | None = None
        self.stream = "stdout"
        self.position = 0
        self.run_id: str | None = None
        self.finished = False  # the job ended and its stream was read to the end

    def on_mount(self) -> None:
        self.border_title = "log"
        self.border_subtitle = "select a job (↑/↓, enter) to follow its output"

    def follow(self, job_id: str, stream: str | None = None) -> bool:
        """Show ``job_id``'s ``stream`` from the start; return whether anything changed."""
        stream = stream or self.stream
        if (job_id, stream) == (self.job_id, self.stream):
            return False
        self.job_id, self.stream = job_id, stream
        self.position, self.run_id, self.finished = 0, None, False
        self.clear()
        self.border_title = f"{stream} of {job_id}"
        self.border_subtitle = "loading…"
        return True

    def other_stream(self) -> str:
        return STREAMS[1 - STREAMS.index(self.stream)]

    def next_request(self) -> LogRequest | None:
        """The next chunk to fetch, or None when there is nothing more to wait for."""
        if self.job_id is None or self.finished:
            return None
        return LogRequest(self.job_id, self.stream, self.position)

    def absorb(self, request: LogRequest, chunk: dict[str, Any]) -> bool:
        """Append a ``job_logs`` answer; return whether more may be read right away."""
        if request != self.next_request():
            return False  # the user picked another job or stream while this was in flight
        run_id = chunk.get("run_id")
        if run_id != self.run_id:
            if self.run_id is not None and self.position:
                # A new attempt: this chunk was read at the old run's offset. Start the new run's log.
                self.run_id, self.position = run_id, 0
                self.write_line(f"──── {run_id} ────")
                return True
            self.run_id = run_id
        if chunk.get("dropped"):  # the node cut this log (logs.max_size): say so where the gap is
            notice = dropped_notice(int(chunk["dropped"]), int(chunk.get("max_size") or 0), earlier=request.offset == 0)
            self.write(("\n" if self.lines and self.lines[-1] else "") + notice + "\n")  # on a line of its own
        data = chunk.get("data") or ""
        if data:
            self.write(data)
        self.position = int(chunk.get("end", self.position))
        state = chunk.get("state") or "?"
        self.finished = bool(chunk.get("eof")) and state in TERMINAL_STATES
        run = f" · {self.run_id}" if self.run_id else ""
        self.border_subtitle = f"{state}{run}{' · end of log' if self.finished else ''}"
        return bool(data) and not chunk.get("eof")
