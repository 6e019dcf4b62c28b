"""A DataTable keyed by an id that is brought in line with new data cell by cell.

Every table of the TUI is one of these. :meth:`KeyedTable.show` takes the
rows the screen wants on view (already filtered), adds the new ones, updates
only the cells whose text changed and removes the rows that went away. It
never clears, so the cursor, the scroll position and the selection stay where
the user left them; a tick that changes one number updates one cell (the
table then repaints the rows on view, not the rows off screen).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

Cells = Sequence[str | Text]


def _text(cell: str | Text) -> Text:
    """Cells go in as Text: a str would be read as markup (a job named ``[red]x`` is just that name)."""
    return cell if isinstance(cell, Text) else Text(cell, no_wrap=True, overflow="ellipsis")


def _width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _sort_key(value: Any) -> tuple[int, float, str]:
    """Numbers sort as numbers (``12 %`` after ``9 %``), everything else as text; ``-`` last."""
    text = str(value.plain if isinstance(value, Text) else value).strip()
    if text in ("", "-", "n/a"):
        return (2, 0.0, "")
    head = text.split()[0].rstrip("%").replace(",", "")
    try:
        return (0, float(head), text)
    except ValueError:
        return (1, 0.0, text.lower())


class KeyedTable(DataTable[str | Text]):
    """Rows keyed by id; ``show(rows)`` applies the difference; ``s`` sorts by the column under the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    def __init__(self, columns: Iterable[tuple[str, str]], **kwargs: Any) -> None:
        kwargs.setdefault("cursor_type", "row")
        kwargs.setdefault("zebra_stripes", True)
        super().__init__(**kwargs)
        self.columns_spec = tuple(columns)
        self.shown: dict[str, tuple[Any, ...]] = {}
        self.sort_by: str | None = None
        self.sort_reverse = False
        self._restore: str | None = None

    def on_mount(self) -> None:
        for key, label in self.columns_spec:
            self.add_column(label, key=key)

    def set_columns(self, columns: Iterable[tuple[str, str]]) -> bool:
        """Change the columns (rare: a new metric appears); the rows are rebuilt once, not per tick."""
        columns = tuple(columns)
        if columns == self.columns_spec:
            return False
        keep = self.current_key
        self.clear(columns=True)
        self.shown.clear()
        self.columns_spec = columns
        for key, label in columns:
            self.add_column(label, key=key)
        self._restore = keep
        return True

    def show(self, rows: Iterable[tuple[str, Cells]]) -> None:
        """Bring the table in line with ``rows`` (key, cells), in the order they should appear."""
        seen: set[str] = set()
        added = resort = False
        for key, cells in rows:
            cells = tuple(cells)
            seen.add(key)
            before = self.shown.get(key)
            if before is None:
                self.add_row(*(_text(c) for c in cells), key=key)
                added = True
            elif before != cells:
                for (column, _label), new, old in zip(self.columns_spec, cells, before):
                    if new != old:
                        resort = resort or column == self.sort_by
                        # Re-measuring a column walks every row: do it only when this cell needs more room.
                        wider = _width(new) > self.columns[ColumnKey(column)].content_width
                        self.update_cell(key, column, _text(new), update_width=wider)
            self.shown[key] = cells
        for gone in [k for k in self.shown if k not in seen]:
            self.remove_row(gone)
            del self.shown[gone]
        if (added or resort) and self.sort_by is not None:
            self._apply_sort()  # a new row, or a value in the sorted column moved

        keep, self._restore = self._restore, None
        if keep is not None and keep in self.shown:
            self.select_key(keep)

    @property
    def current_key(self) -> str | None:
        """The id of the row under the cursor, or None for an empty table."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    def select_key(self, key: str) -> None:
        """Move the cursor onto the row ``key``."""
        self.move_cursor(row=self.get_row_index(key))

    def action_sort_next(self) -> None:
        """Sort by the next column (a click on a header sorts by that one)."""
        keys = [k for k, _ in self.columns_spec]
        column = keys[0] if self.sort_by is None else keys[(keys.index(self.sort_by) + 1) % len(keys)]
        self.sort_by_column(column, reverse=False)

    def action_sort_reverse(self) -> None:
        self.sort_by_column(self.sort_by or self.columns_spec[0][0], reverse=not self.sort_reverse)

    def sort_by_column(self, column: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (column == self.sort_by) and not self.sort_reverse
        self.sort_by, self.sort_reverse = column, reverse
        self._apply_sort()

    def _apply_sort(self) -> None:
        if self.sort_by is not None and self.row_count:
            keep = self.current_key
            self.sort(self.sort_by, key=_sort_key, reverse=self.sort_reverse)
            if keep is not None:
                self.select_key(keep)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by_column(str(event.column_key.value))
