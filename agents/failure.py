"""Why a job failed, in words, from the end of its stderr: read on the node, where the log is.

WHY: "exited 1" sends the user digging through logs for what is almost
always the last line of a Python traceback, and the most common first
failure on a new host (the job's Python lacks a package the workstation
had) deserves a sentence that says what to do. The runner reads the tail
of ``stderr.log`` once, after the job ended, and the sentence travels in
``exit.json``'s ``message`` to the job's reason.
"""

from __future__ import annotations

import re
from pathlib import Path

TAIL_BYTES = 64 * 1024
MAX_WORDS = 240  # characters of the exception line kept in a reason

_MISSING_MODULE = re.compile(r"^(?:ModuleNotFoundError|ImportError): No module named '?([A-Za-z0-9_.]+)'?", re.M)
_MISSING_LIBRARY = re.compile(r"^ImportError: (\S+\.so[.\d]*): cannot open shared object file", re.M)
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$", re.M)


def failure_words(stderr_path: Path, python: str) -> str:
    """A sentence for the likely cause of a failed exit, or "" when the stderr tail shows none.

    ``python`` names the interpreter the job ran with (for the hint).
    """
    tail = _tail(stderr_path)
    if "Traceback (most recent call last)" not in tail and "ModuleNotFoundError" not in tail:
        return ""
    last = tail[tail.rfind("Traceback (most recent call last)"):] if "Traceback" in tail else tail
    if match := _MISSING_MODULE.search(last):
        module = match.group(1).split(".")[0]
        return (f"ModuleNotFoundError: the job's Python ({python}) on this host has no module {module!r}; "
                f"install it there (pip install into that environment, or mlfleet hosts bootstrap), "
                f"or pin the job to a host that has it (constraints.hosts)")
    if match := _MISSING_LIBRARY.search(last):
        return f"ImportError: this host lacks the shared library {match.group(1)}; install it there or pick another host"
    lines = _EXCEPTION_LINE.findall(last)
    if not lines:
        return ""
    line = "".join(ch for ch in " ".join(lines[-1].split()) if ch.isprintable())  # no escapes into a terminal
    return line if len(line) <= MAX_WORDS else line[: MAX_WORDS - 3] + "..."


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
