"""What the controller writes for environments: the one a run uses (its env_hash and pinned packages).

Lineage (issue 15): `runs compare` shows which packages differ between two
runs and `--where "env.numpy = '2.4.6'"` filters on them, both from
``run_packages``; ``runs.env_hash`` says which built environment it was.
"""

from __future__ import annotations

import duckdb

from mlfleet.core.base.models import EnvPlan
from mlfleet.core.store.db import transaction


def record_run_environment(con: duckdb.DuckDBPyConnection, run_id: str, plan: EnvPlan) -> None:
    """The run's environment, replacing what an earlier try of the same launch wrote (idempotent)."""
    with transaction(con):
        con.execute("update runs set env_hash = ? where run_id = ?", [plan.env_hash, run_id])
        con.execute("delete from run_packages where run_id = ?", [run_id])
        if plan.wheels:
            con.executemany("insert into run_packages (run_id, name, version, sha256) values (?, ?, ?, ?)",
                            [[run_id, w.name, w.version, w.sha256] for w in plan.wheels])
