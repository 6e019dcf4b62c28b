"""The TUI: a small Textual app with two views, Fleet and Jobs.

The app holds the one connection to the controller (started on demand by
:func:`mlfleet.core.client.connect`) and hands it to the view on screen;
the views poll it. When the controller cannot be reached the header says
so, a notification gives the reason in one sentence, and the app keeps
trying every few seconds: a user never sees a traceback for it.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive

from mlfleet.core.client import ControllerClient, connect
from mlfleet.core.errors import MlfleetError
from mlfleet.core.paths import Home
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen


class FleetApp(App[int]):
    """mlfleet's control center: ``1`` fleet, ``2`` jobs, ``q`` quit."""

    CSS_PATH = "app.tcss"
    TITLE = "mlfleet"
    MODES = {"fleet": FleetScreen, "jobs": JobsScreen}
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1,f", "show_view('fleet')", "Fleet"),
        Binding("2,j", "show_view('jobs')", "Jobs"),
        Binding("q", "quit", "Quit"),
    ]
    RETRY_S = 3.0

    problem: reactive[str] = reactive("", init=False)
    """Why the controller cannot be reached right now, in one sentence ("" when connected)."""

    def __init__(self, home: Home) -> None:
        super().__init__()
        self.home = home
        self.client: ControllerClient | None = None

    def on_mount(self) -> None:
        self.sub_title = "connecting to the controller…"
        self._connect()

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.close()

    @work(exclusive=True, group="connect")
    async def _connect(self) -> None:
        """Connect (starting the controller if none runs), retrying until it answers."""
        while True:
            try:
                client = await connect(self.home)
            except (MlfleetError, OSError) as exc:
                self.problem = str(exc) or type(exc).__name__
                await asyncio.sleep(self.RETRY_S)
                continue
            self.client, self.problem = client, ""
            self.sub_title = f"controller of {self.home.data_dir}"
            self._hand_client()
            return

    def watch_problem(self, problem: str) -> None:
        """One notification per distinct reason, not one per retry; the header says we keep trying."""
        if problem:
            self.sub_title = f"controller unavailable, retrying every {self.RETRY_S:.0f} s"
            self.notify(problem, title="controller unavailable", severity="error", timeout=10)

    def _hand_client(self) -> None:
        if isinstance(self.screen, PollingScreen):
            self.screen.use_client(self.client)

    @on(PollingScreen.ControllerLost)
    async def _reconnect(self, message: PollingScreen.ControllerLost) -> None:
        if message.client is not self.client:
            return  # already replaced
        self.client = None
        await message.client.close()
        self.sub_title = "lost the controller, reconnecting…"
        self.notify(message.reason, title="lost the controller", severity="warning")
        self._connect()

    async def action_show_view(self, view: str) -> None:
        """Switch between the fleet and jobs views; the one on screen gets the live client."""
        await self.switch_mode(view)
        self._hand_client()


def run_app(home: Home) -> int:
    """Run the TUI until the user quits; the controller keeps running afterwards."""
    app = FleetApp(home)
    app.run()
    return app.return_code or 0
