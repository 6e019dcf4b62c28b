"""A query's rows written to a file the user named, with DuckDB's COPY: whole or not at all.

One path for every export (``runs export``, ``audit export``): COPY writes a
temporary file beside the target (core/base/output_path.py says where it may
go), the file gets the user's mode rather than the controller's 0600, and
only then is it put in place; a DuckDB error is one sentence naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.output_path import os_failure, place, temp_beside


def copy_to_file(con: duckdb.DuckDBPyConnection, query: str, params: list[Any], options: str, target: Path,
                 mode: int | None, force: bool) -> int:
    """Write ``query``'s rows to ``target`` with COPY ``options`` (e.g. ``(format parquet)``); the row count."""
    tmp = temp_beside(target)
    try:
        try:
            count = con.execute(f"copy ({query}) to ? {options}", params + [str(tmp)]).fetchall()[0][0]
        except duckdb.Error as exc:
            raise UsageError(f"cannot write {target}: {str(exc).strip().splitlines()[0]}") from None
        if mode is not None:  # written 0600 (the controller's umask): the user's file gets the user's mode
            try:
                os.chmod(tmp, mode)
            except OSError as exc:
                raise os_failure(exc, "write", target) from None
        place(tmp, target, force)
    finally:
        tmp.unlink(missing_ok=True)
    return int(count)
