"""Pipeline triggers over a real DuckDB file (the project's migrations) and real files on disk.

Stories: a run of a file with `on:` arms its definition, a second run re-arms it keeping what it
accounted for, a run without `on:` disarms it, and all of it survives reopening the file; each
firing is a row and an audit event with its cause. The trigger loop, given a start_run that records
real pipeline runs in the store: a new data file starts a run, a change while it runs is queued, the
next change is skipped (the queue holds one), the queued one starts when the run ends; a nightly
schedule missed over a downtime fires once; replace cancels the running run; a drifted report of
the watched deployment and an upstream pipeline's success each start a run; a tick replayed after
the controller stopped between starting a run and saving the state starts nothing twice; and a big
data file is read once, over several ticks when the per-tick budget is smaller than it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlfleet.core.audit.records import list_audit
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import Settings
from mlfleet.core.controller.service import ControllerContext
from mlfleet.core.drift import records as drift_records
from mlfleet.core.pipelines import records, trigger_records
from mlfleet.core.pipelines.data_hash import DataHasher
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import load_pipeline_spec
from mlfleet.core.pipelines.trigger_loop import TriggerLoop
from mlfleet.core.pipelines.triggers import Firing
from mlfleet.core.store import schema
from mlfleet.core.store.db import Store

UTC = timezone.utc

SPEC = """\
name: {name}
project: demo
{on}
concurrency: {concurrency}
steps:
  train:
    job: {{command: [python, train.py], workdir: code}}
"""


class Checkout:
    """A pipeline file beside its code and data, a controller context on a real store, and recorded starts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "code").mkdir()
        (root / "data").mkdir()
        (root / "code" / "train.py").write_text("print('train')\n")
        self.store = Store(root / "mlfleet.duckdb")
        self.ctx = ControllerContext(Home(config_dir=root / "config", data_dir=root / "data-dir"), Settings())
        self.ctx.opened_store = self.store
        self.started: list[tuple[str, str, dict[str, Any]]] = []
        self.cancelled: list[tuple[str, str]] = []

    def pipeline(self, on: str, name: str = "retrain", concurrency: str = "queue") -> Pipeline:
        path = self.root / f"{name}.yaml"
        path.write_text(SPEC.format(name=name, on=on, concurrency=concurrency))
        return load_pipeline_spec(path)

    async def start_run(self, pipeline: Pipeline, trigger: str, cause: dict[str, Any]) -> str:
        """The service's seam: record the run as `pipeline run` does (planning is not this test's)."""
        run_id = await self.store.run(records.new_run, pipeline, "controller", trigger, cause)
        self.started.append((run_id, trigger, cause))
        return run_id

    async def cancel_run(self, run_id: str, reason: str) -> None:
        await self.store.run(records.end_run, run_id, "cancelled", reason)
        self.cancelled.append((run_id, reason))

    def loop(self, **options: Any) -> TriggerLoop:
        return TriggerLoop(self.ctx, self.start_run, cancel_run=self.cancel_run, data_interval=0, **options)

    def end(self, run_id: str, state: str = "succeeded") -> None:
        records.end_run(self.store.con, run_id, state)


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Checkout]:
    made = Checkout(tmp_path)
    yield made
    made.store.close()


def tick(loop: TriggerLoop, now: datetime | None = None) -> list[dict[str, Any]]:
    return asyncio.run(loop.tick(now))


def outcomes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["trigger"], e["outcome"]) for e in events]


# ------------------------------------------------------------------ the store

def test_arming_rearming_and_disarming_live_in_the_store_and_survive_reopening(checkout: Checkout) -> None:
    con = checkout.store.con
    assert checkout.store.version == schema.latest_version()
    nightly = checkout.pipeline('on: {schedule: "0 3 * * *", data: [data/*.csv]}')
    armed_at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    definition = trigger_records.arm(con, nightly, "alice", at=armed_at)
    assert definition is not None and definition["armed_by"] == "alice" and definition["armed_at"] == armed_at
    assert definition["pipeline"] == nightly, "the resolved pipeline as armed is what a firing runs"
    state = definition["state"]
    state.data = {"data/a.csv": "1" * 64}
    state.schedule["0 3 * * *"] = datetime(2026, 3, 2, 3, tzinfo=UTC)
    trigger_records.save_state(con, "demo", "retrain", state)

    again = trigger_records.arm(con, nightly, "bob", at=armed_at + timedelta(days=2))
    assert again is not None and again["armed_by"] == "bob"
    assert again["state"].data == {"data/a.csv": "1" * 64}, "re-arming the same globs keeps the baseline"
    assert again["state"].schedule["0 3 * * *"] == datetime(2026, 3, 2, 3, tzinfo=UTC)
    assert again["state"].armed_at == armed_at

    checkout.store.close()
    checkout.store = Store(checkout.root / "mlfleet.duckdb")
    con = checkout.store.con
    [kept] = trigger_records.armed(con)
    assert kept["state"] == again["state"] and kept["pipeline"] == nightly
    view = trigger_records.triggers_view(con, "retrain")
    assert view["armed"][0]["next"] == {"schedule": "2026-03-03T03:00:00+00:00"}
    assert view["armed"][0]["on"]["schedule"] == ["0 3 * * *"] and view["armed"][0]["concurrency"] == "queue"

    plain = checkout.pipeline("")
    assert trigger_records.arm(con, plain, "carol") is None, "the file is the truth: no on: disarms"
    assert trigger_records.armed(con) == []
    actions = [r["action"] for r in list_audit(con) if r["action"].startswith("pipeline.")]
    assert actions == ["pipeline.disarm", "pipeline.rearm", "pipeline.arm"]


def test_each_firing_is_a_row_and_an_audit_event_with_its_cause(checkout: Checkout) -> None:
    con = checkout.store.con
    trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *"}'), "alice")
    firing = Firing(trigger="schedule", cause={"schedule": "0 3 * * *", "due": "2026-03-02T03:00:00+00:00",
                                              "missed": 2}, at=datetime(2026, 3, 2, 3, 0, 5, tzinfo=UTC))
    trigger_records.record_event(con, "demo", "retrain", firing, "skipped", None, "run p1 is still going")
    [event] = trigger_records.events(con, "retrain")
    assert event["outcome"] == "skipped" and event["trigger"] == "schedule" and event["run_id"] is None
    assert event["cause"]["missed"] == 2 and event["cause"]["reason"] == "run p1 is still going"
    [row] = list_audit(con, action="pipeline.trigger")
    assert '"missed": 2' in row["detail"] and row["target"] == "demo/retrain"
    with pytest.raises(ValueError):
        trigger_records.record_event(con, "demo", "retrain", firing, "exploded", None, "")


# ------------------------------------------------------------------ the loop

def test_data_changes_start_queue_and_skip_runs_and_the_queued_one_starts_when_the_run_ends(
        checkout: Checkout) -> None:
    con = checkout.store.con
    (checkout.root / "data" / "a.csv").write_text("x\n1\n")
    trigger_records.arm(con, checkout.pipeline("on: {data: [data/*.csv]}"), "alice")
    loop = checkout.loop()
    assert tick(loop) == [] and checkout.started == [], "the first look is the baseline"
    assert tick(loop) == [], "nothing changed"

    (checkout.root / "data" / "b.csv").write_text("x\n2\n")
    events = tick(loop)
    assert outcomes(events) == [("data", "started")]
    [(first, trigger, cause)] = checkout.started
    assert trigger == "data" and cause["added"] == ["data/b.csv"]
    assert records.get_run(con, first)["cause"]["firing"] == cause["firing"], "the run records the cause"

    (checkout.root / "data" / "a.csv").write_text("x\n3\n")
    assert outcomes(tick(loop)) == [("data", "queued")]
    os.remove(checkout.root / "data" / "b.csv")
    skipped = tick(loop)
    assert outcomes(skipped) == [("data", "skipped")] and "already waits" in skipped[0]["reason"]
    assert len(checkout.started) == 1
    assert tick(loop) == [], "the run still goes: the queued firing waits"

    checkout.end(first)
    resumed = tick(loop)
    assert outcomes(resumed) == [("data", "started")] and "queued_at" in resumed[0]["cause"]
    assert resumed[0]["cause"]["changed"] == ["data/a.csv"], "the queued firing's own cause"
    assert len(checkout.started) == 2

    history = trigger_records.events(con, "retrain")
    assert [h["outcome"] for h in history] == ["started", "skipped", "queued", "started"]
    assert len(list_audit(con, action="pipeline.trigger")) == 4


def test_a_schedule_missed_over_a_downtime_fires_once_and_skip_refuses_while_a_run_goes(checkout: Checkout) -> None:
    con = checkout.store.con
    definition = trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *"}', concurrency="skip"),
                                     "alice")
    assert definition is not None
    armed_at = definition["armed_at"]
    night = (armed_at + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    loop = checkout.loop()
    assert tick(loop, night - timedelta(seconds=1)) == []
    assert outcomes(tick(loop, night + timedelta(days=4, hours=2))) == [("schedule", "started")]
    [(run_id, _, cause)] = checkout.started
    assert cause["missed"] == 4 and cause["due"] == (night + timedelta(days=4)).isoformat()
    skipped = tick(loop, night + timedelta(days=5, minutes=1))
    assert outcomes(skipped) == [("schedule", "skipped")] and run_id in skipped[0]["reason"]
    checkout.end(run_id)
    assert outcomes(tick(loop, night + timedelta(days=6))) == [("schedule", "started")]


def test_replace_cancels_the_running_run_for_the_new_one(checkout: Checkout) -> None:
    con = checkout.store.con
    (checkout.root / "data" / "a.csv").write_text("1\n")
    trigger_records.arm(con, checkout.pipeline("on: {data: [data/]}", concurrency="replace"), "alice")
    loop = checkout.loop()
    tick(loop)
    (checkout.root / "data" / "a.csv").write_text("2\n")
    assert outcomes(tick(loop)) == [("data", "started")]
    (checkout.root / "data" / "sub").mkdir()
    (checkout.root / "data" / "sub" / "b.csv").write_text("3\n")
    replaced = tick(loop)
    assert outcomes(replaced) == [("data", "replaced")]
    first, second = checkout.started[0][0], checkout.started[1][0]
    assert checkout.cancelled[0][0] == first and replaced[0]["run_id"] == second
    assert records.get_run(con, first)["state"] == "cancelled"
    assert replaced[0]["cause"]["cancelled"] == [first] and replaced[0]["cause"]["added"] == ["data/sub/b.csv"]


def test_a_drifted_report_and_an_upstream_success_each_start_a_run(checkout: Checkout) -> None:
    con = checkout.store.con
    trigger_records.arm(con, checkout.pipeline("on: {drift: {deployment: iris}}", name="redrift"), "alice")
    etl = checkout.pipeline("", name="etl")
    trigger_records.arm(con, checkout.pipeline("on: {after: etl}", name="downstream"), "alice")
    loop = checkout.loop()
    assert tick(loop) == []

    report = {"reference": "ref.parquet", "current": "capture/iris", "drifted": False, "drifted_columns": 0,
              "column_count": 4, "compared_columns": 4, "drift_share": 0.0, "drift_share_threshold": 0.5,
              "multiple_testing": "none", "columns": []}
    drift_records.save_report(con, "d-clean", report, "alice", None, "iris")
    drift_records.save_report(con, "d-other", {**report, "drifted": True}, "alice", None, "penguins")
    assert tick(loop) == [], "a clean report, and another deployment's drift, start nothing"
    drift_records.save_report(con, "d-drift", {**report, "drifted": True, "drifted_columns": 3,
                                               "drift_share": 0.75}, "alice", None, "iris")
    etl_run = records.new_run(con, etl, "alice")
    events = tick(loop)
    assert outcomes(events) == [("drift", "started")], "etl has not succeeded yet"
    assert events[0]["cause"]["report_id"] == "d-drift" and events[0]["cause"]["drifted_columns"] == 3
    checkout.end(etl_run)
    events = tick(loop)
    assert outcomes(events) == [("after", "started")] and events[0]["cause"]["run_id"] == etl_run
    assert tick(loop) == [], "each report and each upstream run fires once"


def test_a_tick_replayed_after_a_stop_between_start_and_save_starts_nothing_twice(checkout: Checkout) -> None:
    con = checkout.store.con
    definition = trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *"}'), "alice")
    assert definition is not None
    before = definition["state"]
    night = (definition["armed_at"] + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    loop = checkout.loop()
    assert outcomes(tick(loop, night)) == [("schedule", "started")]
    # the controller stopped after the run was recorded and before the tick's state and events were
    trigger_records.save_state(con, "demo", "retrain", before)
    con.execute("delete from pipeline_trigger_events")
    replay = tick(checkout.loop(), night + timedelta(minutes=1))
    assert outcomes(replay) == [("schedule", "started")] and replay[0]["run_id"] == checkout.started[0][0]
    assert len(checkout.started) == 1
    assert con.execute("select count(*) from pipeline_runs").fetchall()[0][0] == 1


def test_a_start_that_fails_is_a_skipped_firing_with_the_sentence(checkout: Checkout) -> None:
    from mlfleet.core.base.errors import UsageError

    async def refuse(pipeline: Pipeline, trigger: str, cause: dict[str, Any]) -> str:
        raise UsageError("the bundle of step train is 300 MiB, over the 256 MiB cap")

    con = checkout.store.con
    definition = trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *"}'), "alice")
    assert definition is not None
    night = (definition["armed_at"] + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    events = tick(TriggerLoop(checkout.ctx, refuse), night)
    assert outcomes(events) == [("schedule", "skipped")] and "300 MiB" in events[0]["reason"]
    assert tick(TriggerLoop(checkout.ctx, refuse), night + timedelta(minutes=1)) == [], "not retried every tick"


# ------------------------------------------------------------------ data hashing cost

def test_a_big_data_file_is_read_once_and_over_several_ticks_when_the_budget_is_smaller(tmp_path: Path) -> None:
    big = tmp_path / "data" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(1 << 20) * 5)  # 5 MiB
    hasher = DataHasher(max_bytes=2 << 20)
    answers = [hasher.hash_globs(["data/*.bin"], tmp_path) for _ in range(3)]
    assert answers[0] is None and answers[1] is None and answers[2] is not None
    assert hasher.hashed_bytes == 5 << 20, "each byte read once across the three calls"
    import hashlib
    assert answers[2] == {"data/big.bin": hashlib.sha256(big.read_bytes()).hexdigest()}
    assert hasher.hash_globs(["data/*.bin"], tmp_path) == answers[2] and hasher.hashed_bytes == 5 << 20
    with big.open("r+b") as fh:
        fh.write(b"changed")
    os.utime(big, ns=(big.stat().st_atime_ns, big.stat().st_mtime_ns + 1_000_000))
    while (found := hasher.hash_globs(["data/*.bin"], tmp_path)) is None:
        pass
    assert found != answers[2] and hasher.hashed_bytes == 10 << 20


def test_a_glob_matching_too_many_files_is_cut_and_says_so(tmp_path: Path) -> None:
    for i in range(30):
        (tmp_path / f"f{i:02}.csv").write_text(str(i))
    found = DataHasher(max_files=10).hash_globs([str(tmp_path / "*.csv")], None)
    assert found is not None and len(found) == 11 and any("more files" in k for k in found)
    assert DataHasher().hash_globs(["*.csv"], None) == {}, "a relative glob with no file to read it from"


def test_firing_state_round_trips_through_the_store(checkout: Checkout) -> None:
    """A queued firing (datetimes, nested cause) is kept exactly."""
    con = checkout.store.con
    definition = trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *"}'), "alice")
    assert definition is not None
    state = definition["state"]
    state.queued = Firing(trigger="data", cause={"added": ["a"], "n": {"x": 1}}, at=datetime(2026, 3, 2, tzinfo=UTC))
    trigger_records.save_state(con, "demo", "retrain", state)
    assert trigger_records.load_state(con, "demo", "retrain") == state
    assert msgspec.to_builtins(state)["queued"]["trigger"] == "data"


def test_a_pipeline_disarmed_and_armed_anew_still_fires_after_its_first_arming_fired(checkout: Checkout) -> None:
    """Firing keys carry the arming's time: the new arming's first firing is not taken for the old one's run."""
    con = checkout.store.con
    nightly = checkout.pipeline('on: {schedule: "0 3 * * *"}')
    first = trigger_records.arm(con, nightly, "alice", at=datetime(2026, 3, 1, 12, tzinfo=UTC))
    assert first is not None
    loop = checkout.loop()
    assert outcomes(tick(loop, datetime(2026, 3, 2, 3, tzinfo=UTC))) == [("schedule", "started")]
    checkout.end(checkout.started[0][0])
    trigger_records.disarm(con, "demo", "retrain", "alice")
    trigger_records.arm(con, nightly, "alice", at=datetime(2026, 3, 2, 12, tzinfo=UTC))
    events = tick(loop, datetime(2026, 3, 3, 3, tzinfo=UTC))
    assert outcomes(events) == [("schedule", "started")] and len(checkout.started) == 2
    assert events[0]["run_id"] == checkout.started[1][0]


def test_arming_refuses_an_after_loop_through_other_armed_pipelines(checkout: Checkout) -> None:
    from mlfleet.core.base.errors import UsageError

    con = checkout.store.con
    trigger_records.arm(con, checkout.pipeline("on: {after: b}", name="a"), "alice")
    trigger_records.arm(con, checkout.pipeline("on: {after: c}", name="b"), "alice")
    with pytest.raises(UsageError, match=r"loop of after: in project 'demo' \(\w after \w, \w after \w, \w after \w\)"):
        trigger_records.arm(con, checkout.pipeline("on: {after: a}", name="c"), "alice")
    assert [d["name"] for d in trigger_records.armed(con)] == ["a", "b"], "nothing armed by the refusal"
    trigger_records.arm(con, checkout.pipeline('on: {schedule: "@daily"}', name="c"), "alice")


def test_its_own_drift_steps_report_never_fires_a_pipelines_drift_trigger(checkout: Checkout) -> None:
    con = checkout.store.con
    watched = checkout.pipeline("on: {drift: {deployment: iris}}")
    trigger_records.arm(con, watched, "alice")
    own_run = records.new_run(con, watched, "alice")
    report = {"reference": "ref.parquet", "current": "capture/iris", "drifted": True, "drifted_columns": 2,
              "column_count": 4, "compared_columns": 4, "drift_share": 0.5, "drift_share_threshold": 0.5,
              "multiple_testing": "none", "columns": []}
    drift_records.save_report(con, "d-own", report, trigger_records.report_actor(own_run), None, "iris")
    records.end_run(con, own_run, "succeeded")
    loop = checkout.loop()
    assert tick(loop) == []
    drift_records.save_report(con, "d-user", report, "alice", None, "iris")
    assert outcomes(tick(loop)) == [("drift", "started")]


def test_a_definition_whose_spec_no_longer_reads_is_listed_with_why_and_skipped(checkout: Checkout) -> None:
    con = checkout.store.con
    trigger_records.arm(con, checkout.pipeline('on: {schedule: "* * * * *"}'), "alice")
    con.execute("""update pipeline_definitions set spec = '{"name": "retrain"}'""")
    [broken] = trigger_records.triggers_view(con)["armed"]
    assert "no longer reads" in broken["problem"] and "re-arm" in broken["problem"]
    assert tick(checkout.loop(), datetime.now(UTC) + timedelta(hours=1)) == [] and checkout.started == []


def test_a_tick_with_nothing_due_writes_nothing(checkout: Checkout) -> None:
    con = checkout.store.con
    definition = trigger_records.arm(con, checkout.pipeline('on: {schedule: "0 3 * * *", after: etl}'), "alice")
    assert definition is not None
    writes: list[object] = []
    checkout.store.after_write.append(writes.append)
    loop = checkout.loop()
    for minutes in range(3):
        assert tick(loop, definition["armed_at"] + timedelta(minutes=minutes)) == []
    assert writes == [], "the controller ticks every second: an idle definition costs reads only"


def test_a_file_rerun_while_a_tick_starts_a_run_keeps_the_rearmed_state(checkout: Checkout) -> None:
    con = checkout.store.con
    nightly = checkout.pipeline('on: {schedule: "0 3 * * *"}')
    definition = trigger_records.arm(con, nightly, "alice")
    assert definition is not None
    twice = checkout.pipeline('on: {schedule: ["0 3 * * *", "0 15 * * *"]}')

    async def start_and_rearm(pipeline: Pipeline, trigger: str, cause: dict[str, Any]) -> str:
        run_id = await checkout.start_run(pipeline, trigger, cause)
        await checkout.store.run(trigger_records.arm, twice, "bob", definition["armed_at"] + timedelta(hours=20))
        return run_id

    night = (definition["armed_at"] + timedelta(days=1)).replace(hour=3, minute=0, second=0, microsecond=0)
    events = tick(TriggerLoop(checkout.ctx, start_and_rearm), night)
    assert outcomes(events) == [("schedule", "started")]
    [kept] = trigger_records.armed(con)
    assert set(kept["state"].schedule) == {"0 3 * * *", "0 15 * * *"}, "the re-arm's state, not the tick's"
    assert [e["outcome"] for e in trigger_records.events(con)] == ["started"]
    replay = tick(checkout.loop(), night + timedelta(minutes=1))
    assert outcomes(replay) == [("schedule", "started")] and replay[0]["run_id"] == events[0]["run_id"]
    assert len(checkout.started) == 1, "the due time the re-arm kept finds its run by its key"


def test_a_change_seen_in_the_tick_the_queued_run_starts_is_covered_by_it(checkout: Checkout) -> None:
    con = checkout.store.con
    (checkout.root / "data" / "a.csv").write_text("1\n")
    trigger_records.arm(con, checkout.pipeline("on: {data: [data/*.csv]}"), "alice")
    loop = checkout.loop()
    tick(loop)
    (checkout.root / "data" / "a.csv").write_text("2\n")
    assert outcomes(tick(loop)) == [("data", "started")]
    (checkout.root / "data" / "a.csv").write_text("3\n")
    assert outcomes(tick(loop)) == [("data", "queued")]
    checkout.end(checkout.started[0][0])
    (checkout.root / "data" / "a.csv").write_text("4\n")
    events = tick(loop)
    assert outcomes(events) == [("data", "started"), ("data", "skipped")]
    assert "covers it" in events[1]["reason"] and len(checkout.started) == 2
    assert trigger_records.load_state(con, "demo", "retrain").queued is None, "nothing left waiting"
