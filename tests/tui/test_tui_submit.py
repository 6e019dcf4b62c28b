"""The TUI's submit is as safe as ``mlfleet submit``: a key per submit, asked again after a lost controller.

The controller is SIGKILLed at the commit of a submit made from the jobs
view's file picker (the inotify watch of tests/commit_watch.py), until one
kill lands after the job was written and before the answer left. The view
must still say the job was queued, and every submit made from the dialog
must be exactly one job, with its own key, started once.
"""

from __future__ import annotations

import asyncio
import re
import sys

from textual.widgets import DirectoryTree

from commit_watch import kill_at_commit
from conftest import Fleet
from mlfleet.core.controller.client import connect
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.widgets.dialogs import SpecPicker
from tui_fleet import home, until  # noqa: F401  (home is a fixture)

SIZE = (160, 45)
ATTEMPTS = 8


async def _quiet(home: Home) -> None:
    """The local host up and no job in flight: the next write to the file is the submit's."""
    async with await connect(home) as client:
        for _ in range(300):
            jobs, hosts = await client.call("jobs_list"), await client.call("hosts_list")
            if all(j["state"] in ("succeeded", "failed") for j in jobs) and \
                    any(h["name"] == "local" and h["state"] == "up" for h in hosts):
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the controller did not become quiet")


def _toasts(app: FleetApp) -> str:
    return " ".join(str(t.render()) for t in app.screen.query("Toast"))


async def test_a_controller_killed_as_it_records_a_tui_submit_queues_the_job_once(home: Home) -> None:
    specs = home.config_dir / "specs"
    specs.mkdir()
    starts = home.data_dir / "starts.log"
    code = "import sys; open(sys.argv[1], 'a').write('started\\n')"
    (specs / "once.yaml").write_text(f"name: once\ncommand: [{sys.executable!r}, -c, {code!r}, {str(starts)!r}]\n")
    installation = Fleet(home.data_dir)
    app = FleetApp(home, spec_root=specs)
    submitted, asked_again = 0, 0
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("2")
        jobs = app.screen
        while submitted < ATTEMPTS and not asked_again:
            await _quiet(home)
            await until(pilot, lambda: app.client is not None and jobs.client is not None, "the view's client", 30)
            pid = installation.controller_pid
            await pilot.press("n")
            picker = await until(pilot, lambda: isinstance(app.screen, SpecPicker) and app.screen, "the file picker")
            tree = picker.query_one(DirectoryTree)
            await until(pilot, lambda: tree.root.children, "the spec in the tree")
            tree.move_cursor(tree.root.children[0])
            killer = kill_at_commit(home.db_path, pid)
            await pilot.press("enter")
            assert await asyncio.to_thread(killer.wait, 40) == 0, "the controller never committed"
            submitted += 1
            await until(pilot, lambda: _toasts(app).count("queued") >= 1, "the job's 'queued'", 60)
            asked_again += "submitting again with the same key" in _toasts(app)
            for toast in app.screen.query("Toast"):  # the next attempt starts with none
                toast.remove()
        await until(pilot, lambda: app.client is not None, "the reconnection", 30)

    assert asked_again, f"no kill of {submitted} landed between the commit and the answer"
    await _quiet(home)
    async with await connect(home) as client:
        made = [j for j in await client.call("jobs_list") if j["name"] == "once"]
        shown = [await client.call("job_show", job=j["job_id"]) for j in made]
    assert len(made) == submitted  # one job per submit from the dialog, the lost answer's one included
    assert all(re.fullmatch(r"[0-9a-f]{32}", j["key"]) for j in shown) and len({j["key"] for j in shown}) == submitted
    assert all(len(j["runs"]) == 1 for j in shown)
    assert starts.read_text().split() == ["started"] * submitted
