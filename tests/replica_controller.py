"""A real controller with one extra RPC that queues a job spec with ``service`` set, as core/deploy will.

Until the deployments capability exists nothing else can put a ServicePlan
on a job (a job spec file may not set it), so the tests of what the jobs
capability does for replicas (model files shipped before the launch) start
this controller instead of ``mlfleet controller run``: the same services,
plus ``test_submit_replica(spec)`` through ``core/jobs/group.submit_group``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mlfleet.core.base import logfile
from mlfleet.core.base.models import spec_from_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import use_private_umask
from mlfleet.core.base.settings import load_settings
from mlfleet.core.controller.capabilities import services
from mlfleet.core.controller.loop import Controller
from mlfleet.core.controller.service import ControllerContext, RpcService, Service
from mlfleet.core.jobs.group import submit_group
from mlfleet.core.team.roles import Permission


class ReplicaApi:
    def __init__(self, jobs: Any) -> None:
        self.jobs = jobs

    async def rpc_test_submit_replica(self, peer: Any, spec: dict[str, Any]) -> dict[str, Any]:
        ids, _, _ = await submit_group(self.jobs, "test", [spec_from_plain(spec)], None, False,
                                       lambda con, ids: None, lambda i: "replica")
        return {"job_id": ids[0]}


def build(ctx: ControllerContext) -> list[Service]:
    made = services(ctx)
    jobs = next(s for s in made if s.name == "jobs")
    return [*made, RpcService("replica-test", ReplicaApi(jobs), permissions={"test_submit_replica": Permission.SUBMIT})]


if __name__ == "__main__":
    use_private_umask()
    home = Home.from_env()
    settings = load_settings(home.config_file)
    logfile.install(home.log_dir / "controller.log", int(settings.controller.log_max_size),
                    settings.controller.log_backups)
    asyncio.run(Controller(home, settings, services=build).run())
