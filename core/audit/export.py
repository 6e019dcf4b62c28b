"""``audit export``: the chain, or its part since a time, out to JSON lines or Parquet for an auditor.

Every column goes out, seq, prev_hash and hash included, so the auditor
can re-check the links (docs/audit.md has the canonical encoding). The
file appears whole or not at all (COPY to a temporary name beside it, then
put in place), never inside mlfleet's own folders, and over an existing
file only with ``force`` (core/base/output_path.py decides, here on the
controller, because scripts call the RPC without the CLI's check).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Iterable

import duckdb

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.output_path import check_output, os_failure, place, temp_beside
from mlfleet.core.base.units import parse_duration

FORMATS = {"jsonl": "(format json)", "parquet": "(format parquet)"}
COLUMNS = "seq, id, ts, actor, action, target, detail, prev_hash, hash"


def parse_since(text: str, now: float) -> float:
    """Unix seconds for ``--since``: an ISO date or time (local unless it has an offset), or a duration ago ('7d')."""
    raw = text.strip()
    ago = raw.lower().removesuffix("ago").strip()
    if ago and ago[0].isdigit() and ago[-1] in "smhd":
        try:
            return now - parse_duration(ago)
        except ValueError:
            pass
    try:
        stamp = dt.datetime.fromisoformat(raw)
        return (stamp.astimezone() if stamp.tzinfo is None else stamp).timestamp()
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"--since {text!r} is not a time; write a date such as 2026-01-01, a time such as "
                         "'2026-01-01 14:30' (local unless it has an offset), or a duration ago such as 7d") from None


def export_audit(con: duckdb.DuckDBPyConnection, output: str, fmt: str, since: float | None = None,
                 mode: int | None = None, own_folders: Iterable[Path] = (), force: bool = False) -> dict[str, Any]:
    """Write the events at or after ``since`` (all without it) in chain order; return what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = check_output(output, own_folders, force)
    where, params = ("where ts >= to_timestamp(?)", [since]) if since is not None else ("", [])
    tmp = temp_beside(target)
    try:
        try:
            count = con.execute(f"copy (select {COLUMNS} from audit {where} order by seq, id) to ? {FORMATS[fmt]}",
                                params + [str(tmp)]).fetchall()[0][0]
        except duckdb.Error as exc:
            raise UsageError(f"cannot write {target}: {str(exc).strip().splitlines()[0]}") from None
        if mode is not None:  # the user's file gets the user's mode, not the controller's 0600
            try:
                os.chmod(tmp, mode)
            except OSError as exc:
                raise os_failure(exc, "write", target) from None
        place(tmp, target, force)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": str(target), "format": fmt, "rows": int(count), "since": since}
