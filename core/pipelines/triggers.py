"""When an armed pipeline's ``on:`` fires, and what ``concurrency:`` does with a firing (pure).

:func:`decide` reads an armed :class:`Pipeline`, its :class:`TriggerState`
(what the triggers have already accounted for) and :class:`Observations`
(the time, the data's hashes, new drift reports, other pipelines' succeeded
runs) and answers the firings due and the state after them. :func:`admit`
says what a firing does given the runs of the pipeline still going. No I/O,
no clock: core/pipelines/trigger_loop.py observes, asks, and acts.

The rules, each chosen so that a trigger never starts work twice for one
cause nor loses one:

* **schedule**: once per due time. After a controller downtime that missed
  several due times it fires *once*, and the cause says how many were
  missed: ten retrains queued behind each other for ten missed nights
  would all train on the same data. Times are UTC (core/pipelines/cron.py).
* **data**: when the content of what the globs match changed (a file
  added, removed or changed). The first observation after arming is the
  baseline and fires nothing: arming is not a change of the data.
* **drift**: on a drift report of the deployment newer than the last one
  seen that says drifted; several new drifted reports make one firing
  (the newest), the cause counts them. A report this pipeline's own drift
  step made is read but never fires it: a retrain whose check still sees
  drift would otherwise start itself again, forever.
* **drift watch** (``on: drift:`` with ``reference:``): the controller
  checks the deployment's captures itself, at most every ``every``
  (:func:`drift_check_due`), over the captures since the later of the
  trigger's last firing and its last check (:func:`drift_window`), so
  captures already checked or acted on never fire again. Its report is
  saved like anyone's and fires through the rule above.
* **after**: on each newly succeeded run of a named pipeline of the same
  project (names are a project's). A pipeline never fires itself: the spec
  check refuses ``after:`` naming it, :func:`decide` ignores it again
  for a definition that came another way, and arming refuses a loop
  through other armed pipelines (trigger_records.arm).

Every tick starts from the arming time, never from the past: a schedule, a
drift report or an upstream run from before the pipeline was armed fires
nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import msgspec
from mlfleet.core.pipelines.cron import next_time, previous_time
from mlfleet.core.pipelines.models import Concurrency, Pipeline, Triggers

TriggerName = Literal["schedule", "data", "drift", "after"]
Outcome = Literal["started", "queued", "replaced", "skipped"]
MAX_MISSED_COUNT = 10_000  # due times counted one by one after a downtime; past it the cause says "at least"
MAX_LISTED = 20  # paths named per kind (added, removed, changed) in a data firing's cause


class Mark(msgspec.Struct, frozen=True, kw_only=True):
    """How far a stream (drift reports, an upstream pipeline's runs) has been read: its newest (time, id)."""

    at: datetime
    id: str = ""  # "": nothing of that time read yet (the arming time)

    def before(self, at: datetime, ident: str) -> bool:
        """Whether the item (``at``, ``ident``) is newer than this mark."""
        return (at, ident) > (self.at, self.id)


class Firing(msgspec.Struct, frozen=True, kw_only=True):
    """One trigger that fired: which, why (``cause``, what the run records and the audit row holds), when."""

    trigger: TriggerName
    cause: dict[str, Any]
    at: datetime


class TriggerState(msgspec.Struct, kw_only=True):
    """What an armed definition's triggers have accounted for; saved after every tick that changed it.

    ``version`` grows by one with each tick that fired: a firing's key is
    ``ARMED_US.VERSION:TRIGGER[:RUN]`` (in its cause as ``firing``), so a controller
    that started a run and stopped before saving the state finds that run
    by its key and does not start it again.
    """

    armed_at: datetime
    version: int = 0
    schedule: dict[str, datetime] = msgspec.field(default_factory=dict)  # expr -> last due time accounted for
    data_globs: list[str] = msgspec.field(default_factory=list)  # what ``data`` is the baseline of
    data: dict[str, str] | None = None  # path -> sha256 of what the globs matched; None: no baseline yet
    drift_deployment: str | None = None
    drift: Mark | None = None  # the newest report of drift_deployment read
    after: dict[str, Mark] = msgspec.field(default_factory=dict)  # upstream pipeline -> its newest succeeded run read
    queued: Firing | None = None  # the one firing waiting for a running run to end (concurrency: queue)
    drift_fired: datetime | None = None  # when the drift trigger last fired
    drift_checked: datetime | None = None  # the watch's window start after its last check (past the newest capture read)


class DriftReport(msgspec.Struct, frozen=True, kw_only=True):
    """A drift report of the deployment a drift trigger watches (core/drift/records.py's drift_reports row)."""

    report_id: str
    created_at: datetime
    drifted: bool
    drifted_columns: int = 0
    drift_share: float = 0.0
    made_by: str | None = None  # PROJECT/NAME of the pipeline whose drift step saved it, if one did
    drifted_features: tuple[str, ...] = ()  # the columns it found drifted, in the report's order


class SucceededRun(msgspec.Struct, frozen=True, kw_only=True):
    """A succeeded run of a pipeline an ``after:`` names."""

    name: str
    run_id: str
    ended_at: datetime


class Observations(msgspec.Struct, frozen=True, kw_only=True):
    """What the loop saw this tick. ``data`` None: not hashed this tick (busy, or not due): no decision on data."""

    now: datetime
    data: dict[str, str] | None = None
    drift: list[DriftReport] = msgspec.field(default_factory=list)
    succeeded: list[SucceededRun] = msgspec.field(default_factory=list)


class Admission(msgspec.Struct, frozen=True, kw_only=True):
    """What a firing does: start a run, wait, replace the running ones (``cancel``) or nothing; and why."""

    outcome: Outcome
    reason: str
    cancel: list[str] = msgspec.field(default_factory=list)


# ------------------------------------------------------------------ arming

def has_triggers(on: Triggers) -> bool:
    return bool(on.schedule or on.data or on.drift or on.after)


def arm_state(on: Triggers, now: datetime, old: TriggerState | None = None) -> TriggerState:
    """The state of a definition armed (or re-armed) at ``now``.

    Re-arming keeps what the unchanged triggers accounted for (a schedule's
    last due time, the data baseline when the globs are the same, the marks
    of the same deployment and upstreams), so running the file again neither
    re-fires nor loses a firing; a new trigger starts from ``now``.
    """
    old_schedule = old.schedule if old else {}
    same_data = old is not None and old.data_globs == list(on.data)
    deployment = on.drift.deployment if on.drift else None
    same_drift = old is not None and old.drift_deployment == deployment and old.drift is not None
    return TriggerState(
        armed_at=old.armed_at if old else now,
        version=old.version if old else 0,
        schedule={expr: old_schedule.get(expr, now) for expr in on.schedule},
        data_globs=list(on.data),
        data=old.data if same_data and old is not None else None,
        drift_deployment=deployment,
        drift=(old.drift if same_drift and old is not None else Mark(at=now)) if deployment else None,
        after={name: (old.after.get(name) if old else None) or Mark(at=now) for name in on.after},
        queued=old.queued if old else None,
        drift_fired=old.drift_fired if same_drift and old is not None else None,
        drift_checked=old.drift_checked if same_drift and old is not None else None)


def drift_check_due(on: Triggers, last_check: datetime | None, now: datetime) -> bool:
    """Whether the drift watch (``on: drift:`` with ``reference:``) checks now: never before ``every`` has passed
    since the last attempt (``last_check``; None: none yet, so at once)."""
    if on.drift is None or on.drift.reference is None:
        return False
    if last_check is None:
        return True
    return (now - last_check).total_seconds() >= float(on.drift.every)


def drift_window(state: TriggerState) -> datetime:
    """Where the watch's next check starts reading captures: the latest of the arming, the trigger's last firing
    and the end of its last check. Captures before it were checked or acted on already; reading them again could
    fire a second retrain for the drift the first one answered."""
    return max(t for t in (state.armed_at, state.drift_fired, state.drift_checked) if t is not None)


def next_due(on: Triggers, state: TriggerState) -> datetime | None:
    """The next time a schedule is due (a missed one not fired yet counts: it fires on the next tick)."""
    times = [next_time(expr, state.schedule.get(expr, state.armed_at)) for expr in on.schedule]
    return min(times) if times else None


# ------------------------------------------------------------------ deciding

def decide(pipeline: Pipeline, state: TriggerState,
           seen: Observations) -> tuple[list[Firing], TriggerState]:
    """The firings due now, in the order schedule, data, drift, after; and the state that accounts for them."""
    new = msgspec.structs.replace(state, schedule=dict(state.schedule), after=dict(state.after))
    firings: list[Firing] = []
    version = f"{firing_epoch(state)}.{state.version + 1}"  # of the state once these firings are saved
    on = pipeline.on
    schedule = _schedule(on.schedule, new, seen.now)
    if schedule is not None:
        firings.append(Firing(trigger="schedule", cause={**schedule, "firing": f"{version}:schedule"}, at=seen.now))
    if on.data and seen.data is not None:
        if new.data is not None and new.data != seen.data:
            cause = data_change(new.data, seen.data)
            firings.append(Firing(trigger="data", cause={**cause, "firing": f"{version}:data"}, at=seen.now))
        new.data = dict(seen.data)
    if on.drift is not None and new.drift is not None:
        drifted: list[DriftReport] = []
        for report in sorted(seen.drift, key=lambda r: (r.created_at, r.report_id)):
            if new.drift.before(report.created_at, report.report_id):
                new.drift = Mark(at=report.created_at, id=report.report_id)
                if report.drifted and report.made_by != f"{pipeline.project}/{pipeline.name}":
                    drifted.append(report)
        if drifted:
            last = drifted[-1]
            new.drift_fired = seen.now
            firings.append(Firing(trigger="drift", at=seen.now, cause={
                "deployment": on.drift.deployment, "report_id": last.report_id,
                "report_at": last.created_at.isoformat(), "drifted_columns": last.drifted_columns,
                "drifted_features": list(last.drifted_features[:MAX_LISTED]),
                "drift_share": last.drift_share, "drifted_reports": len(drifted), "firing": f"{version}:drift"}))
    for run in sorted(seen.succeeded, key=lambda r: (r.ended_at, r.run_id)):
        if run.name == pipeline.name or run.name not in on.after:  # never itself, only what it names
            continue
        mark = new.after.get(run.name) or Mark(at=state.armed_at)
        if mark.before(run.ended_at, run.run_id):
            new.after[run.name] = Mark(at=run.ended_at, id=run.run_id)
            firings.append(Firing(trigger="after", at=seen.now, cause={
                "pipeline": run.name, "run_id": run.run_id, "ended_at": run.ended_at.isoformat(),
                "firing": f"{version}:after:{run.run_id}"}))
    if firings:
        new.version = state.version + 1
    return firings, new


def firing_epoch(state: TriggerState) -> int:
    """The arming's time in microseconds: a definition disarmed and armed anew restarts its versions at 0,
    and its firing keys must not match the runs of the earlier arming."""
    return (state.armed_at - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def _schedule(exprs: list[str], state: TriggerState, now: datetime) -> dict[str, Any] | None:
    """The schedule's cause when any expression is due by ``now`` (state moved past it), else None."""
    due: list[dict[str, Any]] = []
    for expr in exprs:
        since = state.schedule.get(expr, now)
        first = next_time(expr, since)
        if first > now:
            state.schedule[expr] = since
            continue
        count, last, capped = 1, first, False
        while True:
            following = next_time(expr, last)
            if following > now:
                break
            if count >= MAX_MISSED_COUNT:
                last, capped = previous_time(expr, now), True
                break
            count, last = count + 1, following
        state.schedule[expr] = last
        entry: dict[str, Any] = {"schedule": expr, "due": last.isoformat(), "missed": count - 1}
        if count > 1:
            entry["first_missed"] = first.isoformat()
        if capped:
            entry["missed_at_least"] = True
        due.append(entry)
    if not due:
        return None
    due.sort(key=lambda e: e["due"], reverse=True)
    cause = dict(due[0])
    if len(due) > 1:
        cause["also"] = due[1:]
    return cause


def data_digest(hashes: dict[str, str]) -> str:
    """One sha256 over what the globs matched: ``PATH\\0SHA256\\n`` per file, sorted by path."""
    h = hashlib.sha256()
    for path in sorted(hashes):
        h.update(f"{path}\0{hashes[path]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def data_change(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    """A data firing's cause: what was added, removed and changed (up to MAX_LISTED each) and the new digest."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(after) & set(before) if after[p] != before[p])
    cause: dict[str, Any] = {"files": len(after), "digest": data_digest(after), "previous": data_digest(before)}
    for label, paths in (("added", added), ("removed", removed), ("changed", changed)):
        if paths:
            cause[label] = paths[:MAX_LISTED]
            if len(paths) > MAX_LISTED:
                cause[f"{label}_count"] = len(paths)
    return cause


# ------------------------------------------------------------------ concurrency

def admit(concurrency: Concurrency, running: list[str], queued: int, firing: Firing) -> Admission:
    """What ``firing`` does while ``running`` (run ids of this pipeline) go and ``queued`` firings wait.

    ``queue`` holds at most one waiting firing per pipeline: a run started
    from the queue reads the data, the schedule's day and the upstream
    outputs as they are when it starts, so a second waiting firing would
    only run the same thing again; a burst of data changes during a long
    run makes one follow-up run, not one per change.
    """
    if not running:
        return Admission(outcome="started", reason=f"the {firing.trigger} trigger fired and no run was going")
    going = ", ".join(running)
    if concurrency == "skip":
        return Admission(outcome="skipped", reason=f"run {going} is still going (concurrency: skip)")
    if concurrency == "replace":
        return Admission(outcome="replaced", cancel=list(running),
                         reason=f"run {going} is cancelled for a new one (concurrency: replace)")
    if queued:
        return Admission(outcome="skipped", reason=f"a run already waits for {going} to end and will see this too "
                                                   "(concurrency: queue holds one)")
    return Admission(outcome="queued", reason=f"waits for run {going} to end (concurrency: queue)")
