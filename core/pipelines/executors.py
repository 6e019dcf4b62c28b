"""The steps that run inside the controller: drift, gate, register and promote.

``execute(run)`` dispatches on the step's kind and answers a
:class:`StepOutcome`. Each kind goes through its capability's own code, so
a pipeline can do nothing a user could not do by hand, and leaves the same
trail:

* **gate**: the challenger's run (``run.job_run``) and the run behind the
  version ``NAME@ALIAS`` names now, read as :class:`RunSummary` from the
  store (core/pipelines/summaries.py), judged by ``gates.decide`` and
  recorded with ``records.record_gate`` (which also ends the step row).
  An alias that names no version yet (or a model not registered yet) is
  "no champion", not an error: the first model has nothing to beat.
* **register**: ``RegistryApi.register`` as the pipeline's actor (the
  ``model_register`` RPC's path: the permission, the copy verified into
  the model store, the ``model.register`` audit row). Idempotent by
  content: a version of the model with the same sha256 from the same run
  is reused, so a re-run of a pipeline does not number a duplicate.
* **promote**: ``RegistryApi.move_alias`` as the actor (protected aliases
  need the permission they need by hand), only when the named gate passed.
  Deployments that follow the alias are not called: the deploy service's
  tick resolves every followed alias and rolls out when it names another
  version (core/deploy/service.py ``_follow_alias``), so the move is the
  whole trigger.
* **drift**: core/drift/stored_check.py, which computes and stores a report
  as ``drift check`` does (with its audit row).

A failure a user can cause (no such run, artifact, output or file, a
permission, a host that is down) is an outcome ``failed`` with the error's
one sentence; anything else is a bug and raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from mlfleet.core.base.errors import MlfleetError, UsageError
from mlfleet.core.drift import stored_check, summary as drift_summary
from mlfleet.core.pipelines import records, summaries, trigger_records
from mlfleet.core.pipelines.gates import decide
from mlfleet.core.pipelines.spec import REFERENCE
from mlfleet.core.pipelines.step_run import StepOutcome, StepRun
from mlfleet.core.registry import records as registry
from mlfleet.core.registry.api import RegistryApi
from mlfleet.core.registry.refs import MAX_REASON, parse_ref
from mlfleet.core.tracking import records as tracking

MAX_FEATURES = 100  # per-feature lines a drift outcome carries (the stored report has them all)


class StepFailed(MlfleetError):
    """A step that cannot do its work for a reason the user can fix; its message is the outcome's sentence."""


async def execute(run: StepRun) -> StepOutcome:
    """Run one drift, gate, register or promote step and say how it ended."""
    handler = _HANDLERS.get(run.step.kind)
    if handler is None:
        raise ValueError(f"step {run.step.name} is a {run.step.kind} step: the service submits those as jobs")
    try:
        return await handler(run)
    except MlfleetError as exc:
        return StepOutcome("failed", _sentence(exc))


def _sentence(exc: MlfleetError) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


# ------------------------------------------------------------------ gate

async def _gate(run: StepRun) -> StepOutcome:
    gate = run.step.gate
    assert gate is not None
    store = run.ctx.store
    challenger_run = run.job_run(gate.challenger)
    if challenger_run is None:
        raise StepFailed(f"the challenger step {gate.challenger} has no tracking run to judge")
    if not await store.read(summaries.run_exists, challenger_run):
        raise StepFailed(f"the challenger step {gate.challenger}'s run {challenger_run} is not in the store")
    name, alias, _ = parse_ref(gate.champion)
    if alias is None:
        raise UsageError(f"champion {gate.champion!r} names no alias; write NAME@ALIAS, e.g. {name}@production")
    metrics = summaries.named_metrics(gate.require)
    challenger = await store.read(summaries.run_summary, challenger_run, f"run {challenger_run}", metrics)
    version = await store.read(registry.alias_version, name, alias)
    champion = None
    champion_run = None
    if version is not None:
        champion_run = (await store.read(registry.resolve, f"{name}:{version}"))["run_id"]
        label = f"{gate.champion} (version {version}, run {champion_run})"
        if not await store.read(summaries.run_exists, champion_run):
            label = f"{gate.champion} (version {version}, whose run {champion_run} is gone)"
        champion = await store.read(summaries.run_summary, champion_run, label, metrics)
    decision = decide(gate.require, challenger, champion)
    await store.run(records.record_gate, run.run_id, run.step.name, gate.champion, decision,
                    challenger_run=challenger_run, champion_version=version, champion_run=champion_run,
                    actor=run.actor)
    details = {"decision": msgspec.to_builtins(decision), "passed": decision.passed, "champion": gate.champion,
               "champion_version": version, "champion_run": champion_run, "challenger_run": challenger_run}
    return StepOutcome("succeeded" if decision.passed else "gate-failed", decision.summary, details)


# ------------------------------------------------------------------ register

async def _register(run: StepRun) -> StepOutcome:
    spec = run.step.register
    assert spec is not None
    store = run.ctx.store
    source = run.job_run(spec.step)
    if source is None:
        raise StepFailed(f"step {spec.step} has no tracking run whose artifact {spec.artifact} could be registered")
    artifact = await store.read(tracking.find_artifact, source, spec.artifact)
    if artifact.get("sha256"):
        same = await store.read(_same_version, spec.model, artifact["run_id"], artifact["sha256"])
        if same is not None:
            return StepOutcome("succeeded", f"{spec.model} version {same} is already this artifact "
                                            f"({artifact['path']} of run {artifact['run_id']}, sha256 "
                                            f"{artifact['sha256'][:12]}): reused",
                               {"model": spec.model, "version": same, "sha256": artifact["sha256"],
                                "run_id": artifact["run_id"], "artifact": artifact["path"], "reused": True})
    made = await RegistryApi(run.ctx).register(run.actor, spec.model, artifact["run_id"], artifact["path"])
    return StepOutcome("succeeded", f"registered {artifact['path']} of run {artifact['run_id']} as "
                                    f"{spec.model} version {made['version']}",
                       {"model": spec.model, "version": made["version"], "sha256": made["sha256"],
                        "run_id": artifact["run_id"], "artifact": artifact["path"], "reused": False})


def _same_version(con: Any, name: str, run_id: str, sha256: str) -> int | None:
    """The oldest version of ``name`` registered from ``run_id`` with these bytes, if there is one."""
    found = con.execute("select min(version) from model_versions where name = ? and run_id = ? and sha256 = ?",
                        [name, run_id, sha256]).fetchall()
    return int(found[0][0]) if found and found[0][0] is not None else None


# ------------------------------------------------------------------ promote

async def _promote(run: StepRun) -> StepOutcome:
    spec = run.step.promote
    assert spec is not None
    store = run.ctx.store
    passed, why = await _gate_passed(run, spec.gate)
    if not passed:
        raise StepFailed(f"gate {spec.gate} {why}, so {spec.alias} was not moved")
    made = run.outcome_of(spec.register)
    if made is None or made.state != "succeeded" or "version" not in made.details:
        raise StepFailed(f"register step {spec.register} made no version in this run, so {spec.alias} was not moved")
    model, version = str(made.details["model"]), int(made.details["version"])
    moved = await RegistryApi(run.ctx).move_alias(run.actor, model, spec.alias, version, _reason(run, spec.reason))
    following = await store.read(_following, model, spec.alias)
    details = {"model": model, "alias": spec.alias, "from_version": moved["from_version"], "to_version": version,
               "changed": moved["changed"], "deployments": following}
    if not moved["changed"]:
        return StepOutcome("succeeded", f"{model}@{spec.alias} already names version {version}", details)
    rolls = f"; {', '.join(following)} will roll out on the next tick" if following else ""
    return StepOutcome("succeeded", f"moved {model}@{spec.alias} from "
                                    f"{'nothing' if moved['from_version'] is None else 'version ' + str(moved['from_version'])}"
                                    f" to version {version}{rolls}", details)


async def _gate_passed(run: StepRun, gate: str) -> tuple[bool, str]:
    """Whether ``gate`` passed in this run: its outcome, or (a cached gate) the decision its source run recorded."""
    outcome = run.outcome_of(gate)
    if outcome is not None:
        return outcome.state == "succeeded", "did not pass" if outcome.state == "gate-failed" else f"ended {outcome.state}"
    row = await run.ctx.store.read(_step_row, run.run_id, gate)
    if row is not None and row["state"] == "gate-failed":
        return False, "did not pass"
    if row is None or row["state"] not in ("succeeded", "cached"):
        return False, f"has not passed in this run (it is {row['state'] if row else 'not a step of it'})"
    decided = await run.ctx.store.read(records.gate_decision, row["source_run"] or run.run_id, gate)
    if decided is None:
        return False, "has no recorded decision"
    return bool(decided["passed"]), "did not pass"


def _step_row(con: Any, run_id: str, step: str) -> dict[str, Any] | None:
    found = con.execute("select state, source_run from pipeline_steps where run_id = ? and step = ?",
                        [run_id, step]).fetchall()
    return {"state": found[0][0], "source_run": found[0][1]} if found else None


def _following(con: Any, model: str, alias: str) -> list[str]:
    """The deployments that follow ``model@alias`` (and will roll out when it moves)."""
    return [r[0] for r in con.execute("select name from deployments where model_ref = ? and follows_alias = ? "
                                      "and phase != 'stopped' order by name", [f"{model}@{alias}", alias]).fetchall()]


def _reason(run: StepRun, reason: str | None) -> str:
    """The alias history's why: the step's reason, and which pipeline run moved it (when that fits)."""
    where = f"pipeline {run.pipeline.name} run {run.run_id}, step {run.step.name}"
    if reason is None:
        return where
    text = f"{reason} ({where})"
    return text if len(text) <= MAX_REASON else reason


# ------------------------------------------------------------------ drift

async def _drift(run: StepRun) -> StepOutcome:
    spec = run.step.drift
    assert spec is not None
    reference = _data_path(run, spec.reference, "reference")
    current = _data_path(run, spec.current, "current") if spec.current is not None else None
    config = str(_file_path(run, spec.config)) if spec.config is not None else None
    if config is not None and not Path(config).is_file():
        raise StepFailed(f"drift config {spec.config} ({config}) does not exist")
    # Saved as the pipeline run's (pipeline:RUN_ID): its own check must never fire its own drift trigger.
    report = await stored_check.check_and_store(run.ctx.store, run.ctx.home.capture_dir,
                                                trigger_records.report_actor(run.run_id), str(reference),
                                                str(current) if current is not None else None, spec.deployment,
                                                config)
    drifted = [c["column"] for c in report["columns"] if c.get("drifted")]
    verdict = drift_summary.headline(report)
    features = [{"column": c["column"], "test": c["test"], "statistic": c.get("statistic"),
                 "threshold": c.get("threshold"), "drifted": c.get("drifted")}
                for c in report["columns"][:MAX_FEATURES]]
    details = {"drifted": bool(report["drifted"]), "report_id": report["report_id"], "drifted_features": drifted,
               "verdict": verdict, "reference": report["reference"], "current": report["current"],
               "deployment": spec.deployment, "features": features}
    state = "failed" if report["drifted"] and spec.fail_on_drift else "succeeded"
    return StepOutcome(state, f"{verdict} (report {report['report_id']})", details)


def _data_path(run: StepRun, text: str, role: str) -> Path:
    """A drift side as written: ``STEP.outputs.NAME`` (where the controller keeps it) or a path."""
    ref = REFERENCE.match(text.strip())
    if ref:
        stored = run.output_path(ref.group(1), ref.group(2))
        if stored is None:
            raise StepFailed(f"{role} {text}: step {ref.group(1)} has no stored output {ref.group(2)} in this run")
        return stored
    path = _file_path(run, text)
    if not path.exists():
        raise StepFailed(f"{role} {text} ({path}) does not exist")
    return path


def _file_path(run: StepRun, text: str) -> Path:
    """A path of the pipeline file: absolute as written, else from the pipeline file's folder."""
    path = Path(text.strip()).expanduser()
    if path.is_absolute():
        return path
    if not run.pipeline.source:
        raise StepFailed(f"{text} is a relative path, and this pipeline was sent without its file's folder; "
                         "give an absolute path")
    return Path(run.pipeline.source).parent / path


_HANDLERS: dict[str, Callable[[StepRun], Awaitable[StepOutcome]]] = {
    "gate": _gate, "register": _register, "promote": _promote, "drift": _drift}
