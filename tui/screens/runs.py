"""The runs view: tracked runs with their params, tags and summary metrics.

``/`` takes the CLI's filter language (``runs list --where``), sent to the
controller as typed when the user presses enter; a filter the controller
refuses is said in the filter bar, not raised. ``space`` marks runs, ``c``
compares the marked ones (two or more) on a screen of their own.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.base.errors import EXIT_USAGE, MlfleetError, RemoteError, UsageError
from mlfleet.core.tracking.run_keys import SHOW_HEADERS, show_rows
from mlfleet.core.cli.render import cell, elapsed, lineage_rows, value, when
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.screens.compare import CompareScreen, run_lineage
from mlfleet.tui.widgets.dialogs import TextPanel
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.run_table import BASE_COLUMNS, run_cells, run_columns
from mlfleet.tui.widgets.text import set_text

RUNS_LIMIT = 200


class RunsScreen(PollingScreen):
    """Every tracked run, newest first."""

    TITLE = "mlfleet · runs"
    POLL_S = 2.0
    LIVE_FILTER = False
    FILTER_HINT = "filter (the CLI's --where): e.g. state = 'succeeded' and metrics.loss < 0.5; enter applies, esc clears"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle_mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("x", "clear_marks", "Unmark all", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict[str, Any]] = []
        self.marked: list[str] = []  # in the order the user marked them

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(BASE_COLUMNS, id="runs-table")
        yield Static("", id="runs-status")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#runs-table", KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        where = self.filter_text or None
        try:
            runs = await client.call("runs_list", where=where, limit=RUNS_LIMIT)
        except (UsageError, RemoteError) as exc:
            if where and client.connected and _is_usage(exc):
                self.show_filter_error(str(exc))
                return
            raise
        if where:
            self.clear_filter_error()
        self.show_runs(runs)

    def show_runs(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs
        columns = run_columns(runs)
        self.table.set_columns(columns)
        marked = set(self.marked)
        self.table.show([(r["run_id"], run_cells(r, columns, r["run_id"] in marked)) for r in runs])
        self._status()

    def _status(self) -> None:
        text = f"{len(self.runs)} runs"
        if self.filter_text:
            text += f" matching {self.filter_text}"
        if self.marked:
            text += f" · marked {len(self.marked)}: {', '.join(self.marked)} (c compares, x unmarks)"
        else:
            text += " · space marks runs, c compares them"
        set_text(self.query_one("#runs-status", Static), text)

    def action_toggle_mark(self) -> None:
        key = self.table.current_key
        if key is None:
            return
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
        self.show_runs(self.runs)
        if self.table.cursor_row < self.table.row_count - 1:
            self.table.action_cursor_down()

    def action_clear_marks(self) -> None:
        self.marked.clear()
        self.show_runs(self.runs)

    def action_compare(self) -> None:
        runs = list(self.marked)
        if len(runs) < 2:
            key = self.table.current_key
            if key is not None and key not in runs:
                runs.append(key)
        if len(runs) < 2:
            self.notify("mark two or more runs with space, then press c")
            return
        if self.client is None:
            self.notify("not connected to the controller yet", severity="warning")
            return
        screen = CompareScreen(runs)
        screen.use_client(self.client)
        self.app.push_screen(screen)

    @on(KeyedTable.RowSelected, "#runs-table")
    def _selected(self, event: KeyedTable.RowSelected) -> None:
        if event.key is not None:
            self.show_run(event.key)

    @work(exclusive=True, group="action")
    async def show_run(self, run_id: str) -> None:
        run = await self.call("run_show", run=run_id)
        if run is not None:
            await self.app.push_screen_wait(TextPanel(f"run {run['run_id']} · {run.get('name')}", run_detail(run)))


def _is_usage(exc: MlfleetError) -> bool:
    """The user's filter was refused (a usage error, exit code 2, whatever its class), not the link."""
    return isinstance(exc, UsageError) or getattr(exc, "exit_code", None) == EXIT_USAGE \
        or getattr(exc, "kind", "") in ("UsageError", "FilterError", "ProtocolError")


def run_detail(run: dict[str, Any]) -> Table:
    """``run_show`` as a page: what ran where, params, tags, metrics and lineage, in the words of ``runs show``."""
    page = Table.grid(padding=(0, 1))
    page.add_column(style="bold", no_wrap=True)
    page.add_column()
    page.add_row("state", f"{value(run.get('state'))} · exit {value(run.get('exit_code'))} · job {value(run.get('job_id'))}"
                          + (f", attempt {run['attempt']}" if run.get("attempt") else ""))
    page.add_row("when", f"{when(run.get('started_at'))} → {when(run.get('finished_at'))}"
                         f" ({elapsed(run.get('started_at'), run.get('finished_at'))})")
    for title, mapping in (("params", run.get("params")), ("tags", run.get("tags"))):
        page.add_row(title, "\n".join(f"{k} = {value(v)}" for k, v in sorted((mapping or {}).items())) or "-")
    page.add_row("metrics", metrics_table(run))
    for label, text in lineage_rows(run_lineage(run, run.get("lineage") or {})):
        page.add_row(label, text)
    return page


def metrics_table(run: dict[str, Any]) -> Table | str:
    """The run's metric keys with their values, the same columns as ``runs show`` (``-`` where a value is missing)."""
    metrics = run.get("metrics") or []
    if isinstance(metrics, dict):  # a runs_list entry: key -> summary
        metrics = [{"key": k, **s} for k, s in sorted(metrics.items())]
    metrics = [m for m in metrics if isinstance(m, dict)]
    left_out = int((run.get("metric_keys") or {}).get("left_out") or 0)
    if not metrics:
        return "-"
    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for header in SHOW_HEADERS:
        table.add_column(header.upper(), no_wrap=True)
    for row in show_rows([{"points": None, "min": None, "max": None, "last": None, "last_step": None, **m}
                          for m in metrics], run.get("summary") or {}):
        table.add_row(*(cell(v) for v in row))
    if left_out:
        table.add_row(f"… and {left_out:,} more (mlfleet runs show {run.get('run_id')} --keys PATTERN or --all-keys)")
    return table
