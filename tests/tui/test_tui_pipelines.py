"""A user opens the Pipelines view: the runs, and for the one under the cursor its DAG, steps and triggers.

The view is fed the service's answers, written out in the contract's
shapes (tests/pipeline_answers.py), through the same methods its poller
calls. The last story (marked ``pipeline_service``) runs a pipeline on a
real controller and watches it in the real app: it needs the pipelines
service (tests/test_pipeline_cli_story.py drives the CLI twins there).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from textual.app import App

import pipeline_answers as answers
from conftest import Fleet
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import COMMANDS, FleetApp, VIEWS
from mlfleet.tui.screens.pipelines import PipelinesScreen, history_text
from mlfleet.tui.widgets.dialogs import Confirm
from mlfleet.tui.widgets.keyed_table import KeyedTable
from test_pipeline_cli_story import PREPARE_AND_TRAIN, write
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

APP_CSS = Path(__file__).resolve().parents[2] / "tui" / "app.tcss"


class PipelinesApp(App[None]):
    CSS_PATH = APP_CSS

    def on_mount(self) -> None:
        self.push_screen(PipelinesScreen())


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def row_text(table: KeyedTable, key: str) -> list[str]:
    return [cell.plain for cell in table.get_row(key)]


async def test_the_view_shows_the_runs_and_the_selected_run_s_dag_steps_gate_and_triggers() -> None:
    app = PipelinesApp()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        screen: PipelinesScreen = app.screen
        screen.show_runs(answers.LIST)
        screen.table.focus()
        await pilot.pause()
        assert screen.selected == "p8b4c0d12", "the newest run is under the cursor"
        assert row_text(screen.table, "p7f3a9c01")[3:6] == ["succeeded", "schedule",
                                                            "2 succeeded, 1 cached, 1 gate-failed, 2 skipped"]
        await pilot.press("j")  # the user moves onto the run whose gate did not pass
        await pilot.pause()
        assert screen.selected == "p7f3a9c01"
        screen.show_run(answers.RUN)
        screen.show_triggers(answers.TRIGGERS)
        await pilot.pause()

        dag = text_of(screen.query_one("#pipeline-dag"))
        for box in ("│ ↺ prepare │", "│ ✓ train │", "│ ✘ gate │", "│ – register │", "│ – promote │"):
            assert box in dag, dag
        assert "train, drift ─▶ gate" in dag and "✘ gate failed" in dag
        width = screen.query_one("#pipeline-dag-pane").scrollable_content_region.width
        assert max(len(line) for line in dag.splitlines()) <= width, "the DAG fits its pane"

        steps = screen.step_table
        assert steps.row_count == 6
        assert row_text(steps, "gate")[:3] == ["gate", "gate", "✘ gate-failed"]
        assert row_text(steps, "prepare")[3] == "cached: no part of its key changed; outputs of run p0a0a0a01"
        detail = text_of(screen.query_one("#pipeline-detail"))
        assert "gate gate: did not pass" in detail and "0.93 vs 0.935" in detail
        assert "drift: report d0007" in detail
        triggers = text_of(screen.query_one("#pipeline-triggers"))
        assert triggers.startswith("triggers: schedule 0 3 * * *; drift of iris, concurrency skip")
        assert "→ skipped" in triggers and "→ started  p7f3a9c01" in triggers
        head = text_of(screen.query_one("#pipeline-head"))
        assert head.startswith("pipeline run p7f3a9c01 · iris-closed-loop (project demo) · succeeded")

        await pilot.press("k")  # back to the running run: its own page, not the last one's
        await pilot.pause()
        assert "↺ prepare" not in text_of(screen.query_one("#pipeline-dag"))
        screen.show_run(answers.RUNNING)
        await pilot.pause()
        assert "│ ● train │" in text_of(screen.query_one("#pipeline-dag"))
        assert row_text(screen.step_table, "prepare")[3] == "forced"


async def test_an_empty_view_says_how_to_start_a_run_and_a_filter_narrows_the_runs() -> None:
    app = PipelinesApp()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        screen: PipelinesScreen = app.screen
        screen.show_runs([])
        await pilot.pause()
        empty = screen.query_one("#pipeline-empty")
        assert empty.display and "mlfleet pipeline run FILE" in text_of(empty)
        screen.show_runs(answers.LIST)
        screen.filter_text = "schedule"
        screen.filter_changed()
        await pilot.pause()
        assert screen.table.row_count == 1 and screen.selected == "p7f3a9c01"
        assert not empty.display


def test_the_trigger_history_of_a_pipeline_nothing_armed() -> None:
    assert history_text({"armed": [], "history": []}, "x") == "triggers: none armed; nothing fired yet"
    assert history_text(answers.TRIGGERS, "other") == "triggers: none armed; nothing fired yet"


def test_the_view_is_key_9_and_the_pipelines_command() -> None:
    assert VIEWS[-1] == "pipelines" and COMMANDS["pipelines"] == COMMANDS["pipe"] == "pipelines"
    keys = {b.key: b.action for b in FleetApp.BINDINGS}  # type: ignore[union-attr]
    assert keys["9"] == "show_view('pipelines')"
    assert FleetApp.MODES["pipelines"] is PipelinesScreen


async def test_enter_moves_to_the_steps_and_an_ended_run_has_nothing_to_cancel() -> None:
    app = PipelinesApp()
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.pause()
        screen: PipelinesScreen = app.screen
        screen.show_runs(answers.LIST)
        screen.table.focus()
        await pilot.press("j")
        screen.show_run(answers.RUN)
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert screen.focused is screen.step_table, "enter on a run moves to its steps"
        screen.table.focus()
        await pilot.press("c")  # the run under the cursor has ended
        await pilot.pause()
        said = [n.message for n in app._notifications]
        assert any("p7f3a9c01 has ended (succeeded): nothing to cancel" in m for m in said), said
        await pilot.press("k", "c")  # the running one: asked first
        await pilot.pause()
        assert isinstance(app.screen, Confirm) and "Cancel pipeline run p8b4c0d12" in app.screen.question
        await pilot.press("n")  # kept
        await pilot.pause()
        assert app.screen is screen


@pytest.mark.pipeline_service
async def test_a_run_started_from_the_cli_is_drawn_in_the_view_as_it_ends(home: Home) -> None:
    fleet = Fleet(home.data_dir)
    done = fleet.cli("pipeline", "run", str(write(fleet, "story", PREPARE_AND_TRAIN)), "--wait", "--json",
                     timeout=360)
    assert done.code == 0, done.err + done.out
    run_id = done.json()["run_id"]
    app = FleetApp(home)
    async with app.run_test(size=(160, 44), notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("9")
        screen = await until(pilot, lambda: isinstance(app.screen, PipelinesScreen) and app.screen,
                             "the pipelines view")
        await until(pilot, lambda: run_id in screen.table.shown, "the run's row", 20)
        dag = await until(pilot, lambda: "│ ✓ train │" in (t := text_of(screen.query_one("#pipeline-dag"))) and t,
                          "the run's DAG with its states", 20)
        assert "│ ✓ prepare │" in dag and "prepare ─▶ train" in dag
        assert row_text(screen.step_table, "train")[2] == "✓ succeeded"
        assert "triggers: none armed" in text_of(screen.query_one("#pipeline-triggers"))
