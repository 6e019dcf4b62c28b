"""The fleet view: every host in a table, and the live card of the one under the cursor.

The table is keyed by host name and updated cell by cell; the card below
shows the selected host's CPU and memory history and a row per GPU with
its processes (an mlfleet run, or foreign) and its recent utilisation. The
controller keeps CPU and memory history; the per-GPU history is the last
samples this view has seen (it starts when the TUI opens).
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Static

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.fleet.hostseen import is_stale, seen_text
from mlfleet.core.base.words import plural
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.dialogs import Confirm, Prompt
from mlfleet.tui.widgets.host_card import HostCard
from mlfleet.tui.widgets.host_table import HOST_COLUMNS, host_cells
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

HISTORY_POINTS = 120  # two minutes of 1 Hz samples in each sparkline


class FleetScreen(PollingScreen):
    """Every host the controller manages."""

    TITLE = "mlfleet · fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain", "Drain/undrain"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, dict[str, Any]] = {}
        self.gpu_history: dict[str, dict[int, deque[float]]] = {}
        self._last_ts: dict[str, float] = {}

    def compose_body(self) -> ComposeResult:
        with Vertical(id="fleet-body"):
            yield KeyedTable(HOST_COLUMNS, id="hosts-table")
            yield Static("waiting for the controller…", id="fleet-empty")
            yield HostCard({"name": "", "state": "connecting"}, id="host-detail", classes="host")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#hosts-table", KeyedTable)

    @property
    def card(self) -> HostCard:
        return self.query_one("#host-detail", HostCard)

    def focus_body(self) -> None:
        self.table.focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        hosts = await client.call("hosts_list", history=HISTORY_POINTS)
        await self.show_hosts(hosts)

    async def show_hosts(self, hosts: list[dict[str, Any]]) -> None:
        """Bring the table and the card in line with ``hosts`` (the ``hosts_list`` answer)."""
        self.hosts = {h["name"]: h for h in hosts}
        for host in hosts:
            self._remember_gpus(host)
        self.show_rows()
        down = [h["name"] for h in hosts if h.get("state") == "unreachable"]
        # Up but silent: a link that stalls stays up until answer_timeout tears it down; say so now.
        silent = [f"{h['name']} ({seen_text(h)})" for h in hosts if h.get("state") == "up" and is_stale(h)]
        problems = []
        if down:
            problems.append(f"{len(down)} host{'s' if len(down) != 1 else ''} unreachable: "
                            f"{', '.join(down[:5])}{' …' if len(down) > 5 else ''}")
        if silent:
            problems.append(f"not answering: {', '.join(silent[:5])}{' …' if len(silent) > 5 else ''}")
        self.show_view_problem(" · ".join(problems))

    def show_rows(self) -> None:
        needle = self.filter_text.lower()
        rows = []
        for name, host in self.hosts.items():
            cells = host_cells(host)
            if not needle or needle in " ".join(str(c) for c in cells).lower():
                rows.append((name, cells))
        self.table.show(rows)
        empty = self.query_one("#fleet-empty", Static)
        empty.display = not rows
        set_text(empty, "no host matches the filter" if self.hosts else "the controller manages no hosts")
        self._show_card()

    def filter_changed(self) -> None:
        self.show_rows()

    def _remember_gpus(self, host: dict[str, Any]) -> None:
        telemetry = host.get("telemetry") or {}
        ts = telemetry.get("ts")
        if ts is None or self._last_ts.get(host["name"]) == ts:
            return  # the same sample as last tick: nothing new for the history
        self._last_ts[host["name"]] = ts
        series = self.gpu_history.setdefault(host["name"], {})
        for gpu in telemetry.get("gpus") or []:
            if gpu.get("utilization") is not None:
                series.setdefault(gpu["index"], deque(maxlen=HISTORY_POINTS)).append(gpu["utilization"])

    def _show_card(self) -> None:
        name = self.table.current_key
        card = self.card
        card.display = name is not None
        if name is None or name not in self.hosts:
            return
        host = dict(self.hosts[name])
        host["gpu_history"] = {i: list(d) for i, d in self.gpu_history.get(name, {}).items()}
        card.host = host

    def on_mount(self) -> None:
        # The card follows the cursor in the frame that moves it (a watcher runs at once; a
        # RowHighlighted message would be handled after that frame and cost the next one).
        self.watch(self.table, "highlighted", self._show_card, init=False)

    @work(exclusive=True, group="action")
    async def action_drain(self) -> None:
        """Drain the selected host (no new placements; runs in flight go on), or undrain a drained one."""
        name = self.table.current_key
        if name is None:
            return
        if self.hosts.get(name, {}).get("drained"):
            if await self.app.push_screen_wait(Confirm(f"Undrain {name}? New jobs may be placed on it again.",
                                                       yes="Undrain")):
                if await self.call("hosts_drain", name=name, drain=False) is not None:
                    self.notify(f"{name} is open for new jobs again")
        else:
            reason = await self.app.push_screen_wait(
                Prompt(f"Drain {name}: no new jobs go there, running ones go on. Why?", placeholder="reason"))
            if reason is not None:
                answer = await self.call("hosts_drain", name=name, reason=reason, drain=True)
                if answer is not None:
                    self.notify(f"{name} drained ({plural(answer['running'], 'run')} still going)")
        self.wake()
