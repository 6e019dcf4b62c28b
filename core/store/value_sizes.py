"""How much a ``db query`` may build per row with functions whose result grows with an argument.

Why: DuckDB counts what operators hold (hash tables, sorts, aggregates)
against ``memory_limit``, not the values a scalar function builds while a
chunk of 2,048 rows is evaluated. ``select len(range(100000000))`` grew
the controller to 2.8 GB under a 512 MiB limit, ``repeat('x', 1e9)`` to
5 GB, and such a call does not heed the time limit's interrupt either. So
these functions run only with constant sizes, outside lambdas (a lambda
builds once per element), and all of a query's together build at most
``ROW_BUDGET`` bytes per row: 2,048 rows of it is 256 MiB, the worst a
chunk can hold. Pure: it reads parse-tree nodes and says yes or why not.
"""

from __future__ import annotations

import re
from typing import Any

ROW_BUDGET = 128 * 1024
_LIST = ("range", "generate_series")  # (stop) | (start, stop[, step]): a list of BIGINTs
_RESIZE = ("list_resize", "array_resize")  # (list, size[, fill])
_PAD = ("lpad", "rpad")  # (text, width, fill)
_FORMAT = ("printf", "format", "sprintf")  # a width in the format string pads to it: '%0100000000d'
SIZED = frozenset(_LIST + _RESIZE + _PAD + _FORMAT + ("repeat",))
_MAX_WIDTH = 10_000
_UNKNOWN_UNIT = 8 * 1024  # what repeat() charges per copy of a value it cannot see (a column, an expression)
_MAX_COPIES_OF_UNKNOWN = 16


class TooLarge(ValueError):
    """The call cannot be bounded, or passes the budget; the text is the reason, for QueryRefused."""


def constant(node: dict[str, Any] | None) -> float | str | None:
    """A literal number or text (through casts), or None when the value is only known at run time."""
    while isinstance(node, dict) and node.get("class") == "CAST":
        node = node.get("child")
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal") or {}
    text = literal.get("text")
    if not isinstance(text, str):
        return None
    if literal.get("kind") == "STRING":
        return text
    try:
        return float(text)
    except ValueError:
        return None


def arguments(node: dict[str, Any]) -> list[dict[str, Any] | None]:
    return [(a or {}).get("expression") for a in node.get("arguments") or []]


def bytes_built(name: str, node: dict[str, Any]) -> int:
    """What one call of ``name`` builds per row, at most; raises TooLarge when that cannot be known."""
    args = arguments(node)
    values = [constant(a) for a in args]
    if name in _LIST:
        numbers = [v for v in values if isinstance(v, float)]
        if not args or len(numbers) != len(args) or len(args) > 3:
            raise TooLarge(f"{name}() as a value takes constant bounds only (e.g. {name}(10)); "
                           f"for rows use it in FROM: select * from {name}(n)")
        start, stop, step = (0.0, numbers[0], 1.0) if len(numbers) == 1 else (*numbers[:2], numbers[2] if len(numbers) == 3 else 1.0)
        if step == 0:
            return 0
        count = max(0.0, (stop - start) / step) + (1 if name == "generate_series" else 0)
        return int(count) * 8
    if name in _FORMAT:
        pattern = values[0] if values else None
        if not isinstance(pattern, str):
            raise TooLarge(f"{name}() takes a constant format string in db query, so the widths in it can be bounded")
        widths = [int(w) for w in re.findall(r"\d+", pattern)]
        if any(w > _MAX_WIDTH for w in widths):
            raise TooLarge(f"{name}() pads to at most {_MAX_WIDTH:,} characters in db query")
        return len(pattern.encode()) + sum(widths) * 4
    size = values[1] if len(values) > 1 else None
    if not isinstance(size, float):
        hint = "; for a bar chart use bar(x, min, max, width)" if name == "repeat" else ""
        raise TooLarge(f"{name}() takes a constant size in db query (its second argument), "
                       f"so the value it builds can be bounded{hint}")
    size = max(0.0, size)
    if name in _RESIZE:
        return int(size) * 8
    if name in _PAD:
        return int(size) * 4  # a character may take 4 bytes of UTF-8
    first = values[0] if values else None
    if isinstance(first, str):
        return int(size) * max(1, len(first.encode()))
    if size > _MAX_COPIES_OF_UNKNOWN:
        raise TooLarge(f"repeat() of a value that is not a constant takes at most {_MAX_COPIES_OF_UNKNOWN} copies "
                       "in db query; for a bar chart use bar(x, min, max, width)")
    return int(size) * _UNKNOWN_UNIT
