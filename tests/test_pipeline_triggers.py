"""When an armed pipeline's `on:` fires (core/pipelines/triggers.py, pure) and what `concurrency:` does with it.

Stories: a nightly schedule fires once a night, once (with the count) after a week-long controller
downtime, and never for nights before it was armed; Vixie's day-of-month/day-of-week rules hold;
a data glob's first look is a baseline, a changed, added or removed file fires once and an unchanged
one never; a drifted report of the watched deployment fires, a clean one or an old one does not; each
newly succeeded upstream run fires, the pipeline's own runs never; re-arming keeps what was accounted
for; and queue/replace/skip admit as documented, a queue holding one waiting firing.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mlfleet.core.pipelines.cron import cron_problem, next_time, previous_time
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import validate_pipeline_spec
from mlfleet.core.pipelines.triggers import (DriftReport, Firing, Mark, Observations, SucceededRun, admit,
                                             arm_state, data_digest, decide, next_due)

UTC = timezone.utc
ARMED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def pipeline(on: dict[str, Any], name: str = "retrain", concurrency: str = "queue") -> Pipeline:
    return validate_pipeline_spec({"name": name, "project": "demo", "on": on, "concurrency": concurrency,
                                   "steps": {"a": {"job": {"command": ["python", "a.py"], "workdir": "."}}}},
                                  Path("/tmp"))


# ------------------------------------------------------------------ cron

def test_next_time_is_utc_vixie_cron() -> None:
    assert next_time("0 3 * * *", at(1, 12)) == at(2, 3)
    assert next_time("0 3 * * *", at(2, 3)) == at(3, 3), "strictly after: a due time is not due again"
    assert next_time("@daily", at(1, 12)) == at(2) == next_time("@midnight", at(1, 12))
    assert next_time("*/15 * * * *", at(1, 12, 1)) == at(1, 12, 15)
    # both day fields restricted: OR (the 13th, or any Friday); 2026-03-06 is a Friday
    assert next_time("0 0 13 * fri", at(1)) == at(6)
    # a day field starting with '*' makes them AND, as Vixie/ISC cron do: Mondays of odd dates
    assert next_time("0 0 */2 * 1", at(1)) == at(9), "2026-03-02 (even) and 03-07 (Saturday) do not count"
    assert next_time("0 0 * * 7", at(1)) == at(8), "7 is Sunday too"
    # a naive time is read as UTC; an aware one in another zone is the same instant
    assert next_time("0 3 * * *", datetime(2026, 3, 1, 12)) == at(2, 3)
    plus2 = timezone(timedelta(hours=2))
    assert next_time("0 3 * * *", datetime(2026, 3, 2, 4, 30, tzinfo=plus2)) == at(2, 3)
    # leap day: only in leap years
    assert next_time("0 0 29 2 *", at(1)) == datetime(2028, 2, 29, tzinfo=UTC)
    assert previous_time("0 3 * * *", at(2, 3)) == at(2, 3), "at or before"
    assert previous_time("0 3 * * *", at(2, 2, 59)) == at(1, 3)
    assert cron_problem("0 3 * * *") is None and "not 5" in (cron_problem("0 3 * *") or "")


# ------------------------------------------------------------------ schedule

def test_a_schedule_fires_once_per_due_time_and_never_for_times_before_arming() -> None:
    nightly = pipeline({"schedule": "0 3 * * *"})
    state = arm_state(nightly.on, ARMED)
    firings, state = decide(nightly, state, Observations(now=at(2, 2, 59)))
    assert firings == [], "03:00 of the day it was armed (before arming) and of tomorrow (not yet) fire nothing"
    firings, state = decide(nightly, state, Observations(now=at(2, 3, 0)))
    assert [f.trigger for f in firings] == ["schedule"]
    assert firings[0].cause["due"] == at(2, 3).isoformat() and firings[0].cause["missed"] == 0
    assert firings[0].cause["firing"].endswith(".1:schedule") and state.version == 1
    again, state = decide(nightly, state, Observations(now=at(2, 3, 1)))
    assert again == [] and state.version == 1, "the same due time never fires twice"
    assert next_due(nightly.on, state) == at(3, 3)


def test_after_a_downtime_that_missed_several_nights_a_schedule_fires_once_and_says_how_many() -> None:
    nightly = pipeline({"schedule": "0 3 * * *"})
    state = arm_state(nightly.on, ARMED)
    _, state = decide(nightly, state, Observations(now=at(2, 3)))
    firings, state = decide(nightly, state, Observations(now=at(9, 10)))  # down from the 2nd to the 9th
    assert len(firings) == 1
    cause = firings[0].cause
    assert cause["due"] == at(9, 3).isoformat() and cause["missed"] == 6 and cause["first_missed"] == at(3, 3).isoformat()
    assert state.schedule["0 3 * * *"] == at(9, 3)
    assert decide(nightly, state, Observations(now=at(9, 11)))[0] == []


def test_a_minutely_schedule_down_for_a_year_counts_at_least_its_cap_and_fires_once() -> None:
    every = pipeline({"schedule": "* * * * *"})
    state = arm_state(every.on, ARMED)
    firings, state = decide(every, state, Observations(now=ARMED + timedelta(days=365, seconds=30)))
    assert len(firings) == 1 and firings[0].cause["missed_at_least"] is True
    assert firings[0].cause["missed"] >= 9_999
    assert state.schedule["* * * * *"] == ARMED + timedelta(days=365), "accounted up to the last due time"


def test_two_schedules_due_in_one_tick_make_one_firing_that_names_both() -> None:
    both = pipeline({"schedule": ["0 3 * * *", "0 * * * *"]})
    state = arm_state(both.on, ARMED)
    firings, _ = decide(both, state, Observations(now=at(2, 3, 5)))
    assert len(firings) == 1
    assert firings[0].cause["due"] == at(2, 3).isoformat()
    assert {firings[0].cause["schedule"], firings[0].cause["also"][0]["schedule"]} == {"0 3 * * *", "0 * * * *"}


# ------------------------------------------------------------------ data

def test_data_first_look_is_a_baseline_then_each_change_fires_once() -> None:
    fed = pipeline({"data": ["data/*.csv"]})
    state = arm_state(fed.on, ARMED)
    files = {"data/a.csv": "1" * 64, "data/b.csv": "2" * 64}
    firings, state = decide(fed, state, Observations(now=at(2), data=files))
    assert firings == [] and state.data == files, "arming is not a change of the data"
    firings, state = decide(fed, state, Observations(now=at(2, 1), data=dict(files)))
    assert firings == [], "the same content fires nothing"
    firings, state = decide(fed, state, Observations(now=at(2, 2), data=None))
    assert firings == [] and state.data == files, "not hashed this tick: no decision, the baseline stays"
    changed = {"data/a.csv": "1" * 64, "data/b.csv": "3" * 64, "data/c.csv": "4" * 64}
    firings, state = decide(fed, state, Observations(now=at(2, 3), data=changed))
    assert [f.trigger for f in firings] == ["data"]
    cause = firings[0].cause
    assert cause["changed"] == ["data/b.csv"] and cause["added"] == ["data/c.csv"] and "removed" not in cause
    assert cause["digest"] == data_digest(changed) and cause["previous"] == data_digest(files)
    firings, state = decide(fed, state, Observations(now=at(2, 4), data={"data/a.csv": "1" * 64}))
    assert firings[0].cause["removed"] == ["data/b.csv", "data/c.csv"]
    assert firings[0].cause["firing"].endswith(f".{state.version}:data")


def test_a_data_change_of_many_files_lists_twenty_and_counts_the_rest() -> None:
    fed = pipeline({"data": ["data/"]})
    state = arm_state(fed.on, ARMED)
    _, state = decide(fed, state, Observations(now=at(2), data={}))
    firings, _ = decide(fed, state, Observations(now=at(2, 1), data={f"data/{i:03}": "0" * 64 for i in range(50)}))
    assert len(firings[0].cause["added"]) == 20 and firings[0].cause["added_count"] == 50


# ------------------------------------------------------------------ drift

def test_drift_fires_on_a_new_drifted_report_only() -> None:
    watched = pipeline({"drift": {"deployment": "iris"}})
    state = arm_state(watched.on, ARMED)
    old = DriftReport(report_id="d-old", created_at=ARMED - timedelta(hours=1), drifted=True, drifted_columns=3)
    clean = DriftReport(report_id="d-clean", created_at=at(2), drifted=False)
    firings, state = decide(watched, state, Observations(now=at(2, 1), drift=[old, clean]))
    assert firings == [], "a drifted report from before arming and a clean one fire nothing"
    assert state.drift == Mark(at=at(2), id="d-clean")
    drifted = [DriftReport(report_id="d-1", created_at=at(3), drifted=True, drifted_columns=2, drift_share=0.5),
               DriftReport(report_id="d-2", created_at=at(3, 1), drifted=True, drifted_columns=4, drift_share=0.8)]
    firings, state = decide(watched, state, Observations(now=at(3, 2), drift=[clean] + drifted))
    assert [f.trigger for f in firings] == ["drift"]
    cause = firings[0].cause
    assert (cause["report_id"], cause["drifted_reports"], cause["deployment"], cause["drifted_columns"]) == (
        "d-2", 2, "iris", 4), "the newest of the two drifted reports, and how many there were"
    again, state = decide(watched, state, Observations(now=at(3, 3), drift=drifted))
    assert again == [], "a report read once never fires again"
    own = DriftReport(report_id="d-own", created_at=at(4), drifted=True, made_by="demo/retrain")
    others = DriftReport(report_id="d-others", created_at=at(4, 1), drifted=True, made_by="demo/monitor")
    firings, state = decide(watched, state, Observations(now=at(4, 2), drift=[own]))
    assert firings == [] and state.drift == Mark(at=at(4), id="d-own"), "its own drift step's report: read, not fired on"
    firings, state = decide(watched, state, Observations(now=at(4, 2), drift=[others]))
    assert [f.cause["report_id"] for f in firings] == ["d-others"], "another pipeline's check is a cause like any"


# ------------------------------------------------------------------ after

def test_after_fires_on_each_newly_succeeded_upstream_run_and_never_on_its_own() -> None:
    downstream = pipeline({"after": ["etl", "features"]})
    state = arm_state(downstream.on, ARMED)
    runs = [SucceededRun(name="etl", run_id="p-before", ended_at=ARMED - timedelta(minutes=5)),
            SucceededRun(name="etl", run_id="p1", ended_at=at(2)),
            SucceededRun(name="features", run_id="p2", ended_at=at(2, 1)),
            SucceededRun(name="retrain", run_id="p-self", ended_at=at(2, 2)),
            SucceededRun(name="other", run_id="p-other", ended_at=at(2, 2))]
    firings, state = decide(downstream, state, Observations(now=at(2, 3), succeeded=runs))
    assert [(f.trigger, f.cause["run_id"]) for f in firings] == [("after", "p1"), ("after", "p2")]
    assert firings[0].cause["firing"] != firings[1].cause["firing"]
    assert decide(downstream, state, Observations(now=at(2, 4), succeeded=runs))[0] == []


def test_a_definition_naming_itself_in_after_never_fires_itself() -> None:
    """The spec check refuses it; a definition that came another way is refused again by decide."""
    with pytest.raises(Exception, match="itself"):
        pipeline({"after": "retrain"})
    sneaky = msgspec.structs.replace(pipeline({"after": "etl"}),
                                     on=msgspec.structs.replace(pipeline({"after": "etl"}).on, after=["retrain"]))
    state = arm_state(sneaky.on, ARMED)
    firings, _ = decide(sneaky, state, Observations(now=at(2), succeeded=[
        SucceededRun(name="retrain", run_id="p-self", ended_at=at(1, 13))]))
    assert firings == []


# ------------------------------------------------------------------ re-arming

def test_rearming_keeps_what_unchanged_triggers_accounted_for() -> None:
    first = pipeline({"schedule": "0 3 * * *", "data": ["data/*.csv"], "drift": {"deployment": "iris"}})
    state = arm_state(first.on, ARMED)
    _, state = decide(first, state, Observations(now=at(2, 4), data={"data/a.csv": "1" * 64},
                                                  drift=[DriftReport(report_id="d1", created_at=at(2), drifted=False)]))
    same = arm_state(first.on, at(2, 5), state)
    assert same.schedule == state.schedule and same.data == state.data and same.drift == state.drift
    assert same.armed_at == ARMED
    changed = pipeline({"schedule": ["0 3 * * *", "0 12 * * *"], "data": ["data/*.parquet"],
                        "drift": {"deployment": "penguins"}})
    moved = arm_state(changed.on, at(2, 5), state)
    assert moved.schedule == {"0 3 * * *": at(2, 3), "0 12 * * *": at(2, 5)}
    assert moved.data is None, "other globs: a new baseline"
    assert moved.drift == Mark(at=at(2, 5)), "another deployment: read from now"


# ------------------------------------------------------------------ concurrency

FIRING = Firing(trigger="schedule", cause={"due": "x"}, at=ARMED)


def test_admit_starts_when_nothing_runs_whatever_the_policy() -> None:
    for policy in ("queue", "replace", "skip"):
        admission = admit(policy, [], 0, FIRING)
        assert admission.outcome == "started" and admission.cancel == []


def test_admit_queue_holds_one_waiting_firing() -> None:
    assert admit("queue", ["p1"], 0, FIRING).outcome == "queued"
    second = admit("queue", ["p1"], 1, FIRING)
    assert second.outcome == "skipped" and "already waits" in second.reason


def test_admit_replace_cancels_what_runs_and_skip_skips() -> None:
    replaced = admit("replace", ["p1", "p2"], 0, FIRING)
    assert replaced.outcome == "replaced" and replaced.cancel == ["p1", "p2"]
    skipped = admit("skip", ["p1"], 0, FIRING)
    assert skipped.outcome == "skipped" and skipped.cancel == [] and "p1" in skipped.reason
