"""The TUI: a small Textual app with nine views, Fleet, Jobs, Runs, Drift, Audit, Sweeps, Models,
Deployments and Pipelines.

The app holds the one connection to the controller (started on demand by
:func:`mlfleet.core.controller.client.connect`) and hands it to the view on screen;
the views poll it. When the controller cannot be reached every view shows a
banner that says so, a notification gives the reason in one sentence, and
the app keeps trying every few seconds: a user never sees a traceback for it.

Keys follow k9s and lazygit: ``:`` opens a command line (``:hosts``,
``:jobs``, ``:runs``, ``:drift``, ``:audit``, ``:sweeps``, ``:models``, ``:deploy``, ``:pipelines``, ``:q``), ``/`` filters, ``?``
shows every key of the screen, ``j``/``k`` move, enter opens, esc goes back.
Every binding of the screen is also a command of the palette (ctrl+p).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar, Iterable

from textual import events, on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Input

from mlfleet.core.controller.client import ControllerClient, connect
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.paths import Home
from mlfleet.tui.collector import IdleCollector
from mlfleet.tui.screens.audit import AuditScreen
from mlfleet.tui.screens.base import PollingScreen
from mlfleet.tui.screens.deployments import DeploymentsScreen
from mlfleet.tui.screens.drift import DriftScreen
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen
from mlfleet.tui.screens.models import ModelsScreen
from mlfleet.tui.screens.pipelines import PipelinesScreen
from mlfleet.tui.screens.runs import RunsScreen
from mlfleet.tui.screens.sweeps import SweepsScreen
from mlfleet.tui.widgets.dialogs import CommandLine

VIEWS = ("fleet", "jobs", "runs", "drift", "audit", "sweeps", "models", "deployments", "pipelines")
COMMANDS = {  # what ':' understands, k9s style, with the aliases people type
    "hosts": "fleet", "host": "fleet", "fleet": "fleet", "nodes": "fleet", "no": "fleet",
    "jobs": "jobs", "job": "jobs", "runs": "runs", "run": "runs", "drift": "drift", "audit": "audit",
    "sweeps": "sweeps", "sweep": "sweeps", "models": "models", "model": "models",
    "deployments": "deployments", "deployment": "deployments", "deploy": "deployments", "deploys": "deployments",
    "pipelines": "pipelines", "pipeline": "pipelines", "pipe": "pipelines",
}


class FleetApp(App[int]):
    """mlfleet's control center: ``1``..``9`` or ``:name`` switch views, ``q`` quits."""

    CSS_PATH = "app.tcss"
    TITLE = "mlfleet"
    MODES = {"fleet": FleetScreen, "jobs": JobsScreen, "runs": RunsScreen, "drift": DriftScreen,
             "audit": AuditScreen, "sweeps": SweepsScreen, "models": ModelsScreen,
             "deployments": DeploymentsScreen, "pipelines": PipelinesScreen}
    DEFAULT_MODE = "fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show_view('fleet')", "Fleet"),
        Binding("2", "show_view('jobs')", "Jobs"),
        Binding("3", "show_view('runs')", "Runs"),
        Binding("4", "show_view('drift')", "Drift"),
        Binding("5", "show_view('audit')", "Audit"),
        Binding("6", "show_view('sweeps')", "Sweeps"),
        Binding("7", "show_view('models')", "Models"),
        Binding("8", "show_view('deployments')", "Deploy"),
        Binding("9", "show_view('pipelines')", "Pipelines"),
        # priority: handled before the keys typed right after it are handed to the focused widget
        Binding("colon", "command_line", "Command", key_display=":", priority=True),
        Binding("question_mark", "toggle_keys", "Keys", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]
    RETRY_S = 3.0

    problem: reactive[str] = reactive("", init=False)
    """Why the controller cannot be reached right now, in one sentence ("" when connected)."""

    def __init__(self, home: Home, spec_root: Path | None = None, collector: IdleCollector | None = None) -> None:
        super().__init__()
        self.home = home
        self.spec_root = spec_root or Path.cwd()
        self.client: ControllerClient | None = None
        self.collector = collector

    def on_mount(self) -> None:
        self.sub_title = "connecting to the controller…"
        self._connect()
        if self.collector is not None:
            self.set_interval(2.0, self.collector.collect_if_due)

    async def on_event(self, event: events.Event) -> None:
        if self.collector is not None and isinstance(event, (events.Key, events.MouseEvent)):
            self.collector.saw_input()
        await super().on_event(event)

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
            # A shared one says whose it is and who we are to it ("carol's controller on head · team ml · you: alice
            # (operator)"); this machine's own, where its files are.
            self.sub_title = (client.banner if client.remote is not None or client.hello.get("team")
                              else f"controller of {self.home.data_dir}")
            self._hand_client()
            return

    def watch_problem(self, problem: str) -> None:
        """One notification per distinct reason, not one per retry; the banner says we keep trying."""
        if problem:
            self.sub_title = f"controller unavailable, retrying every {self.RETRY_S:.0f} s"
            self.notify(problem, title="controller unavailable", severity="error", timeout=10)
        self._show_problem()

    def _show_problem(self) -> None:
        screen = self._view()
        if screen is None:
            return
        if self.problem:
            screen.show_app_problem(f"controller unavailable: {self.problem} (retrying every {self.RETRY_S:.0f} s)")
        elif self.client is None:
            screen.show_app_problem("lost the controller, reconnecting…")
        else:
            screen.show_app_problem("")

    def _view(self) -> PollingScreen | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, PollingScreen):
                return screen
        return None

    def _hand_client(self) -> None:
        screen = self._view()
        if screen is not None:
            screen.use_client(self.client)
        self._show_problem()

    @on(PollingScreen.ControllerLost)
    async def _reconnect(self, message: PollingScreen.ControllerLost) -> None:
        if message.client is not self.client:
            return  # already replaced
        self.client = None
        self._show_problem()
        await message.client.close()
        self.sub_title = "lost the controller, reconnecting…"
        self.notify(message.reason, title="lost the controller", severity="warning")
        self._connect()

    async def action_show_view(self, view: str) -> None:
        """Switch views; the one on screen gets the live client."""
        if view not in VIEWS:
            self.notify(f"no view {view!r}; try {', '.join(VIEWS)}", severity="warning")
            return
        await self.switch_mode(view)
        self._hand_client()
        screen = self._view()
        if isinstance(screen, JobsScreen):
            screen.spec_root = self.spec_root
        if screen is not None:
            screen.focus_body()

    def action_command_line(self) -> None:
        """k9s's ``:``: type a view's name (``hosts``, ``jobs``, ``runs``, ``drift``, ``audit``, ``sweeps``, ``models``, ``deploy``, ``pipelines``) or ``q``."""
        if isinstance(self.focused, Input):
            self.focused.insert_text_at_cursor(":")  # typing in a field: ':' is just a character
        elif isinstance(self.screen, PollingScreen):
            self.screen.open_command_line()
        else:  # a detail screen: the same line, as a small modal
            self.push_screen(CommandLine(sorted(set(COMMANDS) | {"quit", "help"})), self._run_command)

    @on(PollingScreen.Command)
    async def _command(self, message: PollingScreen.Command) -> None:
        await self._run_command(message.text)

    async def _run_command(self, text: str | None) -> None:
        if not text:
            return
        word = text.split()[0].lower()
        if word in ("q", "q!", "quit", "exit"):
            self.exit(0)
        elif word in ("help", "keys", "?"):
            self.action_toggle_keys()
        elif word in COMMANDS:
            while not isinstance(self.screen, PollingScreen) and len(self.screen_stack) > 1:
                self.pop_screen()  # leave a detail screen first
            await self.action_show_view(COMMANDS[word])
        else:
            self.notify(f"unknown command {word!r}; try :hosts :jobs :runs :drift :audit :sweeps :models :deploy :pipelines :q", severity="warning")

    def action_toggle_keys(self) -> None:
        """Show (or hide) every key of the screen on view, with what it does."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The palette (ctrl+p) lists Textual's commands and every binding of the screen on view."""
        yield from super().get_system_commands(screen)
        seen: set[str] = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            node = active.node

            async def run(action: str = binding.action, node=node) -> None:  # noqa: ANN001
                await self.run_action(action, node)

            yield SystemCommand(binding.description, f"{binding.action} ({binding.key_display or key})", run)


def run_app(home: Home) -> int:
    """Run the TUI until the user quits; the controller keeps running afterwards."""
    collector = IdleCollector()
    collector.take_over()
    app = FleetApp(home, collector=collector)
    app.run()
    return app.return_code or 0
