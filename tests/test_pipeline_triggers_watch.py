"""The drift watch: ``on: drift:`` with ``reference:`` makes the controller check a deployment's captures itself.

Stories: the file's ``reference:`` (a file beside the pipeline, or ``STEP.outputs.NAME``) and ``every:``
resolve, and each mistake is one sentence at its line; a check is due once ``every`` has passed since
the last one, and reads only the captures after the later of the trigger's last firing and its last
check (pure, core/pipelines/triggers.py); over a real store and real Parquet captures, the trigger
loop checks nothing while the deployment has no captures, saves a clean report for normal traffic
(no run), fires on shifted traffic with the report and the drifted feature in the cause, and never
checks those captures again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from mlfleet.core.base.errors import SpecError, SpecErrors
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import Settings
from mlfleet.core.controller.service import ControllerContext
from mlfleet.core.pipelines import records, trigger_records
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import load_pipeline_spec
from mlfleet.core.pipelines.trigger_loop import TriggerLoop
from mlfleet.core.pipelines.triggers import (DriftReport, Observations, arm_state, decide, drift_check_due,
                                             drift_window)
from mlfleet.core.store.db import Store
from mlfleet.core.store.rows import rows

UTC = timezone.utc
ARMED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

WATCHED = """\
name: retrain
project: demo
on:
  drift:
    deployment: iris
    reference: {reference}
    every: {every}
steps:
  train:
    job: {{command: [python, train.py], workdir: code}}
    outputs: {{model: out/model.npz, reference: out/reference.csv}}
"""


def write(tmp_path: Path, reference: str = "train.outputs.reference", every: str = "2s") -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(WATCHED.format(reference=reference, every=every))
    return path


def only_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as caught:
        load_pipeline_spec(path)
    found = caught.value.errors if isinstance(caught.value, SpecErrors) else [caught.value]
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


# ------------------------------------------------------------------ the file

def test_reference_and_every_resolve_a_file_beside_the_pipeline_and_a_steps_output(tmp_path: Path) -> None:
    watched = load_pipeline_spec(write(tmp_path))
    assert watched.on.drift is not None
    assert (watched.on.drift.reference, watched.on.drift.every) == ("train.outputs.reference", 2.0)
    beside = load_pipeline_spec(write(tmp_path, reference="data/ref.csv", every="1m30s"))
    assert beside.on.drift is not None
    assert (beside.on.drift.reference, beside.on.drift.every) == (str(tmp_path / "data/ref.csv"), 90.0)
    plain = load_pipeline_spec(write(tmp_path).parent / "pipeline.yaml")
    assert plain.on.drift is not None
    text = (tmp_path / "pipeline.yaml").read_text().replace("    reference: train.outputs.reference\n", "")
    (tmp_path / "pipeline.yaml").write_text(text.replace("    every: 2s\n", ""))
    default = load_pipeline_spec(tmp_path / "pipeline.yaml")
    assert default.on.drift is not None and (default.on.drift.reference, default.on.drift.every) == (None, 300.0)


@pytest.mark.parametrize("reference, every, field, words", [
    ("trian.outputs.reference", "2s", "on.drift.reference", "names no step 'trian'; did you mean 'train'?"),
    ("train.outputs.referense", "2s", "on.drift.reference", "has no output 'referense'; did you mean "
                                                             "train.outputs.reference?"),
    ("train.output.reference", "2s", "on.drift.reference", "did you mean train.outputs.reference?"),
    ("train.outputs.reference", "soon", "on.drift.every", "expected a duration like 90s"),
    ("train.outputs.reference", "0.5s", "on.drift.every", "under 1 s"),
])
def test_each_watch_mistake_is_one_sentence_at_its_line(tmp_path: Path, reference: str, every: str, field: str,
                                                        words: str) -> None:
    error = only_error(write(tmp_path, reference=reference, every=every))
    line = 6 if field.endswith("reference") else 7
    assert (error.line, error.field) == (line, field), str(error)
    assert words in str(error), str(error)


# ------------------------------------------------------------------ the pure decisions

def test_a_check_is_due_every_every_and_only_with_a_reference(tmp_path: Path) -> None:
    on = load_pipeline_spec(write(tmp_path, every="30s")).on
    assert drift_check_due(on, None, ARMED), "never checked: at once"
    assert not drift_check_due(on, ARMED, ARMED + timedelta(seconds=29))
    assert drift_check_due(on, ARMED, ARMED + timedelta(seconds=30))
    text = (tmp_path / "pipeline.yaml").read_text().replace("    reference: train.outputs.reference\n", "")
    (tmp_path / "pipeline.yaml").write_text(text)
    assert not drift_check_due(load_pipeline_spec(tmp_path / "pipeline.yaml").on, None, ARMED), \
        "no reference: the trigger only reads reports others saved"


def test_the_window_starts_after_the_last_firing_or_check_whichever_is_later(tmp_path: Path) -> None:
    watched = load_pipeline_spec(write(tmp_path))
    state = arm_state(watched.on, ARMED)
    assert drift_window(state) == ARMED, "nothing from before the arming"
    state.drift_checked = ARMED + timedelta(minutes=5)
    assert drift_window(state) == ARMED + timedelta(minutes=5)
    report = DriftReport(report_id="d1", created_at=ARMED + timedelta(minutes=6), drifted=True, drifted_columns=1,
                         drifted_features=("petal_length",))
    firings, state = decide(watched, state, Observations(now=ARMED + timedelta(minutes=7), drift=[report]))
    assert [f.cause["drifted_features"] for f in firings] == [["petal_length"]]
    assert state.drift_fired == ARMED + timedelta(minutes=7)
    assert drift_window(state) == ARMED + timedelta(minutes=7), "captures the firing acted on are not read again"
    rearmed = arm_state(watched.on, ARMED + timedelta(hours=1), state)
    assert (rearmed.drift_fired, rearmed.drift_checked) == (state.drift_fired, state.drift_checked), \
        "running the file again neither re-reads nor loses the window"


# ------------------------------------------------------------------ the loop, real store and captures

class Controller:
    """A controller context on a real store, its capture folder, and the runs the loop starts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = Store(root / "mlfleet.duckdb")
        self.ctx = ControllerContext(Home(config_dir=root / "config", data_dir=root / "data-dir"), Settings())
        self.ctx.opened_store = self.store
        self.started: list[tuple[str, str, dict[str, Any]]] = []
        self.files = 0

    async def start_run(self, pipeline: Pipeline, trigger: str, cause: dict[str, Any]) -> str:
        run_id = await self.store.run(records.new_run, pipeline, "controller", trigger, cause)
        self.started.append((run_id, trigger, cause))
        return run_id

    def capture(self, rows_: np.ndarray) -> None:
        """Captured inputs as the controller writes them (core/deploy/capture.py): Parquet under DAY/."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        folder = self.ctx.home.capture_dir / "iris" / day
        folder.mkdir(parents=True, exist_ok=True)
        now_us = int(time.time() * 1_000_000)
        con = duckdb.connect()
        con.execute("create table t (ts timestamp, version integer, replica_id varchar, run_id varchar, "
                    "output varchar, sepal double, petal double)")
        con.executemany("insert into t values (make_timestamp(?), 1, 'r1', 'run1', 'a', ?, ?)",
                        [[now_us + i, float(a), float(b)] for i, (a, b) in enumerate(rows_)])
        self.files += 1
        con.execute(f"copy t to '{folder / f'{self.files:06d}.parquet'}' (format parquet)")
        con.close()

    def reports(self) -> list[dict[str, Any]]:
        return rows(self.store.con, "select report_id, actor, drifted, rows_current from drift_reports "
                                    "order by created_at")


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    made = Controller(tmp_path)
    yield made
    made.store.close()


def normal(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(5.0, 0.5, n), rng.normal(3.0, 0.4, n) + shift])


def test_the_loop_checks_new_captures_itself_fires_on_drift_and_never_reads_them_again(
        controller: Controller, tmp_path: Path) -> None:
    reference = tmp_path / "reference.csv"
    np.savetxt(reference, normal(600, 1), fmt="%.3f", delimiter=",", header="sepal,petal", comments="")
    watched = load_pipeline_spec(write(tmp_path, reference=str(reference), every="1s"))
    trigger_records.arm(controller.store.con, watched, "ana")
    loop = TriggerLoop(controller.ctx, controller.start_run, actor="controller")

    async def tick_and_check(now: datetime) -> list[dict[str, Any]]:
        events = await loop.tick(now)
        await loop.checks_done()
        return events

    async def story() -> None:
        t = datetime.now(UTC)
        assert await tick_and_check(t) == [] and controller.reports() == [], "no captures: no check, no report"
        controller.capture(normal(300, 2))
        assert await tick_and_check(t + timedelta(seconds=0.5)) == [], "not due yet (every: 1s)"
        assert controller.reports() == []
        await tick_and_check(t + timedelta(seconds=1))
        clean = controller.reports()
        assert [(r["actor"], r["drifted"], r["rows_current"]) for r in clean] == [("controller", False, 300)]
        assert await tick_and_check(t + timedelta(seconds=2)) == [], "a clean report fires nothing"
        assert len(controller.reports()) == 1, "the same captures are not checked twice"
        controller.capture(normal(300, 3, shift=1.5))
        await tick_and_check(t + timedelta(seconds=3))
        shifted = controller.reports()[-1]
        assert (shifted["drifted"], shifted["rows_current"]) == (True, 300), "only the window's captures"
        events = await tick_and_check(t + timedelta(seconds=4))
        assert [(e["trigger"], e["outcome"]) for e in events] == [("drift", "started")]
        cause = events[0]["cause"]
        assert (cause["report_id"], cause["drifted_features"], cause["deployment"]) == \
            (shifted["report_id"], ["petal"], "iris")
        for second in (5, 6, 7):
            assert await tick_and_check(t + timedelta(seconds=second)) == []
        assert len(controller.reports()) == 2 and len(controller.started) == 1, \
            "captures acted on never fire again"

    asyncio.run(story())


def test_a_step_output_reference_waits_for_a_run_that_stored_it(controller: Controller, tmp_path: Path) -> None:
    watched = load_pipeline_spec(write(tmp_path, every="1s"))
    trigger_records.arm(controller.store.con, watched, "ana")
    controller.capture(normal(50, 4))
    loop = TriggerLoop(controller.ctx, controller.start_run, actor="controller")

    async def story() -> None:
        await loop.tick()
        await loop.checks_done()

    asyncio.run(story())
    assert controller.reports() == [], "no run of train has stored its reference yet: nothing to compare with"
    assert trigger_records.newest_output(controller.store.con, "demo", "retrain", "train", "reference") is None
