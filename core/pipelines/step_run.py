"""What a step that runs inside the controller (drift, gate, register, promote) is given, and what it answers.

The service (core/pipelines/service.py) makes one :class:`StepRun` per step
it executes; the executors (core/pipelines/executors.py) read the
controller's store and capabilities through it and answer a
:class:`StepOutcome`. Kept apart from both so neither imports the other
for a type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlfleet.core.pipelines.models import Pipeline, Step

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext

OutcomeState = Literal["succeeded", "failed", "gate-failed"]


@dataclass(frozen=True)
class StepRun:
    """One step of one pipeline run, as an executor sees it."""

    ctx: "ControllerContext"
    run_id: str  # the pipeline run
    pipeline: Pipeline
    step: Step
    actor: str  # who started the pipeline run (a trigger's runs: the controller's user)
    # The tracking run id behind a job step of this run (a cached step's: the run it reused); None: none.
    job_run: Callable[[str], "str | None"]
    # Where the controller keeps an upstream step's output: (step, output name) -> absolute path; None: none.
    output_path: Callable[[str, str], "Path | None"]
    # The outcome of an earlier non-job step of this run (a promote reads its gate's and register's).
    outcome_of: Callable[[str], "StepOutcome | None"] = lambda step: None


@dataclass(frozen=True)
class StepOutcome:
    """How a step ended: its state, one sentence, and what ``pipeline show`` prints of it."""

    state: OutcomeState
    reason: str
    details: dict[str, Any] = field(default_factory=dict)  # plain data (JSON)
