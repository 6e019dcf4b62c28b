"""The sweeps view, against a real controller: a grid sweep's progress reaches done, its children and best run
show, and a second, running sweep is cancelled through the confirm dialog."""

from __future__ import annotations

import sys

from mlfleet.core.base.models import to_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.controller.client import connect
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.sweep_detail import SweepScreen
from mlfleet.tui.screens.sweeps import SweepsScreen
from mlfleet.tui.widgets.dialogs import Confirm
from mlfleet.tui.widgets.sweep_plot import scatter
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (170, 48)
TRAIN = ("import sys; from mlfleet import track; lr = float(sys.argv[1]); "
         "track.log({'val_loss': abs(lr - 0.2) + 0.01}, step=0); track.flush()")


async def _submit(home: Home, name: str, body: str) -> dict:
    spec_path = home.config_dir / f"{name}.yaml"
    spec_path.write_text(f"name: {name}\n{body}")
    async with await connect(home) as client:
        return await client.call("submit", spec=to_plain(load_job_spec(spec_path)), spec_path=str(spec_path))


async def test_a_sweep_is_followed_opened_and_another_cancelled(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        grid = await _submit(home, "lr-grid", f"command: [{sys.executable!r}, -c, {TRAIN!r}, '{{params.lr}}']\n"
                                              "sweep:\n  grid:\n    params.lr: [0.1, 0.2, 0.4]\n    params.opt: [adam]\n"
                                              "  max_parallel: 2\n  objective: {metric: val_loss, mode: min}\n")
        await pilot.press("colon", *"sweeps", "enter")
        screen = await until(pilot, lambda: isinstance(app.screen, SweepsScreen) and app.screen, "the sweeps view")
        table = screen.table
        await until(pilot, lambda: grid["sweep_id"] in table.shown, "the sweep's row", 20)
        await until(pilot, lambda: str(table.get_row(grid["sweep_id"])[4]).endswith("3/3"), "the sweep to be done", 90)
        row = [str(c) for c in table.get_row(grid["sweep_id"])]
        await until(pilot, lambda: "lr-grid-1" in str(table.get_row(grid["sweep_id"])[10]), "the best run", 20)
        row = [str(c) for c in table.get_row(grid["sweep_id"])]
        assert row[1] == "lr-grid" and row[3] == "3" and row[7] == "3" and row[8] == "0", row
        assert row[9] == "val_loss=0.01", row

        table.focus()
        table.select_key(grid["sweep_id"])
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(app.screen, SweepScreen) and app.screen, "the sweep's page")
        await until(pilot, lambda: detail.table.row_count == 3, "its three children")
        children = {k: [str(c) for c in detail.table.get_row(k)] for k in detail.table.shown}
        best = next(v for v in children.values() if v[0] == "★")
        assert best[2] == "lr-grid-1" and best[3] == "succeeded" and best[4] == "0.01" and best[5] == "0.2", best
        assert sorted(v[3] for v in children.values()) == ["succeeded"] * 3
        assert "best: lr-grid-1 val_loss=0.01" in text_of(detail.query_one("#sweep-title"))
        note = detail.query_one("#sweep-plot-note")
        assert "3 of 3 children have val_loss; best 0.01 at params.lr=0.2" in text_of(note)
        await pilot.press("p")  # the categorical param on x
        await until(pilot, lambda: "params.opt=adam" in text_of(note), "the plot of params.opt")
        await pilot.press("c")  # an ended sweep: nothing to cancel, no dialog
        await pilot.pause()
        assert not isinstance(app.screen, Confirm)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen, "back on the list")

        slow = await _submit(home, "slow", f"command: [{sys.executable!r}, -c, 'import time; time.sleep(600)']\n"
                                           "sweep:\n  grid:\n    params.n: [1, 2, 3]\n  max_parallel: 1\n")
        await until(pilot, lambda: slow["sweep_id"] in table.shown
                    and table.get_row(slow["sweep_id"])[6].plain == "1", "the slow sweep running one child", 60)
        table.select_key(slow["sweep_id"])
        await pilot.press("c")
        dialog = await until(pilot, lambda: isinstance(app.screen, Confirm) and app.screen, "the confirm dialog")
        assert "Cancel sweep slow" in dialog.question and "2 queued" in dialog.question
        await pilot.press("y")
        await until(pilot, lambda: "(cancelled)" in str(table.get_row(slow["sweep_id"])[1]), "the sweep cancelled", 30)
        await until(pilot, lambda: str(table.get_row(slow["sweep_id"])[4]).endswith("3/3"), "every child ended", 60)

    async with await connect(home) as client:
        shown = await client.call("sweep_show", sweep="slow")
        assert shown["progress"]["cancelled"] == 3, shown["progress"]
        assert shown["cancelled_by"]


def test_a_categorical_param_is_placed_by_category_and_the_best_is_found() -> None:
    children = [{"job_id": "a", "point": {"opt": "adam"}, "objective": 0.5},
                {"job_id": "b", "point": {"opt": "sgd"}, "objective": 0.2},
                {"job_id": "c", "point": {"opt": "adam"}, "objective": None}]
    points = scatter(children, "opt", "b")
    assert points.xs == [0.0, 1.0] and points.ys == [0.5, 0.2] and points.waiting == 1
    assert points.ticks == [(0.0, "adam"), (1.0, "sgd")] and points.best == (1.0, 0.2) and points.best_label == "sgd"
