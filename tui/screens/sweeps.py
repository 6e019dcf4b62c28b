"""The sweeps view: every sweep with its progress and best run; enter opens one, ``c`` cancels it.

The list polls ``sweeps_list`` every 2 s and hands the rows to its
KeyedTable, which redraws only the cells that changed. Enter opens
:class:`~mlfleet.tui.screens.sweep_detail.SweepScreen`; ``c`` asks first, then
calls ``sweep_cancel`` (the CLI twin: ``mlfleet sweeps cancel NAME``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from mlfleet.core.cli.render import elapsed, number
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.sweeps import summary
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.screens.sweep_detail import SweepScreen, cancel_sweep
from mlfleet.tui.widgets.keyed_table import KeyedTable

SWEEP_COLUMNS = (
    ("sweep_id", "SWEEP"), ("name", "NAME"), ("project", "PROJECT"), ("points", "POINTS"),
    ("progress", "PROGRESS"), ("pending", "PENDING"), ("running", "RUNNING"), ("succeeded", "SUCCEEDED"),
    ("failed", "FAILED"), ("best", "BEST"), ("best_run", "BEST RUN"), ("age", "AGE"),
)
BAR_WIDTH = 10


def progress_bar(p: dict[str, int], width: int = BAR_WIDTH) -> Text:
    """``████▌····· 4/10``: ended children of all, green when every one succeeded, red when one failed."""
    total = max(1, p["total"])
    ended = summary.done(p)
    filled = round(ended / total * width)
    style = "red" if p.get("failed") or p.get("lost") else ("green" if p.get("succeeded") == p["total"] else "")
    bar = Text("█" * filled, style=style)
    bar.append("·" * (width - filled), style="dim")
    bar.append(f" {ended}/{p['total']}")
    return bar


def sweep_cells(s: dict[str, Any]) -> tuple[str | Text, ...]:
    p, best = s["progress"], s.get("best")
    objective = f"{s['objective_mode']} {s['objective_metric']}" if s.get("objective_metric") else ""
    best_cell = f"{best['metric']}={number(best['value'])}" if best else ("-" if objective else "no objective")
    name = s["name"] + (" (cancelled)" if s.get("cancelled_by") else "")
    return (s["sweep_id"], name, s.get("project") or "-", str(s["points"]), progress_bar(p),
            str(p.get("pending", 0)), str(p.get("running", 0)), str(p.get("succeeded", 0)),
            Text(str(p.get("failed", 0)), style="red") if p.get("failed") else "0",
            best_cell, best['name'] if best else "-", elapsed(s.get("created_at")))


class SweepsScreen(PollingScreen):
    """Every sweep, newest first, as ``mlfleet sweeps list``."""

    TITLE = "mlfleet · sweeps"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "cancel_sweep", "Cancel sweep"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sweeps: list[dict[str, Any]] = []

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(SWEEP_COLUMNS, id="sweeps-table")
        yield Static("no sweeps yet: submit a spec with a sweep: block (docs/sweeps.md)", id="sweeps-empty")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#sweeps-table", KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        self.show_sweeps(await client.call("sweeps_list", limit=200))

    def show_sweeps(self, sweeps: list[dict[str, Any]]) -> None:
        self.sweeps = sweeps
        needle = self.filter_text.lower()
        rows = [(s["sweep_id"], sweep_cells(s)) for s in sweeps]
        if needle:
            rows = [(k, c) for k, c in rows if needle in " ".join(str(x) for x in c).lower()]
        self.table.show(rows)
        self.query_one("#sweeps-empty", Static).display = not sweeps

    def filter_changed(self) -> None:
        self.show_sweeps(self.sweeps)

    def _sweep(self) -> dict[str, Any] | None:
        key = self.table.current_key
        return next((s for s in self.sweeps if s["sweep_id"] == key), None)

    @on(KeyedTable.RowSelected, "#sweeps-table")
    def _open(self, event: KeyedTable.RowSelected) -> None:
        if event.key is not None:
            screen = SweepScreen(event.key)
            screen.client = self.client
            self.app.push_screen(screen)

    @work(exclusive=True, group="action")
    async def action_cancel_sweep(self) -> None:
        sweep = self._sweep()
        if sweep is not None and await cancel_sweep(self, self.client, sweep["sweep_id"], sweep["name"],
                                                    sweep["progress"]):
            self.wake()
