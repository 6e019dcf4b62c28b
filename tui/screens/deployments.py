"""The deployments view: every deployment with its serving numbers; the one under the cursor with its replicas.

The view polls every 2 s: ``deploy_list`` for the rows, ``deploy_show`` of
each listed deployment for its replicas and their last minute's RPS, p95
and errors (the list's numbers are their totals), and ``deploy_history``
of the one under the cursor. Below the list: that deployment's rollout
line (``rolling v1→v2: 1/2 v2 healthy, 1 v1 draining``), its replicas
and its latest events. ``r`` rolls it back after asking (``mlfleet deploy
rollback NAME``), ``+`` scales it (``mlfleet deploy scale NAME N``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from mlfleet.core.base.errors import RemoteError
from mlfleet.core.controller.client import ControllerClient
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.deploy_cells import (DEPLOYMENT_COLUMNS, REPLICA_COLUMNS, deployment_cells, replica_cells,
                                              rollback_question, rollback_target, rollout_line,
                                              version)
from mlfleet.tui.widgets.dialogs import Confirm, Prompt
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.table_look import CONTROLS
from mlfleet.tui.widgets.text import set_text

SHOWN_AT_MOST = 50  # deployments whose replicas are asked for each poll (one deploy_show each)
HISTORY_LINES = 6


def plain(text: str) -> Text:
    """Words from the controller (reasons, actors) shown as they are: never read as markup, no control characters."""
    return Text("\n".join(line.translate(CONTROLS) for line in text.split("\n")))


def at(epoch: float | None) -> str:
    """An event's time (epoch seconds, as deploy_history sends it) as local ``YYYY-mm-dd HH:MM:SS``."""
    return "-" if epoch is None else dt.datetime.fromtimestamp(float(epoch)).strftime("%Y-%m-%d %H:%M:%S")


def event_line(e: dict[str, Any]) -> str:
    """One event of ``deploy_history``: when, what, which version, who, and why when it says."""
    detail = e.get("detail") or {}
    why = detail.get("cause") or detail.get("reason") or detail.get("replica_id") or ""
    if e["kind"] == "scale":
        why = f"{detail.get('before', '?')} -> {detail.get('replicas', '?')} replicas"
    return f"{at(e.get('ts'))}  {e['kind']:<9} {version(e.get('version')):<4} {e.get('actor') or '-':<10} {why}".rstrip()


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

    @work(exclusive=True, group="action")
    async def action_rollback(self) -> None:
        d = self._deployment()
        if d is None:
            return
        if d["phase"] == "stopped":
            self.notify(f"{d['name']} is stopped; start it with 'mlfleet deploy apply FILE' first", severity="warning")
            return
        show = self.shows.get(d["name"])
        to = rollback_target(show) if show is not None else None
        if show is not None and to is None:
            self.notify(f"{d['name']} has no earlier version to roll back to; give one with "
                        f"'mlfleet deploy rollback {d['name']} --to VERSION'", severity="warning")
            return
        if not await self.app.push_screen_wait(Confirm(rollback_question(d["name"], d.get("target_version"), to),
                                                       yes="Roll back")):
            return
        answer = await self.call("deploy_rollback", name=d["name"])
        if answer is not None:
            self.notify(answer["message"])
        self.wake()

    @work(exclusive=True, group="action")
    async def action_scale(self) -> None:
        d = self._deployment()
        if d is None:
            return
        text = await self.app.push_screen_wait(
            Prompt(f"Scale {d['name']} to how many replicas? (now {d.get('replicas')})", value=str(d.get("replicas")),
                   placeholder="replicas"))
        if text is None or text == "":
            return
        if not text.isdigit():
            self.notify(f"{text!r} is not a number of replicas; give a whole number such as 2", severity="error")
            return
        answer = await self.call("deploy_scale", name=d["name"], replicas=int(text))
        if answer is not None:
            self.notify(answer["message"])
        self.wake()
