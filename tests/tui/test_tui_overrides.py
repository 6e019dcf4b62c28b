"""The TUI's submit takes a name and --set lines, as ``mlfleet submit`` does, and submits sweeps too."""

from __future__ import annotations

import sys

from textual.widgets import DirectoryTree, Input

from mlfleet.core.base.paths import Home
from mlfleet.core.controller.client import connect
from mlfleet.tui.app import FleetApp
from mlfleet.tui.widgets.dialogs import SpecPicker
from tui_fleet import home, until  # noqa: F401  (home is a fixture)

SIZE = (160, 45)


def _toasts(app: FleetApp) -> str:
    return " ".join(str(t.render()) for t in app.screen.query("Toast"))


async def _pick(pilot, app: FleetApp, name: str, sets: str, job_name: str = "") -> None:  # noqa: ANN001
    await pilot.press("n")
    picker = await until(pilot, lambda: isinstance(app.screen, SpecPicker) and app.screen, "the file picker")
    tree = picker.query_one(DirectoryTree)
    await until(pilot, lambda: tree.root.children, "the specs in the tree")
    picker.query_one("#spec-name", Input).value = job_name
    picker.query_one("#spec-set", Input).value = sets
    tree.move_cursor(next(n for n in tree.root.children if str(n.label) == name))
    tree.focus()
    await pilot.press("enter")


async def test_the_submit_dialog_applies_a_name_and_set_lines_and_names_a_bad_set(home: Home) -> None:
    specs = home.config_dir / "specs"
    specs.mkdir()
    (specs / "train.yaml").write_text(f"name: train\ncommand: [{sys.executable!r}, -c, 'print(1)']\nparams: {{lr: 0.5}}\n")
    (specs / "sweep.yaml").write_text(f"name: sw\ncommand: [{sys.executable!r}, -c, 'print(1)']\n"
                                      "sweep:\n  grid:\n    params.lr: [0.1, 0.2, 0.3]\n  max_parallel: 1\n")
    app = FleetApp(home, spec_root=specs)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("2")
        jobs = app.screen
        await _pick(pilot, app, "train.yaml", "resources.gpuz=2")
        await until(pilot, lambda: app.screen is jobs, "the picker to close")
        toast = await until(pilot, lambda: "gpuz" in _toasts(app) and _toasts(app), "the --set's error")
        assert "--set resources.gpuz=2: unknown field; did you mean 'gpus'?" in toast.replace("\n", " ")

        await _pick(pilot, app, "train.yaml", "params.lr=0.01 'params.note=a b'", "lr-small")
        await until(pilot, lambda: any(j["name"] == "lr-small" for j in jobs.jobs), "the renamed job in the table")

        await _pick(pilot, app, "sweep.yaml", "")
        await until(pilot, lambda: "sweep sw queued: 3 jobs" in _toasts(app), "the sweep's 'queued'", 30)

    async with await connect(home) as client:
        listed = await client.call("jobs_list")
        job = await client.call("job_show", job=next(j["job_id"] for j in listed if j["name"] == "lr-small"))
        assert job["spec"]["params"] == {"lr": 0.01, "note": "a b"}
        assert sorted(j["name"] for j in listed if j["name"].startswith("sw-")) == ["sw-0", "sw-1", "sw-2"]
        await client.call("sweep_cancel", sweep="sw")
