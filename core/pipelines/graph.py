"""The steps' DAG: who waits for whom, in what order they run, and who is touched when one changes.

Pure functions over ``upstream``: a mapping step -> the steps it waits for
(``Step.upstream()``: its ``needs``, the steps whose outputs it reads and its
kind's references), in the file's order. Ties in the order go to the file's
order, so the same file always plans the same way; a cycle is found and named
(``a → b → a``) rather than looping. The spec check (core/pipelines/spec.py)
reports a cycle at the line where it closes; the service walks
:func:`topological_order` and asks :func:`dependents` which cached results a
change makes stale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mlfleet.core.pipelines.models import Pipeline

Upstream = Mapping[str, Sequence[str]]


def upstream_of(pipeline: Pipeline) -> dict[str, list[str]]:
    """Each step's upstream steps, in the file's order."""
    return {name: step.upstream() for name, step in pipeline.steps.items()}


def find_cycle(upstream: Upstream) -> list[str] | None:
    """A cycle as the path that closes it (``[a, b, a]``: a needs b, b needs a), or None.

    Depth-first from each step in file order, so the cycle named is the
    first one the file's order meets; names that are not steps are ignored
    (the spec reports them as unknown).
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for up in upstream.get(name, ()):
            if up not in upstream:
                continue
            if state.get(up) == 1:
                return path[path.index(up):] + [up]
            if state.get(up) is None:
                found = visit(up)
                if found:
                    return found
        path.pop()
        state[name] = 2
        return None

    for name in upstream:
        if state.get(name) is None:
            found = visit(name)
            if found:
                return found
    return None


def topological_order(upstream: Upstream) -> list[str]:
    """Every step after all it waits for; among the ready ones, the file's order first. Raises ValueError on a cycle."""
    remaining = {name: {u for u in ups if u in upstream and u != name} | ({name} if name in ups else set())
                 for name, ups in upstream.items()}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(remaining):
        ready = next((n for n in remaining if n not in done and remaining[n] <= done), None)
        if ready is None:
            cycle = find_cycle(upstream) or []
            raise ValueError(f"the steps form a cycle: {' → '.join(cycle)}")
        order.append(ready)
        done.add(ready)
    return order


def downstream_of(upstream: Upstream) -> dict[str, list[str]]:
    """The reverse edges: each step -> the steps that wait for it directly."""
    out: dict[str, list[str]] = {name: [] for name in upstream}
    for name, ups in upstream.items():
        for up in dict.fromkeys(ups):
            if up in out and name not in out[up]:
                out[up].append(name)
    return out


def dependents(upstream: Upstream, step: str) -> set[str]:
    """Every step that waits for ``step``, directly or through others (``step`` itself not included)."""
    down = downstream_of(upstream)
    seen: set[str] = set()
    todo = list(down.get(step, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(down.get(name, ()))
    seen.discard(step)
    return seen


def ancestors(upstream: Upstream, step: str) -> set[str]:
    """Every step ``step`` waits for, directly or through others."""
    seen: set[str] = set()
    todo = [u for u in upstream.get(step, ()) if u in upstream]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(u for u in upstream.get(name, ()) if u in upstream)
    seen.discard(step)
    return seen
