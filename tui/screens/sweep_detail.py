"""One sweep: its children with their points, state and objective, and one param against the objective.

The screen asks ``sweep_show`` every 2 s while it is on view (a running
sweep's children change state and log their objective), hands the children
to a KeyedTable (only changed cells redraw) and redraws the scatter when
its points changed. ``p`` steps through the swept params for the x axis;
the best run is marked ``★`` in the table and drawn as ``x`` on the plot;
``c`` cancels the sweep after asking (``mlfleet sweeps cancel NAME``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual_plotext import PlotextPlot

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.cli.render import number, value
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.sweeps import summary
from mlfleet.tui.widgets.dialogs import Confirm
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.sweep_plot import draw, swept_params
from mlfleet.tui.widgets.text import set_text

STATE_STYLES = {"succeeded": "green", "failed": "red", "lost": "red", "running": "cyan", "cancelled": "dim"}


async def cancel_sweep(screen: Screen[Any], client: ControllerClient | None, sweep_id: str, name: str,
                       progress: dict[str, int]) -> bool:
    """Ask, then cancel every child not ended yet; True when the controller did. A refusal is a notification."""
    if progress["pending"] + progress["running"] == 0:
        screen.notify(f"sweep {name} has ended: nothing to cancel")
        return False
    question = (f"Cancel sweep {name} ({sweep_id})? {progress['pending']} queued children are dropped and "
                f"{progress['running']} running ones stopped (SIGTERM, then SIGKILL).")
    if not await screen.app.push_screen_wait(Confirm(question, yes="Cancel sweep")):
        return False
    if client is None:
        screen.notify("not connected to the controller yet", severity="warning")
        return False
    try:
        answer = await client.call("sweep_cancel", sweep=sweep_id)
    except MlfleetError as exc:
        screen.notify(str(exc), title="sweep cancel", severity="error")
        return False
    screen.notify(answer["message"])
    return True


def child_columns(params: list[str], metric: str) -> list[tuple[str, str]]:
    return [("best", " "), ("idx", "#"), ("name", "CHILD"), ("state", "STATE"), ("objective", metric.upper()),
            *((f"p:{p}", p.upper()) for p in params), ("host", "HOST"), ("job_id", "JOB")]


def child_cells(c: dict[str, Any], params: list[str], best_job: str | None) -> tuple[str | Text, ...]:
    is_best = best_job is not None and c["job_id"] == best_job
    point = c.get("point") or {}
    return (Text("★", style="bold yellow") if is_best else "", str(c["idx"]),
            Text(c["name"], style="bold yellow") if is_best else c["name"],
            Text(c["state"], style=STATE_STYLES.get(c["state"], "")), number(c.get("objective")),
            *(value(point.get(p)) for p in params), c.get("host") or "-", c["job_id"])


class SweepScreen(Screen[None]):
    """``sweep_show`` of one sweep, refreshed while on view."""

    TITLE = "mlfleet · sweep"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("p", "next_param", "Next param"),
        Binding("c", "cancel_sweep", "Cancel sweep"),
    ]

    def __init__(self, sweep: str) -> None:
        super().__init__()
        self.sweep_ident = sweep
        self.client: ControllerClient | None = None
        self.sweep: dict[str, Any] = {}
        self.params: list[str] = []
        self.param_index = 0
        self._plotted: object = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"sweep {self.sweep_ident}…", id="sweep-title")
        yield KeyedTable(child_columns([], "objective"), id="sweep-children")
        yield PlotextPlot(id="sweep-plot")
        yield Static("", id="sweep-plot-note")
        yield Footer()

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#sweep-children", KeyedTable)

    def on_mount(self) -> None:
        self.table.focus()
        if self.client is not None:
            self.load()
            self.set_interval(self.POLL_S, self.load)

    @work(exclusive=True, group="load")
    async def load(self) -> None:
        if self.client is None or not self.is_current:
            return
        try:
            sweep = await self.client.call("sweep_show", sweep=self.sweep_ident)
        except MlfleetError as exc:
            set_text(self.query_one("#sweep-title", Static), f"cannot show sweep {self.sweep_ident}: {exc}")
            return
        self.show_sweep(sweep)

    def show_sweep(self, sweep: dict[str, Any]) -> None:
        """Draw what ``sweep_show`` answered: the title, the children and the scatter."""
        self.sweep = sweep
        children = sweep.get("children") or []
        self.params = swept_params(children)
        self.param_index = min(self.param_index, max(0, len(self.params) - 1))
        metric = sweep.get("objective_metric") or "objective"
        best = sweep.get("best")
        best_job = best["job_id"] if best else None
        objective = f"{sweep['objective_mode']} {metric}" if sweep.get("objective_metric") else "none"
        set_text(self.query_one("#sweep-title", Static),
                 f"sweep {sweep['sweep_id']} · {sweep['name']} · project {sweep.get('project') or '-'} · "
                 f"objective {objective} · max_parallel {sweep.get('max_parallel') or '-'}"
                 + (f" · cancelled by {sweep['cancelled_by']}" if sweep.get("cancelled_by") else "")
                 + f"\nprogress: {summary.progress(sweep['progress'])}\nbest: {summary.best(best)}"
                 + (f"  run {best['run_id']}" if best else ""))
        self.table.set_columns(child_columns(self.params, metric))
        self.table.show([(c["job_id"], child_cells(c, self.params, best_job)) for c in children])
        self._plot()

    def _plot(self) -> None:
        children = self.sweep.get("children") or []
        param = self.params[self.param_index] if self.params else None
        best = self.sweep.get("best")
        best_job = best["job_id"] if best else None
        seen = (param, best_job, tuple((c["job_id"], c.get("objective")) for c in children))
        if seen == self._plotted:
            return  # nothing the plot shows changed: no redraw
        self._plotted = seen
        metric = self.sweep.get("objective_metric") or "objective"
        note = draw(self.query_one(PlotextPlot), children, param, metric, best_job)
        more = f" · p: next param ({self.param_index + 1}/{len(self.params)})" if len(self.params) > 1 else ""
        set_text(self.query_one("#sweep-plot-note", Static), note + more)

    def action_next_param(self) -> None:
        if len(self.params) > 1:
            self.param_index = (self.param_index + 1) % len(self.params)
            self._plot()

    @work(exclusive=True, group="action")
    async def action_cancel_sweep(self) -> None:
        if self.sweep and await cancel_sweep(self, self.client, self.sweep["sweep_id"], self.sweep["name"],
                                             self.sweep["progress"]):
            self.load()
