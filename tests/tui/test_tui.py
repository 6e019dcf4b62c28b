"""A user drives the TUI against a real controller and local agent (started on demand, as ``mlfleet`` does).

Each story is one flow of the issue: the fleet comes alive, a job's output
follows, ``:`` and ``/`` move around and narrow, a host is drained, a job is
cancelled (after a confirmation), retried and re-prioritised, two runs are
compared, and a lost controller is a banner rather than a crash. The look of
each screen is guarded separately with fixed data (test_snapshots.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.widgets import DirectoryTree, Input

from mlfleet.core.controller.client import connect
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.base.models import to_plain
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.audit import AuditScreen
from mlfleet.tui.screens.compare import CompareScreen
from mlfleet.tui.screens.drift import DriftScreen
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen
from mlfleet.tui.screens.runs import RunsScreen
from mlfleet.tui.widgets.dialogs import Confirm, Prompt, SpecPicker, TextPanel
from mlfleet.tui.widgets.job_log import JobLog, LogRequest
from mlfleet.tui.widgets.job_table import JobTable
from mlfleet.tui.widgets.spark import SparkLine
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (160, 45)
REPO = Path(__file__).resolve().parents[2]


async def _submit(home: Home, name: str, code: str, extra: str = "") -> str:
    spec_path = home.config_dir / f"{name}.yaml"
    spec_path.write_text(f"name: {name}\ncommand: [{sys.executable!r}, -c, {code!r}]\n{extra}")
    spec = to_plain(load_job_spec(spec_path))
    async with await connect(home) as client:
        return (await client.call("submit", spec=spec, spec_path=str(spec_path)))["job_id"]


async def test_the_fleet_view_shows_the_local_host_live(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, FleetScreen)
        screen = app.screen
        await until(pilot, lambda: "local" in screen.table.shown, "the row of host local", 30)
        card = screen.card
        await until(pilot, lambda: card.host.get("name") == "local" and card.host.get("telemetry"),
                    "telemetry from local in the card")
        await until(pilot, lambda: card.has_class("-up"), "local to be up")
        row = [str(cell) for cell in screen.table.get_row("local")]  # what the user reads
        assert row[1] == "up" and row[2] == "local", row

        cpu = text_of(card.query_one("#cpu-value"))
        memory = text_of(card.query_one("#memory-value"))
        assert re.search(r"\d+\.\d % of \d+ cores", cpu), cpu
        assert re.search(r"\d+(\.\d)? [KMGT]?i?B / \d+(\.\d)? [KMGT]iB \(\d+ %\)", memory), memory
        if card.host["telemetry"]["gpu_state"] == "no_driver":
            assert "no NVIDIA driver" in text_of(card.query_one("#gpus"))

        # A couple of seconds later the card shows newer samples, and the sparklines have grown.
        first_sample = card.host["telemetry"]["ts"]
        await until(pilot, lambda: card.host["telemetry"]["ts"] > first_sample, "a newer telemetry sample", 10)
        await until(pilot, lambda: len(card.query_one("#cpu-history", SparkLine).values) >= 2,
                    "two points of CPU history", 10)
        assert "up" in str(card.border_subtitle)

        await pilot.press("q")
    assert app.return_code == 0


async def test_command_mode_filter_help_palette_and_drain(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "local" in app.screen.table.shown, "the row of host local", 30)

        # ':' then a view's name, k9s style; every view comes up and polls without an error.
        for command, view in (("jobs", JobsScreen), ("runs", RunsScreen), ("drift", DriftScreen),
                              ("audit", AuditScreen), ("hosts", FleetScreen)):
            await pilot.press("colon", *command, "enter")
            await until(pilot, lambda: isinstance(app.screen, view), f":{command} to show {view.__name__}", 5)
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)

        # '/' narrows the rows as the user types; esc clears the filter.
        await pilot.press("slash", *"zz-nothing")
        await until(pilot, lambda: not fleet.table.shown, "the filter to hide every host")
        await pilot.press("escape")
        await until(pilot, lambda: "local" in fleet.table.shown, "every host back after esc")
        assert not fleet.query_one("#filter", Input).display

        # '?' lists the keys of the screen; the palette has every binding as a command.
        await pilot.press("question_mark")
        await until(pilot, lambda: app.screen.query("HelpPanel"), "the key panel")
        await pilot.press("question_mark")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Drain/undrain", "Filter", "Jobs", "Runs", "Drift", "Audit", "Command"):
            assert title in titles, titles

        # d drains the host after asking why; d again undrains it after a confirmation.
        fleet.table.focus()
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Prompt), "the drain reason prompt")
        await pilot.press(*"swap disk", "enter")
        await until(pilot, lambda: "DRAINED" in str(fleet.table.shown["local"][-1]), "local drained in the table")
        assert "DRAINED" in str(fleet.card.border_subtitle)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the undrain confirmation")
        await pilot.press("y")
        await until(pilot, lambda: "DRAINED" not in str(fleet.table.shown["local"][-1]), "local open again")
        async with await connect(home) as client:
            actions = [e["action"] for e in await client.call("audit_list", limit=10)]
        assert "host.drain" in actions and "host.undrain" in actions


async def test_a_submitted_job_shows_in_the_jobs_view_with_its_output(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        job_id = await _submit(home, "hello", "import sys; print('hello from job'); print('to stderr', file=sys.stderr)")

        await pilot.press("2")
        assert isinstance(app.screen, JobsScreen)
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: job_id in table.shown, f"job {job_id} in the table")
        assert table.shown[job_id][1] == "hello"

        table.focus()
        table.move_cursor(row=table.get_row_index(job_id))
        await pilot.press("l")  # open the log of the job under the cursor
        log = app.screen.query_one(JobLog)
        assert log.job_id == job_id and log.has_focus
        await until(pilot, lambda: "hello from job" in "\n".join(log.lines), "the job's output in the log pane")
        await until(pilot, lambda: table.shown[job_id][4] == "succeeded", "the job to succeed in the table")

        await pilot.press("e")  # the other stream
        await until(pilot, lambda: "to stderr" in "\n".join(log.lines), "the job's stderr in the log pane")
        assert "hello from job" not in "\n".join(log.lines)

        await pilot.press("l")  # back to the table; enter shows the job in full
        assert table.has_focus
        await pilot.press("enter")
        panel = await until(pilot, lambda: isinstance(app.screen, TextPanel) and app.screen, "the job's details")
        assert panel.title_text.startswith(f"job {job_id}")
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)

        await pilot.press("1")
        assert isinstance(app.screen, FleetScreen)


async def test_cancel_retry_and_priority_ask_first_and_act(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        job_id = await _submit(home, "sleeper", "import time; print('sleeping', flush=True); time.sleep(600)")
        await pilot.press("2")
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: job_id in table.shown and table.shown[job_id][4] == "running",
                    f"job {job_id} running", 30)
        table.focus()
        table.move_cursor(row=table.get_row_index(job_id))

        # ctrl+d asks; 'n' keeps the job running.
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the cancel confirmation")
        await pilot.press("n")
        await pilot.pause(1.5)
        assert table.shown[job_id][4] == "running"

        # ctrl+d, 'y' stops it.
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the cancel confirmation")
        await pilot.press("y")
        await until(pilot, lambda: table.shown[job_id][4] == "cancelled", "the job to be cancelled", 30)

        # p changes the priority; r (confirmed) puts the ended job back in the queue.
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, Prompt), "the priority prompt")
        await pilot.press("ctrl+a", "ctrl+k", "7", "enter")  # replace the current value with 7
        await until(pilot, lambda: table.shown[job_id][11] == "7", "the new priority in the table")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm), "the retry confirmation")
        await pilot.press("y")
        await until(pilot, lambda: table.shown[job_id][4] in ("pending", "dispatched", "running"),
                    "the job back in the queue", 30)
        await until(pilot, lambda: table.shown[job_id][7].startswith("2/"), "a second attempt", 30)
        async with await connect(home) as client:
            await client.call("job_cancel", job=job_id)
            actions = [e["action"] for e in await client.call("audit_list", limit=20)]
        assert {"job.cancel", "job.priority", "job.retry"} <= set(actions), actions


async def test_a_spec_picked_in_the_file_picker_is_validated_and_submitted(home: Home) -> None:
    specs = home.config_dir / "specs"
    specs.mkdir()
    (specs / "bad.yaml").write_text("name: bad\ncommand: [true]\nresources:\n  gpuz: 1\n")
    (specs / "good.yaml").write_text(f"name: picked\ncommand: [{sys.executable!r}, -c, 'print(1)']\n")
    (specs / "notes.txt").write_text("not a spec")
    app = FleetApp(home, spec_root=specs)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("2")
        jobs = app.screen
        for name, expect_job in (("bad.yaml", False), ("good.yaml", True)):
            await pilot.press("n")
            picker = await until(pilot, lambda: isinstance(app.screen, SpecPicker) and app.screen, "the file picker")
            tree = picker.query_one(DirectoryTree)
            await until(pilot, lambda: len(tree.root.children) == 2, "the YAML files (and only them) in the tree")
            node = next(n for n in tree.root.children if str(n.label) == name)
            tree.move_cursor(node)
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is jobs, "the picker to close")
            if expect_job:
                await until(pilot, lambda: any(j["name"] == "picked" for j in jobs.jobs), "the picked job in the table")
            else:
                toasts = await until(pilot, lambda: " ".join(str(t.render()) for t in app.screen.query("Toast")),
                                     "the spec's error")
                assert "gpuz" in toasts and "bad.yaml" in toasts, toasts


TRAIN = ("import sys; from mlfleet import track; lr = float(sys.argv[1]); "
         "track.log_params({'lr': lr, 'batch_size': 64}); "
         "[track.log({'loss': 1.0 / (1 + lr * s)}, step=s) for s in range(50)]; track.flush()")


async def test_two_runs_are_compared(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        jobs = []
        for lr in ("0.1", "0.3"):
            spec_path = home.config_dir / f"train-{lr}.yaml"
            spec_path.write_text(f"name: train-{lr}\ncommand: [{sys.executable!r}, -c, {TRAIN!r}, '{lr}']\n")
            async with await connect(home) as client:
                spec = to_plain(load_job_spec(spec_path))
                jobs.append((await client.call("submit", spec=spec, spec_path=str(spec_path)))["job_id"])
        async with await connect(home) as client:
            for job_id in jobs:
                done = await client.call("job_wait", job=job_id, timeout=60)
                assert done["state"] == "succeeded", done

        await pilot.press("3")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await until(pilot, lambda: len(runs.table.shown) >= 2, "two runs in the table", 20)
        runs.table.focus()
        runs.table.move_cursor(row=0)
        await pilot.press("space", "space", "c")
        compare = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen, "the compare screen")
        assert sorted(compare.runs) == sorted(runs.marked)
        title = compare.query_one("#compare-title")
        await until(pilot, lambda: compare.comparison or "cannot compare" in text_of(title), "the comparison", 20)
        assert compare.comparison, text_of(title)
        assert "loss" in compare.metric_keys
        assert set(compare.comparison["params"]["differ"]) == {"lr"}
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


WIDE = ("from mlfleet import track; "
        "[track.log({f'layer{i:03d}': s * i for i in range(150)}, step=s) for s in range(3)]; track.flush()")


async def test_a_run_with_many_keys_is_shown_and_compared_in_part_and_says_so(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        jobs = [await _submit(home, "wide", WIDE), await _submit(home, "wide2", WIDE)]
        async with await connect(home) as client:
            for job_id in jobs:
                assert (await client.call("job_wait", job=job_id, timeout=60))["state"] == "succeeded"

        await pilot.press("3")
        runs = app.screen
        await until(pilot, lambda: len(runs.table.shown) >= 2, "two runs in the table", 20)
        assert all(len(r["metrics"]) == 20 and r["metric_keys"]["left_out"] == 130 for r in runs.runs)
        assert len([c for c, _ in runs.table.columns_spec if c.startswith("metric:")]) <= 5
        runs.table.focus()
        runs.table.move_cursor(row=0)
        await pilot.press("enter")
        panel = await until(pilot, lambda: isinstance(app.screen, TextPanel) and app.screen, "the run's page")
        console = Console(width=200, record=True)
        console.print(panel.body)
        page = console.export_text()
        assert re.search(r"^\s+layer099\s+3\s+0\s+198\s", page, re.M) and "layer100" not in page, page
        assert "… and 50 more (mlfleet runs show" in page
        await pilot.press("escape")

        await pilot.press("space", "space", "c")
        compare = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen, "the compare screen")
        title = compare.query_one("#compare-title")
        await until(pilot, lambda: compare.comparison or "cannot compare" in text_of(title), "the comparison", 20)
        assert compare.metric_keys == [f"layer{i:03d}" for i in range(20)]
        assert "130 more not compared" in text_of(title)


async def test_a_bad_runs_filter_is_said_in_the_filter_bar(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("3")
        runs = app.screen
        await pilot.press("slash", *"state ==== nonsense (", "enter")
        bar = runs.query_one("#filter", Input)
        await until(pilot, lambda: bar.has_class("-error"), "the filter bar to show the error", 10)
        assert bar.display and "filter:" in runs.view_problem
        await pilot.press("escape")
        await until(pilot, lambda: not bar.has_class("-error") and not runs.view_problem, "the error to clear")


async def test_a_broken_config_is_a_banner_and_the_tui_connects_once_it_is_fixed(home: Home) -> None:
    home.config_file.write_text("controller:\n  tik: 1s\n")
    app = FleetApp(home)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        problem = await until(pilot, lambda: app.problem, "the reason the controller cannot start")
        assert "config.yaml:2" in problem and "tik" in problem, problem
        assert "unavailable" in app.sub_title
        banner = app.screen.query_one("#banner")
        await until(pilot, lambda: "tik" in text_of(banner) and banner.display, "the banner")
        toasts = await until(pilot, lambda: " ".join(str(t.render()) for t in app.screen.query("Toast")),
                             "a notification")
        assert "tik" in toasts and "Traceback" not in toasts, toasts

        home.config_file.write_text("controller:\n  tick: 0.5s\n")
        await until(pilot, lambda: "local" in app.screen.table.shown, "the fleet once the config is fixed", 30)
        assert app.problem == ""
        assert not banner.display


async def test_the_tui_reconnects_when_the_controller_goes_away(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await until(pilot, lambda: (screen.hosts.get("local") or {}).get("telemetry"), "telemetry of host local", 30)
        first = app.client
        async with await connect(home) as client:
            await client.call("shutdown", stop_local_agent=False)
        await until(pilot, lambda: app.client is not None and app.client is not first,
                    "a new connection to a restarted controller", 60)
        seen = screen.hosts["local"]["telemetry"]["ts"]
        await until(pilot, lambda: (screen.hosts["local"].get("telemetry") or {}).get("ts", 0) > seen,
                    "fresh telemetry after the restart", 30)
        banner = screen.query_one("#banner")
        await until(pilot, lambda: not banner.display, "the banner to go once all is well again", 30)


class LogApp(App[None]):
    def compose(self) -> Any:
        yield JobLog()


async def test_the_log_pane_starts_over_when_a_retry_begins_a_new_run() -> None:
    async with LogApp().run_test() as pilot:
        log = pilot.app.query_one(JobLog)
        log.follow("j1")
        first = LogRequest("j1", "stdout", 0)
        more = log.absorb(first, {"run_id": "j1-1", "end": 6, "data": "try 1\n", "eof": False, "state": "running"})
        assert more and log.position == 6 and list(log.lines[:1]) == ["try 1"]
        # The retry's log is read once at the old run's offset; the pane notices the new run and starts it at 0.
        assert log.absorb(LogRequest("j1", "stdout", 6),
                          {"run_id": "j1-2", "end": 6, "data": "", "eof": False, "state": "running"})
        assert log.next_request() == LogRequest("j1", "stdout", 0) and log.run_id == "j1-2"
        # An answer for a selection the user has since left is dropped.
        log.follow("j2")
        stale = {"run_id": "j1-2", "end": 6, "data": "stale\n", "eof": False, "state": "running"}
        assert not log.absorb(LogRequest("j1", "stdout", 0), stale)
        assert log.position == 0 and "stale" not in "\n".join(log.lines)
        # A finished job read to its end is not asked for again.
        log.absorb(LogRequest("j2", "stdout", 0), {"run_id": "j2-1", "end": 3, "data": "ok\n", "eof": True,
                                                  "state": "succeeded"})
        assert log.finished and log.next_request() is None


async def test_the_log_pane_says_where_the_node_dropped_output() -> None:
    async with LogApp().run_test() as pilot:
        log = pilot.app.query_one(JobLog)
        log.follow("j1")
        log.absorb(LogRequest("j1", "stdout", 0), {"run_id": "j1-1", "offset": 2 * 1024**3, "end": 2 * 1024**3 + 4,
                                                  "data": "new\n", "dropped": 2 * 1024**3, "max_size": 100 * 1024**2,
                                                  "eof": False, "state": "running"})
        assert list(log.lines[:2]) == ["[mlfleet: 2.0 GiB of earlier output dropped; logs.max_size is 100 MiB]", "new"]
        assert log.position == 2 * 1024**3 + 4
