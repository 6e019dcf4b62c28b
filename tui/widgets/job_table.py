"""The jobs table: one row per job, keyed by job id, updated cell by cell (see KeyedTable).

The table is never cleared: each refresh compares the new cells of a job
with the ones on screen and updates only those that changed, so the cursor
and the scroll position stay where the user left them.
"""

from __future__ import annotations

from typing import Any

from mlfleet.core.cli.render import elapsed, when
from mlfleet.tui.widgets.keyed_table import KeyedTable

COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "JOB"), ("name", "NAME"), ("project", "PROJECT"), ("owner", "OWNER"), ("state", "STATE"),
    ("host", "HOST"), ("gpus", "GPUS"), ("attempt", "TRY"), ("submitted", "SUBMITTED"),
    ("runtime", "RUNTIME"), ("exit", "EXIT"), ("priority", "PRIO"), ("metric", "LATEST METRIC"),
    ("reason", "REASON"),
)
REASON_WIDTH = 60


def job_cells(job: dict[str, Any], metric: str = "") -> tuple[str, ...]:
    """The text of each column for one ``jobs_list`` entry."""
    gpus = job.get("gpus")
    if isinstance(gpus, list):
        gpus_text = ",".join(str(g) for g in gpus) or "-"
    else:
        gpus_text = "-" if gpus in (None, "") else str(gpus)
    reason = job.get("reason") or ""
    if len(reason) > REASON_WIDTH:
        reason = reason[:REASON_WIDTH - 1] + "…"
    exit_code = job.get("exit_code")
    return (
        job["job_id"], job.get("name") or "-", job.get("project") or "-", job.get("owner") or "-",
        job.get("state") or "-", job.get("host") or "-", gpus_text,
        f"{job.get('attempt') or 0}/{job.get('max_attempts') or 1}", when(job.get("submitted_at")),
        elapsed(job.get("started_at") or job.get("preparing_since"), job.get("finished_at")), "-" if exit_code is None else str(exit_code),
        str(job.get("priority") or 0), metric or "-", reason or "-",
    )


def latest_metric(run: dict[str, Any]) -> str:
    """``loss 0.412 @1200``: the metric the run logged last (by step), from a ``runs_list`` entry."""
    metrics = run.get("metrics") or {}
    if not metrics:
        return ""
    key, summary = max(metrics.items(), key=lambda kv: (kv[1].get("last_step") or 0, kv[0]))
    value = summary.get("last")
    text = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
    return f"{key} {text} @{summary.get('last_step', '?')}"


class JobTable(KeyedTable):
    """``jobs_list`` as a table, newest job first as ``jobs list`` prints it (the cursor follows its row's key,
    so a new job landing on top never moves it off the job the user is on)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(COLUMNS, **kwargs)

    def show_jobs(self, jobs: list[dict[str, Any]], metrics: dict[str, str] | None = None,
                  needle: str = "") -> None:
        """Bring the table in line with ``jobs`` (newest first, as the controller sends them)."""
        metrics = metrics or {}
        rows = []
        for job in jobs:
            cells = job_cells(job, metrics.get(job.get("run_id") or "", ""))
            if needle and needle not in " ".join(cells).lower():
                continue
            rows.append((job["job_id"], cells))
        self.show(rows)
