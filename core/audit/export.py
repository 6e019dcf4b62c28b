"""``audit export``: the chain, or its part since a time, out to JSON lines or Parquet for an auditor.

Every column goes out, seq, prev_hash and hash included, so the auditor
can re-check the links (docs/audit.md has the canonical encoding). The
file appears whole or not at all (COPY to a temporary name beside it, then
put in place), never inside mlfleet's own folders, and over an existing
file only with ``force`` (core/base/output_path.py decides, here on the
controller, because scripts call the RPC without the CLI's check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import duckdb

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.output_path import check_output
from mlfleet.core.store.copy_out import copy_to_file

FORMATS = {"jsonl": "(format json)", "parquet": "(format parquet)"}
COLUMNS = "seq, id, ts, actor, action, target, detail, prev_hash, hash"


def export_audit(con: duckdb.DuckDBPyConnection, output: str, fmt: str, since: float | None = None,
                 mode: int | None = None, own_folders: Iterable[Path] = (), force: bool = False) -> dict[str, Any]:
    """Write the events at or after ``since`` (all without it) in chain order; return what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    target = check_output(output, own_folders, force)
    where, params = ("where ts >= to_timestamp(?)", [since]) if since is not None else ("", [])
    count = copy_to_file(con, f"select {COLUMNS} from audit {where} order by seq, id", params, FORMATS[fmt],
                         target, mode, force)
    return {"output": str(target), "format": fmt, "rows": int(count), "since": since}
