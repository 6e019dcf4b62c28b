"""The fleet as a table: one row per host, and the text of each cell.

The cells are plain functions of one ``hosts_list`` entry, so the table can
compare them with what is on screen and update only the cells that changed.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from mlfleet.core.units import format_size

HOST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "HOST"), ("state", "STATE"), ("kind", "PROVIDER"), ("labels", "LABELS"), ("cpu", "CPU"),
    ("ram", "RAM"), ("gpus", "GPUS"), ("gpu_util", "GPU UTIL"), ("gpu_mem", "GPU MEM"), ("jobs", "JOBS"),
    ("agent", "AGENT"), ("seen", "LAST SEEN"), ("badges", "NOTES"),
)
STATE_STYLES = {"up": "green", "unreachable": "bold red", "connecting": "yellow", "stopped": "dim"}
LABELS_WIDTH = 28


def host_cells(host: dict[str, Any]) -> tuple[str | Text, ...]:
    """The text of each column for one ``hosts_list`` entry."""
    t = host.get("telemetry") or {}
    gpus = t.get("gpus") or []
    state = host.get("state") or "connecting"
    labels = ",".join(f"{k}={v}" for k, v in sorted((host.get("labels") or {}).items())) or "-"
    if len(labels) > LABELS_WIDTH:
        labels = labels[:LABELS_WIDTH - 1] + "…"
    if gpus:
        util = [g["utilization"] for g in gpus if g.get("utilization") is not None]
        gpu_util = f"{sum(util) / len(util):.0f} %" if util else "n/a"
        used = sum(g.get("memory_used") or 0 for g in gpus)
        total = sum(g.get("memory_total") or 0 for g in gpus)
        gpu_mem = f"{format_size(used)} / {format_size(total)}"
    else:
        gpu_util = gpu_mem = "-"
    badges = []
    if host.get("simulated"):
        badges.append("SIMULATED")
    if host.get("drained"):
        badges.append("DRAINED")
    return (
        host["name"], Text(state, style=STATE_STYLES.get(state, "")), host.get("kind") or "-", labels,
        f"{t['cpu_percent']:.0f} % of {t['cpu_count']}" if t else "-",
        f"{format_size(t['memory_used'])} / {format_size(t['memory_total'])}" if t else "-",
        _gpu_count(t), gpu_util, gpu_mem, str(host.get("running_jobs") or 0),
        host.get("agent_version") or "-", _seen(host.get("last_seen")),
        " ".join(badges) or "-",
    )


def _gpu_count(t: dict[str, Any]) -> str:
    if not t:
        return "-"
    if t.get("gpu_state") == "no_driver":
        return "no driver"
    if t.get("gpu_state") == "error":
        return "error"
    return str(len(t.get("gpus") or []))


FRESH_S = 10.0


def _seen(last_seen: float | None) -> str:
    """``live`` while the host answers (a clock that ticks every second is noise), else when it was last seen."""
    if not last_seen:
        return "never"
    if time.time() - last_seen < FRESH_S:
        return "live"
    return time.strftime("%m-%d %H:%M:%S", time.localtime(last_seen))
