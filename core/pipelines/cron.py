"""Cron expressions of ``on: schedule:``: their shape (:func:`cron_problem`) and their next time (:func:`next_time`).

The dialect is Vixie cron's, the one people know from crontab(5): ``*``,
numbers, ``a-b`` ranges, ``/step``, lists with commas, month and weekday
names, and the ``@daily``-style shorthands. One sentence per mistake, naming
the field, so a schedule that would never fire is refused when it is written.

**Times are UTC.** A schedule means the same instant whatever zone the
controller's machine (or its service manager) runs in, and UTC has no DST:
``0 2 * * *`` fires every day exactly once, never twice on the night the
clocks go back nor zero times on the night they go forward, and a missed
time after a downtime is counted the same on every controller. The cost is
that ``0 3 * * *`` is 03:00 UTC, which ``pipeline triggers`` shows as the
next time with its offset. The next time itself is croniter's, in Vixie's semantics exactly: day-of-month
and day-of-week are OR-ed when both are restricted, except that a field
starting with ``*`` (``*/2``) makes them AND-ed, as Vixie and ISC cron do
(https://crontab.guru/cron-bug.html): ``0 0 */2 * 1`` is Mondays of odd
dates there, and here.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, {m: i + 1 for i, m in enumerate(
               ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
           ("day of week", 0, 7, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}))
EXAMPLE = "write five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *' for 03:00 daily, or @daily"


def cron_problem(text: str) -> str | None:
    """Why ``text`` is not a cron expression (one sentence), or None when it is one."""
    text = text.strip()
    if text.startswith("@"):
        return None if text.lower() in MACROS else f"{text!r} is not a cron shorthand ({', '.join(sorted(MACROS))})"
    fields = text.split()
    if len(fields) != 5:
        return f"{text!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}, not 5"
    for value, (label, low, high, names) in zip(fields, _FIELDS):
        for item in value.split(","):
            problem = _item_problem(item, low, high, names)
            if problem:
                return f"the {label} field {value!r}: {problem}"
    return None


def _item_problem(item: str, low: int, high: int, names: dict[str, int]) -> str | None:
    base, slash, step = item.partition("/")
    if slash and (not step.isdigit() or int(step) == 0):
        return f"the step {step!r} is not a whole number from 1 up"
    if base == "*":
        return None
    first, dash, last = base.partition("-")
    bounds = []
    for part in (first, last) if dash else (first,):
        number = names.get(part.lower()) if part.lower() in names else int(part) if part.isdigit() else None
        if number is None:
            return f"{part!r} is not a number" + (" or a name" if names else "")
        if not low <= number <= high:
            return f"{number} is outside {low}-{high}"
        bounds.append(number)
    if dash and bounds[0] > bounds[1]:
        return f"the range {base!r} runs backwards"
    return None


def next_time(expr: str, after: datetime) -> datetime:
    """The first time ``expr`` is due strictly after ``after`` (aware; naive is read as UTC), in UTC.

    ``expr`` must have passed :func:`cron_problem`; croniter's own
    ValueError is let through otherwise (a checked spec never gets there).
    """
    return _iterator(expr, after).get_next(datetime).astimezone(timezone.utc)


def previous_time(expr: str, at: datetime) -> datetime:
    """The last time ``expr`` was due at or before ``at``, in UTC."""
    candidate = next_time(expr, at - timedelta(microseconds=1))
    return candidate if candidate <= at else _iterator(expr, at).get_prev(datetime).astimezone(timezone.utc)


def _iterator(expr: str, start: datetime) -> Any:
    # Imported here: a node's wheel install has only the agent's dependencies, and every command module
    # (this one through the pipeline spec) is imported by the CLI, 'mlfleet --version' included.
    from croniter import croniter

    start = start.replace(tzinfo=timezone.utc) if start.tzinfo is None else start.astimezone(timezone.utc)
    text = expr.strip().lower() if expr.strip().startswith("@") else expr.strip()
    return croniter(text, start, day_or=True, implement_cron_bug=True)
