"""A screen that refreshes itself from the controller once a second.

The app owns the connection and hands the client down with
:meth:`PollingScreen.use_client`; a screen never reaches up for it. When a
call finds the connection gone, the screen says so upward with
:class:`PollingScreen.ControllerLost` and waits for the app to hand it a new
client. Only a screen the user can see polls, so a hidden view costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

from textual import work
from textual.message import Message
from textual.screen import Screen

from mlfleet.core.client import ControllerClient
from mlfleet.core.errors import MlfleetError


class PollingScreen(Screen[None]):
    """Base of the views: a worker calls :meth:`refresh_from` every ``POLL_S`` seconds."""

    POLL_S = 1.0

    class ControllerLost(Message):
        """The connection to the controller closed under a call; the app reconnects."""

        def __init__(self, client: ControllerClient, reason: str) -> None:
            super().__init__()
            self.client = client
            self.reason = reason

    def __init__(self) -> None:
        super().__init__()
        self._client: ControllerClient | None = None
        self._wake = asyncio.Event()
        self._problem = ""

    def on_mount(self) -> None:
        self._poll()

    def use_client(self, client: ControllerClient | None) -> None:
        """Take the app's current client (None while it reconnects) and refresh at once."""
        self._client = client
        self.wake()

    def wake(self) -> None:
        """Refresh now rather than at the next tick (a new selection, a new client)."""
        self._wake.set()

    async def refresh_from(self, client: ControllerClient) -> None:
        """Fetch what this view shows and update its widgets in place (subclasses)."""

    @work(exclusive=True, group="poll")
    async def _poll(self) -> None:
        while True:
            self._wake.clear()  # before the refresh: a wake during it means "again, now"
            client = self._client
            if client is not None and self.is_current:
                await self._refresh_once(client)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.POLL_S)

    async def _refresh_once(self, client: ControllerClient) -> None:
        try:
            await self.refresh_from(client)
        except MlfleetError as exc:
            if not client.connected:
                self._client = None
                self.post_message(self.ControllerLost(client, str(exc)))
            elif str(exc) != self._problem:
                # One notification per distinct problem, not one a second.
                self._problem = str(exc)
                self.notify(str(exc), severity="warning")
            return
        self._problem = ""
