"""A real controller for the capture stories: reads captures often, in small chunks, and queues one replica-like job.

Why not ``mlfleet controller run``: a replica's JobSpec (with ``service``) is made by deployments
only (a job spec file that sets it is refused), so this controller queues it itself through the
jobs capability's ``submit_group``, once: a restart finds the job by name and leaves it. Usage::

    python tests/capture_controller.py SPEC.json INTERVAL MAX_BYTES   (MLFLEET_HOME set)
"""

from __future__ import annotations

import asyncio
import json
import sys

from mlfleet.core.base import logfile
from mlfleet.core.base.models import spec_from_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import use_private_umask
from mlfleet.core.base.settings import load_settings
from mlfleet.core.controller import capabilities
from mlfleet.core.controller.loop import Controller
from mlfleet.core.controller.service import BaseService, ControllerContext
from mlfleet.core.deploy.capture import CaptureService
from mlfleet.core.jobs.group import submit_group
from mlfleet.core.store.rows import rows


class SubmitOnce(BaseService):
    name = "test-submit"

    def __init__(self, ctx: ControllerContext, jobs, spec) -> None:
        self.ctx, self.jobs, self.spec, self.done = ctx, jobs, spec, False

    async def tick(self) -> None:
        if self.done:
            return
        found = await self.ctx.store.read(rows, "select job_id from jobs where name = ?", [self.spec.name])
        if not found:
            await submit_group(self.jobs, "tester", [self.spec], None, True, lambda con, ids: None,
                               lambda i: self.spec.name)
        self.done = True


def main() -> None:
    spec = spec_from_plain(json.loads(open(sys.argv[1]).read()))
    interval, max_bytes = float(sys.argv[2]), int(sys.argv[3])
    home = Home.from_env()

    def services(ctx: ControllerContext):
        out = capabilities.services(ctx)
        jobs = next(s for s in out if s.name == "jobs")
        out = [CaptureService(ctx, jobs, interval=interval, max_bytes=max_bytes) if s.name == "capture" else s
               for s in out]
        return [*out, SubmitOnce(ctx, jobs, spec)]

    use_private_umask()
    settings = load_settings(home.config_file)
    logfile.install(home.log_dir / "controller.log", int(settings.controller.log_max_size),
                    settings.controller.log_backups)
    asyncio.run(Controller(home, settings, services=services).run())


if __name__ == "__main__":
    main()
