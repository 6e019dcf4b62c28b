"""pipeline.yaml into a validated :class:`Pipeline`, every mistake one sentence at its file:line.

The same contract as job and deployment specs: msgspec checks the shape
(through core/base/validation.py's :func:`collect_errors`, so all mistakes
come in one pass, with "did you mean"), then the checks types cannot
express. A step's ``job:`` is checked by the jobs capability's own rules
(core/pipelines/job_steps.py), so a job in a pipeline and a job in a file
never disagree. The references between steps (needs,
``STEP.outputs.NAME`` inputs, a gate's challenger, ...) are checked here, and
so is the DAG they make: a cycle is named at the line that closes it.

``--set`` overrides apply to the pipeline file first (``--set params.lr=0.2``),
then the pipeline's params are filled into the steps (core/pipelines/params.py).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import msgspec

from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.units import parse_duration
from mlfleet.core.base.models import JobSpec
from mlfleet.core.base.validation import collect_errors, raise_collected, touches
from mlfleet.core.base.yamlsource import Located, dotted, read_yaml
from mlfleet.core.deploy.spec import parse_model_ref
from mlfleet.core.jobs.overrides import Override, apply, blame_overrides
from mlfleet.core.pipelines import graph
from mlfleet.core.pipelines.cron import EXAMPLE as CRON_EXAMPLE
from mlfleet.core.pipelines.cron import cron_problem
from mlfleet.core.pipelines.job_steps import job_of_step, typed_jobs
from mlfleet.core.pipelines.models import (DEFAULT_DRIFT_EVERY, STEP_KINDS, DriftStepFile, DriftTrigger, GateStepFile, Input, Pipeline, PipelineFile,
                                           PromoteStepFile, RegisterStepFile, Step, StepFile, Triggers, TriggersFile)
from mlfleet.core.pipelines.params import Filled, fill
from mlfleet.core.tracking.runfilter import FilterError, parse_relation

MIN_DRIFT_EVERY = 1.0  # seconds: the shortest ``on: drift: every:`` (each check scans the window's captures)
MAX_SPEC_ERRORS = 10  # a pipeline holds several steps: a few mistakes each, but past this it is one mistake repeated
STRUCTS: dict[tuple[Any, ...], type[msgspec.Struct]] = {
    (): PipelineFile, ("on",): TriggersFile, ("on", "drift"): DriftTrigger, ("steps", "*"): StepFile,
    ("steps", "*", "drift"): DriftStepFile, ("steps", "*", "gate"): GateStepFile,
    ("steps", "*", "register"): RegisterStepFile, ("steps", "*", "promote"): PromoteStepFile,
}
_STAND_INS: dict[tuple[Any, ...], Any] = {("name",): "x"}
REFERENCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]*)\.outputs\.([A-Za-z0-9][A-Za-z0-9_-]*)$")
_LOOKS_LIKE_REFERENCE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]*)\.([A-Za-z_]+)\.([A-Za-z0-9][A-Za-z0-9_-]*)$")
_GLOB = set("*?[")


def load_pipeline_spec(path: str | Path, overrides: list[Override] | None = None) -> Pipeline:
    """Read, validate and resolve a pipeline file; raises SpecError (SpecErrors when there are several).

    ``overrides`` (``--set PATH=VALUE``) change the file's data first; a
    mistake they cause names the ``--set`` instead of a line.
    """
    located = read_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(located.path, located.line_of(()), None, "a pipeline spec must be a YAML mapping",
                        "start with 'name:' and 'steps:' (see configs/pipelines/)")
    data = typed_jobs(dict(located.data), located)
    data = apply(data, overrides or [])
    pipeline, errors = check_pipeline(data, located, Path(path).resolve().parent)
    raise_collected(blame_overrides(errors, overrides or []), MAX_SPEC_ERRORS)
    assert pipeline is not None
    return msgspec.structs.replace(pipeline, source=str(Path(path).resolve()))


def validate_pipeline_spec(data: Any, base: Path, located: Located | None = None) -> Pipeline:
    """A pipeline's data (already read, or sent as data) validated and resolved; relative paths are taken from ``base``.

    Without ``located`` the errors name the field but no line (the RPC's check of a spec sent as data).
    """
    if not isinstance(data, dict):
        raise SpecError(located.path if located else "pipeline spec", None, None, "a pipeline spec must be a mapping")
    located = located or Located("pipeline spec", data)
    pipeline, errors = check_pipeline(typed_jobs(dict(data), located), located, base)
    raise_collected(errors, MAX_SPEC_ERRORS)
    assert pipeline is not None
    return pipeline


def check_pipeline(data: dict[str, Any], located: Located, base: Path) -> tuple[Pipeline | None, list[SpecError]]:
    """The resolved pipeline (None when it has mistakes) and every mistake found, up to MAX_SPEC_ERRORS."""
    display = located.path
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    fills: dict[str, Filled] = {}
    if isinstance(data.get("steps"), dict):
        steps_data = {}
        for name, step in data["steps"].items():
            fills[name] = Filled()
            steps_data[name] = fill(step, params, fills[name], ("steps", name), _job_text)
        data = {**data, "steps": steps_data}
    unknown = _unknown_placeholders(data, located, fills)
    raw, errors, removed, data = collect_errors(data, PipelineFile, located, display=display,
                                                max_errors=MAX_SPEC_ERRORS, structs=STRUCTS, stand_ins=_STAND_INS,
                                                dec_hook=None)
    # a value holding an unknown placeholder is wrong for that reason, whatever else msgspec says of it
    said = {e.field for e in unknown}
    errors = unknown + [e for e in errors if e.field not in said]
    if raw is None:
        return None, errors[:MAX_SPEC_ERRORS]
    check = _Checker(raw, data, located, base, removed, fills)
    steps = check.steps()
    triggers = check.triggers(steps)
    errors = sorted(errors + check.errors, key=lambda e: (e.line is None, e.line or 0))[:MAX_SPEC_ERRORS]
    if errors:
        return None, errors
    return Pipeline(name=raw.name, project=raw.project, params=dict(raw.params), on=triggers,
                    concurrency=raw.concurrency, steps=steps), []


def _unknown_placeholders(data: dict[str, Any], located: Located, fills: dict[str, Filled]) -> list[SpecError]:
    """A ``{params.KEY}`` the pipeline's params do not answer, except where an inline job's own params do.

    In an inline job's command it is the job's check that speaks (the job's
    own params may answer at dispatch), so it is not said twice.
    """
    out = []
    for name, found in fills.items():
        job = data["steps"][name].get("job") if isinstance(data["steps"][name], dict) else None
        own = job.get("params") if isinstance(job, dict) else None
        for parts, key in found.unknown:
            in_job = parts[2:3] == ("job",) and isinstance(job, dict) and "spec" not in job
            if in_job and (parts[3:4] == ("command",) or (isinstance(own, dict) and _has(own, key))):
                continue
            out.append(SpecError(located.path, located.line_of(parts), dotted(parts),
                                 f"{{params.{key}}} names no param of the pipeline", "add it under params:, or fix the name"))
    return out


class _Checker:
    """The checks after the shape: each step's kind, its job, its references, and the DAG they make."""

    def __init__(self, raw: PipelineFile, data: dict[str, Any], located: Located, base: Path,
                 removed: set[tuple[Any, ...]], fills: dict[str, Filled]) -> None:
        self.raw, self.data, self.located, self.base, self.removed, self.fills = raw, data, located, base, removed, fills
        self.errors: list[SpecError] = []
        self.sites: dict[tuple[str, str], tuple[Any, ...]] = {}  # (step, upstream) -> where the edge is written
        self.bad_outputs: set[tuple[str, str]] = set()  # declared, but wrong: already said, so no "has no output"

    def fail(self, parts: tuple[Any, ...], problem: str, hint: str = "") -> None:
        if touches(parts, self.removed):
            return
        self.errors.append(SpecError(self.located.path, self.located.line_of(parts), dotted(parts), problem, hint))

    def gone(self, step: str) -> bool:
        """A step set aside for a mistake already reported: references to it say nothing more."""
        return touches(("steps", step), self.removed)

    # -------------------------------------------------------------- steps

    def steps(self) -> dict[str, Step]:
        out: dict[str, Step] = {}
        for name, step in self.raw.steps.items():
            at = ("steps", name)
            written = self.data["steps"][name]
            kinds = sorted((k for k in STEP_KINDS if getattr(step, k) is not None), key=list(written).index)
            if not kinds:
                self.fail(at, "has no kind", f"give it one of {', '.join(STEP_KINDS)} (see docs/pipelines.md)")
                continue
            if len(kinds) > 1:
                self.fail(at + (kinds[1],), f"is a second kind for this step (it is already a {kinds[0]} step)",
                          "a step does one thing: split it in two steps and join them with needs:")
                continue
            out[name] = Step(name=name, kind=kinds[0], job=self._job(name, step), drift=step.drift, gate=step.gate,
                             register=step.register, promote=step.promote, needs=list(step.needs),
                             inputs=self._inputs(name, step), outputs=self._outputs(name, step, kinds[0]),
                             params=dict(self.fills[name].used))
        for name, step in out.items():
            self._references(name, step, out)
        self._cycle(out)
        return out

    def _job(self, name: str, step: StepFile) -> JobSpec | None:
        if step.job is None:
            return None
        job, errors = job_of_step(self.raw.name, self.raw.project, name, dict(step.job), self.located, self.base)
        self.errors.extend(errors)
        return job

    def _inputs(self, name: str, step: StepFile) -> list[Input]:
        written = [(("steps", name, "inputs", i), text) for i, text in enumerate(step.inputs)]
        if step.drift is not None:  # what a drift check compares is what it reads
            written += [(("steps", name, "drift", f), getattr(step.drift, f)) for f in ("reference", "current")
                        if getattr(step.drift, f) is not None]
        out: list[Input] = []
        seen: set[str] = set()
        for parts, text in written:
            item = self._input(name, step, parts, text.strip())
            if item is not None and item.text not in seen:
                seen.add(item.text)
                out.append(item)
        return out

    def _input(self, name: str, step: StepFile, parts: tuple[Any, ...], text: str) -> Input | None:
        if "\0" in text or not text:
            self.fail(parts, "is not a path", "give a workdir path (data/train.csv), a host path or STEP.outputs.NAME")
            return None
        ref = REFERENCE.match(text)
        if ref:
            return Input(text=text, kind="step", step=ref.group(1), output=ref.group(2))
        like = _LOOKS_LIKE_REFERENCE.match(text)
        if like and like.group(1) in self.raw.steps and "/" not in text:
            self.fail(parts, f"{text!r} names step {like.group(1)} but not its outputs",
                      f"did you mean {like.group(1)}.outputs.{like.group(3)}?")
            return None
        if text.startswith("/"):
            return Input(text=text, kind="host")
        if ".." in Path(text).parts:
            self.fail(parts, f"{text!r} leaves the workdir", "give a path inside the workdir, or the host's absolute path")
            return None
        if step.job is None:  # a drift check runs on the controller: a relative path is the pipeline file's
            return Input(text=str((self.base / text).resolve()), kind="host")
        return Input(text=text, kind="workdir")

    def _outputs(self, name: str, step: StepFile, kind: str) -> dict[str, str]:
        at = ("steps", name, "outputs")
        if step.outputs and kind != "job":
            self.fail(at, f"a {kind} step writes no files", "declare outputs on the job step that writes them")
            return {}
        out = {}
        for key, path in step.outputs.items():
            text = path.strip()
            self.bad_outputs.add((name, key))
            if text.startswith("/") or ".." in Path(text).parts or not text or "\0" in text:
                self.fail(at + (key,), f"{path!r} is not a path inside the workdir",
                          "outputs are written by the job, relative to its workdir (out/data.parquet)")
            elif _GLOB & set(text):
                self.fail(at + (key,), f"{path!r} is a pattern", "name the one file or folder the step writes")
            else:
                out[key] = text
                self.bad_outputs.discard((name, key))
        return out

    # ---------------------------------------------------------- references

    def _references(self, name: str, step: Step, steps: dict[str, Step]) -> None:
        at = ("steps", name)
        for i, need in enumerate(step.needs):
            if self._known(at + ("needs", i), need, steps):
                self.sites.setdefault((name, need), at + ("needs", i))
        for i, item in enumerate(step.inputs):
            if item.step is None:
                continue
            parts = self._input_site(name, item.text)
            if not self._known(parts, item.step, steps):
                continue
            self.sites.setdefault((name, item.step), parts)
            outputs = steps[item.step].outputs
            if item.output not in outputs and (item.step, item.output) not in self.bad_outputs:
                close = difflib.get_close_matches(item.output or "", list(outputs), n=1)
                hint = (f"did you mean {item.step}.outputs.{close[0]}?" if close else
                        f"its outputs are {', '.join(outputs)}" if outputs else
                        f"declare it under steps.{item.step}.outputs")
                self.fail(parts, f"step {item.step} has no output {item.output!r}", hint)
        wanted = []
        if step.gate is not None:
            wanted.append((("gate", "challenger"), step.gate.challenger, ("job",)))
            self._champion(at + ("gate",), step.gate)
        if step.register is not None:
            wanted.append((("register", "step"), step.register.step, ("job",)))
        if step.promote is not None:
            wanted += [(("promote", "register"), step.promote.register, ("register",)),
                       (("promote", "gate"), step.promote.gate, ("gate",))]
        for sub, target, kinds in wanted:
            if not self._known(at + sub, target, steps):
                continue
            self.sites.setdefault((name, target), at + sub)
            if steps[target].kind not in kinds:
                self.fail(at + sub, f"step {target} is a {steps[target].kind} step, not a {kinds[0]} step",
                          f"name a {kinds[0]} step")
        if step.drift is not None and step.drift.current is None and step.drift.deployment is None:
            self.fail(at + ("drift",), "says neither what to check (current:) nor whose traffic (deployment:)",
                      "give current: PATH (or STEP.outputs.NAME), or deployment: NAME")
        elif step.drift is not None and step.drift.current is not None and step.drift.deployment is not None:
            self.fail(at + ("drift", "deployment"), "cannot come with current: (the deployment's traffic is the current data)",
                      "keep one of them")

    def _input_site(self, name: str, text: str) -> tuple[Any, ...]:
        step = self.raw.steps[name]
        for i, written in enumerate(step.inputs):
            if written.strip() == text:
                return ("steps", name, "inputs", i)
        for f in ("reference", "current"):
            if step.drift is not None and (getattr(step.drift, f) or "").strip() == text:
                return ("steps", name, "drift", f)
        return ("steps", name)

    def _known(self, parts: tuple[Any, ...], target: str, steps: dict[str, Step]) -> bool:
        if target in steps:
            return True
        if target in self.raw.steps or self.gone(target):  # a step with a mistake of its own, already said
            return False
        close = difflib.get_close_matches(target, list(self.raw.steps), n=1)
        self.fail(parts, f"names no step {target!r}",
                  f"did you mean {close[0]!r}?" if close else f"the steps are {', '.join(self.raw.steps)}")
        return False

    def _champion(self, at: tuple[Any, ...], gate: GateStepFile) -> None:
        try:
            _, alias, _ = parse_model_ref(gate.champion)
        except ValueError as exc:
            self.fail(at + ("champion",), str(exc).split("; ")[0], "write NAME@ALIAS, e.g. iris@production")
            return
        if alias is None:
            self.fail(at + ("champion",), f"{gate.champion!r} names no alias: the champion is the version behind one",
                      f"write {gate.champion.split(':')[0]}@ALIAS, e.g. {gate.champion.split(':')[0]}@production")
        for i, text in enumerate(gate.require):
            try:
                parse_relation(text)
            except FilterError as exc:
                self.fail(at + ("require", i), f"{exc.problem} at column {exc.column}",
                          "e.g. metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005")

    def _cycle(self, steps: dict[str, Step]) -> None:
        upstream = {name: [u for u in step.upstream() if u in steps] for name, step in steps.items()}
        cycle = graph.find_cycle(upstream)
        if cycle:
            where = self.sites.get((cycle[0], cycle[1]), ("steps", cycle[0]))
            shown = cycle if len(cycle) <= 9 else cycle[:4] + [f"… ({len(cycle) - 8} more)"] + cycle[-4:]
            self.fail(where, f"makes a cycle: {' → '.join(shown)} (each waits for the next)",
                      "a step cannot wait for itself, directly or through others: drop one of these links")

    # ------------------------------------------------------------ triggers

    def triggers(self, steps: dict[str, Step]) -> Triggers:
        on = self.raw.on
        schedule = _as_list(on.schedule)
        for i, text in enumerate(schedule):
            problem = cron_problem(text)
            if problem:
                self.fail(("on", "schedule", i) if isinstance(on.schedule, list) else ("on", "schedule"), problem,
                          CRON_EXAMPLE)
        after = _as_list(on.after)
        for i, other in enumerate(after):
            if other == self.raw.name:
                self.fail(("on", "after", i) if isinstance(on.after, list) else ("on", "after"),
                          "names this pipeline itself, so each run would start the next forever",
                          "name another pipeline, or use schedule:")
        drift = self._drift_trigger(on.drift, steps) if on.drift is not None else None
        return Triggers(schedule=schedule, data=_as_list(on.data), drift=drift, after=after)

    def _drift_trigger(self, drift: DriftTrigger, steps: dict[str, Step]) -> DriftTrigger:
        """``on: drift:`` resolved: ``every`` in seconds, a file ``reference``/``config`` absolute; mistakes said."""
        at = ("on", "drift")
        every: float = parse_duration(DEFAULT_DRIFT_EVERY)
        try:
            every = parse_duration(drift.every)
        except ValueError as exc:
            self.fail(at + ("every",), str(exc), "e.g. every: 5m (how often the controller checks new captures)")
        else:
            if every < MIN_DRIFT_EVERY:
                self.fail(at + ("every",), f"{drift.every!r} is under {MIN_DRIFT_EVERY:g} s",
                          "checks cost a scan of the captures: give 1s or more (5m is the default)")
        reference = drift.reference.strip() if drift.reference is not None else None
        if reference is not None:
            ref = REFERENCE.match(reference)
            like = _LOOKS_LIKE_REFERENCE.match(reference)
            if ref:
                self._trigger_reference(at + ("reference",), ref.group(1), ref.group(2), steps)
            elif like and like.group(1) in self.raw.steps and "/" not in reference:
                self.fail(at + ("reference",), f"{reference!r} names step {like.group(1)} but not its outputs",
                          f"did you mean {like.group(1)}.outputs.{like.group(3)}?")
            elif "\0" in reference:
                self.fail(at + ("reference",), "is not a path", "give a file (data/reference.csv) or STEP.outputs.NAME")
            else:
                reference = str((self.base / Path(reference).expanduser()).resolve())
        config = str((self.base / Path(drift.config.strip()).expanduser()).resolve()) if drift.config else None
        return msgspec.structs.replace(drift, reference=reference, config=config, every=every)

    def _trigger_reference(self, parts: tuple[Any, ...], step: str, output: str, steps: dict[str, Step]) -> None:
        """``reference: STEP.outputs.NAME`` of ``on: drift:`` names a job step of this pipeline and one of its outputs."""
        if not self._known(parts, step, steps):
            return
        outputs = steps[step].outputs
        if steps[step].kind != "job":
            self.fail(parts, f"step {step} is a {steps[step].kind} step, not a job step",
                      "name the job step that writes the reference")
        elif output not in outputs and (step, output) not in self.bad_outputs:
            close = difflib.get_close_matches(output, list(outputs), n=1)
            self.fail(parts, f"step {step} has no output {output!r}",
                      f"did you mean {step}.outputs.{close[0]}?" if close else
                      f"its outputs are {', '.join(outputs)}" if outputs else f"declare it under steps.{step}.outputs")


def _job_text(parts: tuple[Any, ...]) -> bool:
    """Where a job holds text whatever it reads like: argv items, environment values, tags, labels."""
    inner = parts[3:] if parts[2:3] == ("job",) else parts[5:] if parts[2:5] == ("job", "set") else None
    return inner is not None and (inner[:1] in (("command",), ("env",), ("tags",)) or inner[:2] == ("constraints", "labels"))


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list) else [value]


def _has(params: dict[str, Any], key: str) -> bool:
    if key in params:
        return True
    head, _, rest = key.partition(".")
    return bool(rest) and isinstance(params.get(head), dict) and _has(params[head], rest)


def code_excludes(pipeline: Pipeline, step: str) -> tuple[str, ...]:
    """The workdir paths to leave out of ``step``'s code hash (``snapshot(..., exclude=...)``).

    Every declared data path of the job steps that share its workdir: their
    workdir inputs, their outputs, and the paths where the upstream outputs
    they read are put (their producers' declared paths). Why all of them:
    the prepare step's output lands in the workdir that train's code is
    packed from; without this, new data would look like new code to every
    step there (and a stale local copy where an upstream output is put,
    which the bundle replaces anyway, would be code).
    """
    job = pipeline.steps[step].job
    if job is None:
        return ()
    out: list[str] = []
    for other in pipeline.steps.values():
        if other.job is None or other.job.workdir != job.workdir:
            continue
        out += [i.text for i in other.inputs if i.kind == "workdir"]
        out += list(other.outputs.values())
        out += [pipeline.steps[i.step].outputs[i.output] for i in other.inputs
                if i.step is not None and i.step in pipeline.steps and i.output in pipeline.steps[i.step].outputs]
    return tuple(dict.fromkeys(out))
