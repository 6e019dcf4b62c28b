"""Step keys: the sha256 of everything a step's result depends on, kept with its named parts.

"A step's key is the sha256 of its resolved spec (command, params,
env_hash), its code snapshot hash and the content hashes of its inputs
(upstream outputs included)" (issue 17). Two runs of a step with the same key
would compute the same thing, so the service reuses the first one's
outputs instead of running it again; a step re-runs exactly when a part of
its key changed. The parts are kept (:class:`KeyParts`) so that ``pipeline
why RUN STEP`` can say which one (core/pipelines/explain.py).

The code hash is the step's workdir snapshot *without* the pipeline's
declared data files (``snapshot(..., exclude=code_excludes(...))``), so a
data change never looks like a code change to a step that does not read it.

Canonical encoding: JSON with sorted keys and no spaces; a float that is a
whole number is the integer (``lr: 1`` and ``lr: 1.0`` are one value), other
floats their shortest round-trip text, NaN and infinities tagged strings, a
bool never a number. So the same spec always gives the same bytes, whatever
YAML or Python did to it on the way. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from mlfleet.core.base.models import to_plain
from mlfleet.core.pipelines.graph import topological_order, upstream_of
from mlfleet.core.pipelines.models import Pipeline, Step

KEY_VERSION = 3  # bumped when what a key covers changes, so no old key matches a new meaning
# A job's fields that say where and when it runs, not what it computes: moving a step to another host
# (constraints), raising its priority or its retries is no reason to run it again.
SCHEDULING_FIELDS = ("priority", "retries", "constraints")


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data with one spelling per value (see the module's docstring)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return {"float": "nan"}
        if math.isinf(value):
            return {"float": "inf" if value > 0 else "-inf"}
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"a key must be text, not {type(k).__name__} ({k!r})")
            out[k] = canonical(v)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return canonical(to_plain(value))
    raise TypeError(f"{type(value).__name__} has no canonical encoding")


def canonical_bytes(value: Any) -> bytes:
    """The bytes a hash is taken of: canonical JSON, sorted keys, no spaces, UTF-8."""
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_bytes(value)).hexdigest()


class KeyParts(msgspec.Struct, frozen=True, kw_only=True):
    """What a step key is made of, each part named, so a change can be told part by part.

    ``params`` keeps the values (small, and "params.lr changed 0.1 → 0.2"
    needs them); the rest are hashes. ``inputs`` maps each input as written
    (``prepare.outputs.data``, ``data/train.csv``) to its content's sha256;
    ``upstream`` maps each step this one waits for without reading a file
    of it (``needs:``, a gate's challenger, a register's step) to that step's key.
    """

    spec: str  # sha256 of the step's resolved spec, its params left to their own part
    params: dict[str, Any]  # the pipeline params the step names, and a job's own params (job.KEY)
    env: str | None  # the job's env_hash (its resolved lockfile); None: the node's own environment, or not a job
    code: str | None  # the workdir snapshot's sha256 without declared data files; None: not a job
    inputs: dict[str, str]
    upstream: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def params_hash(self) -> str:
        """sha256 of the params part, for a table column or a quick equality (explain reads the values)."""
        return sha256_of(self.params)


class StepKey(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    parts: KeyParts


def step_spec(step: Step, placement: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The resolved spec a key covers: the step's kind fields and its wiring, params left to their own part.

    A job's ``name`` is left out (the pipeline names its jobs; renaming a
    pipeline is no reason to re-run its steps), and so are its ``params``
    (a part of their own) and its ``workdir``: the code hash stands for what
    is in it, so the same code in another checkout is the same step. So are
    the fields that only place it (``SCHEDULING_FIELDS``).

    Inputs are a set (sorted: listing them in another order computes the
    same thing). ``placement``: each upstream output the step reads -> the
    path its producer declared, which is where the reader finds it
    (bundle.py): the same bytes at another path are another input.
    """
    plain: dict[str, Any] = {"kind": step.kind, "needs": sorted(step.needs), "outputs": dict(step.outputs),
                             "inputs": sorted(i.text for i in step.inputs)}
    if placement:
        plain["placed"] = dict(sorted(placement.items()))
    if step.job is not None:
        job = to_plain(step.job)
        for dropped in ("name", "params", "workdir", *SCHEDULING_FIELDS):
            job.pop(dropped, None)
        for optional in ("environment", "sweep", "service"):  # absent is absent, as JobSpec.content_hash says
            if job.get(optional) is None:
                job.pop(optional, None)
        plain["job"] = job
    for kind in ("drift", "gate", "register", "promote"):
        if getattr(step, kind) is not None:
            plain[kind] = to_plain(getattr(step, kind))
    return plain


def step_params(step: Step) -> dict[str, Any]:
    """The params a step's result depends on: the pipeline's it names, and a job's own (as ``job.KEY``)."""
    out = dict(step.params)
    if step.job is not None:
        out.update({f"job.{k}": v for k, v in step.job.params.items()})
    return out


def step_key(spec: Mapping[str, Any], params: Mapping[str, Any], env_hash: str | None, code_hash: str | None,
             inputs: Mapping[str, str], upstream: Mapping[str, str] | None = None) -> StepKey:
    """The key of one step from its parts: sha256 over the canonical encoding of all of them (and KEY_VERSION)."""
    parts = KeyParts(spec=sha256_of(spec), params=canonical(dict(params)), env=env_hash, code=code_hash,
                     inputs=dict(sorted(inputs.items())), upstream=dict(sorted((upstream or {}).items())))
    return StepKey(key=sha256_of({"v": KEY_VERSION, **to_plain(parts)}), parts=parts)


class StepFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the service measured for one step before its key can be made (none of it is in the spec)."""

    env_hash: str | None = None
    code_hash: str | None = None
    # workdir or host input as written -> content sha256; a gate's champion as "champion NAME@ALIAS" -> the
    # version behind the alias now (its model sha256), so a new champion is a new decision.
    files: dict[str, str] = msgspec.field(default_factory=dict)


MISSING = "missing"  # an input's hash when the service found nothing there: a key part like any other
OutputsOf = Callable[[str, StepKey], "Mapping[str, str] | None"]


def champion_input(step: Step) -> str | None:
    """The input name under which a gate's champion identity enters its key (None for other kinds)."""
    return f"champion {step.gate.champion}" if step.gate is not None else None


def placement_of(pipeline: Pipeline, step: Step) -> dict[str, str]:
    """Each upstream output ``step`` reads (as written) -> the path its producer declared: where the reader finds it."""
    out: dict[str, str] = {}
    for item in step.inputs:
        if item.step is not None and item.step in pipeline.steps:
            out[item.text] = pipeline.steps[item.step].outputs.get(item.output or "", "")
    return out


def key_of_step(step: Step, facts: StepFacts, produced: Mapping[str, Mapping[str, str]],
                keys: Mapping[str, StepKey], placement: Mapping[str, str] | None = None) -> StepKey:
    """:func:`step_key` for a resolved step, from what was measured and what its upstream steps made.

    Files read from another step enter by content (``produced[step][output]``),
    so an upstream re-run that writes the same bytes changes nothing below
    it; a step waited for without reading its files enters by its key.
    """
    inputs: dict[str, str] = {}
    for item in step.inputs:
        if item.step is not None:
            inputs[item.text] = dict(produced.get(item.step) or {}).get(item.output or "", MISSING)
        else:
            inputs[item.text] = facts.files.get(item.text, MISSING)
    champion = champion_input(step)
    if champion is not None:
        inputs[champion] = facts.files.get(champion, "none")
    read = {i.step for i in step.inputs if i.step is not None}
    upstream = {up: keys[up].key for up in step.upstream() if up not in read}
    return step_key(step_spec(step, placement), step_params(step), facts.env_hash, facts.code_hash, inputs, upstream)


def pipeline_keys(pipeline: Pipeline, facts: Mapping[str, StepFacts], outputs_of: OutputsOf) -> dict[str, StepKey]:
    """Every step's key that can be known now, in topological order.

    ``outputs_of(step, key)`` answers the content hashes of the outputs of
    the run of ``step`` with that key (a cached run's, or one just finished),
    or None while there is none: the steps that read them wait, and their
    keys are not in the answer. This is the loop the service runs after each
    step ends; a step whose key a finished run already has is reused.
    """
    keys: dict[str, StepKey] = {}
    produced: dict[str, Mapping[str, str]] = {}
    for name in topological_order(upstream_of(pipeline)):
        step = pipeline.steps[name]
        read = {i.step for i in step.inputs if i.step is not None}
        if any(up not in keys for up in step.upstream()) or any(up not in produced for up in read):
            continue
        keys[name] = key_of_step(step, facts.get(name, StepFacts()), produced, keys, placement_of(pipeline, step))
        made = outputs_of(name, keys[name])
        if made is not None:
            produced[name] = dict(made)
    return keys
