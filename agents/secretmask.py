"""Secret values masked in a job's output before it reaches the disk (docs/secrets.md).

A run whose launch carried secret values does not write straight into its
log files: the runner puts a pipe between the job and each file and copies
through a :class:`Masker`, which writes ``***`` for every occurrence of a
value. Output arrives in chunks of any size, so a value may be split across
two reads: the masker holds back the longest end of what it has that is
the start of some value (and nothing else), so the job's output is never
held up by more than the start of a secret, and a value is never written in
two halves.
"""

from __future__ import annotations

import bisect
import os
import re
import threading

MASK = b"***"
SECRET_FILE = "secret_env.json"  # a Slurm run's secret values, 0600, deleted by its runner once read


class Masker:
    """Replaces the given values in a byte stream fed in arbitrary chunks, as :func:`mask_text` would all at once.

    Matching is leftmost-longest (a regex alternation, longest value first):
    scanning from the left, the longest value that starts at a position is
    masked and the scan goes on after it. A decision is written out only when
    no later byte could change it: from the first position whose rest is a
    proper start of some value (``AAAA`` may still become ``AAAAA``; ``xyz``
    may still become ``xyzw``), the bytes wait for the next chunk.
    """

    def __init__(self, values: list[str]) -> None:
        self.values = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self.pattern = re.compile(b"|".join(re.escape(v) for v in self.values)) if self.values else None
        self.longest = len(self.values[0]) if self.values else 0
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """What may be written now of ``pending + chunk``, masked; the rest waits for the next chunk."""
        data = self.pending + chunk
        if self.pattern is None:
            return data
        out: list[bytes] = []
        pos = 0
        growable = [start for start in range(max(0, len(data) - self.longest + 1), len(data))
                    if self._could_grow(data, start)]
        while True:
            after = bisect.bisect_left(growable, pos)
            hold = growable[after] if after < len(growable) else len(data)
            match = self.pattern.search(data, pos)
            if match is None or match.start() >= hold:
                break
            # It starts before anything undecided, so no later byte can make a longer match there: final.
            out += (data[pos:match.start()], MASK)
            pos = match.end()
        out.append(data[pos:hold])
        self.pending = data[hold:]
        return b"".join(out)

    def flush(self) -> bytes:
        """The end of the stream: what was held back, masked with what there is."""
        data, self.pending = self.pending, b""
        return self.pattern.sub(MASK, data) if self.pattern is not None else data

    def _could_grow(self, data: bytes, start: int) -> bool:
        """Whether ``data[start:]`` is a proper start of some value (more bytes could make a longer match)."""
        rest = data[start:]
        return len(rest) < self.longest and any(len(v) > len(rest) and v.startswith(rest) for v in self.values)


def mask_text(text: str, values: list[str]) -> str:
    """``text`` with every value replaced, all at once (what any chunking of it must come to)."""
    masker = Masker(values)
    return (masker.feed(text.encode()) + masker.flush()).decode("utf-8", "replace")


class MaskingPump:
    """A pipe whose write end the job gets; a thread copies what it reads, masked, into ``out_fd``."""

    def __init__(self, out_fd: int, values: list[str]) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.out_fd = out_fd
        self.masker = Masker(values)
        self.thread = threading.Thread(target=self._copy, daemon=True, name="secret-mask")
        self.thread.start()

    def _copy(self) -> None:
        try:
            while True:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    break
                _write_all(self.out_fd, self.masker.feed(chunk))
            _write_all(self.out_fd, self.masker.flush())
        finally:
            os.close(self.read_fd)

    def close(self, wait_s: float = 5.0) -> None:
        """Close our write end and wait for the job's last output (a daemon the job left may hold the pipe)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self.thread.join(wait_s)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
