"""A sweep spec's children: the base spec with each point's values set, each one checked by the job schema.

Used by the client (errors at the sweep's lines, before anything is sent)
and by the controller (the same expansion from the spec it was sent, so a
request made by hand is held to the same rules). A child is the spec
without its ``sweep:`` block, named ``<name>-<i>``, with the point set the
way ``--set`` sets a path (core/jobs/overrides.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlfleet.core.base.errors import SpecError, SpecErrors, UsageError
from mlfleet.core.base.models import JobSpec, to_plain
from mlfleet.core.base.yamlsource import dotted
from mlfleet.core.jobs.overrides import parse_path, set_path
from mlfleet.core.jobs.spec import validate_job_spec
from mlfleet.core.sweeps import plan

LineOf = Callable[[tuple[Any, ...]], "int | None"]


@dataclass(frozen=True)
class Child:
    index: int
    point: dict[str, Any]  # spec path -> value
    spec: JobSpec


def sweep_block(spec: JobSpec) -> dict[str, Any]:
    assert spec.sweep is not None
    return to_plain(spec.sweep)


def children(spec: JobSpec, display: str = "job spec", line_of: LineOf | None = None) -> list[Child]:
    """Every child of a spec with a ``sweep:`` block, or the first mistakes (SpecError) at the block's lines."""
    block = sweep_block(spec)
    found = plan.problems(block)
    if found:
        _raise([SpecError(display, line_of(p.parts) if line_of else None, dotted(p.parts), p.problem, p.hint)
                for p in found[:5]])
    points = plan.plan(block)
    base = to_plain(spec)
    base.pop("sweep", None)
    paths = {path: _path(path, block, display, line_of) for path in points[0]} if points else {}
    out = []
    for i, point in enumerate(points):
        data = dict(base, name=f"{spec.name}-{i}")
        for path, value in point.items():
            data = set_path(data, paths[path], value, f"sweep path {path}")
        try:
            child = validate_job_spec(data)
        except SpecError as exc:
            raise _blame(exc, i, point, block, display, line_of) from None
        out.append(Child(i, point, child))
    return out


def _where(path: str, block: dict[str, Any]) -> tuple[Any, ...]:
    """Where a swept path is written: under grid: or under random.space."""
    return ("sweep", "grid", path) if path in (block.get("grid") or {}) else ("sweep", "random", "space", path)


def _path(path: str, block: dict[str, Any], display: str, line_of: LineOf | None) -> tuple[Any, ...]:
    try:
        return parse_path(path, path)
    except UsageError:
        where = _where(path, block)
        raise SpecError(display, line_of(where) if line_of else None, dotted(where), "is not a spec path",
                        "write fields with dots and list items with [N], e.g. params.lr or command[1]") from None


def _blame(error: SpecError, index: int, point: dict[str, Any], block: dict[str, Any], display: str,
           line_of: LineOf | None) -> SpecError:
    """A child's mistake at the line of the swept path that caused it (else at the sweep: block)."""
    errors = error.errors if isinstance(error, SpecErrors) else [error]
    first = errors[0]
    field = first.field or ""
    culprit = next((p for p in point if field == p or field.startswith(p + ".") or field.startswith(p + "[")), None)
    if culprit is None:
        where: tuple[Any, ...] = ("sweep",)
        shown = f"{first.field}: " if first.field else ""
    else:
        where = _where(culprit, block)
        shown = "" if field == culprit else f"{field}: "
    value = point.get(culprit) if culprit else None
    said = f"point {index}" + (f" ({culprit}={value!r})" if culprit else "")
    return SpecError(display, line_of(where) if line_of else None, dotted(where),
                     f"{said}: {shown}{first.problem}", first.hint)


def _raise(errors: list[SpecError]) -> None:
    raise errors[0] if len(errors) == 1 else SpecErrors(errors)
