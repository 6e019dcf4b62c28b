"""Plain-text tables and values for the batch CLI (``--json`` bypasses this)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Sequence

from mlfleet.core.base.units import format_duration, format_size


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


def value(v: Any) -> str:
    """Any value a user reads on a page (params, lineage, a run's fields), never as Python writes it.

    One spelling for the TUI's detail views and the CLI's text pages alike:
    missing or empty (None, ``""``, ``[]``, ``{}``) is ``-``; a bool is
    ``true``/``false`` (as the runs filter and YAML write it); a list is its items joined by ``, ``; a mapping is
    ``k=v`` pairs; a float keeps every digit it has (a learning rate of
    0.00012345 must not read as 0.0001234); the rest is ``str``. ``repr``
    leaks (``None``, ``True``, ``[]``) were the class of bug this replaces;
    ``--json`` is the exact form.
    """
    if v is None or (isinstance(v, (str, list, tuple, dict, set)) and not v):
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, set)):
        return ", ".join(value(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={value(x)}" for k, x in v.items())
    return str(v)


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


__all__ = ["table", "Name", "names", "header", "printable", "value", "number", "when", "elapsed", "percent",
           "format_size", "format_duration"]


def dropped_notice(dropped: int, max_size: int, earlier: bool) -> str:
    """The line shown where a job's log output was cut (logs.max_size; agents/logcap.py)."""
    limit = f"; logs.max_size is {format_size(max_size).replace('.0 ', ' ')}" if max_size else ""
    if earlier:
        return f"[mlfleet: {format_size(dropped)} of earlier output dropped{limit}]"
    return f"[mlfleet: {format_size(dropped)} of output dropped here, cut before it was read{limit}]"


cell = _cell  # a value in a table cell (``-`` for none, 4 significant digits for a float): the TUI's tables too

LINEAGE_SHOWN = frozenset({
    "git_repo", "git_commit", "git_branch", "git_dirty", "diff_hash", "spec_hash", "code_hash", "python",
    "python_executable", "packages", "packages_hash", "inputs", "host", "gpus", "gpu_hours", "gpu_util_mean",
    "gpu_util_peak", "gpu_mem_mean", "gpu_mem_peak",
    "elapsed_s", "hashed_bytes",  # the run's own line says how long it ran; bytes hashed is the node's cost
})


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "-"


def _size(v: Any) -> str:
    return format_size(int(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _pct(v: Any) -> str:
    return f"{v:.0f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def lineage_rows(lineage: dict[str, Any]) -> list[tuple[str, str]]:
    """A run's lineage as (label, text) lines: one definition for ``runs show``, the TUI's run page and compare.

    Each fact is said once, in words (``clean``/``dirty, diff …``, ``41
    packages, sha256 …``); a key the node did not send is left out rather
    than shown as ``None``; keys this version does not know come last, so a
    newer node's lineage is still shown.
    """
    rows: list[tuple[str, str]] = []
    if lineage.get("git_repo"):
        state = f"dirty, diff {_short(lineage.get('diff_hash'))}" if lineage.get("git_dirty") else "clean"
        commit = _short(lineage.get("git_commit")) if lineage.get("git_commit") else "no commit"
        rows.append(("git", f"{commit} on {value(lineage.get('git_branch'))} ({state}) {lineage['git_repo']}"))
    else:
        rows.append(("git", "- (the workdir is not in a git repository)"))
    rows.append(("spec", _short(lineage.get("spec_hash"))))
    rows.append(("code", _short(lineage.get("code_hash"))))
    if lineage.get("python"):
        exe = lineage.get("python_executable")
        rows.append(("python", f"{lineage['python']}" + (f" ({exe})" if exe else "")))
    if lineage.get("packages") is not None or lineage.get("packages_hash"):
        rows.append(("packages", f"{value(lineage.get('packages'))}, sha256 {_short(lineage.get('packages_hash'))}"))
    for item in lineage.get("inputs") or []:
        if not isinstance(item, dict):
            rows.append(("input", value(item)))
            continue
        detail = value(item.get("error")) if item.get("error") else (
            f"sha256 {_short(item.get('sha256'))}, {_size(item.get('size'))}"
            + (f", {value(item['files'])} files" if item.get("files") is not None else ""))
        rows.append(("input", f"{value(item.get('path'))}: {detail}"))
    if "host" in lineage or "gpus" in lineage:
        gpus = ",".join(map(str, lineage.get("gpus") or [])) or "none"
        rows.append(("host", f"{value(lineage.get('host'))}, GPUs {gpus}"))
    hours = lineage.get("gpu_hours")
    if hours is not None:
        rows.append(("GPU hours", f"{hours:.4f}" if isinstance(hours, (int, float)) else value(hours)))
    if lineage.get("gpu_util_mean") is not None or lineage.get("gpu_util_peak") is not None:
        rows.append(("GPU util", f"mean {_pct(lineage.get('gpu_util_mean'))} peak {_pct(lineage.get('gpu_util_peak'))}"))
    if lineage.get("gpu_mem_mean") is not None or lineage.get("gpu_mem_peak") is not None:
        rows.append(("GPU memory", f"mean {_size(lineage.get('gpu_mem_mean'))} peak {_size(lineage.get('gpu_mem_peak'))}"))
    rows += [(k, value(v)) for k, v in sorted(lineage.items()) if k not in LINEAGE_SHOWN and value(v) != "-"]
    return rows
