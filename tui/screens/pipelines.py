"""The pipelines view: every pipeline run; the one under the cursor as its DAG, its steps and its triggers' history.

The view polls every 2 s: ``pipeline_list`` for the runs, and for the run
under the cursor ``pipeline_show`` (its DAG drawn with
core/pipelines/drawing.py, each step with its state's symbol, and its
steps as ``mlfleet pipeline show`` lists them, gate decisions with their
numbers) and ``pipeline_triggers`` of its pipeline (what fired and what came
of it). Enter on a step asks ``pipeline_why`` (the CLI twin: ``mlfleet
pipeline why RUN STEP``); ``c`` cancels the run after asking (``mlfleet
pipeline cancel RUN``). Every word comes from core/pipelines/pages.py, the
same as the CLI's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

from mlfleet.core.base.errors import RemoteError
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.pipelines import drawing, pages
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.dialogs import Confirm, TextPanel
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

RUN_COLUMNS = tuple((h, h.upper()) for h in pages.LIST_HEADERS)
STEP_COLUMNS = tuple((h, h.upper()) for h in pages.STEP_HEADERS)
STATE_STYLES = {"succeeded": "green", "cached": "green", "running": "cyan", "failed": "red",
                "gate-failed": "yellow", "cancelled": "dim", "skipped": "dim"}
HISTORY_LINES = 8
DAG_WIDTH = 60  # before the DAG's pane has a size of its own


def styled_state(state: str, text: str | None = None) -> Text:
    return Text(text if text is not None else state, style=STATE_STYLES.get(state, ""))


def run_cells(row: list[str]) -> tuple[str | Text, ...]:
    """A ``pipeline_list`` row of pages.list_rows, its state coloured."""
    return (*row[:3], styled_state(row[3]), *row[4:])


def step_cells(row: list[str], state: str) -> tuple[str | Text, ...]:
    return (*row[:2], styled_state(state, row[2]), *row[3:])


def history_text(answer: dict[str, Any], name: str) -> str:
    """The last firings of this pipeline's triggers, newest first, one line each."""
    rows = pages.history_rows({"history": [h for h in answer.get("history") or [] if h.get("name") == name]})
    armed = [a for a in answer.get("armed") or [] if a.get("name") == name]
    head = (f"triggers: {pages.triggers_text(armed[0].get('on') or {})}, concurrency {armed[0].get('concurrency')}"
            if armed else "triggers: none armed")
    lines = [f"  {at}  {trigger}  {cause}  → {outcome}  {run}" for at, _, trigger, cause, outcome, run in
             rows[:HISTORY_LINES]]
    return "\n".join([head, *lines]) if lines else f"{head}; nothing fired yet"


class PipelinesScreen(PollingScreen):
    """Every pipeline run as ``mlfleet pipeline list``, and the selected one as ``mlfleet pipeline show --graph``."""

    TITLE = "mlfleet · pipelines"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel_run", "Cancel run"),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[dict[str, Any]] = []
        self.shows: dict[str, dict[str, Any]] = {}
        self.triggers: dict[str, Any] = {}

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(RUN_COLUMNS, id="pipeline-runs")
        yield Static("no pipeline runs yet: start one with 'mlfleet pipeline run FILE' (docs/pipelines.md)",
                     id="pipeline-empty")
        yield Static("", id="pipeline-head")
        with Horizontal(id="pipeline-body"):
            with VerticalScroll(id="pipeline-dag-pane"):
                yield Static("", id="pipeline-dag")
            with Vertical(id="pipeline-side"):
                yield KeyedTable(STEP_COLUMNS, id="pipeline-steps")
                yield Static("", id="pipeline-detail")
                yield Static("", id="pipeline-triggers")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#pipeline-runs", KeyedTable)

    @property
    def step_table(self) -> KeyedTable:
        return self.query_one("#pipeline-steps", KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    @property
    def selected(self) -> str | None:
        return self.table.current_key

    async def refresh_from(self, client: ControllerClient) -> None:
        self.show_runs(await client.call("pipeline_list", limit=200))
        run_id = self.selected
        if run_id is None:
            return
        try:
            run = await client.call("pipeline_show", run_id=run_id)
        except RemoteError as exc:
            if exc.kind != "NotFoundError":
                raise
            return  # gone between the list and its show: the next list no longer has it
        self.show_run(run)
        self.show_triggers(await client.call("pipeline_triggers", name=run.get("name")))

    # ------------------------------------------------------------ drawing
    def show_runs(self, runs: list[dict[str, Any]]) -> None:
        """Draw what ``pipeline_list`` answered (tests call it with fixed answers, as the poller does)."""
        self.runs = runs
        needle = self.filter_text.lower()
        rows = [(r["run_id"], run_cells(row)) for r, row in zip(runs, pages.list_rows(runs))]
        if needle:
            rows = [(k, c) for k, c in rows if needle in " ".join(str(x) for x in c).lower()]
        self.table.show(rows)
        self.query_one("#pipeline-empty", Static).display = not runs
        self._show_selected()

    def show_run(self, run: dict[str, Any]) -> None:
        """Draw what ``pipeline_show`` answered for one run."""
        self.shows[run["run_id"]] = run
        if run["run_id"] == self.selected:
            self._show_selected()

    def show_triggers(self, answer: dict[str, Any]) -> None:
        self.triggers = answer
        self._show_selected()

    def filter_changed(self) -> None:
        self.show_runs(self.runs)

    def on_resize(self, event: events.Resize) -> None:
        self._show_selected()

    def _dag_width(self) -> int:
        width = self.query_one("#pipeline-dag-pane", VerticalScroll).scrollable_content_region.width
        return width - 1 if width > drawing.MIN_WIDTH else DAG_WIDTH

    def _show_selected(self) -> None:
        run = self.shows.get(self.selected) if self.selected is not None else None
        head = self.query_one("#pipeline-head", Static)
        dag = self.query_one("#pipeline-dag", Static)
        detail = self.query_one("#pipeline-detail", Static)
        triggers = self.query_one("#pipeline-triggers", Static)
        if run is None:
            for widget in (head, dag, detail, triggers):
                set_text(widget, "")
            self.step_table.show([])
            return
        set_text(head, Text(" · ".join(pages.run_head(run))))
        set_text(dag, Text(drawing.draw_run(run, self._dag_width())))
        steps = run.get("steps") or []
        self.step_table.show([(s["step"], step_cells(row, s.get("state") or ""))
                              for s, row in zip(steps, pages.step_rows(run))])
        lines = [line for s in steps for line in pages.gate_lines(s) + pages.detail_lines(s)]
        set_text(detail, Text("\n".join(lines)))
        set_text(triggers, Text(history_text(self.triggers, run.get("name") or "")))

    # ------------------------------------------------------------ actions
    @on(KeyedTable.RowHighlighted, "#pipeline-runs")
    def _follow(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_selected()
        self.wake()  # its steps now, not at the next tick

    @on(KeyedTable.RowSelected, "#pipeline-runs")
    def _to_steps(self, event: KeyedTable.RowSelected) -> None:
        self.step_table.focus()

    @on(KeyedTable.RowSelected, "#pipeline-steps")
    def _why(self, event: KeyedTable.RowSelected) -> None:
        if self.selected is not None and event.key is not None:
            self._ask_why(self.selected, event.key)

    @work(exclusive=True, group="action")
    async def _ask_why(self, run_id: str, step: str) -> None:
        answer = await self.call("pipeline_why", run_id=run_id, step=step)
        if isinstance(answer, dict):
            await self.app.push_screen(TextPanel(f"why {step} · run {run_id}", Text(pages.why_text(answer, run_id))))

    @work(exclusive=True, group="action")
    async def action_cancel_run(self) -> None:
        run = next((r for r in self.runs if r["run_id"] == self.selected), None)
        if run is None:
            return
        if run.get("state") != "running":
            self.notify(f"pipeline run {run['run_id']} has ended ({run.get('state')}): nothing to cancel")
            return
        question = (f"Cancel pipeline run {run['run_id']} ({run.get('name')})? Its running steps are stopped and "
                    "its queued ones never start.")
        if not await self.app.push_screen_wait(Confirm(question, yes="Cancel run")):
            return
        answer = await self.call("pipeline_cancel", run_id=run["run_id"])
        if isinstance(answer, dict):
            self.notify(pages.cancel_text(answer))
            self.wake()
