"""A screen that refreshes itself from the controller once a second.

The app owns the connection and hands the client down with
:meth:`PollingScreen.use_client`; a screen never reaches up for it. When a
call finds the connection gone, the screen says so upward with
:class:`PollingScreen.ControllerLost` and waits for the app to hand it a new
client. Only a screen the user can see polls, so a hidden view costs nothing.

Every view has the same frame: the header, a banner line that appears only
when something is wrong (the controller is gone, a host is unreachable, a
call failed), the view's body, a filter bar that ``/`` opens, and the footer
with the keys of this view.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Footer, Header, Input, Static

from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.base.errors import MlfleetError
from mlfleet.tui.widgets.text import set_text


COMMAND_WORDS = ["hosts", "fleet", "jobs", "runs", "drift", "audit", "sweeps", "models", "deploy", "deployments", "pipelines", "help", "quit"]


class PollingScreen(Screen[None]):
    """Base of the views: a worker calls :meth:`refresh_from` every ``POLL_S`` seconds."""

    POLL_S = 1.0
    FILTER_HINT = "filter: type to narrow the rows, enter to keep, esc to clear"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_filter", "Filter", key_display="/", priority=True),
    ]

    class Command(Message):
        """The user typed a ``:`` command; the app decides what it means."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

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
        self.app_problem = ""  # the app's: no controller
        self.view_problem = ""  # this view's own: unreachable hosts, a failed call
        self.filter_text = ""

    # ------------------------------------------------------------ frame
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="banner")
        yield from self.compose_body()
        yield Input(placeholder=self.FILTER_HINT, id="filter")
        yield Input(placeholder=":hosts :jobs :runs :drift :audit :sweeps :models :deploy :pipelines :help :q", id="command",
                    suggester=SuggestFromList(COMMAND_WORDS, case_sensitive=False))
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """The view's own widgets (subclasses)."""
        yield from ()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#command", Input).display = False
        self._show_banner()
        self._poll()

    def show_app_problem(self, problem: str) -> None:
        """The app says the controller is unavailable ("" when it is back)."""
        self.app_problem = problem
        self._show_banner()

    def show_view_problem(self, problem: str) -> None:
        self.view_problem = problem
        self._show_banner()

    def _show_banner(self) -> None:
        if not self.is_mounted:
            return
        banner = self.query_one("#banner", Static)
        text = " · ".join(p for p in (self.app_problem, self.view_problem) if p)
        set_text(banner, text)
        banner.display = bool(text)

    # ----------------------------------------------------- command line
    def open_command_line(self) -> None:
        """k9s's ``:``: a line at the bottom that takes the keys at once (so ``:jobs`` typed fast works)."""
        line = self.query_one("#command", Input)
        line.value = ""
        line.display = True
        self.set_focus(line)  # now, not after the queued keys: they belong to the line

    @on(Input.Submitted, "#command")
    def _command_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._close_command_line()
        text = event.value.strip().lstrip(":")
        if text:
            self.post_message(self.Command(text))

    def _close_command_line(self) -> None:
        line = self.query_one("#command", Input)
        line.value = ""
        line.display = False
        self.focus_body()

    # ----------------------------------------------------------- filter
    def action_open_filter(self) -> None:
        if isinstance(self.focused, Input):
            self.focused.insert_text_at_cursor("/")  # typing in a field: '/' is just a character
            return
        bar = self.query_one("#filter", Input)
        bar.display = True
        bar.remove_class("-error")
        self.set_focus(bar)

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.LIVE_FILTER:
            self.filter_text = event.value.strip()
            self.filter_changed()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.filter_text = event.value.strip()
        self.filter_changed()
        if not self.filter_text:
            event.input.display = False
        self.focus_body()

    LIVE_FILTER = True
    """Filter as the user types (False: on enter, for a filter the controller applies)."""

    def filter_changed(self) -> None:
        """Show the rows that match ``filter_text`` (subclasses); the default refreshes now."""
        self.wake()

    def show_filter_error(self, message: str) -> None:
        """A filter the controller refused: say why in the bar itself, keep the bar open."""
        bar = self.query_one("#filter", Input)
        bar.display = True
        bar.add_class("-error")
        bar.tooltip = message
        self.show_view_problem(f"filter: {message}")

    def clear_filter_error(self) -> None:
        bar = self.query_one("#filter", Input)
        if bar.has_class("-error"):
            bar.remove_class("-error")
            bar.tooltip = None
            self.show_view_problem("")

    def focus_body(self) -> None:
        """Put the focus back on the view's main widget (subclasses)."""

    def key_escape(self) -> None:
        """esc: close the filter bar (clearing it) if it is open, else leave a detail view."""
        line = self.query_one("#command", Input)
        if line.display:
            self._close_command_line()
            return
        bar = self.query_one("#filter", Input)
        if bar.display and (bar.has_focus or bar.value):
            bar.value = ""
            bar.display = False
            self.filter_text = ""
            self.clear_filter_error()
            self.filter_changed()
            self.focus_body()

    # ---------------------------------------------------------- polling
    def use_client(self, client: ControllerClient | None) -> None:
        """Take the app's current client (None while it reconnects) and refresh at once."""
        self._client = client
        self.wake()

    @property
    def client(self) -> ControllerClient | None:
        return self._client

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

    async def call(self, method: str, **params: object) -> object | None:
        """One controller call for a user's action; a refusal is a notification, never a crash."""
        client = self._client
        if client is None:
            self.notify("not connected to the controller yet", severity="warning")
            return None
        try:
            return await client.call(method, **params)
        except MlfleetError as exc:
            self.notify(str(exc), title=method.replace("_", " "), severity="error")
            if not client.connected:
                self._client = None
                self.post_message(self.ControllerLost(client, str(exc)))
            return None
