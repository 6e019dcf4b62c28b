"""How a KeyedTable looks: safe cell text, widths, sort keys, one finished line of cells, its stylesheet.

Pure helpers over Rich's Text and Segment, apart from the widget's state, so
the drawing rules (what a control character becomes, how a cell is cut to
its column, how numbers sort) can be read and tested alone.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.strip import Strip

Cells = Sequence[str | Text]
PADDING = 1  # blank cells each side of a column's text
SORT_MARKS = {False: " ▲", True: " ▼"}


# Control characters would reach the terminal as they are: a newline breaks the line, an escape
# sequence in a job's name or reason would restyle (or rewrite) the screen. They are shown as spaces.
CONTROLS = {c: " " for c in [*range(32), 127]}


def cell_text(cell: str | Text) -> Text:
    """Cells are shown as Text: a str would be read as markup (a job named ``[red]x`` is just that name)."""
    if isinstance(cell, Text):
        plain = cell.plain
        clean = plain.translate(CONTROLS)
        return cell if clean == plain else Text(clean, style=cell.style, no_wrap=True, end="")
    return Text(cell.translate(CONTROLS), no_wrap=True, overflow="ellipsis", end="")


def cell_width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers sort as numbers (``12 %`` after ``9 %``), everything else as text; ``-`` last."""
    text = str(value.plain if isinstance(value, Text) else value).strip()
    if text in ("", "-", "n/a"):
        return (2, 0.0, "")
    head = text.split()[0].rstrip("%").replace(",", "")
    try:
        return (0, float(head), text)
    except ValueError:
        return (1, 0.0, text.lower())


def line_width(widths: Sequence[int]) -> int:
    """The cells of a line laid side by side, each with its padding."""
    return sum(widths) + 2 * PADDING * len(widths)


def fit_line(console: Console, cells: Iterable[Text], widths: Sequence[int], base: Style, over: Style | None) -> Strip:
    """One finished line: every cell cut or padded to its column, the row's style under the cells' own."""
    pad = " " * PADDING
    segments: list[Segment] = []
    for cell, width in zip(cells, widths):
        segments.append(Segment(pad))
        if not cell.spans and not cell.style and cell.cell_len <= width:
            segments.append(Segment(cell.plain + " " * (width - cell.cell_len)))
        else:
            fitted = cell.copy()
            fitted.truncate(width, overflow="ellipsis", pad=True)
            # Text.render leaves the Text's own style (a state's colour) to its caller.
            own = console.get_style(fitted.style, default="") if fitted.style else None
            segments.extend(Segment.apply_style(fitted.render(console), own))
        segments.append(Segment(pad))
    # One segment per run of equal style: the terminal is sent one colour change per run, not per cell.
    return Strip(Segment.simplify(Segment.apply_style(segments, base, over)), line_width(widths))


def column_widths(labels: Iterable[str], rows: Iterable[Sequence[Text]]) -> list[int]:
    """Every column as wide as its widest cell or its label (plus room for the sort mark)."""
    widths = [cell_len(label) + 2 for label in labels]
    for cells in rows:
        for i, cell in enumerate(cells[:len(widths)]):
            widths[i] = max(widths[i], cell.cell_len)
    return widths


# The cursor's look differs with focus (``:focus``); even rows are striped; the header is bold on the panel.
TABLE_CSS = """
KeyedTable {
    background: $surface;
    color: $foreground;
    height: auto;
    max-height: 100%;
    &:focus {
        background-tint: $foreground 5%;
        & > .keyed-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
        & > .keyed-table--header {
            background-tint: $foreground 5%;
        }
    }
    &:dark > .keyed-table--even-row {
        background: $surface-darken-1 40%;
    }
    & > .keyed-table--header {
        text-style: bold;
        background: $panel;
        color: $foreground;
    }
    &:ansi > .keyed-table--header {
        background: ansi_bright_blue;
        color: ansi_default;
    }
    & > .keyed-table--even-row {
        background: $surface-lighten-1 50%;
    }
    & > .keyed-table--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
}
"""
