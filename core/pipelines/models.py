"""A pipeline as plain data: the file's schema (``*File``) and the resolved pipeline the rest of mlfleet reads.

Two layers, because a step's ``job:`` is checked by the jobs capability's own
validator (it arrives here as a mapping) and comes out a :class:`JobSpec`;
everything else is msgspec's to check. Nothing here does I/O: core/pipelines/spec.py
reads and validates, the graph, keys and gates modules read :class:`Pipeline`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mlfleet.core.base.models import JobSpec, Name

# A step's name is a word of a reference (``prepare.outputs.data``), so it holds no dot.
STEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
StepName = Annotated[str, Meta(min_length=1, max_length=64, pattern=STEP_NAME_PATTERN)]
OutputName = Annotated[str, Meta(min_length=1, max_length=64, pattern=STEP_NAME_PATTERN)]
PathText = Annotated[str, Meta(min_length=1, max_length=4096)]
Text = Annotated[str, Meta(min_length=1, max_length=4096)]
Concurrency = Literal["queue", "replace", "skip"]
STEP_KINDS = ("job", "drift", "gate", "register", "promote")
MAX_STEPS = 200
MAX_REQUIREMENTS = 32


DEFAULT_DRIFT_EVERY = "5m"


class DriftTrigger(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``on: drift:``: run when a drift check of this deployment's captured traffic reports drift.

    Without ``reference:`` the trigger reacts to drift reports someone saved
    (``drift check --deployment D --save``). With it the controller checks
    the deployment's new captures itself every ``every`` (core/pipelines/
    trigger_loop.py): ``reference`` is a file (resolved to an absolute path at
    load, from the pipeline file's folder) or ``STEP.outputs.NAME``, the output
    of that step in this pipeline's newest succeeded or cached run.
    """

    deployment: Name
    reference: PathText | None = None  # what the captures are compared with; None: only saved reports fire
    config: PathText | None = None  # a drift.yaml (core/drift/config.py), relative to the pipeline file
    every: Annotated[str, Meta(min_length=1, max_length=64)] | float | int = DEFAULT_DRIFT_EVERY  # between checks


class TriggersFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``on:``: what starts a run besides ``pipeline run`` (core/pipelines/triggers.py decides when)."""

    schedule: Annotated[list[Text], Meta(max_length=16)] | Text | None = None  # cron, five fields
    data: Annotated[list[PathText], Meta(max_length=100)] | PathText | None = None  # files or globs
    drift: DriftTrigger | None = None
    after: Annotated[list[Name], Meta(max_length=16)] | Name | None = None  # another pipeline's name


class DriftStepFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``drift:``: compare ``current`` (or a deployment's captured traffic) with ``reference``."""

    reference: Text
    current: Text | None = None
    deployment: Name | None = None
    config: PathText | None = None  # a drift.yaml, relative to the pipeline file
    fail_on_drift: bool = False  # true: drift fails the step (and the run); false: it is recorded


class GateStepFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``gate:``: the ``challenger`` step's run against the model version behind ``champion`` (NAME@ALIAS)."""

    challenger: StepName
    champion: Annotated[str, Meta(min_length=1, max_length=300)]
    require: Annotated[list[Annotated[str, Meta(min_length=1, max_length=2000)]], Meta(min_length=1,
                                                                                           max_length=MAX_REQUIREMENTS)]


class RegisterStepFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``register:``: an artifact of ``step``'s run becomes a new version of ``model``."""

    model: Name
    step: StepName
    artifact: Text  # as the run logged it (track.log_artifact), e.g. model.npz


class PromoteStepFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``promote:``: move ``alias`` to the version ``register`` made, when ``gate`` passed."""

    alias: Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z][A-Za-z0-9._-]*$")]
    register: StepName
    gate: StepName
    reason: Annotated[str, Meta(min_length=1, max_length=1000)] | None = None


class StepFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One entry of ``steps:``: exactly one kind (job, drift, gate, register, promote) and its wiring."""

    job: dict[str, Any] | None = None  # job spec fields, or {spec: FILE, set: {PATH: VALUE}}
    drift: DriftStepFile | None = None
    gate: GateStepFile | None = None
    register: RegisterStepFile | None = None
    promote: PromoteStepFile | None = None
    needs: Annotated[list[StepName], Meta(max_length=MAX_STEPS)] = msgspec.field(default_factory=list)
    inputs: Annotated[list[PathText], Meta(max_length=1000)] = msgspec.field(default_factory=list)
    outputs: Annotated[dict[OutputName, PathText], Meta(max_length=100)] = msgspec.field(default_factory=dict)


class PipelineFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """pipeline.yaml as written."""

    name: Name
    project: Name = "default"
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    on: TriggersFile = msgspec.field(default_factory=TriggersFile)
    concurrency: Concurrency = "queue"
    steps: Annotated[dict[StepName, StepFile], Meta(min_length=1, max_length=MAX_STEPS)]


# ------------------------------------------------------------------ resolved

InputKind = Literal["step", "workdir", "host"]


class Input(msgspec.Struct, frozen=True, kw_only=True):
    """One declared input: another step's output (``step``, ``output`` set), a workdir path or a host path."""

    text: str  # as written after params: the name explain() uses
    kind: InputKind
    step: str | None = None
    output: str | None = None


class Triggers(msgspec.Struct, frozen=True, kw_only=True):
    schedule: list[str] = msgspec.field(default_factory=list)
    data: list[str] = msgspec.field(default_factory=list)
    drift: DriftTrigger | None = None
    after: list[str] = msgspec.field(default_factory=list)


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """A step ready to plan: its kind's fields with the pipeline's params filled in, a job as its JobSpec."""

    name: str
    kind: Literal["job", "drift", "gate", "register", "promote"]
    job: JobSpec | None = None  # workdir absolute
    drift: DriftStepFile | None = None
    gate: GateStepFile | None = None
    register: RegisterStepFile | None = None
    promote: PromoteStepFile | None = None
    needs: list[str] = msgspec.field(default_factory=list)
    inputs: list[Input] = msgspec.field(default_factory=list)
    outputs: dict[str, str] = msgspec.field(default_factory=dict)
    params: dict[str, Any] = msgspec.field(default_factory=dict)  # the pipeline params this step names: its key has them

    def upstream(self) -> list[str]:
        """The steps this one waits for: ``needs``, the steps whose outputs it reads, and its kind's own references."""
        names = list(self.needs)
        names += [i.step for i in self.inputs if i.step is not None]
        if self.gate is not None:
            names.append(self.gate.challenger)
        if self.register is not None:
            names.append(self.register.step)
        if self.promote is not None:
            names += [self.promote.register, self.promote.gate]
        return list(dict.fromkeys(names))


def decode_pipeline(data: Any) -> "Pipeline":
    """A Pipeline from its stored JSON text (str or bytes) or its builtins (a request), sizes and durations included.

    Why one function: a job's ``memory: 512MiB`` or ``timeout: 1h`` travels as
    a number and decodes back only with the job spec's own hook; without it
    every pipeline with such a step was refused by ``pipeline_run`` (the
    shipped closed loop has one) and unreadable when stored.
    """
    from mlfleet.core.base.models import spec_dec_hook

    if isinstance(data, (str, bytes)):
        return msgspec.json.decode(data, type=Pipeline, dec_hook=spec_dec_hook)
    return msgspec.convert(data, Pipeline, dec_hook=spec_dec_hook, str_keys=True)


def encode_pipeline(pipeline: "Pipeline") -> str:
    """The JSON text a pipeline is stored as (sizes as bytes, durations as seconds: what decode_pipeline reads)."""
    from mlfleet.core.base.models import to_plain

    return msgspec.json.encode(to_plain(pipeline)).decode()


class Pipeline(msgspec.Struct, frozen=True, kw_only=True):
    """A validated pipeline: what the service plans runs of."""

    name: str
    project: str
    params: dict[str, Any]
    on: Triggers
    concurrency: Concurrency
    steps: dict[str, Step]  # in the file's order
    source: str = ""  # the file it was read from (absolute), for messages
