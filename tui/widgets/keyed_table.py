"""The table of every TUI view: rows keyed by an id, brought in line with new data row by row.

:meth:`KeyedTable.show` takes the rows the screen wants on view (already
filtered), adds the new ones, updates the cells whose text changed and
removes the rows that went away. It never clears, so the cursor (which
follows its row's key, not its position), the scroll position and the
selection stay where the user left them.

Why not Textual's DataTable: every ``update_cell`` there bumps one counter
that all of its render caches are keyed by, so a 1 Hz refresh that changes a
number per host makes the next frame lay out every visible cell again
through Rich (about 0.3 ms a cell, ~200 ms for 50 rows × 13 columns on a
small machine), and a key press that lands after the refresh waits for it.
This table draws through Textual's line API instead and caches one finished
line per row: a changed cell redraws its own row only, a cursor move redraws
the two rows it leaves and enters, and scrolling reuses every cached line.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import var
from textual.scroll_view import ScrollView
from textual.strip import Strip

from mlfleet.tui.widgets.table_look import (PADDING, TABLE_CSS, SORT_MARKS, Cells, cell_text, column_widths, fit_line,
                                            line_width, sort_key)

class KeyedTable(ScrollView, can_focus=True):
    """Rows keyed by id; ``show(rows)`` applies the difference; ``s`` sorts by the next column."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("home,g", "scroll_top", "Top", show=False),
        Binding("end,G", "scroll_bottom", "Bottom", show=False),
        Binding("right", "scroll_right", "Right", show=False),
        Binding("left", "scroll_left", "Left", show=False),
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "keyed-table--header", "keyed-table--even-row", "keyed-table--cursor",
    }

    DEFAULT_CSS = TABLE_CSS

    highlighted: var[str | None] = var(None, init=False)
    """The key of the row under the cursor. A view that must follow the cursor in the same frame
    (the fleet's host card) watches this: a watcher runs at once, while RowHighlighted is a
    message handled after the frame that moved the cursor has been drawn, one frame later."""

    class RowHighlighted(Message):
        """The cursor is on another row (``key`` is None when the table became empty)."""

        def __init__(self, table: KeyedTable, key: str | None, cursor_row: int) -> None:
            super().__init__()
            self.table, self.key, self.cursor_row = table, key, cursor_row

        @property
        def control(self) -> KeyedTable:
            return self.table

    class RowSelected(Message):
        """Enter (or a click on the row under the cursor) chose the row ``key``."""

        def __init__(self, table: KeyedTable, key: str, cursor_row: int) -> None:
            super().__init__()
            self.table, self.key, self.cursor_row = table, key, cursor_row

        @property
        def control(self) -> KeyedTable:
            return self.table

    def __init__(self, columns: Iterable[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns_spec: tuple[tuple[str, str], ...] = tuple(columns)
        self.shown: dict[str, tuple[Any, ...]] = {}  # key -> the cells as the screen gave them
        self.sort_by: str | None = None
        self.sort_reverse = False
        self._cells: dict[str, list[Text]] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        self._widths: list[int] = []
        self._cursor = 0
        self._lines: dict[str, tuple[tuple[int, int, bool], Strip]] = {}  # key -> (stamp, finished line)
        self._header: tuple[tuple[Any, ...], Strip] | None = None
        self._look = 0  # bumped when the widths, the theme or the focus change: every cached line is stale
        self._measure_columns()

    # ----------------------------------------------------------------- data in
    def set_columns(self, columns: Iterable[tuple[str, str]]) -> bool:
        """Change the columns (rare: a new metric appears); the rows are rebuilt once, not per tick."""
        columns = tuple(columns)
        if columns == self.columns_spec:
            return False
        self.columns_spec = columns
        self.shown.clear()
        self._cells.clear()
        self._order, self._index = [], {}  # the next show() brings the rows back; the cursor keeps its key
        if self.sort_by not in {k for k, _ in columns}:
            self.sort_by = None
        self._widths = []
        self._measure_columns()
        return True

    def show(self, rows: Iterable[tuple[str, Cells]]) -> None:
        """Bring the table in line with ``rows`` (key, cells), in the order they should appear."""
        order: list[str] = []
        view = self._view()
        wider = False
        for key, cells in rows:
            cells = tuple(cells)
            order.append(key)
            before = self.shown.get(key)
            if before is None:
                self._cells[key] = [cell_text(c) for c in cells]
                wider = self._grow(self._cells[key]) or wider
            elif before != cells:
                changes = [(p, new) for p, (new, old) in enumerate(zip(cells, before)) if new != old]
                wider = self._set_cells(key, changes, view) or wider
            self.shown[key] = cells
        if wider:
            self._restyle()  # once, however many cells needed more room
        wanted = set(order)
        gone = [k for k in self.shown if k not in wanted]
        for key in gone:
            del self.shown[key], self._cells[key]
            self._lines.pop(key, None)
        if gone:
            self._measure_columns()  # a removed row may have been the widest of its column
        self._set_order(order)

    def _set_cells(self, key: str, changes: list[tuple[int, str | Text]], view: tuple[int, int, int, int]) -> bool:
        """Set cells of one row and ask for the stretch of its line from the first to the last of them.

        One stretch per row, not one per cell: Textual writes a line's update from the start of the
        widget to the end of each stretch, so two stretches on a line would send its start twice.
        True when a column had to widen: then every line is drawn again (the caller restyles).
        """
        cells = self._cells[key]
        self._lines.pop(key, None)
        wider = False
        for position, value in changes:
            text = cells[position] = cell_text(value)
            if text.cell_len > self._widths[position]:
                self._widths[position] = text.cell_len
                wider = True
        if wider:
            return True
        index = self._index.get(key)
        scroll_x, scroll_y, width, height = view
        y = -1 if index is None else index - scroll_y + 1
        if 1 <= y < height:
            first, last = min(p for p, _ in changes), max(p for p, _ in changes)
            left = sum(self._widths[:first]) + 2 * PADDING * first - scroll_x
            right = sum(self._widths[:last + 1]) + 2 * PADDING * (last + 1) - scroll_x
            stretch = Region(left, y, right - left, 1).intersection(Region(0, y, width, 1))
            if stretch:
                self.refresh(stretch)
        return False

    def _view(self) -> tuple[int, int, int, int]:
        """Scroll offset and the size of the area rows are drawn in (asked once per refresh, not per cell)."""
        scroll_x, scroll_y = self.scroll_offset
        region = self.scrollable_content_region
        return scroll_x, scroll_y, region.width, region.height

    # ----------------------------------------------------------------- what is where
    @property
    def row_count(self) -> int:
        return len(self._order)

    @property
    def cursor_row(self) -> int:
        return self._cursor

    @property
    def current_key(self) -> str | None:
        """The id of the row under the cursor, or None for an empty table."""
        return self._order[self._cursor] if self._order else None

    def get_row_index(self, key: str) -> int:
        return self._index[key]

    def get_row(self, key: str) -> list[Text]:
        """The cells of row ``key`` as shown (Text, never markup)."""
        return list(self._cells[key])

    def get_row_at(self, index: int) -> list[Text]:
        return self.get_row(self._order[index])

    # ----------------------------------------------------------------- cursor
    def move_cursor(self, *, row: int) -> None:
        """Put the cursor on row number ``row`` (clamped) and scroll it into view."""
        row = max(0, min(row, len(self._order) - 1))
        if row != self._cursor:
            old, self._cursor = self._cursor, row
            self._refresh_row(old)
            self._refresh_row(row)
        self._scroll_to_cursor()
        self._announce()

    def select_key(self, key: str) -> None:
        """Move the cursor onto the row ``key``."""
        self.move_cursor(row=self._index[key])

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self._cursor + 1)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self._cursor - 1)

    def action_page_down(self) -> None:
        self.move_cursor(row=self._cursor + max(1, self._rows_on_view() - 1))

    def action_page_up(self) -> None:
        self.move_cursor(row=self._cursor - max(1, self._rows_on_view() - 1))

    def action_scroll_top(self) -> None:
        self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        self.move_cursor(row=len(self._order) - 1)

    def action_select_cursor(self) -> None:
        if self._order:
            self.post_message(self.RowSelected(self, self._order[self._cursor], self._cursor))

    def _announce(self) -> None:
        """Tell the screen when the row under the cursor is another one (by key, not position)."""
        key = self.current_key
        if key != self.highlighted:
            self.highlighted = key
            self.post_message(self.RowHighlighted(self, key, self._cursor))

    def _rows_on_view(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)  # less the header line

    def _scroll_to_cursor(self) -> None:
        top, visible = self.scroll_offset.y, self._rows_on_view()
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, immediate=True)
        elif self._cursor >= top + visible:
            self.scroll_to(y=self._cursor - visible + 1, animate=False, immediate=True)

    # ----------------------------------------------------------------- sorting
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
        self._header = None
        self._set_order(list(self._order))
        self.refresh()

    def _set_order(self, order: list[str]) -> None:
        """Put the rows in ``order`` (sorted if a sort column is set); the cursor keeps its row."""
        if self.sort_by is not None:
            position = [k for k, _ in self.columns_spec].index(self.sort_by)
            order.sort(key=lambda k: sort_key(self._cells[k][position]), reverse=self.sort_reverse)
        keep = self.highlighted
        if order != self._order:
            self._order = order
            self._index = {k: i for i, k in enumerate(order)}
            self._fit_virtual_size()
            if keep in self._index:
                self._cursor = self._index[keep]
            self._cursor = max(0, min(self._cursor, len(order) - 1))
            self.refresh()
            self._scroll_to_cursor()
        self._announce()

    # ----------------------------------------------------------------- mouse
    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x, y = offset.x + self.scroll_offset.x, offset.y
        if y == 0:
            edge = 0
            for (column, _label), width in zip(self.columns_spec, self._widths):
                edge += width + 2 * PADDING
                if x < edge:
                    self.sort_by_column(column)
                    break
            return
        row = self.scroll_offset.y + y - 1
        if row < len(self._order):
            if row == self._cursor:
                self.action_select_cursor()
            else:
                self.move_cursor(row=row)

    # ----------------------------------------------------------------- drawing
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        if y == 0:
            line = self._header_line()
        else:
            index = scroll_y + y - 1
            if index >= len(self._order):
                return Strip.blank(width, self.rich_style)
            line = self._row_line(index)
        return line.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def _row_line(self, index: int) -> Strip:
        key = self._order[index]
        stamp = (self._look, index % 2, index == self._cursor)
        cached = self._lines.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        base = self.rich_style
        if index % 2 == 0:
            base += self.get_component_rich_style("keyed-table--even-row")
        # The cursor's look differs with focus; the stylesheet picks it (``:focus`` in DEFAULT_CSS).
        cursor = self.get_component_rich_style("keyed-table--cursor") if index == self._cursor else None
        line = self._line(self._cells[key], base, cursor)
        self._lines[key] = (stamp, line)
        return line

    def _header_line(self) -> Strip:
        stamp = (self._look, self.sort_by, self.sort_reverse)
        if self._header is not None and self._header[0] == stamp:
            return self._header[1]
        labels = [Text(label + (SORT_MARKS[self.sort_reverse] if key == self.sort_by else ""), end="")
                  for key, label in self.columns_spec]
        line = self._line(labels, self.rich_style + self.get_component_rich_style("keyed-table--header"), None)
        self._header = (stamp, line)
        return line

    def _line(self, cells: list[Text], base: Style, over: Style | None) -> Strip:
        return fit_line(self.app.console, cells, self._widths, base, over)

    def _measure_columns(self) -> None:
        """Every column as wide as its widest cell or its label (plus room for the sort mark)."""
        widths = column_widths((label for _key, label in self.columns_spec), self._cells.values())
        if widths != self._widths:
            self._widths = widths
            self._restyle()

    def _grow(self, cells: list[Text]) -> bool:
        """Widen the columns this new row needs more room in; True if any (the caller restyles)."""
        wider = False
        for i, cell in enumerate(cells[:len(self._widths)]):
            if cell.cell_len > self._widths[i]:
                self._widths[i] = cell.cell_len
                wider = True
        return wider

    def _restyle(self) -> None:
        """Every cached line is stale (widths, theme or focus changed): draw them again on the next frame."""
        self._look += 1
        self._header = None
        self._lines.clear()
        if self.is_mounted:
            self._fit_virtual_size()
            self.refresh()

    def _refresh_row(self, index: int) -> None:
        """Ask for the screen line of row ``index`` to be drawn again, if it is on view."""
        _scroll_x, scroll_y, width, height = self._view()
        y = index - scroll_y + 1
        if 1 <= y < height:
            self.refresh(Region(0, y, width, 1))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._restyle()

    def on_mount(self) -> None:
        self._fit_virtual_size()

    def _fit_virtual_size(self) -> None:
        """What the scrollbars measure: every column, and the rows under the header line."""
        self.virtual_size = Size(self._line_width(), len(self._order) + 1)

    def _line_width(self) -> int:
        return line_width(self._widths)

    def on_resize(self) -> None:
        self._scroll_to_cursor()
