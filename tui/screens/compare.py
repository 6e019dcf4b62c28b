"""Two or more runs side by side: overlaid metric curves, the params that differ, and lineage.

The screen asks the controller once (``runs_compare`` for the curves and the
param diff, ``run_show`` for each run's lineage) and draws; ``[``/``]`` step
through the metrics; ``esc`` goes back to the runs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual_plotext import PlotextPlot

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.cli.render import lineage_rows, value

def run_lineage(run: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    """A run's lineage with where it ran filled in from the run itself when the node did not say."""
    return {**lineage, "host": lineage.get("host") or run.get("host"), "gpus": lineage.get("gpus") or run.get("gpus")}


class CompareScreen(Screen[None]):
    """``runs_compare`` of the marked runs."""

    TITLE = "mlfleet · compare runs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("right_square_bracket", "metric(1)", "Next metric", key_display="]"),
        Binding("left_square_bracket", "metric(-1)", "Previous metric", key_display="["),
    ]

    def __init__(self, runs: list[str]) -> None:
        super().__init__()
        self.runs = runs
        self.client: ControllerClient | None = None
        self.comparison: dict[str, Any] = {}
        self.lineage: dict[str, dict[str, Any]] = {}
        self.metric_keys: list[str] = []
        self.metric_index = 0

    def use_client(self, client: ControllerClient | None) -> None:
        self.client = client

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"comparing {', '.join(self.runs)}…", id="compare-title")
        yield PlotextPlot(id="compare-plot")
        with Horizontal(id="compare-tables"):
            with VerticalScroll(id="compare-params") as params:
                params.border_title = "params"
                yield Static(id="params-diff")
            with VerticalScroll(id="compare-lineage") as lineage:
                lineage.border_title = "lineage"
                yield Static(id="lineage-table")
        yield Footer()

    def on_mount(self) -> None:
        if self.client is not None:
            self.load()

    @work(exclusive=True)
    async def load(self) -> None:
        client = self.client
        assert client is not None
        try:
            comparison = await client.call("runs_compare", runs=self.runs)
            lineage = {}
            for run_id in self.runs:
                lineage[run_id] = (await client.call("run_show", run=run_id)).get("lineage") or {}
        except MlfleetError as exc:
            self.query_one("#compare-title", Static).update(f"cannot compare: {exc}")
            self.notify(str(exc), title="runs compare", severity="error")
            return
        self.show_comparison(comparison, lineage)

    def show_comparison(self, comparison: dict[str, Any], lineage: dict[str, dict[str, Any]]) -> None:
        """Draw what ``runs_compare`` and ``run_show`` answered."""
        self.comparison, self.lineage = comparison, lineage
        self.metric_keys = sorted(comparison.get("metrics") or {})
        self.metric_index = 0
        self.query_one("#params-diff", Static).update(params_table(comparison))
        self.query_one("#lineage-table", Static).update(lineage_table(comparison, lineage))
        self._plot()

    def action_metric(self, step: int) -> None:
        if self.metric_keys:
            self.metric_index = (self.metric_index + step) % len(self.metric_keys)
            self._plot()

    def _plot(self) -> None:
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        title = self.query_one("#compare-title", Static)
        if not self.metric_keys:
            plt.title("no metrics were logged by these runs")
            title.update(f"comparing {', '.join(self.runs)}")
            widget.refresh()
            return
        key = self.metric_keys[self.metric_index]
        entry = self.comparison["metrics"][key]
        names = {r["run_id"]: r.get("name") or r["run_id"] for r in self.comparison.get("runs") or []}
        for run_id, curve in (entry.get("curves") or {}).items():
            # A bucket whose points were all NaN or infinite comes back as null: leave a gap there.
            pairs = [(s, v) for s, v in zip(curve.get("step") or [], curve.get("last") or [])
                     if s is not None and v is not None]
            steps, values = [s for s, _ in pairs], [v for _, v in pairs]
            if steps:
                plt.plot(steps, values, label=f"{run_id} {names.get(run_id, '')}".strip(), marker="braille")
        plt.title(key)
        plt.xlabel("step")
        best = entry.get("best") or {}
        summary = " · ".join(f"{run}: best {b.get('value'):.4g} @{b.get('step')} ({b.get('mode')})"
                             for run, b in best.items() if isinstance(b.get("value"), (int, float)))
        left_out = int((self.comparison.get("metric_keys") or {}).get("left_out") or 0)
        more = f" · {left_out:,} more not compared (mlfleet runs compare --keys PATTERN)" if left_out else ""
        title.update(f"metric {self.metric_index + 1}/{len(self.metric_keys)} [b]{key}[/b]  ([ ] other metrics){more}"
                     + (f"\n{summary}" if summary else ""))
        widget.refresh()


def params_table(comparison: dict[str, Any]) -> Table | str:
    runs = [r["run_id"] for r in comparison.get("runs") or []]
    params = comparison.get("params") or {}
    differ, same = params.get("differ") or {}, params.get("same") or {}
    if not differ and not same:
        return "no params were logged"
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("PARAM", no_wrap=True, min_width=10)
    for run in runs:
        table.add_column(run, overflow="fold")
    for key in sorted(differ):
        table.add_row(Text(key, style="bold yellow"), *(Text(value(differ[key].get(run))) for run in runs))
    for key in sorted(same):
        table.add_row(Text(key, style="dim"), *([Text(value(same[key]), style="dim")] * len(runs)))
    return table


def lineage_table(comparison: dict[str, Any], lineage: dict[str, dict[str, Any]]) -> Table:
    runs = comparison.get("runs") or []
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("", no_wrap=True, min_width=13, style="bold")
    for run in runs:
        table.add_column(run["run_id"], overflow="fold")
    rows: dict[str, dict[str, str]] = {}
    for run in runs:
        for label, text in lineage_rows(run_lineage(run, lineage.get(run["run_id"]) or {})):
            cell = rows.setdefault(label, {})
            cell[run["run_id"]] = (cell[run["run_id"]] + "\n" + text) if run["run_id"] in cell else text
    for label, by_run in rows.items():
        values = [by_run.get(r["run_id"], "-") for r in runs]
        style = "bold yellow" if len(set(values)) > 1 else ""
        table.add_row(Text(label, style=style), *(Text(v) for v in values))
    return table
