"""A pipeline's DAG drawn as text for a terminal: ``pipeline graph``, ``pipeline show`` and the TUI's Pipelines view.

Pure and deterministic: the same steps, edges, states and width give the
same text. Steps are one-line boxes in topological layers (a step's layer is
one more than its deepest upstream step; ties keep the file's order, from
:func:`~mlfleet.core.pipelines.graph.topological_order`). Under each layer
the edges into the next are written as ``a, b ─▶ c, d`` lines, grouped by
the set of steps they come from: an edge that skips layers (train → gate)
is as plain as one that does not, and a 200-step fan-out is one line, not
200 crossing wires (``prepare ─▶ the 198 steps below`` when the names of a
whole layer would fill more than two lines). A layer wider than ``width`` wraps onto more
rows of boxes, and one that would need more than :data:`BOX_ROWS` rows is
drawn as ``[✓ name]`` chips, a row of them a line (a third of the height);
when even one box is wider than ``width``, the DAG falls back
to an indented list (one step a line, indented by layer, ``← upstream``).
Every line fits ``width`` (a name longer than the whole width is cut with
``…``, the only case where a name is not shown whole).

A box shows the step's name and, when a state is given, its symbol
(:data:`SYMBOLS`); a gate step that succeeded is drawn as "gate passed",
and the symbols used are explained on a last line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlfleet.core.pipelines import graph
from mlfleet.core.pipelines.models import Pipeline

# The state of a step as a symbol and its words, in the order the legend lists them.
SYMBOLS: dict[str, tuple[str, str]] = {
    "queued": ("○", "queued"),
    "running": ("●", "running"),
    "succeeded": ("✓", "succeeded"),
    "cached": ("↺", "cached"),
    "gate-passed": ("✔", "gate passed"),
    "gate-failed": ("✘", "gate failed"),
    "failed": ("✗", "failed"),
    "skipped": ("–", "skipped"),
    "cancelled": ("⊘", "cancelled"),
}
UNKNOWN = ("?", "unknown state")
ARROW = " ─▶ "
GAP = 2  # spaces between two boxes of a row
EDGE_INDENT = "  "
MIN_WIDTH = 8
BOX_ROWS = 3  # a layer that needs more rows of boxes than this is drawn as ``[name]`` chips, a row a line


def shown_state(state: str | None, kind: str | None) -> str | None:
    """The state as drawn: a gate step that succeeded is ``gate-passed``."""
    if state == "succeeded" and kind == "gate":
        return "gate-passed"
    return state


def symbol(state: str | None, kind: str | None = None) -> str:
    """The one-character symbol of a step's state ("" without a state)."""
    shown = shown_state(state, kind)
    if shown is None:
        return ""
    return SYMBOLS.get(shown, UNKNOWN)[0]


def layers(upstream: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """The steps by layer: a step sits one layer below its deepest upstream step; within a layer, topological order."""
    order = graph.topological_order(upstream)
    depth: dict[str, int] = {}
    for name in order:
        depth[name] = 1 + max((depth[u] for u in upstream[name] if u in depth and u != name), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in order:
        out[depth[name]].append(name)
    return out


def edges(upstream: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Every edge (from, to) once, targets in topological order, sources in theirs."""
    position = {name: i for i, name in enumerate(graph.topological_order(upstream))}
    out = []
    for target in sorted(upstream, key=position.__getitem__):
        for source in sorted({u for u in upstream[target] if u in position and u != target}, key=position.__getitem__):
            out.append((source, target))
    return out


def draw(upstream: Mapping[str, Sequence[str]], width: int = 100, states: Mapping[str, str] | None = None,
         kinds: Mapping[str, str] | None = None) -> str:
    """The DAG as text no wider than ``width`` (see the module's doc); ``states`` and ``kinds`` by step name."""
    width = max(MIN_WIDTH, width)
    states = states or {}
    kinds = kinds or {}
    labels = {name: _label(name, states.get(name), kinds.get(name)) for name in upstream}
    if not upstream:
        return "(no steps)"
    by_layer = layers(upstream)
    if max(len(label) for label in labels.values()) + 4 > width:
        lines = _indented(upstream, by_layer, labels, width)
    else:
        lines = _boxed(upstream, by_layer, labels, width)
    legend = _legend(states, kinds, upstream, width)
    return "\n".join(lines + legend)


def draw_pipeline(pipeline: Pipeline, width: int = 100) -> str:
    """A pipeline file's DAG, without states (``pipeline graph FILE``)."""
    return draw(graph.upstream_of(pipeline), width, kinds={n: s.kind for n, s in pipeline.steps.items()})


def draw_run(run: Mapping[str, Any], width: int = 100) -> str:
    """A run as ``pipeline_show`` answers it, each step with its state."""
    steps = run.get("steps") or []
    upstream = {s["step"]: list((run.get("upstream") or {}).get(s["step"]) or []) for s in steps}
    return draw(upstream, width, states={s["step"]: s.get("state") for s in steps},
                kinds={s["step"]: s.get("kind") for s in steps})


# ------------------------------------------------------------------ parts

def _label(name: str, state: str | None, kind: str | None) -> str:
    mark = symbol(state, kind)
    return f"{mark} {name}" if mark else name


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def _boxed(upstream: Mapping[str, Sequence[str]], by_layer: list[list[str]], labels: dict[str, str],
           width: int) -> list[str]:
    incoming = _edge_groups(upstream, by_layer)
    lines: list[str] = []
    for depth, layer in enumerate(by_layer):
        if depth:
            for sources, targets in incoming[depth]:
                lines += _wrapped(_as_layer(sources, by_layer[depth - 1], "above", width),
                                  _as_layer(targets, layer, "below", width), width)
        rows = _rows([labels[n] for n in layer], width)
        if len(rows) > BOX_ROWS:  # a wide fan-out: one line per row of steps, not three
            lines += _wrap_plain([f"[{labels[n]}]" for n in layer], width)
            continue
        for row in rows:
            lines += _box_row(row)
    return lines


def _rows(labels: list[str], width: int) -> list[list[str]]:
    """Labels packed into rows of boxes that fit ``width``, in order."""
    rows: list[list[str]] = [[]]
    used = 0
    for label in labels:
        need = len(label) + 4
        if rows[-1] and used + GAP + need > width:
            rows.append([])
            used = 0
        used += (GAP if rows[-1] else 0) + need
        rows[-1].append(label)
    return rows


def _box_row(labels: list[str]) -> list[str]:
    gap = " " * GAP
    top = gap.join("┌" + "─" * (len(t) + 2) + "┐" for t in labels)
    mid = gap.join(f"│ {t} │" for t in labels)
    bottom = gap.join("└" + "─" * (len(t) + 2) + "┘" for t in labels)
    return [top, mid, bottom]


def _edge_groups(upstream: Mapping[str, Sequence[str]],
                 by_layer: list[list[str]]) -> list[list[tuple[list[str], list[str]]]]:
    """Per layer: (sources, targets) for the edges into it, targets grouped by the same set of sources."""
    position = {name: i for i, name in enumerate(n for layer in by_layer for n in layer)}
    out: list[list[tuple[list[str], list[str]]]] = []
    for layer in by_layer:
        groups: dict[tuple[str, ...], list[str]] = {}
        for target in layer:
            sources = tuple(sorted({u for u in upstream[target] if u in position and u != target},
                                   key=position.__getitem__))
            if sources:
                groups.setdefault(sources, []).append(target)
        out.append([(list(s), t) for s, t in groups.items()])
    return out


def _as_layer(names: list[str], layer: list[str], where: str, width: int) -> list[str]:
    """``names``, or ``["the 198 steps below"]`` when they are the whole layer and would fill more than two lines."""
    if names == layer and len(_wrap_words(names, EDGE_INDENT, EDGE_INDENT, width)) > 2:
        return [f"the {len(names)} steps {where}"]
    return names


def _wrapped(sources: list[str], targets: list[str], width: int) -> list[str]:
    """``a, b ─▶ c, d`` wrapped under the targets' first column; many sources: they wrap, the targets follow."""
    head = EDGE_INDENT + ", ".join(sources) + ARROW
    if len(head) > width // 2:
        arrow = EDGE_INDENT + ARROW.lstrip()
        return (_wrap_words(sources, EDGE_INDENT, EDGE_INDENT, width)
                + _wrap_words(targets, arrow, " " * len(arrow), width))
    return _wrap_words(targets, head, " " * len(head), width)


def _wrap_words(items: list[str], first: str, rest: str, width: int) -> list[str]:
    """Items joined by ", " after ``first`` (``rest`` on later lines), each line within ``width``."""
    lines: list[str] = []
    line = first
    fresh = True
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        candidate = line + ("" if fresh else " ") + piece
        if not fresh and len(candidate) > width:
            lines.append(line)
            line, fresh = rest, True
            candidate = line + piece
        line, fresh = candidate, False
    lines.append(line)
    return [_fit(text, width) for text in lines]


def _indented(upstream: Mapping[str, Sequence[str]], by_layer: list[list[str]], labels: dict[str, str],
              width: int) -> list[str]:
    """One step a line, indented by layer (at most 10 levels), with what it waits for after ``←``."""
    position = {name: i for i, name in enumerate(n for layer in by_layer for n in layer)}
    lines = []
    for depth, layer in enumerate(by_layer):
        indent = "  " * min(depth, 10)
        for name in layer:
            ups = sorted({u for u in upstream[name] if u in position and u != name}, key=position.__getitem__)
            line = indent + labels[name]
            if ups and len(one := f"{line} ← {', '.join(ups)}") <= width:
                lines.append(one)
                continue
            lines.append(_fit(line, width))
            if ups:  # on lines of their own, under the step
                lines += _wrap_words(ups, indent + "← ", indent + "  ", width)
    return lines


def _legend(states: Mapping[str, str], kinds: Mapping[str, str], steps: Mapping[str, Any], width: int) -> list[str]:
    shown = {shown_state(states.get(n), kinds.get(n)) for n in steps} - {None}
    if not shown:
        return []
    known = [s for s in SYMBOLS if s in shown]
    words = [f"{SYMBOLS[s][0]} {SYMBOLS[s][1]}" for s in known]
    if shown - set(SYMBOLS):
        words.append(f"{UNKNOWN[0]} {UNKNOWN[1]}")
    return _wrap_plain(words, width)


def _wrap_plain(words: list[str], width: int) -> list[str]:
    lines, line = [], ""
    for word in words:
        candidate = f"{line}  {word}" if line else word
        if line and len(candidate) > width:
            lines.append(line)
            candidate = word
        line = candidate
    lines.append(line)
    return [_fit(text, width) for text in lines]
