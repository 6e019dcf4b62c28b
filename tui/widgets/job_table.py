"""The jobs table: one row per job, keyed by job id, updated cell by cell.

The table is never cleared: each refresh compares the new cells of a job
with the ones on screen and updates only those that changed, so the cursor
and the scroll position stay where the user left them.
"""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable

from mlfleet.core.render import elapsed, when

COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "JOB"), ("name", "NAME"), ("project", "PROJECT"), ("owner", "OWNER"), ("state", "STATE"),
    ("host", "HOST"), ("gpus", "GPUS"), ("attempt", "TRY"), ("submitted", "SUBMITTED"),
    ("runtime", "RUNTIME"), ("exit", "EXIT"), ("reason", "REASON"),
)
REASON_WIDTH = 60


def job_cells(job: dict[str, Any]) -> tuple[str, ...]:
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
        elapsed(job.get("started_at"), job.get("finished_at")), "-" if exit_code is None else str(exit_code),
        reason or "-",
    )


class JobTable(DataTable[str]):
    """``jobs_list`` as a table, oldest job first so new rows never move the cursor."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.shown: dict[str, tuple[str, ...]] = {}

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def show_jobs(self, jobs: list[dict[str, Any]]) -> None:
        """Bring the table in line with ``jobs`` (newest first, as the controller sends them)."""
        seen: set[str] = set()
        for job in reversed(jobs):
            job_id = job["job_id"]
            seen.add(job_id)
            cells = job_cells(job)
            before = self.shown.get(job_id)
            if before is None:
                self.add_row(*cells, key=job_id)
            else:
                for (column, _label), new, old in zip(COLUMNS, cells, before):
                    if new != old:
                        self.update_cell(job_id, column, new, update_width=True)
            self.shown[job_id] = cells
        for gone in [j for j in self.shown if j not in seen]:
            self.remove_row(gone)
            del self.shown[gone]
