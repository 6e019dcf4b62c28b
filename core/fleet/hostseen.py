"""When a host's numbers stop being live: one definition for ``hosts list``, the TUI's table and its card.

The controller polls every host once a tick. A host that has not answered
for three ticks (at least 2 s) has missed polls, and what the controller
holds of it (CPU, memory, GPUs) is its last answer, not the host now. The
state alone cannot say so: a link that stalls without closing stays ``up``
until ``controller.answer_timeout`` tears it down (15 s by default), and a
link that dropped keeps the last sample. So every ``hosts_list`` entry says
how long ago the host last answered (``seen_ago``, by the controller's own
clock: a client on another machine may have another) and whether that is
``stale``; clients print ``live`` or ``stale 6s`` and grey the numbers.
"""

from __future__ import annotations

import time
from typing import Any

from mlfleet.core.base.units import format_duration

MIN_STALE_S = 2.0  # below this a busy controller's late tick would flicker "stale" on a healthy host
TICKS = 3  # polls a host may miss before its numbers are shown as stale


def stale_after(tick: float) -> float:
    """Seconds without an answer after which a host polled every ``tick`` seconds is stale."""
    return max(MIN_STALE_S, TICKS * tick)


def freshness(state: str, last_seen: float | None, tick: float, now: float | None = None) -> dict[str, Any]:
    """``seen_ago`` (seconds since the host last answered, None if never) and ``stale`` for one host.

    A host whose link is not up is stale however recent its last answer: the
    next poll cannot reach it.
    """
    now = time.time() if now is None else now
    ago = None if last_seen is None else max(0.0, round(now - last_seen, 1))
    return {"seen_ago": ago, "stale": state != "up" or ago is None or ago > stale_after(tick)}


def seen_text(host: dict[str, Any]) -> str:
    """``live``, ``stale 6s`` (``stale 4m05s``…) or ``never``, from a ``hosts_list`` entry."""
    ago = host.get("seen_ago")
    if ago is None and host.get("last_seen"):  # a controller from before seen_ago: the client's clock
        ago = max(0.0, time.time() - float(host["last_seen"]))
    if ago is None:
        return "never"
    if not is_stale(host):
        return "live"
    return f"stale {format_duration(ago)}"


def is_stale(host: dict[str, Any]) -> bool:
    """Whether the host's numbers are its last answer rather than live."""
    if "stale" in host:
        return bool(host["stale"])
    return host.get("state") != "up" or not host.get("last_seen") or time.time() - float(host["last_seen"]) > MIN_STALE_S
