"""The deployments view, against a real controller serving a real model server (stdlib http.server) on loopback.

The story: iris v1 is applied and serves, the production alias moves it to
v2; in the TUI the user opens the Deployments view (``8``), sees the v2
replica healthy on its port, asks for a rollback and says no (nothing
happens), asks again and says yes: the controller rolls back to v1 and the
view's history and rollout line say so.
"""

from __future__ import annotations

from typing import Any

from conftest import Fleet
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.deployment_detail import DeploymentScreen
from mlfleet.tui.screens.deployments import DeploymentsScreen
from mlfleet.tui.widgets.dialogs import Confirm, Prompt
from test_deploy_service import deploy_spec, register_versions, wait_serving
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (170, 40)


def _arrange(home: Home) -> Fleet:
    """iris v1 then v2 (the alias moved), one replica of the tiny server, through the CLI as a user would."""
    fleet = Fleet(home.data_dir)
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=1, ready_timeout="20s")))
    wait_serving(fleet, 1, 1)
    fleet.cli("models", "alias", "iris", "production", "2", "--reason", "better on holdout", check=True)
    wait_serving(fleet, 2, 1)
    return fleet


async def _history_kinds(app: FleetApp) -> list[str]:
    assert app.client is not None
    return [e["kind"] for e in await app.client.call("deploy_history", name="iris")]


async def test_the_deployments_view_shows_a_healthy_replica_and_rolls_back_only_when_confirmed(home: Home) -> None:
    _arrange(home)
    app = FleetApp(home)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("8")
        screen = await until(pilot, lambda: isinstance(app.screen, DeploymentsScreen) and app.screen,
                             "the deployments view")
        await until(pilot, lambda: "iris" in screen.table.shown, "the deployment's row", 20)
        row = [str(c) for c in screen.table.get_row("iris")]
        assert row[:6] == ["iris", "iris@production", "v2", "v2", "stable", "1/1"], row

        def replica() -> list[str] | None:
            keys = list(screen.replica_table.shown)
            return [str(c) for c in screen.replica_table.get_row(keys[0])] if len(keys) == 1 else None

        cells = await until(pilot, replica, "the one replica", 20)
        assert cells[0].startswith("iris-v2-") and cells[2] == "v2" and cells[3] == "healthy", cells
        host, port = cells[1].split(":")
        assert host == "local" and port.isdigit(), cells  # the port the agent picked, as deploy show says
        rollout = screen.query_one("#deploy-rollout")
        assert "stable v2: 1/1 v2 healthy" in text_of(rollout)
        before = await _history_kinds(app)
        assert "rollback" not in before

        screen.table.focus()
        await pilot.press("enter")  # the deployment's page: both versions' serving numbers, the whole history
        page = await until(pilot, lambda: isinstance(app.screen, DeploymentScreen) and app.screen, "its page")
        await until(pilot, lambda: {"1", "2"} <= set(page.versions_table.shown), "v1 and v2 side by side", 20)
        roles = {k: str(page.versions_table.get_row(k)[1]) for k in page.versions_table.shown}
        assert roles["2"] == "target", roles
        kinds = [str(page.history_table.get_row(k)[1]) for k in page.history_table.shown]
        assert kinds[-1] == "apply" and "rollout" in kinds, kinds  # newest first
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, "back on the list")

        await pilot.press("r")
        dialog = await until(pilot, lambda: isinstance(app.screen, Confirm) and app.screen, "the rollback question")
        assert "Roll iris back from v2 to v1?" in dialog.question
        await pilot.press("n")
        await until(pilot, lambda: app.screen is screen, "the question gone")
        await pilot.pause(1.0)
        assert await _history_kinds(app) == before  # said no: nothing was asked of the controller
        assert app.client is not None
        assert (await app.client.call("deploy_show", name="iris"))["target_version"] == 2

        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the rollback question again")
        await pilot.press("y")
        await until(pilot, lambda: app.screen is screen, "the question gone")
        history = screen.query_one("#deploy-history")
        await until(pilot, lambda: "rollback" in text_of(history), "the rollback in the view's history", 20)
        assert "rollback" in await _history_kinds(app)
        shown: Any = await app.client.call("deploy_show", name="iris")
        assert shown["target_version"] == 1 and shown["stable_version"] == 2  # v2 served before
        await until(pilot, lambda: [str(c) for c in screen.table.get_row("iris")][2] == "v1", "target v1 in the list")
        await until(pilot, lambda: "v1 healthy" in text_of(rollout) or "v2\u2192v1" in text_of(rollout),
                    "the rollout line of the rollback")

        await pilot.press("plus")  # scale: a word is refused in a sentence, a number is sent
        await until(pilot, lambda: isinstance(app.screen, Prompt), "the scale question")
        await pilot.press("ctrl+u", *"two", "enter")
        await until(pilot, lambda: app.screen is screen, "the question gone")
        def toasts() -> str:
            return " ".join(str(t.render()) for t in app.screen.query("Toast"))

        await until(pilot, lambda: "not a number of replicas" in toasts(), "the sentence about 'two'")
        await pilot.press("plus")
        await until(pilot, lambda: isinstance(app.screen, Prompt), "the scale question again")
        await pilot.press("ctrl+u", "2", "enter")
        await until(pilot, lambda: [str(c) for c in screen.table.get_row("iris")][5].endswith("/2"), "two wanted")
        assert "scale" in await _history_kinds(app)
        assert (await app.client.call("deploy_show", name="iris"))["spec"]["replicas"] == 2

        await pilot.press("colon", *"deploy", "enter")  # the command line knows the view too
        await pilot.pause()
        assert app.screen is screen


async def test_words_from_the_controller_are_shown_as_they_are_never_as_markup_or_escapes() -> None:
    """A reason or an actor is text someone typed: ``[red]`` stays visible and an escape sequence is a space."""
    from textual.app import App

    from tui_data import FIXED_DEPLOY_SHOWS, FIXED_DEPLOYMENTS

    hostile = "rollback by [bold red]eve[/] \x1b[2J now"
    shows = {**FIXED_DEPLOY_SHOWS, "iris": {**FIXED_DEPLOY_SHOWS["iris"], "reason": hostile}}
    history = [{"seq": 1, "ts": 0.0, "actor": "[i]eve", "kind": "rollback", "version": 1, "detail": {"cause": hostile}}]
    screen = DeploymentsScreen()
    app: App[None] = App()
    async with app.run_test(size=SIZE) as pilot:
        await app.push_screen(screen)
        await pilot.pause()
        screen.show_deployments(FIXED_DEPLOYMENTS, shows)
        screen.show_history("iris", history)
        await pilot.pause()
        rollout, events = text_of(screen.query_one("#deploy-rollout")), text_of(screen.query_one("#deploy-history"))
        assert "rollback by [bold red]eve[/]  [2J now" in rollout, rollout
        assert "[i]eve" in events and "[bold red]eve[/]" in events and "\x1b" not in rollout + events, events


async def test_a_deployment_with_nothing_to_go_back_to_says_so_and_asks_nothing() -> None:
    """Only one version ever served: ``r`` names the CLI's ``--to`` instead of opening a question the controller
    would refuse (no controller needed: nothing may be sent)."""
    from textual.app import App

    from tui_data import FIXED_DEPLOY_SHOWS, FIXED_DEPLOYMENTS

    only = {**FIXED_DEPLOY_SHOWS["sentiment"], "target_revision": 1, "stable_revision": 1,
            "revisions": [{"revision": 1, "model_version": 3}]}
    screen = DeploymentsScreen()
    app: App[None] = App()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await app.push_screen(screen)
        await pilot.pause()
        screen.show_deployments([FIXED_DEPLOYMENTS[1]], {"sentiment": only})
        screen.table.focus()
        await pilot.press("r")
        await pilot.pause(0.3)
        assert app.screen is screen
        toasts = " ".join(str(t.render()) for t in app.screen.query("Toast"))
        assert "sentiment has no earlier version to roll back to" in toasts and "--to VERSION" in toasts, toasts
