"""One deployment: its rollout, its replicas, each version's serving numbers side by side, its whole history.

The screen asks ``deploy_show``, ``deploy_metrics`` (the last hour) and
``deploy_history`` every 2 s while it is on view: the numbers a person
compares before rolling back (is v2's error rate or p95 worse than v1's?)
next to the button that does it. ``r`` rolls back after asking, ``+``
scales; both are shared with the list (:func:`ask_rollback`,
:func:`ask_scale`) so the two screens say and do the same.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.cli.render import number
from mlfleet.core.controller.client import ControllerClient
from mlfleet.tui.widgets.deploy_cells import (REPLICA_COLUMNS, at, error_percent, millis, plain, replica_cells,
                                              rollback_question, rollback_target, rollout_line, rps,
                                              version)
from mlfleet.tui.widgets.dialogs import Confirm, Prompt
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

METRICS_SINCE_S = 3600.0
VERSION_COLUMNS = (("version", "VERSION"), ("role", "ROLE"), ("replicas", "REPLICAS"), ("requests", "REQUESTS"),
                   ("rps", "RPS"), ("errors", "ERRORS"), ("p50", "P50 MS"), ("p95", "P95 MS"), ("p99", "P99 MS"))
HISTORY_COLUMNS = (("at", "AT"), ("kind", "EVENT"), ("version", "VERSION"), ("actor", "BY"), ("detail", "DETAIL"))


async def _call(screen: Screen[Any], client: ControllerClient | None, method: str, **params: Any) -> Any:
    if client is None:
        screen.notify("not connected to the controller yet", severity="warning")
        return None
    try:
        return await client.call(method, **params)
    except MlfleetError as exc:
        screen.notify(str(exc), title=method.replace("_", " "), severity="error")
        return None


async def ask_rollback(screen: Screen[Any], client: ControllerClient | None, d: dict[str, Any]) -> bool:
    """Ask (naming the version it goes back to), then ``deploy_rollback``; True when the controller did it.

    ``d`` is a ``deploy_show`` answer, or a ``deploy_list`` entry when no
    show is at hand (then the question cannot name the version).
    """
    name = d["name"]
    if d["phase"] == "stopped":
        screen.notify(f"{name} is stopped; start it with 'mlfleet deploy apply FILE' first", severity="warning")
        return False
    to = rollback_target(d)
    if to is None and "revisions" in d:
        screen.notify(f"{name} has no earlier version to roll back to; give one with "
                      f"'mlfleet deploy rollback {name} --to VERSION'", severity="warning")
        return False
    if not await screen.app.push_screen_wait(Confirm(rollback_question(name, d.get("target_version"), to),
                                                     yes="Roll back")):
        return False
    answer = await _call(screen, client, "deploy_rollback", name=name)
    if answer is not None:
        screen.notify(answer["message"])
    return answer is not None


async def ask_scale(screen: Screen[Any], client: ControllerClient | None, name: str, current: int | None) -> bool:
    """Ask how many replicas, then ``deploy_scale``; a word instead of a number is one sentence, nothing sent."""
    text = await screen.app.push_screen_wait(
        Prompt(f"Scale {name} to how many replicas? (now {current})", value=str(current), placeholder="replicas"))
    if not text:
        return False
    if not text.isdigit():
        screen.notify(f"{text!r} is not a number of replicas; give a whole number such as 2", severity="error")
        return False
    answer = await _call(screen, client, "deploy_scale", name=name, replicas=int(text))
    if answer is not None:
        screen.notify(answer["message"])
    return answer is not None


def version_cells(v: dict[str, Any], target: int | None, stable: int | None) -> tuple[str | Text, ...]:
    role = "target" if v["version"] == target else ("stable" if v["version"] == stable else "")
    return (version(v["version"]), Text(role, style="bold") if role else "", str(v.get("replicas", 0)),
            number(v.get("requests")), rps(v.get("rps")), error_percent(v.get("error_rate")),
            millis(v.get("p50")), millis(v.get("p95")), millis(v.get("p99")))


def event_detail(e: dict[str, Any]) -> str:
    detail = e.get("detail") or {}
    if e["kind"] == "scale":
        return f"{detail.get('before', '?')} -> {detail.get('replicas', '?')} replicas"
    return ", ".join(f"{k}={v}" for k, v in detail.items() if k not in ("from_version",))


def history_cells(e: dict[str, Any]) -> tuple[str | Text, ...]:
    return (at(e.get("ts")), e["kind"], version(e.get("version")), e.get("actor") or "-", event_detail(e))


class DeploymentScreen(Screen[None]):
    """``deploy show``, ``deploy metrics --since 1h`` and ``deploy history`` of one deployment, while on view."""

    TITLE = "mlfleet · deployment"
    POLL_S = 2.0
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("r", "rollback", "Roll back"),
        Binding("plus", "scale", "Scale", key_display="+"),
        Binding("tab", "app.focus_next", "Next table", show=False),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.deployment = name
        self.client: ControllerClient | None = None
        self.show: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"deployment {self.deployment}…", id="deployment-title")
        yield KeyedTable(REPLICA_COLUMNS, id="deployment-replicas")
        yield Static("serving by version, last hour", classes="deployment-caption")
        yield KeyedTable(VERSION_COLUMNS, id="deployment-versions")
        yield Static("history (newest first)", classes="deployment-caption")
        yield KeyedTable(HISTORY_COLUMNS, id="deployment-history")
        yield Footer()

    @property
    def replica_table(self) -> KeyedTable:
        return self.query_one("#deployment-replicas", KeyedTable)

    @property
    def versions_table(self) -> KeyedTable:
        return self.query_one("#deployment-versions", KeyedTable)

    @property
    def history_table(self) -> KeyedTable:
        return self.query_one("#deployment-history", KeyedTable)

    def on_mount(self) -> None:
        self.replica_table.focus()
        if self.client is not None:
            self.load()
            self.set_interval(self.POLL_S, self.load)

    @work(exclusive=True, group="load")
    async def load(self) -> None:
        if self.client is None or not self.is_current:
            return
        try:
            show = await self.client.call("deploy_show", name=self.deployment)
            metrics = await self.client.call("deploy_metrics", name=self.deployment, since=METRICS_SINCE_S)
            history = await self.client.call("deploy_history", name=self.deployment)
        except MlfleetError as exc:
            set_text(self.query_one("#deployment-title", Static),
                     plain(f"cannot show deployment {self.deployment}: {exc}"))
            return
        self.show_deployment(show, metrics, history)

    def show_deployment(self, show: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """Draw what ``deploy_show``, ``deploy_metrics`` and ``deploy_history`` answered."""
        self.show = show
        endpoints = ", ".join(f"{e['host']}:{e['port']}" for e in show.get("endpoints") or []) or "none healthy"
        set_text(self.query_one("#deployment-title", Static), plain(
            f"deployment {show['name']} · {show.get('model_ref') or '-'} · "
            f"{(show.get('spec') or {}).get('replicas', '?')} replicas wanted · endpoints {endpoints}\n"
            f"{rollout_line(show)}"))
        self.replica_table.show([(r["replica_id"], replica_cells(r)) for r in show.get("replicas") or []])
        target, stable = show.get("target_version"), show.get("stable_version")
        self.versions_table.show([(str(v["version"]), version_cells(v, target, stable))
                                  for v in metrics.get("versions") or []])
        self.history_table.show([(str(e["seq"]), history_cells(e)) for e in reversed(history)])

    @work(exclusive=True, group="action")
    async def action_rollback(self) -> None:
        if self.show and await ask_rollback(self, self.client, self.show):
            self.load()

    @work(exclusive=True, group="action")
    async def action_scale(self) -> None:
        if self.show and await ask_scale(self, self.client, self.show["name"],
                                         (self.show.get("spec") or {}).get("replicas")):
            self.load()
