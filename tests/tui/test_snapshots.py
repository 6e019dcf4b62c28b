"""The look of every screen, with fixed data and no controller, compared run after run.

Each view is mounted in an app that has the real styles, fed the answers
of ``tui_data`` through the same methods its poller uses, and compared with
the stored SVG (``pytest --snapshot-update`` after an intended change).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import pytest
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from mlfleet.tui.screens.audit import AuditScreen
from mlfleet.tui.screens.compare import CompareScreen
from mlfleet.tui.screens.deployment_detail import DeploymentScreen
from mlfleet.tui.screens.deployments import DeploymentsScreen
from mlfleet.tui.screens.drift import DriftReportScreen, DriftScreen
from mlfleet.tui.screens.fleet import FleetScreen
from mlfleet.tui.screens.jobs import JobsScreen, job_detail
from mlfleet.tui.screens.pipelines import PipelinesScreen
from mlfleet.tui.screens.runs import RunsScreen
from mlfleet.tui.screens.sweep_detail import SweepScreen
from mlfleet.tui.screens.sweeps import SweepsScreen
from mlfleet.tui.widgets.dialogs import Confirm, TextPanel
from mlfleet.tui.widgets.job_log import JobLog, LogRequest
from mlfleet.tui.widgets.job_table import JobTable
from tui_data import (FIXED_AUDIT, FIXED_CLUSTER, FIXED_COMPARISON, FIXED_DEPLOY_HISTORY, FIXED_DEPLOY_METRICS, FIXED_DEPLOY_SHOWS,
                      FIXED_DEPLOYMENTS, FIXED_DRIFT_LIST, FIXED_DRIFT_REPORT, FIXED_HOSTS, FIXED_JOBS,
                      FIXED_LINEAGE, FIXED_RUNS, FIXED_SWEEP, FIXED_SWEEPS, GPU_HISTORY, JOB_METRICS, WHY_PENDING)

APP_CSS = Path(__file__).resolve().parents[2] / "tui" / "app.tcss"


class StillApp(App[None]):
    """The app's styles around one view that is fed fixed data and no client."""

    CSS_PATH = APP_CSS

    def __init__(self, view: Screen[Any]) -> None:
        super().__init__()
        self.view = view

    def on_mount(self) -> None:
        self.push_screen(self.view)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Timestamps render in local time: pin it so the snapshot is the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_fleet_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: FleetScreen = pilot.app.screen
        screen.gpu_history["gpu-box-1"] = {i: deque(v) for i, v in GPU_HISTORY.items()}
        screen._last_ts["gpu-box-1"] = FIXED_HOSTS[0]["telemetry"]["ts"]
        await screen.show_hosts(FIXED_HOSTS)
        await pilot.pause()

    assert snap_compare(StillApp(FleetScreen()), terminal_size=(150, 34), run_before=feed)


def test_a_slurm_cluster_looks_right(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster's row says its GPUs free/total, and its card a row per partition in place of the login node's GPUs."""
    from mlfleet.core.fleet import slurm_cluster

    monkeypatch.setattr(slurm_cluster, "clock", lambda: 1_700_000_000.0)  # "sinfo 7 s ago", every run

    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()
        screen: FleetScreen = pilot.app.screen
        await screen.show_hosts([FIXED_CLUSTER, FIXED_HOSTS[0]])
        await pilot.pause()

    assert snap_compare(StillApp(FleetScreen()), terminal_size=(150, 30), run_before=feed)


def test_the_jobs_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: JobsScreen = pilot.app.screen
        screen.metrics = JOB_METRICS
        screen.show_jobs(FIXED_JOBS)
        await pilot.pause()
        table = screen.query_one(JobTable)
        table.move_cursor(row=table.get_row_index("jc0ffee02"))  # the user moves onto the failed job
        await pilot.pause()
        log = screen.query_one(JobLog)
        assert log.job_id == "jc0ffee02"
        log.absorb(LogRequest("jc0ffee02", "stdout", 0),
                   {"run_id": "jc0ffee02-2", "end": 60, "eof": True, "state": "failed",
                    "data": "epoch 1 loss 0.91\nepoch 2 loss 0.64\nTraceback: CUDA out of memory\n"})
        await pilot.pause()

    assert snap_compare(StillApp(JobsScreen()), terminal_size=(150, 30), run_before=feed)


def test_why_pending_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_jobs(FIXED_JOBS)
        await pilot.app.push_screen(TextPanel("job jc0ffee03 · sweep-lr-3", job_detail(WHY_PENDING)))
        await pilot.pause()

    assert snap_compare(StillApp(JobsScreen()), terminal_size=(120, 30), run_before=feed)


def test_cancel_confirmation_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_jobs(FIXED_JOBS)
        await pilot.app.push_screen(Confirm("Cancel job jc0ffee03 (sweep-lr-3)? This will drop it from the queue.",
                                            yes="Cancel job"))
        await pilot.pause()

    assert snap_compare(StillApp(JobsScreen()), terminal_size=(120, 24), run_before=feed)


def test_the_runs_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: RunsScreen = pilot.app.screen
        screen.show_runs(FIXED_RUNS)
        await pilot.pause()
        screen.table.focus()
        await pilot.press("space", "space")  # mark the first two runs
        await pilot.pause()

    assert snap_compare(StillApp(RunsScreen()), terminal_size=(150, 20), run_before=feed)


def test_the_comparison_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_comparison(FIXED_COMPARISON, FIXED_LINEAGE)
        await pilot.pause()

    assert snap_compare(StillApp(CompareScreen(["ja1-1", "ja2-1"])), terminal_size=(140, 44), run_before=feed)


def test_the_drift_views_look_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_reports(FIXED_DRIFT_LIST)
        await pilot.pause()

    assert snap_compare(StillApp(DriftScreen()), terminal_size=(130, 14), run_before=feed)


def test_a_drift_report_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_report(FIXED_DRIFT_REPORT)
        await pilot.pause()

    assert snap_compare(StillApp(DriftReportScreen("d0002")), terminal_size=(130, 40), run_before=feed)


def test_the_audit_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_events(FIXED_AUDIT)
        await pilot.pause()

    assert snap_compare(StillApp(AuditScreen()), terminal_size=(130, 14), run_before=feed)


def test_the_sweeps_view_looks_right(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlfleet.tui.screens.sweeps.elapsed", lambda start, end=None: "2h 5m")  # age is now-relative

    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_sweeps(FIXED_SWEEPS)
        await pilot.pause()

    assert snap_compare(StillApp(SweepsScreen()), terminal_size=(150, 12), run_before=feed)


def test_a_sweep_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        pilot.app.screen.show_sweep(FIXED_SWEEP)
        await pilot.pause()

    assert snap_compare(StillApp(SweepScreen("lr-grid")), terminal_size=(130, 40), run_before=feed)


def test_the_deployments_view_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: DeploymentsScreen = pilot.app.screen
        screen.show_deployments(FIXED_DEPLOYMENTS, FIXED_DEPLOY_SHOWS)
        screen.show_history("iris", FIXED_DEPLOY_HISTORY)
        screen.table.focus()
        await pilot.pause()

    assert snap_compare(StillApp(DeploymentsScreen()), terminal_size=(150, 26), run_before=feed)


def test_the_rollback_confirmation_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: DeploymentsScreen = pilot.app.screen
        screen.show_deployments(FIXED_DEPLOYMENTS, FIXED_DEPLOY_SHOWS)
        screen.table.focus()
        await pilot.press("r")
        await pilot.pause()

    assert snap_compare(StillApp(DeploymentsScreen()), terminal_size=(120, 24), run_before=feed)


def test_a_deployment_looks_right(snap_compare: Any) -> None:
    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        shown = {**FIXED_DEPLOY_SHOWS["iris"], "endpoints": [{"replica_id": "iris-v1-1", "host": "gpu-box-1",
                                                             "port": 41001, "version": 1, "local": False}]}
        pilot.app.screen.show_deployment(shown, FIXED_DEPLOY_METRICS, FIXED_DEPLOY_HISTORY)
        await pilot.pause()

    assert snap_compare(StillApp(DeploymentScreen("iris")), terminal_size=(150, 30), run_before=feed)


def test_the_pipelines_view_looks_right(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline_answers  # tests/: the pipelines service's answers, in the contract's shapes
    from mlfleet.core.cli import render

    ended = render.elapsed
    monkeypatch.setattr(render, "elapsed", lambda start, end=None: ended(start, end) if end else "2h 5m")

    async def feed(pilot: Pilot[Any]) -> None:
        await pilot.pause()  # the view's widgets are mounted before its first answer, as in the app
        screen: PipelinesScreen = pilot.app.screen
        screen.show_runs(pipeline_answers.LIST)
        screen.table.focus()
        await pilot.press("j")  # onto the run whose gate did not pass
        screen.show_run(pipeline_answers.RUN)
        screen.show_triggers(pipeline_answers.TRIGGERS)
        await pilot.pause()

    assert snap_compare(StillApp(PipelinesScreen()), terminal_size=(150, 40), run_before=feed)
