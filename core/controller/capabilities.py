"""The services the controller runs, in order: a capability plugs in here, and the loop does not change.

Order matters: hooks are called in this order, so the fleet starts (host
rows, drains) before jobs are loaded, and each tick syncs the hosts before
the queue is scheduled on what they reported.
"""

from __future__ import annotations

from mlfleet.core.audit.service import AuditService
from mlfleet.core.controller.service import ControllerContext, RpcService, Service
from mlfleet.core.deploy.capture import CaptureService
from mlfleet.core.deploy.service import DeployService
from mlfleet.core.drift.api import DriftApi
from mlfleet.core.fleet.service import FleetService
from mlfleet.core.jobs.service import JobsService
from mlfleet.core.pipelines.service import PipelineService
from mlfleet.core.registry.service import RegistryService
from mlfleet.core.store.api import StoreApi
from mlfleet.core.sweeps.service import SweepsService
from mlfleet.core.team.secrets_api import SecretsApi
from mlfleet.core.tracking.api import RunsApi


def services(ctx: ControllerContext) -> list[Service]:
    fleet = FleetService(ctx)
    jobs = JobsService(ctx, fleet)
    return [
        AuditService(ctx),  # first: the chain's head file follows every write, the other services' starts too
        fleet,  # links in step with hosts.yaml, one sync per host and tick, telemetry windows
        jobs,  # the queue, dispatch, launches, a host's runs in its sync
        SweepsService(ctx, jobs),  # sweeps' children, and the hold that keeps each sweep's max_parallel
        CaptureService(ctx, jobs),  # replicas' captured inputs into Parquet, exactly once (docs/drift.md)
        DeployService(ctx, jobs),  # deployments: each tick one rollout step, replicas submitted and cancelled as jobs
        PipelineService(ctx, jobs),  # pipeline runs: a driver per run, resumed from the store at start
        RpcService("runs", RunsApi(ctx)),
        RegistryService(ctx),  # the model registry: versions in the model store, aliases; leftovers cleared at start
        RpcService("drift", DriftApi(ctx)),
        RpcService("db", StoreApi(ctx)),
        RpcService("secrets", SecretsApi(ctx)),  # the secret store, outside DuckDB (docs/secrets.md)
    ]
