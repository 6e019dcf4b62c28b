"""Setting a Static's text without paying for a screen-wide layout when nothing changed.

``Static.update`` asks for a layout pass by default, and a layout pass makes
Textual repaint every widget on the screen (about 80 ms for the fleet view of
100 hosts). Views that re-set the same banner, status line or message on
every 1 Hz tick must not pay that; a key press that lands after such a tick
would wait for it.
"""

from __future__ import annotations

from textual.visual import VisualType
from textual.widgets import Static


def set_text(widget: Static, content: VisualType) -> None:
    """Show ``content`` in ``widget``; nothing at all happens if it already shows exactly that."""
    if widget.content != content:
        widget.update(content)
