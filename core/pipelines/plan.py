"""Which steps of a run are cached, which run, which wait: the planner, pure.

Given the resolved pipeline, the measured facts its keys are made of, what
the step cache answered for each key (and whether that hit's outputs are
still there with the recorded sha256), the steps of this run that are
already past planning, ``--force STEP`` and ``--no-cache``, it decides for
every step, with the reasons (explain.py, against the step's previous key
parts). Decisions:

* A step's key is made of its upstream steps' *output hashes*, so a step
  whose upstream must still run (or is running) cannot be decided: it
  **waits**. An upstream that is cached has recorded hashes, which feed the
  key at once: a chain of cached steps is decided in one pass.
* A hit is **cached** only when every output it recorded was checked
  present and unchanged; a hit with a problem is a **miss** (run), the
  problem is the reason. Never a false hit.
* ``--force STEP`` runs STEP whatever its key; the steps below it wait for
  its outputs and are then decided by their keys, so a forced step that
  writes the same bytes re-runs nothing below it. ``--no-cache`` runs every step.
* register and promote act on the registry, and a drift check of a
  deployment's traffic reads data its key cannot see: these always run.
* A step below a failed, skipped, cancelled or not-passed (gate-failed)
  step is **skipped**, with that reason.
* A key never asked of the cache yet is a **lookup**: :func:`plan` says
  which keys it needs, and :func:`plan_all` asks ``lookup`` for them and
  plans again until none is left (at most once per step).

No I/O: the store and the file checks answer through data (or the
``lookup`` callable handed in), so every decision can be tested alone.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import Literal

import msgspec

from mlfleet.core.base.errors import UsageError
from mlfleet.core.pipelines.explain import explain
from mlfleet.core.pipelines.graph import topological_order, upstream_of
from mlfleet.core.pipelines.keys import KeyParts, StepFacts, StepKey, key_of_step, placement_of
from mlfleet.core.pipelines.models import Pipeline, Step
from mlfleet.core.pipelines.state import PASSED, CacheHit, Settled

Action = Literal["cached", "run", "waiting", "skipped", "lookup"]
_BLOCKING = {"failed": "failed", "skipped": "was skipped", "cancelled": "was cancelled",
             "gate-failed": "did not pass"}


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    """What the cache answered for one key: the hit (None: no succeeded run has it) and its outputs' problems."""

    hit: CacheHit | None = None
    problems: list[str] = msgspec.field(default_factory=list)  # empty: every recorded output checked unchanged


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One step's fate in this plan: a new decision (Action), or the state it is settled in (running, failed...)."""

    step: str
    state: str
    key: StepKey | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    hit: CacheHit | None = None  # cached: the step run it reuses
    forced: bool = False
    settled: bool = False  # True: the store's state passed through (nothing to do); False: a decision to act on


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    decisions: dict[str, Decision]  # every step, in topological order

    def named(self, state: str) -> list[str]:
        """The steps decided ``state`` in this plan (settled steps passed through are not decisions)."""
        return [d.step for d in self.decisions.values() if d.state == state and not d.settled]

    def lookups(self) -> dict[str, StepKey]:
        """Step -> key the cache must be asked about before the plan is final."""
        return {d.step: d.key for d in self.decisions.values() if d.state == "lookup" and d.key is not None}


def uncacheable(step: Step) -> str | None:
    """Why a step never comes from the cache, or None."""
    if step.kind in ("register", "promote"):
        return f"a {step.kind} step acts on the registry, so it runs every time"
    if step.drift is not None and step.drift.deployment is not None:
        return (f"it checks deployment {step.drift.deployment}'s live traffic, which its key cannot see, "
                "so it runs every time")
    return None


def check_force(pipeline: Pipeline, force: Collection[str]) -> None:
    """Raise UsageError for a --force naming no step (with the closest name)."""
    for name in force:
        if name not in pipeline.steps:
            close = difflib.get_close_matches(name, list(pipeline.steps), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the steps are {', '.join(pipeline.steps)}"
            raise UsageError(f"--force {name}: pipeline {pipeline.name} has no step {name!r}; {hint}")


def plan(pipeline: Pipeline, facts: Mapping[str, StepFacts], found: Mapping[str, Lookup], *,
         settled: Mapping[str, Settled] | None = None, previous: Mapping[str, KeyParts] | None = None,
         force: Collection[str] = (), no_cache: bool = False) -> Plan:
    """Every step's decision now. ``found`` is keyed by step key; ``settled`` holds this run's steps past planning."""
    check_force(pipeline, force)
    settled = settled or {}
    previous = previous or {}
    decisions: dict[str, Decision] = {}
    keys: dict[str, StepKey] = {}
    produced: dict[str, Mapping[str, str]] = {}
    for name in topological_order(upstream_of(pipeline)):
        step = pipeline.steps[name]
        done = settled.get(name)
        if done is not None:
            decisions[name] = Decision(step=name, state=done.state, key=done.key, settled=True,
                                       reasons=[done.reason] if done.reason else [])
            if done.key is not None:
                keys[name] = done.key
            if done.state in PASSED:
                produced[name] = dict(done.outputs)
            continue
        decisions[name] = _decide(step, facts.get(name, StepFacts()), found, decisions, keys, produced,
                                  previous.get(name), name in force, no_cache, placement_of(pipeline, step))
        decision = decisions[name]
        if decision.key is not None:
            keys[name] = decision.key
        if decision.state == "cached" and decision.hit is not None:
            produced[name] = decision.hit.output_hashes()
    return Plan(decisions=decisions)


def _decide(step: Step, facts: StepFacts, found: Mapping[str, Lookup], decisions: Mapping[str, Decision],
            keys: Mapping[str, StepKey], produced: Mapping[str, Mapping[str, str]], previous: KeyParts | None,
            forced: bool, no_cache: bool, placement: Mapping[str, str] | None = None) -> Decision:
    name = step.name
    ups = step.upstream()
    blocked = [f"{'gate' if decisions[u].state == 'gate-failed' else 'upstream step'} {u} {_BLOCKING[decisions[u].state]}"
               for u in ups if decisions[u].state in _BLOCKING]
    if blocked:
        return Decision(step=name, state="skipped", reasons=blocked)
    pending = [u for u in ups if decisions[u].state not in PASSED]  # a new "cached" decision passes too
    if pending:
        return Decision(step=name, state="waiting",
                        reasons=["waits for " + ", ".join(f"{u} ({_pending(decisions[u].state)})" for u in pending)])
    key = key_of_step(step, facts, produced, keys, placement)
    changed = explain(previous, key.parts)
    if forced or no_cache:
        return Decision(step=name, state="run", key=key, forced=forced,
                        reasons=(["forced"] if forced else ["--no-cache"]) + changed)
    never = uncacheable(step)
    if never is not None:
        return Decision(step=name, state="run", key=key, reasons=[never] + changed)
    answer = found.get(key.key)
    if answer is None:
        return Decision(step=name, state="lookup", key=key, reasons=["the cache is asked about its key"])
    hit = answer.hit
    if hit is None:
        return Decision(step=name, state="run", key=key,
                        reasons=changed or ["no earlier run with this key succeeded"])
    problems = list(answer.problems)
    if set(hit.outputs) != set(step.outputs):
        problems.append(f"run {hit.run_id} recorded outputs {', '.join(sorted(hit.outputs)) or 'none'}, "
                        f"the step declares {', '.join(sorted(step.outputs)) or 'none'}")
    if problems:
        return Decision(step=name, state="run", key=key,
                        reasons=changed + [f"the outputs of run {hit.run_id} (step {hit.step}) cannot be reused: "
                                           + "; ".join(problems)])
    return Decision(step=name, state="cached", key=key, hit=hit,
                    reasons=[f"key matches run {hit.run_id} (step {hit.step}), its outputs checked unchanged"])


def _pending(state: str) -> str:
    return {"run": "to run", "lookup": "being looked up", "waiting": "waiting"}.get(state, state)


def plan_all(pipeline: Pipeline, facts: Mapping[str, StepFacts], lookup: Callable[[str, StepKey], Lookup], *,
             found: Mapping[str, Lookup] | None = None, settled: Mapping[str, Settled] | None = None,
             previous: Mapping[str, KeyParts] | None = None, force: Collection[str] = (),
             no_cache: bool = False) -> Plan:
    """:func:`plan`, asking ``lookup(step, key)`` for every key it needs, until no decision is a lookup.

    ``lookup`` is where the service queries the store (records.cached_step)
    and checks the hit's outputs (outputs.verify_outputs).
    """
    answers = dict(found or {})
    while True:
        current = plan(pipeline, facts, answers, settled=settled, previous=previous, force=force, no_cache=no_cache)
        needed = current.lookups()
        if not needed:
            return current
        for step, key in needed.items():
            answers[key.key] = lookup(step, key)
