"""Where ``mlfleet jobs logs`` puts a job's output: the terminal as it came, or JSON lines.

``--json`` cannot be one JSON document here: ``-f`` follows a job for as
long as it runs, and a script reads the output as it comes. So it is JSON
lines, one object per line of output, written as soon as the line is
complete (``jq -c``, ``for line in f: json.loads(line)``)::

    {"job_id": "j1a2b3c4d", "run_id": "r5e6f7a8b", "stream": "stdout", "text": "epoch 1 loss 0.31"}

The text is the line without its newline; a last line the job left
unfinished comes when the command ends (or when a cut or a new run
interrupts it) with ``"partial": true``, and so does each MAX_LINE piece of a longer line
(a job that never writes a newline). Output that ``logs.max_size``
dropped is an object of its own, where it happened:
``{"job_id", "run_id", "stream", "dropped": BYTES, "max_size": BYTES, "earlier": bool}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from mlfleet.core.cli import render


MAX_LINE = 1024**2  # characters of one line held back for its newline; a longer one comes in partial pieces


class TextLog:
    """The output as it came; cuts announced on stderr, each on a line of its own."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.at_line_start = True

    def data(self, job_id: str, run_id: str | None, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.at_line_start = text.endswith("\n")

    def dropped(self, job_id: str, run_id: str | None, dropped: int, max_size: int, earlier: bool) -> None:
        if not self.at_line_start:
            self.out.write("\n")  # the rest of that line was dropped: what follows starts a line of its own
            self.at_line_start = True
        print(render.dropped_notice(dropped, max_size, earlier), file=sys.stderr, flush=True)

    def close(self) -> None:
        self.out.flush()


class JsonLog:
    """One JSON object per line of output (see the module's doc)."""

    def __init__(self, stream: str, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.head: dict[str, Any] = {"job_id": None, "run_id": None, "stream": stream}
        self.pending = ""  # the start of a line whose newline has not come yet

    def data(self, job_id: str, run_id: str | None, text: str) -> None:
        if run_id != self.head["run_id"]:
            self._flush_partial()
        self.head.update(job_id=job_id, run_id=run_id)
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        for line in lines:
            self._put({"text": line})
        while len(self.pending) > MAX_LINE:  # a job that never writes a newline must not fill this process
            self._put({"text": self.pending[:MAX_LINE], "partial": True})
            self.pending = self.pending[MAX_LINE:]
        self.out.flush()

    def dropped(self, job_id: str, run_id: str | None, dropped: int, max_size: int, earlier: bool) -> None:
        self._flush_partial()
        self.head.update(job_id=job_id, run_id=run_id)
        self._put({"dropped": dropped, "max_size": max_size, "earlier": earlier})
        self.out.flush()

    def close(self) -> None:
        self._flush_partial()
        self.out.flush()

    def _flush_partial(self) -> None:
        if self.pending:
            self._put({"text": self.pending, "partial": True})
            self.pending = ""

    def _put(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps({**self.head, **record}) + "\n")
