"""The fleet as a table: one row per host, and the text of each cell.

The cells are plain functions of one ``hosts_list`` entry, so the table can
compare them with what is on screen and update only the cells that changed.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from mlfleet.core.fleet.hostseen import is_stale, seen_text
from mlfleet.core.fleet.slurm_cluster import cluster_gpus_cell
from mlfleet.core.base.units import format_size

HOST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "HOST"), ("state", "STATE"), ("kind", "PROVIDER"), ("labels", "LABELS"), ("cpu", "CPU"),
    ("ram", "RAM"), ("gpus", "GPUS"), ("gpu_util", "GPU UTIL"), ("gpu_mem", "GPU MEM"), ("jobs", "JOBS"),
    ("agent", "AGENT"), ("seen", "LAST SEEN"), ("badges", "NOTES"),
)
STATE_STYLES = {"up": "green", "unreachable": "bold red", "connecting": "yellow", "stopped": "dim"}
STALE_STYLE = "dim"  # the last answer of a host that stopped answering, not its state now
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
    stale = is_stale(host)
    gpu_count = _gpu_count(t)
    if host.get("kind") == "slurm":  # the cluster's GPUs (free/total, from sinfo), not its login node's
        gpu_count = cluster_gpus_cell((host.get("info") or {}).get("slurm"))
        gpu_util = gpu_mem = "-"
    live = (f"{t['cpu_percent']:.0f} % of {t['cpu_count']}" if t else "-",
            f"{format_size(t['memory_used'])} / {format_size(t['memory_total'])}" if t else "-",
            gpu_count, gpu_util, gpu_mem)
    seen = seen_text(host)
    return (
        host["name"], Text(state, style=STATE_STYLES.get(state, "")), host.get("kind") or "-", labels,
        # A host that stopped answering keeps its last numbers: greyed, so they do not read as now.
        *((Text(v, style=STALE_STYLE) for v in live) if stale and t else live),
        str(host.get("running_jobs") or 0), host.get("agent_version") or "-",
        Text(seen, style="bold yellow") if seen.startswith("stale") else seen,
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
