"""A sweep's points: grid expansion and seeded random sampling, and the checks types cannot express.

Pure: the ``sweep:`` block as plain data in (what ``to_plain`` gives of a
:class:`~mlfleet.core.base.sweep_models.SweepSpec`), a list of points out,
each ``{spec path: value}``, in a fixed order. The same block always gives
the same points (random draws come from ``random.Random(seed)`` only), so
the client and the controller expand it alike, and a retried submit makes
the same children.

With both ``grid:`` and ``random:``, every grid point is combined with
every random draw (grid points outer).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from mlfleet.core.base.sweep_models import MAX_SWEEP_POINTS

KINDS = ("uniform", "loguniform", "int", "choice")
# Paths a sweep may not set: the children's names are the sweep's name and their number, and a
# child has no sweep of its own.
_NOT_SWEPT = ("name", "sweep")


@dataclass(frozen=True)
class Problem:
    """One mistake in the block: where (a path in the spec, for its line), what, and what to do."""

    parts: tuple[Any, ...]
    problem: str
    hint: str = ""


def count_points(sweep: dict[str, Any]) -> int:
    """How many children the block makes, without making them (the grid may be absurdly large)."""
    grid = sweep.get("grid") or {}
    total = math.prod(len(values) for values in grid.values()) if grid else 1
    search = sweep.get("random")
    return total * (search["n"] if search else 1)


def problems(sweep: dict[str, Any]) -> list[Problem]:
    """Everything wrong with the block that msgspec's types did not catch."""
    found: list[Problem] = []
    grid, search = sweep.get("grid"), sweep.get("random")
    if grid is None and search is None:
        return [Problem(("sweep",), "has neither grid: nor random:",
                        "add grid: {params.lr: [0.1, 0.01]} or random: {n: 10, space: {...}}")]
    if grid is not None and not grid:
        found.append(Problem(("sweep", "grid"), "is empty", "give each swept path a list of values"))
    for path, values in (grid or {}).items():
        found.extend(_path_problems(("sweep", "grid", path), path))
        if not values:
            found.append(Problem(("sweep", "grid", path), "is an empty list", "give it one value at least"))
    space = (search or {}).get("space") or {}
    if search is not None and not space:
        found.append(Problem(("sweep", "random", "space"), "is empty",
                             "say what to draw, e.g. space: {params.lr: {loguniform: [0.0001, 0.1]}}"))
    for path, dist in space.items():
        where = ("sweep", "random", "space", path)
        found.extend(_path_problems(where, path))
        if path in (grid or {}):
            found.append(Problem(where, "is in grid: too", "sweep each path one way"))
        found.extend(_distribution_problems(where, dist))
    if not found and (total := count_points(sweep)) > MAX_SWEEP_POINTS:
        found.append(Problem(("sweep",), f"makes {total:,} points, more than {MAX_SWEEP_POINTS:,}",
                             "sweep fewer values, or use random: with n"))
    return found


def _path_problems(where: tuple[Any, ...], path: str) -> list[Problem]:
    head = path.split(".", 1)[0].split("[", 1)[0]
    if head in _NOT_SWEPT:
        return [Problem(where, f"{head} cannot be swept", "children are named NAME-0, NAME-1, ...; sweep params, "
                               "resources or env instead")]
    return []


def _distribution_problems(where: tuple[Any, ...], dist: dict[str, Any]) -> list[Problem]:
    given = [k for k in KINDS if dist.get(k) is not None]
    if len(given) != 1:
        return [Problem(where, "must give one distribution" if not given else f"gives {' and '.join(given)}",
                        "one of {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {int: [lo, hi]}, {choice: [a, b]}")]
    kind = given[0]
    values = dist[kind]
    at = where + (kind,)
    if kind == "choice":
        return [] if values else [Problem(at, "is an empty list", "give one value at least")]
    if len(values) != 2:
        return [Problem(at, f"must be [lo, hi], got {len(values)} value{'s' if len(values) != 1 else ''}")]
    lo, hi = values
    if kind != "int" and not all(math.isfinite(v) for v in (lo, hi)):
        return [Problem(at, "must be finite numbers")]
    if lo > hi:
        return [Problem(at, f"lo {lo:g} is above hi {hi:g}", "write [lo, hi], smallest first")]
    if kind == "loguniform" and lo <= 0:
        return [Problem(at, f"lo must be above 0 for loguniform, got {lo:g}", "use uniform for ranges that reach 0")]
    return []


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the last path changing fastest (as nested loops in the order written)."""
    paths = list(grid)
    return [dict(zip(paths, combo)) for combo in itertools.product(*(grid[p] for p in paths))]


def random_points(space: dict[str, dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` draws, each path drawn in the order written, from one generator seeded with ``seed``."""
    rng = random.Random(seed)
    return [{path: draw(rng, dist) for path, dist in space.items()} for _ in range(n)]


def draw(rng: random.Random, dist: dict[str, Any]) -> Any:
    if dist.get("uniform") is not None:
        lo, hi = dist["uniform"]
        return rng.uniform(lo, hi)
    if dist.get("loguniform") is not None:
        lo, hi = dist["loguniform"]
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist.get("int") is not None:
        lo, hi = dist["int"]
        return rng.randint(lo, hi)
    return rng.choice(dist["choice"])


def plan(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of a block that has no :func:`problems` (ValueError otherwise)."""
    found = problems(sweep)
    if found:
        raise ValueError(f"{found[0].parts}: {found[0].problem}")
    grid = grid_points(sweep["grid"]) if sweep.get("grid") else [{}]
    search = sweep.get("random")
    if not search:
        return grid
    draws = random_points(search["space"], search["n"], search.get("seed") or 0)
    return [{**g, **r} for g in grid for r in draws]
