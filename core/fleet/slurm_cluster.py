"""A Slurm cluster's shape as the controller keeps it: one ``sinfo`` now and then, and its words for people.

The login node's agent answers ``slurm_info`` with one ``sinfo`` (node by
node: agents/slurm.py), whatever the cluster's size; the controller asks
again every :data:`REFRESH_S` seconds, not every tick, in the background so
a slow ``slurmctld`` never holds up the host's poll. The answer lives in
``link.info["slurm"]`` (``hosts list --json`` under ``info.slurm``), stamped
with when it arrived. The rest of this module is pure: the sentences and
table cells that ``hosts list``, ``jobs why`` and the TUI share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from mlfleet.core.base.errors import MlfleetError

if TYPE_CHECKING:  # the words below are pure; the TUI and the CLI import them without the links
    from mlfleet.core.fleet.hostlink import HostLink

log = logging.getLogger(__name__)

clock = time.time  # the wall clock sinfo's "at" is read against (a snapshot test pins it)
REFRESH_S = 15.0  # the cluster's free GPUs are this old at most (plus one sinfo): not every tick, not once a day


class ClusterRefresh:
    """One ``slurm_info`` in flight per cluster at most, asked when the last answer is REFRESH_S old (or absent)."""

    def __init__(self, interval: float = REFRESH_S) -> None:
        self.interval = interval
        self.asked = 0  # slurm_info requests made, all clusters together
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}  # a failing sinfo is asked again after an interval, not every tick

    def refresh_soon(self, link: "HostLink") -> None:
        """Ask in the background when due; a fresh connection (no answer yet) is asked at once."""
        shape = link.info.get("slurm")
        now = time.monotonic()
        due = not isinstance(shape, dict) or time.time() - float(shape.get("at", 0)) >= self.interval
        if not due or link.name in self._tasks or now - self._failed_at.get(link.name, -1e9) < self.interval:
            return
        self.asked += 1
        task = asyncio.get_running_loop().create_task(self._ask(link), name=f"sinfo {link.name}")
        self._tasks[link.name] = task
        task.add_done_callback(lambda _: self._tasks.pop(link.name, None))

    async def _ask(self, link: "HostLink") -> None:
        try:
            shape = await link.request("slurm_info", request_timeout=60)
        except MlfleetError as exc:  # the previous shape stays, and says how old it is
            log.warning("sinfo on %s failed: %s (asked again in %.0f s)", link.name, exc, self.interval)
            self._failed_at[link.name] = time.monotonic()
            return
        self._failed_at.pop(link.name, None)
        link.info = {**link.info, "slurm": {**shape, "at": time.time()}}

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()


# ------------------------------------------------------------------ words (pure)
def partition(shape: dict[str, Any] | None, name: str | None) -> dict[str, Any] | None:
    """The partition called ``name``, or the default one when no name is given."""
    parts = (shape or {}).get("partitions") or []
    return next((p for p in parts if (p["name"] == name if name else p.get("default"))), None)


def gpus_text(gpus: dict[str, dict[str, int]]) -> str:
    """``fake 0/2`` (free/total by type), ``-`` for none."""
    return ", ".join(f"{gtype} {g.get('free', 0)}/{g['total']}" for gtype, g in sorted(gpus.items())) or "-"


def free_gpus_sentence(part: dict[str, Any]) -> str:
    """``partition debug has 0 of 2 GPUs free (fake: 0/2)``, with the most on one node when that matters."""
    gpus = part.get("gpus")
    if gpus is None:  # an agent older than free GPUs: the shape without them
        return f"partition {part['name']}: free GPUs unknown"
    total = sum(g["total"] for g in gpus.values())
    if not total:
        return f"partition {part['name']} has no GPUs"
    free = sum(g["free"] for g in gpus.values())
    by_type = ", ".join(f"{gtype}: {g['free']}/{g['total']}" for gtype, g in sorted(gpus.items()))
    most = max(g.get("free_max_node", 0) for g in gpus.values())
    spread = f", at most {most} on one node" if free and most < free else ""
    return f"partition {part['name']} has {free} of {total} GPUs free ({by_type}){spread}"


def age_text(shape: dict[str, Any], now: float | None = None) -> str:
    """``sinfo 4 s ago``."""
    at = shape.get("at")
    if not at:
        return "sinfo"
    return f"sinfo {max(0, int((now or clock()) - float(at)))} s ago"


PARTITION_HEADERS = ["partition", "state", "nodes", "idle", "allocated", "down", "gpus free/total"]


def partition_rows(shape: dict[str, Any]) -> list[list[Any]]:
    """One table row per partition: ``debug*  up  1  0  1  0  fake 0/2``."""
    rows = []
    for part in shape.get("partitions") or []:
        nodes = part["nodes"]
        gpus = part.get("gpus") or {t: {"total": n * part.get("node_count", 1), "free": "?"}
                                    for t, n in part.get("gpus_per_node", {}).items()}
        rows.append([part["name"] + ("*" if part.get("default") else ""), "up" if part.get("up") else "down",
                     nodes["total"], nodes["idle"], nodes["allocated"], nodes["down"], gpus_text(gpus)])
    return rows


def cluster_gpus_cell(shape: dict[str, Any] | None) -> str:
    """The ``gpus`` cell of a cluster in ``hosts list``: free/total over its nodes, ``sinfo pending`` before one."""
    if not isinstance(shape, dict):
        return "sinfo pending"
    gpus = shape.get("gpus")
    if gpus is None:
        return "-"
    total = sum(g["total"] for g in gpus.values())
    return f"{sum(g['free'] for g in gpus.values())}/{total} free" if total else "none"
