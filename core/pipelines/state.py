"""A pipeline run's plain records: the states a step run goes through, an output's digest, a cache hit.

The vocabulary the store (records.py), the planner (plan.py) and the output
hasher (outputs.py) share, so none of them imports another for a type. Pure
data, no I/O.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from mlfleet.core.pipelines.keys import KeyParts, StepKey

StepState = Literal["queued", "running", "cached", "succeeded", "failed", "skipped", "gate-failed", "cancelled"]
STEP_STATES: tuple[str, ...] = ("queued", "running", "cached", "succeeded", "failed", "skipped", "gate-failed",
                                "cancelled")
ENDED: frozenset[str] = frozenset({"cached", "succeeded", "failed", "skipped", "gate-failed", "cancelled"})
# The states whose outputs a downstream step may read: it waits for nothing more of that step.
PASSED: frozenset[str] = frozenset({"cached", "succeeded"})
RunState = Literal["running", "succeeded", "failed", "cancelled"]
RUN_STATES: tuple[str, ...] = ("running", "succeeded", "failed", "cancelled")


class OutputDigest(msgspec.Struct, frozen=True, kw_only=True):
    """One declared output as hashed when its step ended (outputs.py), and where its bytes are kept.

    ``files`` is None for a file and the file count for a folder (whose
    ``sha256`` is the canonical hash over its sorted relative paths and
    file hashes). ``stored``: the absolute path of the bytes the controller
    keeps (None while they are only on ``host``, at ``path`` in the step's workdir).
    """

    name: str
    path: str  # as declared, relative to the step's workdir
    sha256: str
    size: int
    files: int | None = None
    host: str | None = None
    stored: str | None = None


class CacheHit(msgspec.Struct, frozen=True, kw_only=True):
    """The newest succeeded step run with a key: what a new run with the same key may reuse."""

    run_id: str  # the pipeline run it belongs to
    step: str
    key: str
    parts: KeyParts
    outputs: dict[str, OutputDigest] = msgspec.field(default_factory=dict)

    def output_hashes(self) -> dict[str, str]:
        return {name: digest.sha256 for name, digest in self.outputs.items()}


class Settled(msgspec.Struct, frozen=True, kw_only=True):
    """A step of this run that is past planning (submitted, running or ended), as the store knows it."""

    state: StepState
    key: StepKey | None = None
    outputs: dict[str, str] = msgspec.field(default_factory=dict)  # output name -> sha256 (cached and succeeded)
    reason: str | None = None
