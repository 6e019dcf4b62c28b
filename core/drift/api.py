"""Client RPCs for data drift reports and reference profiles.

Drift is computed in the client, where the data lies (its own in-memory
DuckDB over the user's files); the controller stores the finished report or
profile in the DuckDB file it owns and audits it. docs/drift.md has the why.
"""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from mlfleet.core.base.bounds import Ident, ListLimit
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.private import private_dir
from mlfleet.core.base.protocol import Peer
from mlfleet.core.tracking import records as run_records
from mlfleet.core.store import rows as store_rows
from mlfleet.core.drift import records as drift_records
from mlfleet.core.team.roles import Permission

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext


class DriftApi:
    """``rpc_drift_*``: reports and profiles, stored and audited by the controller."""

    def __init__(self, ctx: "ControllerContext") -> None:
        self.c = ctx

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.c.store

    async def rpc_drift_save_report(self, peer: Peer, report: dict[str, Any], run: str | None = None,
                                    deployment: str | None = None) -> dict[str, Any]:
        """Store a finished report (and its columns), linked to a run or a deployment; audited."""
        for key in ("reference", "current", "drifted", "drifted_columns", "column_count", "compared_columns",
                    "drift_share", "drift_share_threshold", "multiple_testing", "columns"):
            if key not in report:
                raise UsageError(f"a drift report needs {key!r}")
        columns = report["columns"]
        if not isinstance(columns, list) or not all(
                isinstance(c, dict) and isinstance(c.get("column"), str) and isinstance(c.get("test"), str)
                for c in columns):
            raise UsageError("a drift report's columns must be a list of {column, test, ...} records")
        run_id = await self.store.read(run_records.resolve_run_id, run) if run else None
        report_id = await self._new_drift_id("drift_reports", "report_id", "d")
        try:
            await self.store.run(drift_records.save_report, report_id, report, peer.info["actor"], run_id,
                                 deployment or None)
        except (TypeError, ValueError, duckdb.Error) as exc:  # a hand-made report of the wrong types (not our CLI's)
            raise UsageError(f"a drift report with a value of the wrong type could not be stored: {exc}") from None
        return {"report_id": report_id, "run_id": run_id, "deployment": deployment or None}

    async def rpc_drift_trigger(self, peer: Peer, report: Ident, job_id: Ident, spec_path: str) -> dict[str, Any]:
        """Record that a retraining job was submitted because of this report (audited)."""
        report_id = await self.store.read(drift_records.resolve_report_id, report)
        job = await self.store.read(drift_records.triggered_job, job_id)
        actor = peer.info["actor"]
        if job["owner"] != actor:  # someone else's job, as acting on others' jobs: maintainer in its project
            await self.c.require(actor, Permission.TRIGGER, method="drift_trigger", project=job["project"],
                                 owner=job["owner"], target=f"job {job['job_id']}")
        await self.store.run(drift_records.record_trigger, report_id, job_id, spec_path, peer.info["actor"])
        return {"report_id": report_id, "job_id": job_id}

    async def rpc_drift_list(self, peer: Peer, limit: ListLimit = 200, run: str | None = None) -> list[dict[str, Any]]:
        return await self.store.read(drift_records.list_reports, limit, run)

    async def rpc_drift_show(self, peer: Peer, report: Ident) -> dict[str, Any]:
        return await self.store.read(drift_records.get_report, report)

    # ----------------------------------------------------------- profiles
    def drift_profiles_dir(self) -> Path:
        return self.c.home.data_dir / "profiles"

    async def rpc_drift_profile_dir(self, peer: Peer) -> dict[str, Any]:
        """A fresh folder under the data dir for a new profile's value files (the client writes them)."""
        profile_id = await self._new_drift_id("drift_profiles", "profile_id", "p")
        folder = self.drift_profiles_dir() / profile_id
        private_dir(self.drift_profiles_dir())
        folder.mkdir(exist_ok=False, mode=0o700)
        return {"profile_id": profile_id, "values_dir": str(folder)}

    async def rpc_drift_save_profile(self, peer: Peer, profile_id: str, profile: dict[str, Any],
                                     replace: bool = False) -> dict[str, Any]:
        if not re.fullmatch(r"p[0-9a-f]{4,32}", profile_id or ""):
            raise UsageError(f"{profile_id!r} is not a profile id (ask drift_profile_dir for one)")
        folder = self.drift_profiles_dir() / profile_id
        if Path(profile.get("values_dir", "")) != folder or not folder.is_dir():
            raise UsageError(f"profile {profile_id}: its values must be written to {folder} "
                             "(ask drift_profile_dir first)")
        try:
            replaced = await self.store.run(drift_records.save_profile, profile_id, profile, peer.info["actor"],
                                            replace)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if replaced and Path(replaced).parent == self.drift_profiles_dir():
            shutil.rmtree(replaced, ignore_errors=True)
        return {"profile_id": profile_id, "name": profile["name"], "replaced": bool(replaced)}

    async def rpc_drift_get_profile(self, peer: Peer, name: Ident) -> dict[str, Any]:
        return await self.store.read(drift_records.get_profile, name)

    async def rpc_drift_profiles(self, peer: Peer) -> list[dict[str, Any]]:
        return await self.store.read(drift_records.list_profiles)

    async def _new_drift_id(self, table: str, column: str, prefix: str) -> str:
        while True:
            ident = prefix + secrets.token_hex(4)
            found = await self.store.read(store_rows.rows, f"select 1 from {table} where {column} = ?", [ident])
            if not found:
                return ident
