"""What the controller writes and reads for the fleet: host rows, drains, telemetry windows.

Plain functions over a DuckDB connection, run on the store's threads.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.store.db import now, transaction


def upsert_host(con: duckdb.DuckDBPyConnection, name: str, kind: str, address: str | None,
                labels: dict[str, str], state: str, agent_version: str | None = None,
                info: dict[str, Any] | None = None, seen: bool = False) -> None:
    ts = now()
    con.execute(
        """insert into hosts (name, kind, address, labels, state, agent_version, info, first_seen, last_seen)
           values (?, ?, ?, ?, ?, ?, ?, to_timestamp(?), case when ? then to_timestamp(?) end)
           on conflict (name) do update set kind = excluded.kind, address = excluded.address,
             labels = excluded.labels, state = excluded.state,
             agent_version = coalesce(excluded.agent_version, hosts.agent_version),
             info = coalesce(excluded.info, hosts.info),
             last_seen = coalesce(excluded.last_seen, hosts.last_seen)""",
        [name, kind, address, json.dumps(labels), state, agent_version,
         json.dumps(info) if info is not None else None, ts, seen, ts])


def set_drain(con: duckdb.DuckDBPyConnection, name: str, actor: str | None, reason: str | None) -> None:
    con.execute("update hosts set drained_by = ?, drain_reason = ? where name = ?", [actor, reason, name])


def set_host_state(con: duckdb.DuckDBPyConnection, name: str, state: str) -> None:
    con.execute("update hosts set state = ? where name = ?", [state, name])


# -------------------------------------------------------------- telemetry

def write_telemetry(con: duckdb.DuckDBPyConnection, host_rows: list[list[Any]], gpu_rows: list[list[Any]]) -> None:
    with transaction(con):
        if host_rows:
            con.executemany("""insert into telemetry (host, ts, window_s, cpu_percent, load1, memory_used, memory_total,
                               swap_used, disk_used, disk_total, net_rx_bps, net_tx_bps, gpu_state)
                               values (?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", host_rows)
            con.executemany("update hosts set last_seen = to_timestamp(?) where name = ?",
                            [[row[1], row[0]] for row in host_rows])
        if gpu_rows:
            con.executemany("""insert into gpu_telemetry (host, ts, window_s, gpu_index, uuid, name, utilization,
                               memory_used, memory_total, temperature, power_draw, processes)
                               values (?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", gpu_rows)


def prune_telemetry(con: duckdb.DuckDBPyConnection, keep_seconds: float) -> None:
    cutoff = now() - keep_seconds
    with transaction(con):
        con.execute("delete from telemetry where ts < to_timestamp(?)", [cutoff])
        con.execute("delete from gpu_telemetry where ts < to_timestamp(?)", [cutoff])

