"""A time as people write it (``models history --at T``, ``audit export --since T``), read in the client, where
"local time" means the user's.

Pure: the caller passes ``now``. Takes an ISO date-time (``2026-11-28``,
``2026-11-28 14:30``, ``2026-11-28T14:30:00+01:00``; without an offset it is
this machine's local time, as the CLI shows times and as the runs filter
reads them), a duration ago (``2h``, ``90m``, ``1d12h``, optionally followed
by `` ago``), ``now``, or Unix seconds (``@1764000000``).
"""

from __future__ import annotations

import datetime as dt

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.units import parse_duration


def parse_at(text: str, now: float, flag: str = "--at") -> float:
    """Unix seconds for ``text`` (see the module's doc); a time it cannot read is one sentence naming ``flag``."""
    raw = text.strip()
    low = raw.lower()
    if low == "now":
        return now
    if low.startswith("@"):
        try:
            return float(low[1:])
        except ValueError:
            pass
    else:
        ago = low.removesuffix("ago").strip()
        if ago and ago[0].isdigit() and ago[-1] in "smhd":
            try:
                return now - parse_duration(ago)
            except ValueError:
                pass
        try:
            stamp = dt.datetime.fromisoformat(raw)
        except ValueError:
            stamp = None
        if stamp is not None:
            try:
                return (stamp.astimezone() if stamp.tzinfo is None else stamp).timestamp()
            except (ValueError, OverflowError, OSError):
                raise UsageError(f"{flag} {raw!r} is out of the range of dates this machine can convert") from None
    raise UsageError(f"{flag} {raw!r} is not a time; write e.g. '2026-11-28 14:30' (local time unless it has an "
                     "offset), '2h' or '3d ago', or '@' and Unix seconds")
