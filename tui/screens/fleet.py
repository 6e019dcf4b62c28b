"""The fleet view: one live card per host, refreshed every second.

Cards are kept by host name and updated in place; a card is mounted only
for a host seen for the first time and removed only when the controller no
longer lists it.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Footer, Header, Static

from mlfleet.core.client import ControllerClient
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.widgets.host_card import HostCard

HISTORY_POINTS = 120  # two minutes of 1 Hz samples in each sparkline


class FleetScreen(PollingScreen):
    """Every host the controller manages."""

    TITLE = "mlfleet · fleet"

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, HostCard] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="hosts"):
            yield Static("waiting for the controller…", id="fleet-empty")
        yield Footer()

    async def refresh_from(self, client: ControllerClient) -> None:
        hosts = await client.call("hosts_list", history=HISTORY_POINTS)
        await self.show_hosts(hosts)

    async def show_hosts(self, hosts: list[dict[str, Any]]) -> None:
        """Bring the cards in line with ``hosts`` (the ``hosts_list`` answer)."""
        names = [h["name"] for h in hosts]
        for host in hosts:
            card = self.cards.get(host["name"])
            if card is None:
                card = self.cards[host["name"]] = HostCard(host, classes="host")
                await self.query_one("#hosts", VerticalScroll).mount(card)
            else:
                card.host = host
        for name in [n for n in self.cards if n not in names]:
            await self.cards.pop(name).remove()
        empty = self.query_one("#fleet-empty", Static)
        empty.display = not self.cards
        if not self.cards:
            empty.update("the controller manages no hosts")
