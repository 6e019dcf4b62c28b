"""The jobs view: the queue and history as a table, and the log of the selected job.

Each second the table is brought in line with ``jobs_list`` and the log pane
fetches only the bytes the selected job wrote since the last tick. Every
action asks the controller (``job_cancel``, ``job_retry``,
``job_set_priority``, ``submit`` with a key of its own) in a worker; the
ones that stop or restart work ask for confirmation first.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Static

from mlfleet.core.controller.client import ControllerClient, submit_with_retry
from mlfleet.core.jobs.code_send import with_code
from mlfleet.core.jobs.overrides import parse_overrides
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.sweeps.children import children as sweep_children
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.models import TERMINAL_STATES, to_plain
from mlfleet.core.cli.render import value, when
from mlfleet.core.base.settings import ClientSettings, load_settings
from mlfleet.core.base.yamlsource import read_yaml
from mlfleet.core.jobs.submit_key import new_submit_key
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.dialogs import Confirm, Prompt, SpecPicker, TextPanel
from mlfleet.tui.widgets.job_log import JobLog
from mlfleet.tui.widgets.job_table import JobTable, latest_metric
from mlfleet.tui.widgets.text import set_text

JOBS_LIMIT = 200
CATCH_UP_CHUNKS = 8  # at 256 KiB a chunk, a long log catches up in a few ticks without starving the table
METRICS_EVERY = 5  # ticks between two looks at the running jobs' latest metrics
EMPTY_HINT = ("no jobs yet: press n to pick a job spec (a YAML file with name: and command:) and queue it, "
              "or run 'mlfleet submit FILE' (configs/demo-train.yaml in the repository is one)")


class JobsScreen(PollingScreen):
    """Jobs, newest first (as ``mlfleet jobs list``), and the output of the one under the cursor."""

    TITLE = "mlfleet · jobs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details/why", show=False),
        Binding("l", "toggle_log", "Log"),
        Binding("e", "toggle_stream", "stdout/stderr"),
        Binding("n", "submit", "Submit"),
        Binding("ctrl+d", "cancel_job", "Cancel"),
        Binding("r", "retry_job", "Retry"),
        Binding("p", "priority", "Priority"),
    ]

    def __init__(self, spec_root: Path | None = None) -> None:
        super().__init__()
        self.jobs: list[dict[str, Any]] = []
        self.metrics: dict[str, str] = {}
        self.spec_root = spec_root or Path.cwd()
        self._ticks = 0
        self._metrics_live: set[str] = set()  # runs asked about while their job was going
        self._metrics_final: set[str] = set()  # runs asked about once their job had ended: never again

    def compose_body(self) -> ComposeResult:
        with Vertical(id="jobs-body"):
            yield Static("waiting for the controller…", id="jobs-empty")
            yield JobTable(id="jobs-table")
            yield JobLog(id="job-log")

    @property
    def table(self) -> JobTable:
        return self.query_one(JobTable)

    def focus_body(self) -> None:
        self.table.focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        jobs = await client.call("jobs_list", limit=JOBS_LIMIT)
        await self._fetch_metrics(client, jobs)
        self._ticks += 1
        self.show_jobs(jobs)
        await self._tail(client)

    async def _fetch_metrics(self, client: ControllerClient, jobs: list[dict[str, Any]]) -> None:
        """The latest metric of the runs on view: a going run every few ticks, an ended one once more, then never.

        Asked by run id, so a job that finished before the TUI opened (or
        behind a hundred newer runs) has its value as much as a running one.
        """
        live = {j["run_id"] for j in jobs if j.get("run_id") and j.get("state") not in TERMINAL_STATES}
        ended = {j["run_id"] for j in jobs if j.get("run_id") and j.get("state") in TERMINAL_STATES}
        final = ended - self._metrics_final
        due = bool(final) or bool(live - self._metrics_live) or (live and self._ticks % METRICS_EVERY == 0)
        if not due:
            return
        runs: list[dict[str, Any]] = []
        for where, count in _run_id_filters(sorted(final | live)):
            try:
                runs += await client.call("runs_list", where=where, limit=count)
            except MlfleetError:
                if not client.connected:
                    raise
                break  # a controller without tracking: the column stays "-" (and is not asked again for these)
        for run in runs:
            if run.get("metrics"):
                self.metrics[run["run_id"]] = latest_metric(run)
        self._metrics_final |= final
        self._metrics_live |= live

    def show_jobs(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.table.show_jobs(jobs, self.metrics, self.filter_text.lower())
        empty = self.query_one("#jobs-empty", Static)
        empty.display = not self.table.shown
        set_text(empty, EMPTY_HINT if not jobs else "no job matches the filter (esc clears it)")

    def filter_changed(self) -> None:
        self.show_jobs(self.jobs)

    async def _tail(self, client: ControllerClient) -> None:
        log = self.query_one(JobLog)
        if not log.display:
            return
        for _ in range(CATCH_UP_CHUNKS):
            request = log.next_request()
            if request is None:
                return
            chunk = await client.call("job_logs", job=request.job, stream=request.stream, offset=request.offset)
            if not log.absorb(request, chunk):
                return

    @on(JobTable.RowHighlighted, "#jobs-table")
    def _follow_row(self, event: JobTable.RowHighlighted) -> None:
        if event.key is not None and self.query_one(JobLog).follow(event.key):
            self.wake()

    @on(JobTable.RowSelected, "#jobs-table")
    def _selected(self, event: JobTable.RowSelected) -> None:
        self.action_details()

    def _job(self) -> dict[str, Any] | None:
        key = self.table.current_key
        if key is None:
            self.notify("no job selected")
            return None
        return next((j for j in self.jobs if j["job_id"] == key), {"job_id": key, "state": "?"})

    # ---------------------------------------------------------- actions
    def action_toggle_stream(self) -> None:
        """Switch the log pane between the job's stdout and stderr."""
        log = self.query_one(JobLog)
        if log.job_id is None:
            self.notify("select a job first")
            return
        log.follow(log.job_id, log.other_stream())
        self.wake()

    def action_toggle_log(self) -> None:
        """Show the log pane of the selected job and put the focus in it (again: back to the table)."""
        log = self.query_one(JobLog)
        if log.has_focus:
            self.table.focus()
            return
        log.display = True
        key = self.table.current_key
        if key is not None:
            log.follow(key)
        log.focus()
        self.wake()

    @work(exclusive=True, group="action")
    async def action_details(self) -> None:
        """The job in full: why it is pending (per host), its events and runs."""
        job = self._job()
        if job is None:
            return
        detail = await self.call("job_show", job=job["job_id"])
        if detail is not None:
            await self.app.push_screen_wait(TextPanel(f"job {detail['job_id']} · {detail.get('name')}",
                                                      job_detail(detail)))

    @work(exclusive=True, group="action")
    async def action_cancel_job(self) -> None:
        job = self._job()
        if job is None:
            return
        if job.get("state") in TERMINAL_STATES:
            self.notify(f"job {job['job_id']} already {job['state']}")
            return
        what = "stop it (SIGTERM, then SIGKILL)" if job.get("state") in ("running", "preparing", "dispatched", "cancelling") else "drop it from the queue"
        if await self.app.push_screen_wait(Confirm(f"Cancel job {job['job_id']} ({job.get('name')})? This will {what}.",
                                                   yes="Cancel job")):
            answer = await self.call("job_cancel", job=job["job_id"])
            if answer is not None:
                self.notify(answer["message"])
                self.wake()

    @work(exclusive=True, group="action")
    async def action_retry_job(self) -> None:
        job = self._job()
        if job is None:
            return
        if job.get("state") not in TERMINAL_STATES:
            self.notify(f"job {job['job_id']} is {job.get('state')}: only an ended job can be retried")
            return
        if await self.app.push_screen_wait(Confirm(f"Retry job {job['job_id']} ({job.get('name')}, "
                                                   f"{job.get('state')})? It goes back in the queue.", yes="Retry")):
            answer = await self.call("job_retry", job=job["job_id"])
            if answer is not None:
                self.notify(answer["message"])
                self.wake()

    @work(exclusive=True, group="action")
    async def action_priority(self) -> None:
        job = self._job()
        if job is None:
            return
        value = await self.app.push_screen_wait(
            Prompt(f"Priority of job {job['job_id']} (higher is placed first)", str(job.get("priority") or 0)))
        if not value:
            return
        try:
            priority = int(value)
        except ValueError:
            self.notify(f"{value!r} is not a whole number", severity="error")
            return
        answer = await self.call("job_set_priority", job=job["job_id"], priority=priority)
        if answer is not None:
            self.notify(answer["message"])
            self.wake()

    @work(group="submit")
    async def action_submit(self) -> None:
        """Pick a job spec file, validate it here (file:line errors), then queue it.

        One key per submit, as ``mlfleet submit`` makes one per command: when
        the controller is lost mid-submit, the same request goes again with the
        same key, so a job recorded just before the loss comes back rather than
        being queued twice. Its own worker group: another action never cancels
        a submit that is asking again.
        """
        picked = await self.app.push_screen_wait(SpecPicker(self.spec_root))
        if picked is None:
            return
        path = picked.path
        try:
            spec = load_job_spec(path, parse_overrides(list(picked.sets), picked.name))
            if spec.sweep is not None:  # every child checked here too, at the sweep's lines
                sweep_children(spec, str(path), read_yaml(path).line_of)
        except MlfleetError as exc:
            self.notify(str(exc), title="bad job spec", severity="error", timeout=15)
            return
        client = self.client
        if client is None:
            self.notify("not connected to the controller yet; nothing was submitted", severity="warning")
            return
        key, spec_path = new_submit_key(), str(Path(path).absolute())
        try:
            retry_for = float(load_settings(client.home.config_file).client.submit_retry)
        except MlfleetError:
            retry_for = float(ClientSettings().submit_retry)
        try:
            params = await with_code(client, {"spec": to_plain(spec), "spec_path": spec_path, "key": key})
            answer, used = await submit_with_retry(
                client, params, retry_for=retry_for,
                resubmit=" ".join(["mlfleet", "submit", shlex.quote(spec_path),
                                   *(f"--set {shlex.quote(x)}" for x in picked.sets),
                                   *([f"--name {shlex.quote(picked.name)}"] if picked.name else []), "--key", key]),
                on_retry=lambda why: self.notify(f"lost the controller ({why}); submitting again with the same key",
                                                 title="submit", severity="warning"))
        except MlfleetError as exc:
            self.notify(str(exc), title="submit", severity="error", timeout=30)
            return
        finally:
            if not client.connected and client is self.client:
                self.use_client(None)
                self.post_message(self.ControllerLost(client, "the controller was lost during a submit"))
        if used is not client:
            await used.close()
        if "sweep_id" in answer:
            self.notify(f"sweep {answer['name']} queued: {answer['points']} jobs")
        else:
            self.notify(f"job {answer['job_id']} ({answer['name']}) queued")
        self.wake()


WHERE_BUDGET = 8000  # characters of one runs filter; the controller refuses one over 10,000


def _run_id_filters(run_ids: list[str]) -> list[tuple[str, int]]:
    """``run_id in (...)`` filters over ``run_ids`` (quotes doubled), each under the filter's length limit."""
    out, group, size = [], [], 0
    for run_id in run_ids:
        literal = "'" + run_id.replace("'", "''") + "'"
        if group and size + len(literal) + 2 > WHERE_BUDGET:
            out.append((f"run_id in ({', '.join(group)})", len(group)))
            group, size = [], 0
        group.append(literal)
        size += len(literal) + 2
    if group:
        out.append((f"run_id in ({', '.join(group)})", len(group)))
    return out


def job_detail(job: dict[str, Any]) -> Table:
    """``job_show`` as a page: state, why pending per host (or why it waits on its host), events and runs."""
    page = Table.grid(padding=(0, 1))
    page.add_column(style="bold", no_wrap=True)
    page.add_column()
    page.add_row("state", f"{job['state']}" + (f" ({job['reason']})" if job.get("reason") else ""))
    page.add_row("project", f"{value(job.get('project'))} · owner {value(job.get('owner'))} · "
                            f"priority {job.get('priority') or 0}")
    page.add_row("attempt", f"{value(job.get('attempt'))} of {value(job.get('max_attempts'))} · "
                            f"host {value(job.get('host'))} · GPUs {value(job.get('gpus'))}")
    if job.get("state") == "pending":
        why = job.get("why_pending") or []
        text = Text()
        for r in why:
            text.append(value(r.get("host")), style="bold").append(f" [{value(r.get('check'))}] {value(r.get('message'))}\n")
        page.add_row("why pending", text if why else "the scheduler has not looked at it yet")
    where = job.get("waiting_on_host")
    if where:  # placed, and queued on its host (Slurm): its reason, and the partition's free GPUs
        page.add_row("waiting", Text(value(where.get("host")), style="bold").append(
            f" {value(where.get('message'))}" + (f"; {where['cluster']}" if where.get("cluster") else "")))
    events = Text()
    for e in job.get("events") or []:
        events.append(f"{when(e.get('ts'))}  {value(e.get('state')):<10} {e.get('reason') or ''}\n")
    page.add_row("events", events)
    runs = Text()
    for r in job.get("runs") or []:
        runs.append(f"{r['run_id']}  {value(r.get('state')):<10} host {value(r.get('host'))}  "
                    f"exit {value(r.get('exit_code'))}\n")
    page.add_row("runs", runs or "-")
    return page
