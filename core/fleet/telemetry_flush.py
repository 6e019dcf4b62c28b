"""Host telemetry into the file: one averaged row per host (and per GPU) each ``telemetry.window``.

The links hold the last hour of samples in memory (what the TUI and the
scheduler read); the file gets one row per window, and rows older than
``telemetry.retention`` are pruned hourly.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mlfleet.core.base.settings import Settings
from mlfleet.core.fleet import records
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.store.db import Store

log = logging.getLogger(__name__)


async def telemetry_loop(store: Store, links: dict[str, HostLink], settings: Settings) -> None:
    last_prune = 0.0
    while True:
        await asyncio.sleep(float(settings.telemetry.window))
        try:
            await flush_telemetry(store, links, settings)
            if time.time() - last_prune > 3600:
                await store.run(records.prune_telemetry, float(settings.telemetry.retention))
                last_prune = time.time()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("telemetry flush failed")


async def flush_telemetry(store: Store, links: dict[str, HostLink], settings: Settings) -> None:
    """Write one averaged row per host (and per GPU) for the last window."""
    window_s = float(settings.telemetry.window)
    cutoff = time.time() - window_s
    host_rows, gpu_rows = [], []
    for link in links.values():
        window = [s for s in link.history if s.ts > cutoff]
        if not window:
            continue
        last = window[-1]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        host_rows.append([link.name, last.ts, window_s, mean([s.cpu_percent for s in window]),
                          mean([s.load1 for s in window]), int(mean([s.memory_used for s in window])),
                          last.memory_total, last.swap_used, last.disk_used, last.disk_total,
                          mean([s.net_rx_bps for s in window]), mean([s.net_tx_bps for s in window]),
                          last.gpu_state])
        for gpu in last.gpus:
            utils = [g.utilization for s in window for g in s.gpus if g.index == gpu.index and g.utilization is not None]
            gpu_rows.append([link.name, last.ts, window_s, gpu.index, gpu.uuid, gpu.name,
                             mean(utils) if utils else None, gpu.memory_used, gpu.memory_total, gpu.temperature,
                             gpu.power_draw, len(gpu.processes)])
    if host_rows or gpu_rows:
        await store.run(records.write_telemetry, host_rows, gpu_rows)
