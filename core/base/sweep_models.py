"""The ``sweep:`` block of a job spec, as plain typed data (docs/sweeps.md).

Only the shape is checked here (by msgspec, with the spec's YAML lines);
what types cannot say (an empty grid, ``lo > hi``, too many points) is
checked by the planner, core/sweeps/plan.py, which also expands it.
"""

from __future__ import annotations

import re

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

MAX_SWEEP_POINTS = 10_000  # children of one sweep: past this it is a typo (a grid of 9 x 10 x 10 x 10 x 12 ...)

SpecPath = Annotated[str, Meta(min_length=1, max_length=256)]


class Distribution(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One of: ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{int: [lo, hi]}``, ``{choice: [a, b, ...]}``."""

    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    integer: list[int] | None = msgspec.field(default=None, name="int")  # whole numbers, lo and hi included
    choice: list[Any] | None = None


class RandomSearch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``n`` points drawn with ``seed`` (the same seed gives the same points) from ``space``."""

    n: Annotated[int, Meta(ge=1, le=MAX_SWEEP_POINTS)]
    seed: int = 0
    space: dict[SpecPath, Distribution] = msgspec.field(default_factory=dict)


class Objective(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What "best" means for the sweep's runs: a metric's min or max over each run."""

    metric: Annotated[str, Meta(min_length=1, max_length=256)]
    mode: Literal["min", "max"] = "min"


class SweepSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A grid and/or random search over spec paths; each point is one child job."""

    grid: dict[SpecPath, list[Any]] | None = None
    random: RandomSearch | None = None
    max_parallel: Annotated[int, Meta(ge=1, le=MAX_SWEEP_POINTS)] | None = None
    objective: Objective | None = None


# YAML 1.1 reads 1e-5 as text: its float needs a dot (1.0e-5). A distribution's bounds are numbers by
# definition, so text that is a number in exponent form is read as that number there (nowhere else:
# a param written 1e-5 stays what YAML says, as it always was).
_EXPONENT_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def bounds_as_numbers(data: Any) -> Any:
    """``data`` (a job spec's plain data) with ``1e-5``-style text in uniform/loguniform bounds read as floats."""
    sweep = data.get("sweep") if isinstance(data, dict) else None
    random = sweep.get("random") if isinstance(sweep, dict) else None
    space = random.get("space") if isinstance(random, dict) else None
    if not isinstance(space, dict):
        return data
    fixed = {}
    for path, dist in space.items():
        if isinstance(dist, dict):
            dist = {kind: ([float(v) if isinstance(v, str) and _EXPONENT_NUMBER.fullmatch(v.strip()) else v
                            for v in bounds] if kind in ("uniform", "loguniform") and isinstance(bounds, list)
                           else bounds)
                    for kind, bounds in dist.items()}
        fixed[path] = dist
    return {**data, "sweep": {**sweep, "random": {**random, "space": fixed}}}
