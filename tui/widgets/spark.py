"""A one-line history chart drawn as text, on a fixed 0-100 % scale.

Textual's Sparkline scales each chart from its own minimum to its maximum, so
an idle CPU wandering between 1 and 3 % looks as busy as one swinging from 0
to 100, and it lays its buckets out with fractions on every frame. The host
card redraws its charts on every cursor move, so they must be cheap and they
must read the same way on every host: a full bar is 100 %.
"""

from __future__ import annotations

from typing import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

BARS = "▁▂▃▄▅▆▇█"


def spark(values: Sequence[float], width: int = 30, top: float = 100.0) -> str:
    """The last ``width`` values as a one-line bar chart (0..top)."""
    out = []
    for v in values[-width:] if width > 0 else ():
        share = 0.0 if top <= 0 else max(0.0, min(1.0, v / top))
        out.append(BARS[min(len(BARS) - 1, int(share * len(BARS)))])
    return "".join(out)


class SparkLine(Widget):
    """The most recent values that fit the widget's width, newest on the right."""

    DEFAULT_CSS = """
    SparkLine {
        height: 1;
        color: $accent;
    }
    """

    values: reactive[tuple[float, ...]] = reactive(tuple, layout=False)

    def __init__(self, values: Sequence[float] = (), top: float = 100.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.top = top
        self.set_reactive(SparkLine.values, tuple(values))

    def render(self) -> Text:
        return Text(spark(self.values, self.size.width, self.top), no_wrap=True, end="")
