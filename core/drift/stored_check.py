"""A drift check the controller runs itself (a pipeline's drift step), computed and stored as ``drift check`` does.

``mlfleet drift check`` computes in the client, where the data lies, and
hands the finished report to the controller. A pipeline's drift step has no
client: its data is on the controller's machine already (an upstream step's
output in the controller's output store, a file beside the pipeline, or a
deployment's captured inputs, which the controller writes). So the same
pieces run here, in the same order: the config, the two sides, the columns
(for captures: the reference's features, since a capture holds what servers
were sent), ``run_check`` in a thread (DuckDB blocks), then the report and
its columns stored with their audit row in one transaction.

What it does not do: ``on_drift.submit`` of the config. A pipeline that
reacts to drift says so in its own steps (``fail_on_drift``) or triggers
(``on: drift:``), so a drift step never submits a job behind the pipeline's
back.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from mlfleet.core.base.errors import UsageError
from mlfleet.core.drift import records
from mlfleet.core.drift.check import run_check, source_columns
from mlfleet.core.drift.config import load_drift_config
from mlfleet.core.drift.sources import FileSource, resolve_captures, resolve_files
from mlfleet.core.store.rows import rows

if TYPE_CHECKING:
    from mlfleet.core.store.db import Store


def compute(reference: str, current: str | None, deployment: str | None, config: str | None,
            capture_dir: Path, columns: list[str] | None = None, since: float | None = None) -> dict[str, Any]:
    """The report of ``current`` (files) or ``deployment``'s captured inputs against ``reference`` (files); blocking.

    ``since`` (seconds since the epoch): only the captures made at or after it.

    Raises UsageError (one sentence) for missing files, an unreadable side or
    a bad drift.yaml (SpecError), as ``drift check`` does.
    """
    settings = load_drift_config(config)
    ref: FileSource = resolve_files(reference, "reference")
    if current is not None:
        cur: FileSource = resolve_files(current, "current")
    else:
        assert deployment is not None, "a drift check reads current files or a deployment's captures"
        cur = resolve_captures(capture_dir, deployment, since, None)
        if columns is None:
            columns = source_columns(settings, ref)  # the reference's features, not the capture's metadata
    return run_check(settings, ref, cur, columns)


async def check_and_store(store: "Store", capture_dir: Path, actor: str, reference: str, current: str | None = None,
                          deployment: str | None = None, config: str | None = None,
                          columns: list[str] | None = None, since: float | None = None) -> dict[str, Any]:
    """Compute the report (in a thread) and store it as ``drift_save_report`` does; the report with its id.

    ``since`` (seconds since the epoch) limits a deployment's captures to those made at or after it.
    """
    report = await asyncio.to_thread(compute, reference, current, deployment, config, capture_dir, columns, since)
    report_id = await store.read(new_report_id)
    await store.run(records.save_report, report_id, report, actor, None, deployment)
    report.update(report_id=report_id, run_id=None, deployment=deployment)
    return report


def new_report_id(con: Any) -> str:
    """A report id no report has (``d`` and 8 hex digits, as the drift RPCs make them)."""
    while True:
        ident = "d" + secrets.token_hex(4)
        if not rows(con, "select 1 from drift_reports where report_id = ?", [ident]):
            return ident


def capture_window(capture_dir: Path, deployment: str, since: float | None) -> tuple[int, float | None]:
    """How many captures of ``deployment`` were made at or after ``since``, and the newest one's time (seconds);
    ``(0, None)`` when there are none. Blocking (DuckDB): what the drift watch asks before it checks, so an idle
    deployment costs no report, and where its next window starts."""
    try:
        source = resolve_captures(capture_dir, deployment, since, None)
    except UsageError:
        return 0, None
    where = f" where ts >= make_timestamp({int(since * 1_000_000)})" if since is not None else ""
    con = duckdb.connect()
    try:
        count, newest = con.execute(f"select count(*), epoch_us(max(ts)) from {FileSource.table_function(source)}"
                                    f"{where}").fetchone() or (0, None)
    finally:
        con.close()
    return int(count or 0), None if newest is None else newest / 1_000_000
