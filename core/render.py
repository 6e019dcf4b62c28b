"""Plain-text tables and values for the batch CLI (``--json`` bypasses this)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Sequence

from .units import format_duration, format_size


class Name(str):
    """A table header that is data: a SQL column, a run id, a param key. Shown as it is, never upper-cased.

    The fixed headers of a table (RUN, STATE) are upper-cased to stand out
    from the rows; a name from the data keeps its case, since the case is
    part of the name: ``count_star()`` is what DuckDB calls the column, and
    a run id upper-cased is no longer an id that can be pasted back.
    """


def names(values: Iterable[Any]) -> list[Name]:
    return [Name(v) for v in values]


def header(text: str) -> str:
    """A header as printed: a fixed one upper-cased, a :class:`Name` as it is (made printable, cut at 60)."""
    return _cell(str(text)) if isinstance(text, Name) else text.upper()


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    body = [[_cell(v) for v in row] for row in rows]
    shown = [header(h) for h in headers]
    widths = [len(h) for h in shown]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(shown, widths)).rstrip()]
    for row in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def number(value: Any) -> str:
    """A value in a table cell: ``-`` for none, 4 significant digits for a float, else as it is."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    if value is None or isinstance(value, float):
        return number(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else "-"
    text = printable(str(value))
    return text if len(text) <= 60 else text[:57] + "..."


def printable(text: str) -> str:
    """``text`` with control characters written as escapes: a newline or an ESC from the data (a run name, a
    column of a CSV file) would otherwise break the table's rows or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def when(value: Any) -> str:
    """An ISO timestamp as local ``YYYY-mm-dd HH:MM:SS``."""
    if not value:
        return "-"
    try:
        stamp = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return stamp.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def elapsed(start: Any, end: Any = None) -> str:
    if not start:
        return "-"
    try:
        a = dt.datetime.fromisoformat(str(start))
        b = dt.datetime.fromisoformat(str(end)) if end else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        return "-"
    return format_duration((b - a).total_seconds())


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


__all__ = ["table", "Name", "names", "header", "printable", "when", "elapsed", "percent", "format_size", "format_duration"]


def dropped_notice(dropped: int, max_size: int, earlier: bool) -> str:
    """The line shown where a job's log output was cut (logs.max_size; agents/logcap.py)."""
    limit = f"; logs.max_size is {format_size(max_size).replace('.0 ', ' ')}" if max_size else ""
    if earlier:
        return f"[mlfleet: {format_size(dropped)} of earlier output dropped{limit}]"
    return f"[mlfleet: {format_size(dropped)} of output dropped here, cut before it was read{limit}]"
