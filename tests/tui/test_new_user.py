"""Issue #13, the TUI part: what a new user met on a fresh clone, each story against a real controller.

Jobs come newest first as ``jobs list`` prints them, with the latest metric
of jobs that ended before the TUI opened; an empty jobs view says how to
submit; the spec picker goes up a folder and takes a typed path; the run
and compare pages never print Python's ``None``/``True``/``[]``; the audit
view says what its chain status means; and a host that stops answering is
"stale" in the table, the card and ``hosts list`` from the first missed
poll, not "live" with its last numbers.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.text import Text
from textual.widgets import DirectoryTree, Input

from conftest import Fleet, SshFleet
from mlfleet.core.controller.client import connect
from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.base.models import to_plain
from mlfleet.core.base.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.audit import AuditScreen
from mlfleet.tui.screens.compare import CompareScreen
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen
from mlfleet.tui.screens.runs import RunsScreen
from mlfleet.tui.widgets.dialogs import SpecPicker, TextPanel
from mlfleet.tui.widgets.host_table import HOST_COLUMNS
from mlfleet.tui.widgets.job_table import COLUMNS as JOB_COLUMNS, JobTable
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (160, 45)
PYTHON_REPRS = re.compile(r"\b(None|True|False)\b|\[\]|\{\}")
JOB_METRIC = [c for c, _ in JOB_COLUMNS].index("metric")
HOST = {c: i for i, (c, _) in enumerate(HOST_COLUMNS)}

TRAIN = ("import sys, time; from mlfleet import track; lr = float(sys.argv[1]); "
         "track.log_params({'lr': lr, 'warmup': None, 'augment': lr > 0.2, 'layers': [64, 32], 'extra': {}}); "
         "[track.log({'loss': 1.0 / (1 + lr * s)}, step=s) for s in range(20)]; track.flush(); "
         "time.sleep(float(sys.argv[2]))")


async def _submit(home: Home, name: str, *args: str) -> str:
    spec_path = home.config_dir / f"{name}.yaml"
    argv = ", ".join(repr(a) for a in args)
    spec_path.write_text(f"name: {name}\ncommand: [{sys.executable!r}, -c, {TRAIN!r}, {argv}]\n")
    async with await connect(home) as client:
        return (await client.call("submit", spec=to_plain(load_job_spec(spec_path)), spec_path=str(spec_path)))["job_id"]


def _page(renderable: Any) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


async def test_jobs_come_newest_first_with_the_metric_of_jobs_that_ended_before_the_tui_opened(home: Home) -> None:
    async with await connect(home) as client:
        pass  # start the controller, as the user's first 'mlfleet submit' would
    first = await _submit(home, "first", "0.1", "0")
    second = await _submit(home, "second", "0.3", "0")
    async with await connect(home) as client:
        for job_id in (first, second):
            assert (await client.call("job_wait", job=job_id, timeout=60))["state"] == "succeeded"

    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: {first, second} <= set(table.shown), "both jobs in the table", 30)
        assert table.get_row_index(second) < table.get_row_index(first)  # newest first, as 'jobs list'
        # Both ended before the TUI opened: their last loss is there all the same.
        await until(pilot, lambda: all(str(table.shown[j][JOB_METRIC]).startswith("loss ") for j in (first, second)),
                    "the latest metric of both ended jobs", 15)
        assert str(table.shown[second][JOB_METRIC]) == "loss 0.1493 @19", table.shown[second]


async def test_an_empty_jobs_view_says_how_to_submit_and_a_filter_that_hides_all_says_so(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("2")
        jobs = app.screen
        assert isinstance(jobs, JobsScreen)
        hint = jobs.query_one("#jobs-empty")
        await until(pilot, lambda: "press n" in text_of(hint), "the hint of an empty jobs view", 10)
        assert hint.display and "mlfleet submit" in text_of(hint)

        job_id = await _submit(home, "one", "0.1", "0")
        table = jobs.query_one(JobTable)
        await until(pilot, lambda: job_id in table.shown, "the job in the table", 10)
        assert not hint.display
        await pilot.press("slash", *"zz-nothing")
        await until(pilot, lambda: hint.display and "no job matches" in text_of(hint), "the filter's empty line")


async def test_the_spec_picker_goes_up_a_folder_and_takes_a_typed_path(home: Home) -> None:
    project = home.config_dir / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "train.yaml").write_text(f"name: from-above\ncommand: [{sys.executable!r}, -c, 'print(1)']\n")
    elsewhere = home.config_dir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "job.yml.txt").write_text(f"name: typed\ncommand: [{sys.executable!r}, -c, 'print(2)']\n")
    app = FleetApp(home, spec_root=project / "notebooks")  # the user ran mlfleet one folder below the spec
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("2")
        jobs = app.screen

        await pilot.press("n")
        picker = await until(pilot, lambda: isinstance(app.screen, SpecPicker) and app.screen, "the file picker")
        tree = picker.query_one(DirectoryTree)
        await pilot.press("backspace")  # up a folder, to where the spec is
        await until(pilot, lambda: Path(tree.path) == project and len(tree.root.children) == 2, "the folder above")
        node = next(n for n in tree.root.children if str(n.label) == "train.yaml")
        tree.move_cursor(node)
        await pilot.press("enter")
        await until(pilot, lambda: any(j["name"] == "from-above" for j in jobs.jobs), "the spec from above queued")

        # A typed path: a folder that does not exist is said; a file (any name) is picked, relative to the tree.
        await pilot.press("n")
        picker = await until(pilot, lambda: isinstance(app.screen, SpecPicker) and app.screen, "the file picker")
        line = picker.query_one("#spec-path", Input)
        line.focus()
        await pilot.press(*"../nowhere", "enter")
        problem = picker.query_one("#spec-problem")
        await until(pilot, lambda: problem.display and "no file or folder" in text_of(problem), "the typo said")
        assert isinstance(app.screen, SpecPicker)
        for hostile in ("bad\x00name.yaml", "~no-such-user-xyz/job.yaml", "x" * 5000):  # pasted, not typed
            line.value = hostile
            await pilot.press("enter")
            await until(pilot, lambda: problem.display and hostile.lstrip("~")[:6] in text_of(problem),
                        f"{hostile[:20]!r} said in the picker, not a crash")
            assert isinstance(app.screen, SpecPicker)
        line.value = ""
        await pilot.press(*"../../elsewhere/job.yml.txt", "enter")  # from notebooks/, where the tree opens
        await until(pilot, lambda: any(j["name"] == "typed" for j in jobs.jobs), "the typed spec queued")


async def test_the_run_page_and_the_comparison_print_values_not_python(home: Home) -> None:
    async with await connect(home) as client:
        pass
    done = await _submit(home, "done", "0.1", "0")
    going = await _submit(home, "going", "0.3", "600")  # still running: no exit code yet
    async with await connect(home) as client:
        assert (await client.call("job_wait", job=done, timeout=60))["state"] == "succeeded"
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        runs = app.screen
        assert isinstance(runs, RunsScreen)
        await until(pilot, lambda: len(runs.table.shown) == 2 and all(
            r.get("metrics") for r in runs.runs), "both runs with their metrics", 30)
        pages = {}
        for job_id in (done, going):
            runs.table.focus()
            runs.table.move_cursor(row=runs.table.get_row_index(f"{job_id}-1"))
            await pilot.press("enter")
            panel = await until(pilot, lambda: isinstance(app.screen, TextPanel) and app.screen, "the run's page")
            pages[job_id] = _page(panel.body)
            await pilot.press("escape")
        for job_id, page in pages.items():
            assert not PYTHON_REPRS.search(page), page
            assert page.count("packages") == 1 or (job_id == going and "packages" not in page), page  # said once
            assert re.search(r"warmup = -\s", page) and "layers = 64, 32" in page and "extra = -" in page, page
            assert re.search(r"^metrics\s+METRIC\s+POINTS", page, re.M), page
            assert re.search(r"^\s+loss\s+20\s+\S+\s+1\s", page, re.M), page  # the key with its values
        assert "exit -" in pages[going] and "augment = true" in pages[going], pages[going]
        assert "exit 0" in pages[done] and "augment = false" in pages[done], pages[done]

        runs.table.move_cursor(row=0)
        await pilot.press("space", "space", "c")
        compare = await until(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen, "the compare screen")
        await until(pilot, lambda: compare.comparison, "the comparison", 20)
        params = _page(compare.query_one("#params-diff").content)
        lineage = _page(compare.query_one("#lineage-table").content)
        for text in (params, lineage):
            assert not PYTHON_REPRS.search(text), text
        assert lineage.count("packages") == 1 and "GPUs none" in lineage, lineage
        assert re.search(r"^warmup\s+-\s+-\s*$", params, re.M), params  # the same None in both: "-"

    # The CLI's page of the running run: the same words, no Python either.
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mlfleet", "runs", "show", f"{going}-1"],
                                    capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert not PYTHON_REPRS.search(shown.stdout), shown.stdout
    assert "exit -" in shown.stdout and "warmup = -" in shown.stdout, shown.stdout
    async with await connect(home) as client:
        await client.call("job_cancel", job=going)


async def test_the_audit_view_says_what_its_chain_status_means(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        await pilot.press("5")
        audit = app.screen
        assert isinstance(audit, AuditScreen)
        chain = audit.query_one("#audit-chain")
        await until(pilot, lambda: "chain: " in text_of(chain) and "asking" not in text_of(chain),
                    "the chain's status", 30)
        status = text_of(chain)
        assert status.startswith("chain: verified (") and "events)" in status, status  # a fresh trail is intact
        table = audit.query_one("#audit-table")
        await until(pilot, lambda: len(table.shown) >= 1, "the audit trail", 10)


# ------------------------------------------------------------------ a host that stops answering

def _ssh_host(ssh_fleet: SshFleet, config: str = "") -> Fleet:
    fleet = ssh_fleet.fleet
    if config:
        fleet.home.config_file.write_text(config)
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    return fleet


def _hosts_list_row(fleet: Fleet, name: str) -> dict[str, str]:
    lines = fleet.cli("hosts", "list", check=True).out.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    for line in lines[1:]:
        if line.startswith(name + " "):
            cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
            return dict(zip(header.lower().split(), cells))
    raise AssertionError(f"no row {name} in {lines}")


async def test_a_host_whose_sshd_stops_is_stale_at_once_in_the_tui_and_hosts_list(ssh_fleet: SshFleet) -> None:
    fleet = _ssh_host(ssh_fleet)
    app = FleetApp(fleet.home)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, FleetScreen)
        await until(pilot, lambda: str((screen.table.shown.get("node-a") or [""] * 13)[HOST["seen"]]) == "live",
                    "node-a live in the table", 30)
        assert str(screen.table.shown["node-a"][HOST["cpu"]]).endswith(tuple("0123456789"))

        ssh_fleet.servers["node-a"].stop()  # the host goes down: its sshd and every connection
        row = await until(pilot, lambda: str(screen.table.shown["node-a"][HOST["state"]]) == "unreachable"
                          and screen.table.shown["node-a"], "node-a unreachable", 30)
        # The same answer that says unreachable says its numbers are old: never "live".
        assert str(row[HOST["seen"]]).startswith("stale "), row
        for column in ("cpu", "ram"):
            cell = row[HOST[column]]
            assert isinstance(cell, Text) and "dim" in str(cell.style), (column, cell)
        screen.table.move_cursor(row=screen.table.get_row_index("node-a"))
        await until(pilot, lambda: screen.card.has_class("-stale") and "last seen: stale" in str(
            screen.card.border_subtitle), "the card greyed and saying so")

    seen = (await asyncio.to_thread(_hosts_list_row, fleet, "node-a"))["seen"]
    assert seen.startswith("stale "), seen
    assert (await asyncio.to_thread(_hosts_list_row, fleet, "local"))["seen"] == "live"


def _connection_processes(ssh_fleet: SshFleet, name: str) -> list[psutil.Process]:
    server = ssh_fleet.servers[name]
    assert server.process is not None
    return psutil.Process(server.process.pid).children(recursive=True)


async def test_a_host_that_freezes_is_stale_long_before_its_link_is_torn_down(ssh_fleet: SshFleet) -> None:
    # The link is torn down only after a minute unanswered: until then it stays "up", and only staleness tells.
    fleet = _ssh_host(ssh_fleet, "controller:\n  answer_timeout: 60s\n")
    frozen = _connection_processes(ssh_fleet, "node-a")
    assert frozen, "node-a has no SSH connection to freeze"
    app = FleetApp(fleet.home)
    try:
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            await until(pilot, lambda: str((screen.table.shown.get("node-a") or [""] * 13)[HOST["seen"]]) == "live",
                        "node-a live in the table", 30)
            for proc in frozen:
                proc.send_signal(signal.SIGSTOP)  # the node hangs: the connection neither answers nor closes
            row = await until(pilot, lambda: str(screen.table.shown["node-a"][HOST["seen"]]).startswith("stale")
                              and screen.table.shown["node-a"], "node-a stale in the table", 30)
            assert str(row[HOST["state"]]) == "up", row  # not torn down yet: the staleness came first
            assert "not answering: node-a (stale" in screen.view_problem, screen.view_problem
            seen = (await asyncio.to_thread(_hosts_list_row, fleet, "node-a"))
            assert seen["state"] == "up" and seen["seen"].startswith("stale "), seen

            for proc in frozen:
                proc.send_signal(signal.SIGCONT)
            await until(pilot, lambda: str(screen.table.shown["node-a"][HOST["seen"]]) == "live",
                        "node-a live again once it answers", 30)
            assert "not answering" not in screen.view_problem
    finally:
        for proc in frozen:
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.Error:
                pass
