"""Client RPCs for sweeps: list, show, cancel; and the submit of a spec with a ``sweep:`` block.

A sweep spec comes in through the one ``submit`` RPC (so every client,
the TUI's included, can send one); the jobs service hands it here
(``JobsService.sweep_submit``). All its children are checked, recorded
and queued in one request and one transaction.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from mlfleet.core.base.bounds import Ident, ListLimit
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import JobSpec, to_plain
from mlfleet.core.base.protocol import Peer
from mlfleet.core.jobs.group import cancel_jobs, submit_group
from mlfleet.core.sweeps import records
from mlfleet.core.sweeps.children import children as expand
from mlfleet.core.sweeps.limits import Member
from mlfleet.core.team.roles import Permission

if TYPE_CHECKING:
    from mlfleet.core.sweeps.service import SweepsService


class SweepsApi:
    def __init__(self, service: "SweepsService") -> None:
        self.s = service

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.s.ctx.store

    async def submit(self, actor: str, spec: JobSpec, spec_path: str | None, queue_anyway: bool,
                     key: str | None, code: dict[str, Any] | None = None) -> dict[str, Any]:
        """Expand, check and queue a sweep; with ``key``, a retry gets the same sweep back.

        ``code``: the snapshot the caller sent of the sweep's workdir (core/jobs/code_upload.py)."""
        plain = to_plain(spec)
        spec_hash = spec.content_hash()
        if key is not None:
            earlier = await self.store.read(records.find_by_key, actor, key)
            if earlier is not None:
                return _same_sweep(earlier, key, spec_hash, plain)
        made = expand(spec)
        sweep_id = "s" + secrets.token_hex(4)
        sweep = spec.sweep
        assert sweep is not None
        answer = {"sweep_id": sweep_id, "name": spec.name, "project": spec.project, "points": len(made),
                  "max_parallel": sweep.max_parallel, "state": "pending", "key": key}
        row = {"sweep_id": sweep_id, "name": spec.name, "project": spec.project, "spec": plain, "spec_hash": spec_hash,
               "spec_path": spec_path, "max_parallel": sweep.max_parallel, "key": key, "answer": answer,
               "metric": sweep.objective.metric if sweep.objective else None,
               "mode": sweep.objective.mode if sweep.objective else None}
        points = [{"index": c.index, "point": c.point} for c in made]

        def record(con: Any, job_ids: list[str]) -> Any:
            return records.insert_sweep(con, row, points, job_ids, actor)

        ids, earlier, facts = await submit_group(self.s.jobs, actor, [c.spec for c in made], spec_path, queue_anyway,
                                                 record, lambda i: f"{made[i].spec.name} (point {made[i].point})",
                                                 code=code)
        if earlier is not None:  # another attempt with this key was recorded while this one snapshotted
            return _same_sweep(earlier, key or "", spec_hash, plain)
        for job_id, child in zip(ids, made):
            self.s.members[job_id] = Member(spec.name, child.index, sweep.max_parallel)
        return {**answer, **facts, "jobs": ids, "existing": False}

    async def rpc_sweeps_list(self, peer: Peer, limit: ListLimit = 200) -> list[dict[str, Any]]:
        return await self.store.read(records.list_sweeps, limit)

    async def rpc_sweep_show(self, peer: Peer, sweep: Ident) -> dict[str, Any]:
        return await self.store.read(_show, sweep)

    async def rpc_sweep_cancel(self, peer: Peer, sweep: Ident) -> dict[str, Any]:
        """Cancel every child not ended yet: queued ones at once, started ones stopped as ``jobs cancel`` does."""
        actor = peer.info["actor"]
        found = await self.store.read(records.resolve_sweep, sweep)
        await self.s.ctx.require(actor, Permission.CANCEL, method="sweep_cancel", project=found["project"],
                                 owner=found["owner"], target=f"sweep {found['name']}")
        await self.store.run(records.mark_cancelled, found["sweep_id"], actor)
        ids = await self.store.read(records.job_ids, found["sweep_id"])
        counts = await cancel_jobs(self.s.jobs, actor, ids)
        words = f"sweep {found['name']}: {counts['cancelled']} queued children cancelled, {counts['stopping']} being stopped"
        return {"sweep_id": found["sweep_id"], "name": found["name"], **counts, "message": words}


def _show(con: Any, ident: str) -> dict[str, Any]:
    sweep = records.resolve_sweep(con, ident)
    sweep["progress"] = records.progress(con, sweep["sweep_id"])
    sweep["best"] = records.best_run(con, sweep)
    sweep["children"] = records.children(con, sweep)
    sweep.pop("answer", None)
    return sweep


def _same_sweep(earlier: dict[str, Any], key: str, spec_hash: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A retry with the key: the first answer again; the same key with another spec is refused, as for a job."""
    if earlier["spec_hash"] != spec_hash:
        before, spec = earlier["spec"] or {}, json.loads(json.dumps(spec))
        fields = sorted(k for k in set(before) | set(spec) if before.get(k) != spec.get(k))
        differ = f" ({', '.join(fields[:6])} {'differs' if len(fields) == 1 else 'differ'})" if fields else ""
        raise UsageError(f"submit key {key!r} was already used for sweep {earlier['sweep_id']} with a different "
                         f"spec{differ}; submit this spec with a new key (or without --key)")
    return {**earlier["answer"], "existing": True}
