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

import os
import threading

MASK = b"***"
SECRET_FILE = "secret_env.json"  # a Slurm run's secret values, 0600, deleted by its runner once read


class Masker:
    """Replaces the given values in a byte stream fed in arbitrary chunks."""

    def __init__(self, values: list[str]) -> None:
        # longest first: a value that contains another is masked whole
        self.values = sorted({v.encode() for v in values if v}, key=len, reverse=True)
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """What may be written now of ``pending + chunk``, masked; the rest waits for the next chunk."""
        data = self._replace(self.pending + chunk)
        keep = self._held_back(data)
        self.pending = data[len(data) - keep:] if keep else b""
        return data[:len(data) - keep]

    def flush(self) -> bytes:
        """The end of the stream: what was held back (it is no secret's start any more)."""
        out, self.pending = self.pending, b""
        return out

    def _replace(self, data: bytes) -> bytes:
        for value in self.values:
            if value in data:
                data = data.replace(value, MASK)
        return data

    def _held_back(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that is a proper start of some value."""
        best = 0
        for value in self.values:
            for n in range(min(len(value) - 1, len(data)), best, -1):
                if data.endswith(value[:n]):
                    best = n
                    break
        return best


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
