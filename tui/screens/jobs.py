"""The jobs view: the queue and history as a table, and the log of the selected job.

Each second the table is brought in line with ``jobs_list`` and the log pane
fetches only the bytes the selected job wrote since the last tick.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Footer, Header

from mlfleet.core.client import ControllerClient
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.job_log import JobLog
from mlfleet.tui.widgets.job_table import JobTable

JOBS_LIMIT = 200
CATCH_UP_CHUNKS = 8  # at 256 KiB a chunk, a long log catches up in a few ticks without starving the table


class JobsScreen(PollingScreen):
    """Jobs, newest at the bottom, and the output of the one under the cursor."""

    TITLE = "mlfleet · jobs"
    BINDINGS = [Binding("e", "toggle_stream", "stdout/stderr")]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="jobs-body"):
            yield JobTable(id="jobs-table")
            yield JobLog(id="job-log")
        yield Footer()

    async def refresh_from(self, client: ControllerClient) -> None:
        jobs = await client.call("jobs_list", limit=JOBS_LIMIT)
        self.query_one(JobTable).show_jobs(jobs)
        await self._tail(client)

    async def _tail(self, client: ControllerClient) -> None:
        log = self.query_one(JobLog)
        for _ in range(CATCH_UP_CHUNKS):
            request = log.next_request()
            if request is None:
                return
            chunk = await client.call("job_logs", job=request.job, stream=request.stream, offset=request.offset)
            if not log.absorb(request, chunk):
                return

    @on(DataTable.RowHighlighted, "#jobs-table")
    @on(DataTable.RowSelected, "#jobs-table")
    def _follow_row(self, event: DataTable.RowHighlighted | DataTable.RowSelected) -> None:
        if event.row_key.value is not None and self.query_one(JobLog).follow(event.row_key.value):
            self.wake()

    def action_toggle_stream(self) -> None:
        """Switch the log pane between the job's stdout and stderr."""
        log = self.query_one(JobLog)
        if log.job_id is None:
            self.notify("select a job first")
            return
        log.follow(log.job_id, log.other_stream())
        self.wake()
