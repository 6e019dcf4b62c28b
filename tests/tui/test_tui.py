"""A user opens the TUI: the fleet comes alive, a job shows up and its output follows.

The live tests run the real app against a real controller and local agent
(started on demand, as ``mlfleet`` does). The snapshot tests feed the views
fixed data so that their look can be compared run after run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Sparkline

from mlfleet.core.client import connect
from mlfleet.core.config import load_job_spec
from mlfleet.core.models import to_plain
from mlfleet.core.paths import Home
from mlfleet.tui.app import FleetApp
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen
from mlfleet.tui.widgets.host_card import HostCard
from mlfleet.tui.widgets.job_log import JobLog, LogRequest
from mlfleet.tui.widgets.job_table import JobTable
from tui_fleet import home, text_of, until  # noqa: F401  (home is a fixture)

SIZE = (160, 45)
APP_CSS = Path(__file__).resolve().parents[2] / "tui" / "app.tcss"


async def test_the_fleet_view_shows_the_local_host_live(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, FleetScreen)
        card: HostCard = await until(pilot, lambda: app.screen.cards.get("local"), "the card of host local", 30)
        await until(pilot, lambda: card.has_class("-up") and card.host.get("telemetry"), "telemetry from local")

        cpu = text_of(card.query_one("#cpu-value"))
        memory = text_of(card.query_one("#memory-value"))
        assert re.search(r"\d+\.\d % of \d+ cores", cpu), cpu
        assert re.search(r"\d+(\.\d)? [KMGT]?i?B / \d+(\.\d)? [KMGT]iB \(\d+ %\)", memory), memory
        gpus = text_of(card.query_one("#gpus"))
        if card.host["telemetry"]["gpu_state"] == "no_driver":
            assert "no NVIDIA driver" in gpus

        # A couple of seconds later the card shows newer samples, and the sparklines have grown.
        first_sample = card.host["telemetry"]["ts"]
        await until(pilot, lambda: card.host["telemetry"]["ts"] > first_sample, "a newer telemetry sample", 10)
        await until(pilot, lambda: len(card.query_one("#cpu-history", Sparkline).data or []) >= 2,
                    "two points of CPU history", 10)
        assert len(card.query_one("#memory-history", Sparkline).data or []) >= 2
        assert "up" in str(card.border_subtitle)

        await pilot.press("q")
    assert app.return_code == 0


async def test_a_submitted_job_shows_in_the_jobs_view_with_its_output(home: Home) -> None:
    spec_path = home.config_dir / "hello.yaml"
    spec_path.write_text("name: hello\n"
                         "command: [python, -c, \"import sys; print('hello from job'); "
                         "print('to stderr', file=sys.stderr)\"]\n")
    spec = to_plain(load_job_spec(spec_path))

    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.client is not None, "the connection to the controller", 30)
        async with await connect(home) as client:
            job_id = (await client.call("submit", spec=spec, spec_path=str(spec_path)))["job_id"]

        await pilot.press("2")
        assert isinstance(app.screen, JobsScreen)
        table = app.screen.query_one(JobTable)
        await until(pilot, lambda: job_id in table.shown, f"job {job_id} in the table")
        assert table.get_row(job_id)[1] == "hello"

        table.focus()
        table.move_cursor(row=table.get_row_index(job_id))
        await pilot.press("enter")
        log = app.screen.query_one(JobLog)
        assert log.job_id == job_id
        await until(pilot, lambda: "hello from job" in "\n".join(log.lines), "the job's output in the log pane")
        await until(pilot, lambda: table.get_row(job_id)[4] == "succeeded", "the job to succeed in the table")

        await pilot.press("e")  # the other stream
        await until(pilot, lambda: "to stderr" in "\n".join(log.lines), "the job's stderr in the log pane")
        assert "hello from job" not in "\n".join(log.lines)

        await pilot.press("1")
        assert isinstance(app.screen, FleetScreen)


async def test_a_broken_config_is_one_sentence_and_the_tui_connects_once_it_is_fixed(home: Home) -> None:
    home.config_file.write_text("controller:\n  tik: 1s\n")
    app = FleetApp(home)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        problem = await until(pilot, lambda: app.problem, "the reason the controller cannot start")
        assert "config.yaml:2" in problem and "tik" in problem, problem
        assert "unavailable" in app.sub_title
        toasts = await until(pilot, lambda: " ".join(str(t.render()) for t in app.screen.query("Toast")),
                             "a notification")
        assert "tik" in toasts and "Traceback" not in toasts, toasts

        home.config_file.write_text("controller:\n  tick: 0.5s\n")
        await until(pilot, lambda: app.screen.cards.get("local"), "the fleet once the config is fixed", 30)
        assert app.problem == ""


async def test_the_tui_reconnects_when_the_controller_goes_away(home: Home) -> None:
    app = FleetApp(home)
    async with app.run_test(size=SIZE) as pilot:
        card = await until(pilot, lambda: app.screen.cards.get("local"), "the card of host local", 30)
        first = app.client
        async with await connect(home) as client:
            await client.call("shutdown", stop_local_agent=False)
        await until(pilot, lambda: app.client is not None and app.client is not first,
                    "a new connection to a restarted controller", 30)
        seen = card.host["telemetry"]["ts"] if card.host.get("telemetry") else 0
        await until(pilot, lambda: (card.host.get("telemetry") or {}).get("ts", 0) > seen,
                    "fresh telemetry after the restart", 15)


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


# ------------------------------------------------------------------ snapshots

GIB = 1024**3


def _gpu(index: int, util: float, used_gib: float, procs: int) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index}", "name": "NVIDIA H100 80GB HBM3", "utilization": util,
            "memory_total": 80 * GIB, "memory_used": int(used_gib * GIB), "memory_free": int((80 - used_gib) * GIB),
            "temperature": 40.0 + index * 11, "power_draw": 120.0 + util * 5, "power_limit": 700.0,
            "processes": [{"pid": 1000 + p, "used_memory": GIB, "name": "python"} for p in range(procs)]}


def _telemetry(cpu: float, mem_gib: float, gpu_state: str, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seq": 42, "ts": 1_700_000_000.0, "cpu_percent": cpu, "cpu_count": 64, "load1": 12.5,
            "memory_total": 512 * GIB, "memory_used": int(mem_gib * GIB), "swap_used": 0,
            "disk_total": 4000 * GIB, "disk_used": 1000 * GIB, "net_rx_bps": 1e6, "net_tx_bps": 2e5,
            "gpu_state": gpu_state, "gpu_message": "", "gpus": gpus}


def _history(n: int, base: float, swing: float, step: int = 7) -> list[float]:
    return [base + swing * ((i * step) % 11) / 10 for i in range(n)]


FIXED_HOSTS: list[dict[str, Any]] = [
    {"name": "gpu-box-1", "kind": "ssh", "state": "up", "message": "", "agent_version": "0.1.0",
     "last_seen": 1_700_000_000.0, "labels": {}, "running_jobs": 2, "info": {},
     "telemetry": _telemetry(63.4, 201.5, "ok", [_gpu(0, 97, 71.2, 1), _gpu(1, 12, 3.5, 0)]),
     "history": {"cpu_percent": _history(60, 40, 30), "memory_percent": _history(60, 35, 5, step=3)}},
    {"name": "local", "kind": "local", "state": "up", "message": "", "agent_version": "0.1.0",
     "last_seen": 1_700_000_000.0, "labels": {}, "running_jobs": 0, "info": {},
     "telemetry": _telemetry(3.2, 4.25, "no_driver", []),
     "history": {"cpu_percent": _history(60, 2, 5), "memory_percent": _history(60, 1, 1, step=1)}},
    {"name": "cloud-a100", "kind": "ssh", "state": "unreachable", "agent_version": None, "last_seen": None,
     "message": "ssh: connection refused (cloud-a100:22); is the VM running?", "labels": {}, "running_jobs": 0,
     "info": {}, "telemetry": None, "history": {"cpu_percent": [], "memory_percent": []}},
]

FIXED_JOBS: list[dict[str, Any]] = [  # newest first, as jobs_list sends them
    {"job_id": "jc0ffee03", "name": "sweep-lr-3", "project": "vision", "owner": "ana", "state": "pending",
     "reason": "waiting for 4 GPUs with 40 GiB free (largest free: 2 on gpu-box-1)", "priority": 0, "attempt": 0,
     "max_attempts": 1, "host": None, "gpus": None, "run_id": None, "submitted_at": "2024-05-01T10:02:00+00:00",
     "started_at": None, "finished_at": None, "exit_code": None},
    {"job_id": "jc0ffee02", "name": "train-resnet", "project": "vision", "owner": "ana", "state": "failed",
     "reason": "exited 3", "priority": 0, "attempt": 2, "max_attempts": 2, "host": "gpu-box-1", "gpus": [0, 1],
     "run_id": "jc0ffee02-2", "submitted_at": "2024-05-01T10:00:00+00:00",
     "started_at": "2024-05-01T10:00:05+00:00", "finished_at": "2024-05-01T10:12:30+00:00", "exit_code": 3},
    {"job_id": "jc0ffee01", "name": "hello", "project": "default", "owner": "bo", "state": "succeeded",
     "reason": "exited 0", "priority": 0, "attempt": 1, "max_attempts": 1, "host": "local", "gpus": [],
     "run_id": "jc0ffee01-1", "submitted_at": "2024-05-01T09:00:00+00:00",
     "started_at": "2024-05-01T09:00:01+00:00", "finished_at": "2024-05-01T09:00:04+00:00", "exit_code": 0},
]


class StillApp(App[None]):
    """The app's styles around one view that is fed fixed data and no client."""

    CSS_PATH = APP_CSS

    def __init__(self, view: Screen[None]) -> None:
        super().__init__()
        self.view = view

    def on_mount(self) -> None:
        self.push_screen(self.view)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Timestamps render in local time: pin it so the snapshot is the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_fleet_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.app.screen.show_hosts(FIXED_HOSTS)
        await pilot.pause()

    assert snap_compare(StillApp(FleetScreen()), terminal_size=(130, 34), run_before=feed)


def test_the_jobs_view_looks_right(snap_compare: Any, utc: None) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        table = screen.query_one(JobTable)
        table.show_jobs(FIXED_JOBS)
        await pilot.pause()
        table.move_cursor(row=table.get_row_index("jc0ffee02"))  # the user moves onto the failed job
        await pilot.pause()
        log = screen.query_one(JobLog)
        assert log.job_id == "jc0ffee02"
        log.absorb(LogRequest("jc0ffee02", "stdout", 0),
                   {"run_id": "jc0ffee02-2", "end": 60, "eof": True, "state": "failed",
                    "data": "epoch 1 loss 0.91\nepoch 2 loss 0.64\nTraceback: CUDA out of memory\n"})
        await pilot.pause()

    assert snap_compare(StillApp(JobsScreen()), terminal_size=(130, 30), run_before=feed)
