"""The audit view: every action, newest first (as ``mlfleet audit list``), with a filter, and the chain's status.

Every event is a link of a hash chain (docs/audit.md); the status line
shows the controller's ``audit_verify`` verdict: intact with its event
count, or BROKEN with the sentence that names the first broken row and
what was done to it. A controller from before the chain (no
``audit_verify``) gets a line that says so, in words, and what a user can
do meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.cli.render import when
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.keyed_table import KeyedTable
from mlfleet.tui.widgets.text import set_text

AUDIT_COLUMNS = (("ts", "WHEN"), ("actor", "ACTOR"), ("action", "ACTION"), ("target", "TARGET"), ("detail", "DETAIL"))
DETAIL_WIDTH = 80
VERIFY_EVERY = 30  # ticks between two verifications of the chain (it reads the whole trail)


def audit_key(event: dict[str, Any]) -> str:
    """A row key per event (its id in the trail)."""
    ident = event.get("id") or event.get("seq")
    return f"audit-{ident}" if ident is not None else f"{event.get('ts')}|{event.get('action')}|{event.get('target')}"


def audit_cells(event: dict[str, Any]) -> tuple[str, ...]:
    detail = event.get("detail")
    if not isinstance(detail, str):
        detail = json.dumps(detail, default=str) if detail else "-"
    if len(detail) > DETAIL_WIDTH:
        detail = detail[:DETAIL_WIDTH - 1] + "…"
    return (when(event.get("ts")), event.get("actor") or "-", event.get("action") or "-",
            event.get("target") or "-", detail)


NO_CHAIN = ("audit trail: this controller keeps no hash chain (it predates it), so nothing here can prove it unedited. "
            "The file is private to its owner (0600); to keep a copy that cannot change, "
            "save 'mlfleet audit list --json --limit 10000' elsewhere.")


def chain_text(answer: dict[str, Any] | None, problem: str = "") -> Text:
    """The chain's verification status in one line; ``problem`` is why there is no answer ("" = no chain kept)."""
    if answer is None:
        return Text(f"chain: not verified: {problem}" if problem else NO_CHAIN, style="dim")
    if answer.get("ok") or answer.get("verified"):
        return Text(f"chain: verified ({answer.get('events', answer.get('checked', '?'))} events)", style="green")
    return Text(f"chain: BROKEN {answer.get('message') or answer.get('problem') or ''}".rstrip(), style="bold red")


class AuditScreen(PollingScreen):
    """The audit trail."""

    TITLE = "mlfleet · audit"
    POLL_S = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self._ticks = 0

    def compose_body(self) -> ComposeResult:
        yield Static(Text("audit trail: asking the controller about its chain…", style="dim"), id="audit-chain")
        yield KeyedTable(AUDIT_COLUMNS, id="audit-table")

    def focus_body(self) -> None:
        self.query_one("#audit-table", KeyedTable).focus()

    async def refresh_from(self, client: ControllerClient) -> None:
        if self._ticks % VERIFY_EVERY == 0:
            await self._verify(client)
        self._ticks += 1
        self.show_events(await client.call("audit_list", limit=500))

    async def _verify(self, client: ControllerClient) -> None:
        try:
            answer = await client.call("audit_verify")
        except MlfleetError as exc:
            if not client.connected:
                raise
            reason = "" if "unknown method" in str(exc) else str(exc)
            set_text(self.query_one("#audit-chain", Static), chain_text(None, reason))
            return
        set_text(self.query_one("#audit-chain", Static), chain_text(answer))

    def show_events(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        needle = self.filter_text.lower()
        rows = []
        for event in events:  # newest first, as audit_list sends them (the cursor follows its row's key)
            cells = audit_cells(event)
            if needle and needle not in " ".join(cells).lower():
                continue
            rows.append((audit_key(event), cells))
        self.query_one("#audit-table", KeyedTable).show(rows)

    def filter_changed(self) -> None:
        self.show_events(self.events)
