"""The deployments view: every deployment with its serving numbers; the one under the cursor with its replicas.

The view polls every 2 s: ``deploy_list`` for the rows, ``deploy_show`` of
each listed deployment for its replicas and their last minute's RPS, p95
and errors (the list's numbers are their totals), and ``deploy_history``
of the one under the cursor. Below the list: that deployment's rollout
line (``rolling v1→v2: 1/2 v2 healthy, 1 v1 draining``), its replicas
and its latest events. ``r`` rolls it back after asking (``mlfleet deploy
rollback NAME``), ``+`` scales it (``mlfleet deploy scale NAME N``), enter
opens :class:`~mlfleet.tui.screens.deployment_detail.DeploymentScreen`
(each version's serving numbers side by side and the whole history).
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from mlfleet.core.base.errors import RemoteError
from mlfleet.core.controller.client import ControllerClient
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.screens.deployment_detail import DeploymentScreen, ask_rollback, ask_scale
from mlfleet.tui.widgets.deploy_cells import (DEPLOYMENT_COLUMNS, REPLICA_COLUMNS, deployment_cells, event_line,
                                              plain, replica_cells, rollout_line)
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

SHOWN_AT_MOST = 50  # deployments whose replicas are asked for each poll (one deploy_show each)
HISTORY_LINES = 6


class DeploymentsScreen(PollingScreen):
    """Every deployment as ``mlfleet deploy list``, and the selected one as ``mlfleet deploy show``."""

    TITLE = "mlfleet · deployments"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "rollback", "Roll back"),
        Binding("plus", "scale", "Scale", key_display="+"),  # s sorts the table
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.deployments: list[dict[str, Any]] = []
        self.shows: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}

    def compose_body(self) -> ComposeResult:
        yield KeyedTable(DEPLOYMENT_COLUMNS, id="deploy-table")
        yield Static("no deployments yet: apply a spec with 'mlfleet deploy apply FILE' (docs/deployments.md)",
                     id="deploy-empty")
        yield Static("", id="deploy-rollout")
        yield KeyedTable(REPLICA_COLUMNS, id="deploy-replicas")
        yield Static("", id="deploy-history")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#deploy-table", KeyedTable)

    @property
    def replica_table(self) -> KeyedTable:
        return self.query_one("#deploy-replicas", KeyedTable)

    def focus_body(self) -> None:
        self.table.focus()

    @property
    def selected(self) -> str | None:
        return self.table.current_key

    async def refresh_from(self, client: ControllerClient) -> None:
        deployments = await client.call("deploy_list")
        shows = {}
        for d in deployments[:SHOWN_AT_MOST]:
            try:
                shows[d["name"]] = await client.call("deploy_show", name=d["name"])
            except RemoteError as exc:
                if exc.kind != "NotFoundError":
                    raise
                # gone between the list and its show: the next poll's list no longer has it
        self.show_deployments(deployments, shows)
        name = self.selected
        if name is not None:
            self.show_history(name, await client.call("deploy_history", name=name))

    def show_deployments(self, deployments: list[dict[str, Any]], shows: dict[str, dict[str, Any]]) -> None:
        """Draw what ``deploy_list`` and each ``deploy_show`` answered (the same calls in tests, with fixed data)."""
        self.deployments, self.shows = deployments, shows
        needle = self.filter_text.lower()
        rows = [(d["name"], deployment_cells(d, shows.get(d["name"]))) for d in deployments]
        if needle:
            rows = [(k, c) for k, c in rows if needle in " ".join(str(x) for x in c).lower()]
        self.table.show(rows)
        self.query_one("#deploy-empty", Static).display = not deployments
        self._show_selected()

    def show_history(self, name: str, events: list[dict[str, Any]]) -> None:
        self.history[name] = events
        if name == self.selected:
            self._show_selected()

    def filter_changed(self) -> None:
        self.show_deployments(self.deployments, self.shows)

    @on(KeyedTable.RowHighlighted, "#deploy-table")
    def _follow(self, event: KeyedTable.RowHighlighted) -> None:
        self._show_selected()
        self.wake()  # its history now, not at the next tick

    def _show_selected(self) -> None:
        name = self.selected
        show = self.shows.get(name) if name is not None else None
        rollout = self.query_one("#deploy-rollout", Static)
        history = self.query_one("#deploy-history", Static)
        if show is None:
            set_text(rollout, "")
            set_text(history, "")
            self.replica_table.show([])
            return
        set_text(rollout, plain(f"{name} · {show.get('model_ref') or '-'} · {rollout_line(show)}"))
        self.replica_table.show([(r["replica_id"], replica_cells(r)) for r in show.get("replicas") or []])
        events = self.history.get(name) or []
        lines = [event_line(e) for e in reversed(events[-HISTORY_LINES:])]
        set_text(history, plain("history (newest first)\n" + "\n".join(lines)) if lines else "")

    def _deployment(self) -> dict[str, Any] | None:
        name = self.selected
        return next((d for d in self.deployments if d["name"] == name), None)

    @on(KeyedTable.RowSelected, "#deploy-table")
    def _open(self, event: KeyedTable.RowSelected) -> None:
        if event.key is not None:
            screen = DeploymentScreen(event.key)
            screen.client = self.client
            self.app.push_screen(screen)

    @work(exclusive=True, group="action")
    async def action_rollback(self) -> None:
        d = self._deployment()
        if d is not None and await ask_rollback(self, self.client, self.shows.get(d["name"]) or d):
            self.wake()

    @work(exclusive=True, group="action")
    async def action_scale(self) -> None:
        d = self._deployment()
        if d is not None and await ask_scale(self, self.client, d["name"], d.get("replicas")):
            self.wake()
