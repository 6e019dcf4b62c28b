"""A sweep's children as points of one param against the objective, drawn with textual-plotext.

A numeric param is its own x axis; any other (text, a list, a bool) is a
category placed at 0, 1, 2... in the order the points first use it, with its
value as the tick label. The best run is drawn again on top in its own
colour and marker, so it stands out even where points overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual_plotext import PlotextPlot

from mlfleet.core.cli.render import number, value


def swept_params(children: list[dict[str, Any]]) -> list[str]:
    """The paths the sweep varies, in the order its points name them."""
    return list(dict.fromkeys(k for c in children for k in (c.get("point") or {})))


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Scatter:
    """What the plot shows: x and y of the children that logged the objective, and the best one."""

    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)  # categories only
    best: tuple[float, float] | None = None
    best_label: str = ""  # the best run's value of the param, in words
    waiting: int = 0  # children without a value of the objective yet


def scatter(children: list[dict[str, Any]], param: str, best_job: str | None) -> Scatter:
    """One param against the objective; pure, so a test reads the points without drawing."""
    values = [(c.get("point") or {}).get(param) for c in children]
    numeric = all(_numeric(v) for v in values if v is not None)
    positions: dict[str, int] = {}
    out = Scatter()
    for child, v in zip(children, values):
        if numeric:
            x = float(v) if v is not None else None
        else:
            x = float(positions.setdefault(value(v), len(positions)))
        y = child.get("objective")
        if x is None or not _numeric(y):
            out.waiting += 1
            continue
        out.xs.append(x)
        out.ys.append(float(y))
        if best_job is not None and child.get("job_id") == best_job:
            out.best = (x, float(y))
            out.best_label = number(v) if numeric else value(v)
    if not numeric:
        out.ticks = [(float(i), label) for label, i in positions.items()]
    return out


def draw(widget: PlotextPlot, children: list[dict[str, Any]], param: str | None, metric: str,
         best_job: str | None) -> str:
    """Draw the scatter on ``widget``; return a line that says what it shows."""
    plt = widget.plt
    plt.clear_data()
    plt.clear_figure()
    if param is None:
        plt.title("this sweep varies no param")
        widget.refresh()
        return ""
    points = scatter(children, param, best_job)
    if points.xs:
        plt.scatter(points.xs, points.ys, label="children", marker="dot")
    if points.best is not None:
        plt.scatter([points.best[0]], [points.best[1]], label="best", marker="x", color="red")
    if points.ticks:
        plt.xticks([x for x, _ in points.ticks], [label for _, label in points.ticks])
    plt.title(f"{param} vs {metric}")
    plt.xlabel(param)
    widget.refresh()
    shown = f"{len(points.xs)} of {len(children)} children have {metric}"
    if points.best is not None:
        shown += f"; best {number(points.best[1])} at {param}={points.best_label} (x)"
    return shown
