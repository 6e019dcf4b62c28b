"""The models view, against a real controller: a trained run's model registered twice, an alias moved, and the
view shows the model, its versions with their aliases, the alias history and a version's lineage."""

from __future__ import annotations

from conftest import Fleet
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.models import ModelScreen, ModelsScreen
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (170, 48)
TRAIN = """\
import os
from mlfleet import track
track.summary("loss", "min")
track.log({"loss": 0.25}, step=0)
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(b"weights" * 1000)
track.log_artifact("out/model.bin")
"""


def _arrange(home: Home) -> dict:
    """A run that logged its model, registered as iris v1 and v2, production moved 1 -> 2 (through the CLI)."""
    fleet = Fleet(home.data_dir)
    specs = home.data_dir / "specs"
    specs.mkdir()
    (specs / "train.py").write_text(TRAIN)
    (specs / "data.csv").write_text("x\n1\n")
    spec = fleet.write_spec("train", "name: train\ncommand: [python, train.py]\ninputs: [data.csv]\n")
    run = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120, check=True).json()
    for _ in range(2):
        fleet.cli_json("models", "register", "iris", "--run", run["run_id"], "--artifact", "model.bin")
    fleet.cli_json("models", "alias", "iris", "production", "1", "--reason", "first")
    fleet.cli_json("models", "alias", "iris", "production", "2", "--reason", "better loss")
    fleet.cli_json("models", "alias", "iris", "staging", "2")
    return run


async def test_the_models_view_shows_versions_aliases_history_and_lineage(home: Home) -> None:
    run = _arrange(home)
    app = FleetApp(home)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("7")
        screen = await until(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen, "the models view")
        table = screen.table
        await until(pilot, lambda: "iris" in table.shown, "the model's row", 20)
        row = [str(c) for c in table.get_row("iris")]
        assert row[:5] == ["iris", "2", "v2", "production=v2, staging=v2", run["run_id"]], row

        table.focus()
        table.select_key("iris")
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(app.screen, ModelScreen) and app.screen, "the model's page")
        await until(pilot, lambda: detail.table.row_count == 2, "its two versions")
        v2 = [str(c) for c in detail.table.get_row("2")]
        assert v2[0] == "v2" and v2[1] == "production, staging" and v2[2] == run["run_id"] and v2[3] == "model.bin"
        assert [str(c) for c in detail.table.get_row("1")][1] == "-"
        history = [[str(c) for c in detail.history_table.get_row(k)] for k in detail.history_table.shown]
        assert [(h[1], h[2], h[3], h[5]) for h in history] == [
            ("staging", "-", "v2", "-"), ("production", "v1", "v2", "better loss"), ("production", "-", "v1", "first")]
        assert "latest v2 · aliases production=v2, staging=v2" in text_of(detail.query_one("#model-title"))
        lineage = detail.query_one("#model-lineage")
        await until(pilot, lambda: text_of(lineage).startswith("v2 · run"), "the lineage of v2")
        assert "data.csv" in text_of(lineage) and "loss=0.25" in text_of(lineage)
        await pilot.press("down")  # the cursor on v1: its lineage follows
        await until(pilot, lambda: text_of(lineage).startswith("v1 · run"), "the lineage of v1")
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, "back on the list")
        await pilot.press("colon", *"models", "enter")  # the command line knows the view too
        await pilot.pause()
        assert app.screen is screen
