"""The drift view: reports, and one report's columns with a histogram of the one under the cursor.

The list polls ``drift_list``; enter opens :class:`DriftReportScreen`, which
asks ``drift_show`` once and draws a table of columns (statistic,
threshold, verdict and a bar of statistic over threshold) and the reference
against the current distribution of the highlighted column.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual_plotext import PlotextPlot

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.drift import summary
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.cli.render import when
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.keyed_table import KeyedTable

REPORT_COLUMNS = (
    ("report_id", "REPORT"), ("created", "CREATED"), ("reference", "REFERENCE"), ("current", "CURRENT"),
    ("verdict", "VERDICT"), ("share", "DRIFTED/COMPARED"), ("run", "RUN"), ("deployment", "DEPLOYMENT"),
)
COLUMN_COLUMNS = (
    ("column", "COLUMN"), ("kind", "KIND"), ("test", "TEST"), ("statistic", "STATISTIC"),
    ("threshold", "THRESHOLD"), ("verdict", "VERDICT"), ("bar", "STATISTIC / THRESHOLD"),
)
BAR_WIDTH = 20


def report_cells(r: dict[str, Any]) -> tuple[str | Text, ...]:
    """One report row; the counts are the CLI's (drifted of compared, summary.counts)."""
    drifted = bool(r.get("drifted"))
    return (
        r["report_id"], when(r.get("created_at")), str(r.get("reference") or "-"), str(r.get("current") or "-"),
        Text("DRIFT", style="bold red") if drifted else Text("ok", style="green"),
        summary.counts(r),
        r.get("run_id") or "-", r.get("deployment") or "-",
    )


def ratio_bar(statistic: float | None, threshold: float | None, width: int = BAR_WIDTH) -> Text:
    """A bar of statistic/threshold: full at twice the threshold, a ``|`` at the threshold, red past it."""
    if not isinstance(statistic, (int, float)) or not isinstance(threshold, (int, float)) or threshold <= 0:
        return Text("-")
    share = max(0.0, min(2.0, statistic / threshold)) / 2.0
    filled = round(share * width)
    mark = width // 2
    bar = Text()
    for i in range(width):
        char = "█" if i < filled else ("│" if i == mark else "·")
        bar.append(char, style=("red" if i >= mark else "green") if i < filled else "dim")
    return bar


def verdict_text(drifted: bool | None) -> Text:
    """A column that could not be compared (all null, missing on one side) is n/a, never "ok"."""
    if drifted is None:
        return Text("n/a", style="dim")
    return Text("DRIFT", style="bold red") if drifted else Text("ok", style="green")


def column_cells(c: dict[str, Any]) -> tuple[str | Text, ...]:
    def num(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "-"

    return (c["column"], c.get("kind") or "-", c.get("test") or "-", num(c.get("statistic")), num(c.get("threshold")),
            verdict_text(c.get("drifted")),
            ratio_bar(c.get("statistic"), c.get("threshold")))


class DriftScreen(PollingScreen):
    """Drift reports, newest first."""

    TITLE = "mlfleet · drift"
    POLL_S = 5.0

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[dict[str, Any]] = []

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(REPORT_COLUMNS, id="drift-table")
        yield Static("no drift reports yet: run 'mlfleet drift check'", id="drift-empty")

    def focus_body(self) -> None:
        self.query_one("#drift-table", KeyedTable).focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        self.show_reports(await client.call("drift_list", limit=200))

    def show_reports(self, reports: list[dict[str, Any]]) -> None:
        self.reports = reports
        needle = self.filter_text.lower()
        rows = [(r["report_id"], report_cells(r)) for r in reports]
        if needle:
            rows = [(k, c) for k, c in rows if needle in " ".join(str(x) for x in c).lower()]
        self.query_one("#drift-table", KeyedTable).show(rows)
        self.query_one("#drift-empty", Static).display = not reports

    def filter_changed(self) -> None:
        self.show_reports(self.reports)

    @on(KeyedTable.RowSelected, "#drift-table")
    def _open(self, event: KeyedTable.RowSelected) -> None:
        if event.key is not None:
            screen = DriftReportScreen(event.key)
            screen.client = self.client
            self.app.push_screen(screen)


class DriftReportScreen(Screen[None]):
    """One report: its columns and the histogram of the one under the cursor."""

    TITLE = "mlfleet · drift report"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "app.pop_screen", "Back")]

    def __init__(self, report_id: str) -> None:
        super().__init__()
        self.report_id = report_id
        self.client: ControllerClient | None = None
        self.columns: dict[str, dict[str, Any]] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"report {self.report_id}…", id="drift-title")
        yield KeyedTable(COLUMN_COLUMNS, id="drift-columns")
        yield PlotextPlot(id="drift-histogram")
        yield Static(id="drift-notes")
        yield Footer()

    def on_mount(self) -> None:
        if self.client is not None:
            self.load()

    @work(exclusive=True)
    async def load(self) -> None:
        assert self.client is not None
        try:
            report = await self.client.call("drift_show", report=self.report_id)
        except MlfleetError as exc:
            self.query_one("#drift-title", Static).update(f"cannot show report {self.report_id}: {exc}")
            return
        self.show_report(report)

    def show_report(self, report: dict[str, Any]) -> None:
        columns = report.get("columns") or []
        self.columns = {c["column"]: c for c in columns}
        self.query_one("#drift-title", Static).update(
            f"report {report.get('report_id', self.report_id)} · {when(report.get('created_at'))} · "
            f"reference {report.get('reference') or '-'} vs current {report.get('current') or '-'}\n"
            f"{summary.headline(report)}")
        table = self.query_one("#drift-columns", KeyedTable)
        table.show([(c["column"], column_cells(c)) for c in columns])
        table.focus()
        self._histogram(table.current_key)

    @on(KeyedTable.RowHighlighted, "#drift-columns")
    def _follow(self, event: KeyedTable.RowHighlighted) -> None:
        self._histogram(event.key)

    def _histogram(self, column: str | None) -> None:
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        entry = self.columns.get(column or "")
        notes = self.query_one("#drift-notes", Static)
        if entry is None:
            notes.update("")
            widget.refresh()
            return
        hist = entry.get("histogram") or {}
        labels = [str(c) for c in hist.get("categories") or []]
        if not labels and hist.get("edges"):
            edges, what = hist["edges"], summary.measure(entry)
            labels = [summary.value(edges[i], what) if what and what != "number" else f"{edges[i]:.3g}"
                      for i in range(len(edges) - 1)]
        reference, current = hist.get("reference") or [], hist.get("current") or []
        if labels and reference and current:
            plt.multiple_bar(labels, [reference, current], labels=["reference", "current"])
        plt.title(f"{column}: reference vs current (share of rows)")
        widget.refresh()
        stats = entry.get("stats") or {}
        shown = {f"{k}_{side}" for k in ("mean", "median", "null_rate") for side in ("ref", "cur")}
        lines = [" · ".join(f"{label} {summary.shift(entry, key, '→')}" for label, key in
                            (("mean", "mean"), ("median", "median"), ("nulls", "nulls"))
                            if summary.shift(entry, key) != "-")]
        if lines[0]:
            lines[0] = "reference → current: " + lines[0]
        lines.append(" · ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()
                                if v is not None and k not in shown))  # one this column's kind lacks is left out
        if entry.get("test") == "wasserstein":
            lines.append(summary.WASSERSTEIN_MEANING)
        lines += [f"• {n}" for n in entry.get("notes") or []]
        notes.update("\n".join(x for x in lines if x))
