"""What ``mlfleet pipeline ...`` prints, and the TUI's Pipelines view shows, of the pipelines service's answers.

Pure functions over the answers' plain shapes (docs/pipelines.md, "The
service (contract of this wave)"): rows for tables (the CLI joins them with
``render.table``, the TUI feeds them to a KeyedTable) and the text pages
built of them, so the terminal and the TUI say the same thing in the same
words. Nothing here calls the controller; commands.py does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlfleet.core.base.models import to_plain
from mlfleet.core.base.units import format_duration
from mlfleet.core.cli import render
from mlfleet.core.pipelines import graph
from mlfleet.core.pipelines.drawing import symbol
from mlfleet.core.pipelines.models import Pipeline, Step

STATE_ORDER = ("running", "queued", "succeeded", "cached", "failed", "gate-failed", "skipped", "cancelled")
KEY_SHOWN = 12  # characters of a step key in a table: enough to tell two apart, short enough for a row
LIST_HEADERS = ("run", "name", "project", "state", "trigger", "steps", "actor", "started", "elapsed")
STEP_HEADERS = ("step", "kind", "state", "reason", "job", "key")
ARMED_HEADERS = ("name", "project", "on", "concurrency", "next", "armed", "by")
HISTORY_HEADERS = ("at", "name", "trigger", "cause", "outcome", "run")


# ------------------------------------------------------------- check, graph

def step_summary(step: Step) -> dict[str, Any]:
    """One step of a checked file as plain data: its kind, what it waits for, its inputs and outputs."""
    return {"step": step.name, "kind": step.kind, "upstream": step.upstream(),
            "inputs": [i.text for i in step.inputs], "outputs": dict(step.outputs), "params": dict(step.params)}


def check_answer(pipeline: Pipeline) -> dict[str, Any]:
    """``pipeline check --json``: the pipeline's identity and its steps in the order they run."""
    order = graph.topological_order(graph.upstream_of(pipeline))
    return {"name": pipeline.name, "project": pipeline.project, "source": pipeline.source,
            "params": pipeline.params, "concurrency": pipeline.concurrency, "on": to_plain(pipeline.on),
            "triggers": triggers_text(pipeline.on),
            "steps": [step_summary(pipeline.steps[name]) for name in order]}


def check_text(pipeline: Pipeline) -> str:
    """``pipeline check``: the file is valid, and its steps in the order they run with kinds and edges."""
    answer = check_answer(pipeline)
    steps = answer["steps"]
    head = (f"{pipeline.source or pipeline.name}: pipeline {pipeline.name} (project {pipeline.project}) is valid: "
            f"{len(steps)} step{'s' if len(steps) != 1 else ''}")
    lines = [head]
    if pipeline.params:
        lines.append("params: " + render.value(pipeline.params))
    if answer["triggers"] != "-":
        lines.append(f"on: {answer['triggers']}; concurrency {pipeline.concurrency}")
    lines.append(render.table(["step", "kind", "waits for", "inputs", "outputs"],
                              [[s["step"], s["kind"], render.value(s["upstream"]), render.value(s["inputs"]),
                                render.value(s["outputs"])] for s in steps]))
    return "\n".join(lines)


def triggers_text(on: Any) -> str:
    """``on:`` (resolved Triggers or its plain mapping) in words: ``schedule 0 3 * * *; drift of iris``."""
    plain = on if isinstance(on, Mapping) else {f: getattr(on, f, None) for f in ("schedule", "data", "drift", "after")}
    parts = []
    for field in ("schedule", "data", "after"):
        value = plain.get(field)
        if value:
            parts.append(f"{field} {render.value(value)}")
    drift = plain.get("drift")
    if drift:
        get = drift.get if isinstance(drift, Mapping) else (lambda key: getattr(drift, key, None))
        watched = f" (checked every {format_duration(float(get('every') or 300))})" if get("reference") else ""
        parts.append(f"drift of {get('deployment')}{watched}")
    return "; ".join(parts) or "-"


# ------------------------------------------------------------------ runs

def step_counts(counts: Mapping[str, int] | None) -> str:
    """``{state: count}`` as ``4 succeeded, 1 cached``: states in a fixed order, unknown ones last."""
    counts = counts or {}
    known = [s for s in STATE_ORDER if counts.get(s)]
    rest = sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    return ", ".join(f"{counts[s]} {s}" for s in known + rest) or "-"


def list_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """``pipeline_list``'s runs as rows of :data:`LIST_HEADERS`."""
    return [[r["run_id"], r.get("name") or "-", r.get("project") or "-", r.get("state") or "-",
             r.get("trigger") or "-", step_counts(r.get("steps")), r.get("actor") or "-",
             render.when(r.get("created_at")), render.elapsed(r.get("created_at"), r.get("ended_at"))]
            for r in runs]


def list_text(runs: Sequence[Mapping[str, Any]], name: str | None = None) -> str:
    if not runs:
        return (f"no runs of pipeline {name} yet" if name else "no pipeline runs yet") + \
            ": mlfleet pipeline run FILE (docs/pipelines.md)"
    return render.table(list(LIST_HEADERS), list_rows(runs))


def short_key(key: Any) -> str:
    return str(key)[:KEY_SHOWN] if key else "-"


def step_reason(step: Mapping[str, Any]) -> str:
    """A step's reasons in one cell; a cached step says whose outputs it reused."""
    reasons = [str(r) for r in step.get("reasons") or []]
    if step.get("forced") and not any(r.startswith("forced") for r in reasons):
        reasons.insert(0, "forced")
    if step.get("state") == "cached" and step.get("source_run") and not any(step["source_run"] in r for r in reasons):
        reasons.append(f"outputs of run {step['source_run']}")
    return "; ".join(reasons) or "-"


def step_rows(run: Mapping[str, Any]) -> list[list[str]]:
    """``pipeline_show``'s steps as rows of :data:`STEP_HEADERS` (the state with its symbol, as the DAG draws it)."""
    rows = []
    for s in run.get("steps") or []:
        mark = symbol(s.get("state"), s.get("kind"))
        rows.append([s["step"], s.get("kind") or "-", f"{mark} {s.get('state')}" if mark else "-",
                     step_reason(s), s.get("job_id") or "-", short_key(s.get("key"))])
    return rows


def gate_decision(step: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The GateDecision a gate step's ``detail`` holds (as the decision itself, or under ``decision``), or None."""
    detail = step.get("detail") or {}
    if not isinstance(detail, Mapping):
        return None
    decision = detail.get("decision") if isinstance(detail.get("decision"), Mapping) else detail
    return decision if isinstance(decision.get("requirements"), list) else None


def exact(value: Any) -> str:
    """A number a gate compared, every digit it has (``0.905``, never ``0.9050000001`` nor ``0.905`` cut to 4)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return render.value(value)
    return repr(value) if isinstance(value, float) else str(value)


def gate_lines(step: Mapping[str, Any]) -> list[str]:
    """A gate's decision: the summary sentence, then each requirement with its two numbers and verdict."""
    decision = gate_decision(step)
    if decision is None:
        return []
    passed = decision.get("passed")
    head = f"gate {step['step']}: {'passed' if passed else 'did not pass'}"
    who = f"{decision.get('challenger') or '-'} against {decision.get('champion') or 'no champion'}"
    lines = [f"{head} ({who})" + (f": {decision['summary']}" if decision.get("summary") else "")]
    for r in decision.get("requirements") or []:
        mark = "✓" if r.get("passed") else "✗"
        lines.append(f"  {mark} {r.get('text')}: {exact(r.get('left'))} vs {exact(r.get('right'))}"
                     + (f" ({r['verdict']})" if r.get("verdict") else ""))
    return lines


def detail_lines(step: Mapping[str, Any]) -> list[str]:
    """What a non-gate step recorded (a register's version, a drift verdict, a promote's alias move), in words."""
    detail = step.get("detail") or {}
    if not detail or gate_decision(step) is not None:
        return []
    if not isinstance(detail, Mapping):
        return [f"{step['step']}: {render.value(detail)}"]
    return [f"{step['step']}: " + ", ".join(f"{k} {render.value(v)}" for k, v in detail.items())]


def output_lines(run: Mapping[str, Any]) -> list[str]:
    lines = []
    for s in run.get("steps") or []:
        for o in s.get("outputs") or []:
            size = render.format_size(o["size"]) if isinstance(o.get("size"), int) else "-"
            files = f", {o['files']} files" if o.get("files") is not None else ""
            lines.append(f"  {s['step']}.outputs.{o.get('name')}  {o.get('path') or '-'}  "
                         f"sha256 {short_key(o.get('sha256'))}  {size}{files}")
    return lines


def run_head(run: Mapping[str, Any]) -> list[str]:
    """The first lines of a run's page: which run of what, its state, what started it and when."""
    ended = run.get("ended_at")
    timing = f"started {render.when(run.get('created_at'))}" + (
        f", ended {render.when(ended)} after {render.elapsed(run.get('created_at'), ended)}" if ended
        else f", running for {render.elapsed(run.get('created_at'))}" if run.get("state") == "running" else "")
    cause = run.get("cause")
    trigger = f"{run.get('trigger') or 'manual'}" + (f" ({render.value(cause)})" if cause else "")
    lines = [f"pipeline run {run['run_id']} · {run.get('name')} (project {run.get('project')}) · {run.get('state')}",
             f"trigger {trigger} by {run.get('actor') or '-'}; {timing}"]
    if run.get("reason"):
        lines.append(f"reason: {run['reason']}")
    return lines


def show_text(run: Mapping[str, Any]) -> str:
    """``pipeline show``: the run's head, its steps, gate decisions with their numbers, other steps' details, outputs."""
    lines = run_head(run)
    lines.append(render.table(list(STEP_HEADERS), step_rows(run)))
    gates = [line for s in run.get("steps") or [] for line in gate_lines(s)]
    details = [line for s in run.get("steps") or [] for line in detail_lines(s)]
    outputs = output_lines(run)
    if gates:
        lines += ["", *gates]
    if details:
        lines += ["", *details]
    if outputs:
        lines += ["", "outputs:", *outputs]
    return "\n".join(lines)


def run_passed(run: Mapping[str, Any]) -> bool:
    """Whether ``pipeline run --wait`` exits 0: the run succeeded and no gate of it failed."""
    return run.get("state") == "succeeded" and not any(
        s.get("state") == "gate-failed" for s in run.get("steps") or [])


def run_outcome(run: Mapping[str, Any]) -> str:
    """One sentence on how a run ended, naming the steps that failed or whose gate did not pass."""
    steps = run.get("steps") or []
    failed = [s["step"] for s in steps if s.get("state") == "failed"]
    gates = [s["step"] for s in steps if s.get("state") == "gate-failed"]
    said = f"pipeline run {run['run_id']} ({run.get('name')}) {run.get('state')}"
    parts = []
    if failed:
        parts.append(f"failed: {', '.join(failed)}")
    if gates:
        parts.append(f"gate did not pass: {', '.join(gates)}")
    return said + (f" ({'; '.join(parts)})" if parts else "")


def why_text(answer: Mapping[str, Any], run_id: str) -> str:
    """``pipeline why RUN STEP``: the step's state and key, and each reason its key differs from the run compared with."""
    head = f"{answer['step']} in run {run_id}: {answer.get('state')}, key {short_key(answer.get('key'))}"
    reasons = [str(r) for r in answer.get("reasons") or []]
    against = answer.get("compared_with")
    if against is None:
        tail = ["  " + r for r in reasons] or ["  no earlier run of this step to compare with"]
        return "\n".join([head + " (no earlier run of it to compare with)" if reasons else head, *tail])
    if not reasons:
        return f"{head}\n  nothing changed since run {against} (the same key)"
    return "\n".join([f"{head}; compared with run {against}:", *("  " + r for r in reasons)])


def cancel_text(answer: Mapping[str, Any]) -> str:
    cancelled = list(answer.get("cancelled") or [])
    steps = f"{len(cancelled)} step{'s' if len(cancelled) != 1 else ''} cancelled" + (
        f" ({', '.join(cancelled)})" if cancelled else "")
    return f"pipeline run {answer['run_id']} is {answer.get('state')}: {steps}"


# -------------------------------------------------------------- triggers

def armed_rows(answer: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for a in answer.get("armed") or []:
        nxt = a.get("next") or {}
        shown = ", ".join(f"{k} {render.when(v)}" for k, v in nxt.items()) if isinstance(nxt, Mapping) else "-"
        rows.append([a.get("name") or "-", a.get("project") or "-", triggers_text(a.get("on") or {}),
                     a.get("concurrency") or "-", shown or "-", render.when(a.get("armed_at")), a.get("armed_by") or "-"])
    return rows


def history_rows(answer: Mapping[str, Any]) -> list[list[str]]:
    return [[render.when(h.get("at")), h.get("name") or "-", h.get("trigger") or "-", render.value(h.get("cause")),
             h.get("outcome") or "-", h.get("run_id") or "-"] for h in answer.get("history") or []]


def triggers_page(answer: Mapping[str, Any], name: str | None = None) -> str:
    """``pipeline triggers``: the pipelines whose ``on:`` is armed, then what fired and what came of it."""
    what = f"pipeline {name}" if name else "any pipeline"
    armed = armed_rows(answer)
    history = history_rows(answer)
    lines = [render.table(list(ARMED_HEADERS), armed) if armed else f"no triggers armed for {what}"]
    lines += ["", "history:", render.table(list(HISTORY_HEADERS), history)] if history else \
        ["", f"no trigger of {what} has fired yet"]
    return "\n".join(lines)
