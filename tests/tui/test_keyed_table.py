"""The table every view is built on: what a user sees and does with it, and what a refresh costs.

Each story drives a real KeyedTable in a headless app through keys, clicks
and ``show`` (the way the views feed it) and reads what is on screen.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.strip import Strip
from textual.widgets import Input

from mlfleet.tui.widgets.keyed_table import KeyedTable

COLUMNS = (("name", "HOST"), ("util", "UTIL"), ("state", "STATE"))


def hosts(n: int, util: int = 5) -> list[tuple[str, tuple[str | Text, ...]]]:
    return [(f"h{i:02d}", (f"h{i:02d}", f"{util + i} %", Text("up", style="green"))) for i in range(n)]


class CountingTable(KeyedTable):
    """Counts the lines it builds (a cached line is reused, not built again)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built = 0

    def _line(self, cells: list[Text], base: Style, over: Style | None) -> Strip:
        self.built += 1
        return super()._line(cells, base, over)


class TableApp(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str | None]] = []

    def compose(self) -> Any:
        yield CountingTable(COLUMNS)

    def on_keyed_table_row_highlighted(self, event: KeyedTable.RowHighlighted) -> None:
        self.events.append(("highlighted", event.key))

    def on_keyed_table_row_selected(self, event: KeyedTable.RowSelected) -> None:
        self.events.append(("selected", event.key))


def screen_text(table: KeyedTable) -> list[str]:
    return [table.render_line(y).text.rstrip() for y in range(table.scrollable_content_region.height)]


async def test_a_user_pages_through_a_long_table_and_the_header_stays() -> None:
    async with TableApp().run_test(size=(60, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show(hosts(40))
        table.focus()
        await pilot.pause()
        assert screen_text(table)[0].split() == ["HOST", "UTIL", "STATE"]
        assert pilot.app.events == [("highlighted", "h00")]
        await pilot.press("j", "j", "down")
        assert table.current_key == "h03"
        await pilot.press("G")  # to the last row: the view scrolls, the header does not
        await pilot.pause()
        lines = screen_text(table)
        assert table.current_key == "h39" and lines[0].split()[0] == "HOST"
        assert any(line.split()[:1] == ["h39"] for line in lines)
        await pilot.press("pageup")
        assert table.current_key == "h29"
        await pilot.press("g", "enter")
        assert table.current_key == "h00" and pilot.app.events[-1] == ("selected", "h00")


async def test_the_cursor_follows_its_row_when_new_data_reorders_the_table() -> None:
    async with TableApp().run_test(size=(60, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show(hosts(5))
        table.focus()
        table.sort_by_column("util")
        table.select_key("h02")
        await pilot.pause()
        # h02 becomes the busiest host: sorted by UTIL it moves to the bottom, and the cursor goes with it.
        rows = hosts(5)
        rows[2] = ("h02", ("h02", "99 %", Text("up", style="green")))
        table.show(rows)
        await pilot.pause()
        assert table.current_key == "h02" and table.cursor_row == 4
        assert [str(table.get_row_at(i)[0]) for i in range(5)] == ["h00", "h01", "h03", "h04", "h02"]
        # The row under the cursor goes away: the cursor stays at that position, on the next row.
        table.show([r for r in rows if r[0] != "h02"])
        await pilot.pause()
        assert table.current_key == "h04"
        table.show([])
        await pilot.pause()
        assert table.current_key is None and pilot.app.events[-1] == ("highlighted", None)


async def test_mouse_clicks_sort_by_a_header_move_the_cursor_and_open_a_row() -> None:
    async with TableApp().run_test(size=(60, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show([("b", ("b", "12 %", "up")), ("a", ("a", "9 %", "down")), ("c", ("c", "-", "up"))])
        table.focus()
        await pilot.pause()
        util_x = screen_text(table)[0].index("UTIL")
        await pilot.click(KeyedTable, offset=(util_x, 0))  # the UTIL header
        await pilot.pause()
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == ["a", "b", "c"]  # 9 < 12, "-" last
        assert "UTIL ▲" in screen_text(table)[0]
        await pilot.click(KeyedTable, offset=(util_x, 0))  # again: reversed
        await pilot.pause()
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == ["c", "b", "a"]
        await pilot.press("S")  # the keyboard's reverse: back to ascending
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == ["a", "b", "c"]
        await pilot.press("S")
        await pilot.click(KeyedTable, offset=(2, 2))  # the second row
        assert table.current_key == "b"
        await pilot.click(KeyedTable, offset=(2, 2))  # the row under the cursor: open it
        assert pilot.app.events[-1] == ("selected", "b")


async def test_a_refresh_that_changes_one_number_draws_one_row_again() -> None:
    async with TableApp().run_test(size=(60, 30)) as pilot:
        table = pilot.app.query_one(CountingTable)
        table.show(hosts(20))
        await pilot.pause()
        table.built = 0
        rows = hosts(20)
        rows[7] = ("h07", ("h07", "13 %", Text("up", style="green")))  # the same width as "12 %"
        table.show(rows)
        await pilot.pause()
        assert table.built == 1
        assert screen_text(table)[8].split()[:2] == ["h07", "13"]
        table.built = 0
        table.focus()
        await pilot.pause()
        table.built = 0
        await pilot.press("j")  # a cursor move draws the row it leaves and the row it enters
        await pilot.pause()
        assert table.built == 2


async def test_columns_fit_their_widest_cell_and_text_is_never_markup() -> None:
    async with TableApp().run_test(size=(80, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show([("x", ("[red]x", "1 %", "up")), ("long", ("a-very-long-host-name", "2 %", "up"))])
        await pilot.pause()
        assert "a-very-long-host-name" in screen_text(table)[2]
        assert "[red]x" in screen_text(table)[1]
        header_before = screen_text(table)[0]
        table.show([("x", ("[red]x", "1 %", "up"))])  # the widest row went away: the column narrows
        await pilot.pause()
        assert screen_text(table)[0].index("UTIL") < header_before.index("UTIL")


async def test_control_characters_in_a_cell_never_reach_the_terminal() -> None:
    async with TableApp().run_test(size=(80, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show([("j1", ("line one\nline two", "1 %", Text("up\x1b[2J", style="green")))])
        await pilot.pause()
        line = table.render_line(1)
        assert all(ord(c) >= 32 for segment in line for c in segment.text)
        assert screen_text(table)[1].split()[:4] == ["line", "one", "line", "two"]


async def test_new_columns_rebuild_the_rows_and_keep_the_cursor_on_its_row() -> None:
    async with TableApp().run_test(size=(80, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show(hosts(3))
        table.select_key("h02")
        await pilot.pause()
        assert table.set_columns((("name", "HOST"), ("loss", "LOSS")))
        table.show([(key, (key, f"0.{i}")) for i, (key, _cells) in enumerate(hosts(3))])
        await pilot.pause()
        assert screen_text(table)[0].split() == ["HOST", "LOSS"]
        assert screen_text(table)[3].split() == ["h02", "0.2"] and table.current_key == "h02"


async def test_the_cursor_row_looks_different_when_the_table_has_the_focus() -> None:
    class WithField(TableApp):
        def compose(self) -> Any:
            yield from super().compose()
            yield Input()

    async with WithField().run_test(size=(60, 12)) as pilot:
        table = pilot.app.query_one(KeyedTable)
        table.show(hosts(3))
        pilot.app.query_one(Input).focus()
        await pilot.pause()
        blurred = [segment.style for segment in table.render_line(1)]
        table.focus()
        await pilot.pause()
        assert [segment.style for segment in table.render_line(1)] != blurred
        pilot.app.query_one(Input).focus()
        await pilot.pause()
        assert [segment.style for segment in table.render_line(1)] == blurred
