"""Launching a run on its host, in the background: ship the code snapshot (and a replica's model file,
core/jobs/model_ship.py) once per host and content, then launch.

Shipping can take a while and must never hold up the tick; launching is
idempotent by run id on the agent, so a launch that failed (or was never
sure to have happened) is simply tried again next tick.

Runs of one sweep launched onto one Slurm host in the same tick are
gathered and sent together (the agent's ``launch_array``): one
``sbatch --array`` for all of them (agents/slurm_array.py). The tick's
callers (dispatch, a host's poll) gather inside :meth:`Launcher.together`,
which sends what was gathered when the last of them is done (a host's poll
runs beside the dispatch and must not send half of its sweep); a short
timer sends what a caller outside it gathered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import os
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from mlfleet.core.base.errors import MlfleetError, RemoteError, UsageError
from mlfleet.core.base.models import EnvPlan, LaunchRequest, RunStatus, SlurmPlan, to_plain
from mlfleet.core.environments import records as env_records
from mlfleet.core.environments.resolve import EnvironmentFailure
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.jobs import records
from mlfleet.core.jobs.model_ship import ModelShipper, ModelUnavailable
from mlfleet.core.jobs.params import param_env, render_argv
from mlfleet.core.jobs.runs import ActiveRun
from mlfleet.core.jobs.slurm_plan import partition_and_gres
from mlfleet.core.team.secret_store import SecretStore

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService

log = logging.getLogger(__name__)

GATHER_S = 0.5  # the longest a sweep's run waits for its siblings of the same tick when nobody flushes
MAX_ARRAY = 500  # runs in one launch_array (one RPC frame, one sbatch: Slurm's MaxArraySize is 1001 by default)


@functools.lru_cache(maxsize=8)
def controller_identity(data_dir: Path) -> str:
    """Who this controller is on a node it shares with others: ``user@machine:data dir`` (names the holder of a
    GPU in another controller's refusal, and keeps run ids of two controllers apart on one node)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid with no name (a container): the number says who
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}:{data_dir}"


class Launcher:
    def __init__(self, jobs: "JobsService") -> None:
        self.jobs = jobs
        self._launching: set[str] = set()
        self._shipping: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._gathering: dict[tuple[str, str], tuple[HostLink, list[ActiveRun]]] = {}  # (host, sweep) -> its runs
        self._flush_timer: asyncio.TimerHandle | None = None
        self._together = 0  # callers inside together(): nothing gathered is sent before the last one is done
        self.models = ModelShipper(jobs.ctx.home.model_store_dir)  # a replica's model file, once per host and sha

    def launch_soon(self, link: HostLink, run: ActiveRun) -> None:
        """Launch in the background: shipping code can take a while and must not hold up the tick."""
        if run.run_id in self._launching:
            return
        self._launching.add(run.run_id)
        loop = asyncio.get_running_loop()
        group = self._array_group(link.name, run)
        if group is not None:  # a sweep's run on a Slurm host: waits for its siblings of this tick
            self._gathering.setdefault((link.name, group), (link, []))[1].append(run)
            if self._flush_timer is None:
                self._flush_timer = loop.call_later(GATHER_S, self.flush)
            return
        task = loop.create_task(self._launch(link, run))
        task.add_done_callback(lambda _: self._launching.discard(run.run_id))

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Launches asked for inside are gathered, and sent when the last caller inside is done."""
        self._together += 1
        try:
            yield
        finally:
            self._together -= 1
            self.flush()

    def flush(self) -> None:
        """Launch the sweeps' runs gathered so far: each sweep's runs on one Slurm host together, as one array."""
        if self._together:
            return  # a dispatch is still placing: its last caller sends them
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        gathered, self._gathering = self._gathering, {}
        loop = asyncio.get_running_loop()
        for link, runs in gathered.values():
            for start in range(0, len(runs), MAX_ARRAY):
                part = runs[start:start + MAX_ARRAY]
                task = loop.create_task(self._launch_array(link, part))
                task.add_done_callback(lambda _, ids=[r.run_id for r in part]: self._launching.difference_update(ids))

    def _array_group(self, host: str, run: ActiveRun) -> str | None:
        """The sweep whose runs this one shares a job array with (None: launched alone; not a Slurm host)."""
        config = self.jobs.fleet.inventory.get(host)
        if config is None or config.slurm is None or run.spec.service is not None:
            return None
        return self.jobs.array_group(run.job_id)

    async def _launch(self, link: HostLink, run: ActiveRun) -> None:
        request = await self._request(link, run)
        if request is None:
            return
        try:
            await self._deliver(link, run, request)
            if run.cancel_requested_by:
                return  # cancelled while its code was on the way: never start it
            await link.request("launch", request=to_plain(request))  # to_plain: a ServicePlan holds Seconds
        except RemoteError as exc:
            if exc.kind != "GpuClaimedError":
                log.warning("launch of %s on %s failed: %s (will retry)", run.run_id, link.name, exc)
                return
            await self.jobs.host_runs.refused(run, str(exc))  # another controller's run holds the GPUs: placed again
            return
        except ModelUnavailable as exc:  # the controller's own copy: no retry helps, the run fails with the sentence
            if run.run_id in self.jobs.active and not run.cancel_requested_by:
                await self.jobs.host_runs.finish(run, RunStatus(run_id=run.run_id, state="exited",
                                                                reason="failed-to-start", message=str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - logged, retried next tick
            log.warning("launch of %s on %s failed: %s (will retry)", run.run_id, link.name, exc)
            return
        self._launched(link, run, request)

    async def _launch_array(self, link: HostLink, runs: list[ActiveRun]) -> None:
        """A sweep's runs of one tick on a Slurm host: one ``launch_array`` per set of equal sbatch options."""
        if len(runs) == 1:
            await self._launch(link, runs[0])
            return
        prepared = []
        for run in runs:
            request = await self._request(link, run)
            if request is not None:
                prepared.append((run, request))
        by_plan: dict[str, list[tuple[ActiveRun, LaunchRequest]]] = {}
        for run, request in prepared:  # a sweep over resources asks Slurm for different things per point
            by_plan.setdefault(repr(request.slurm), []).append((run, request))
        for group in by_plan.values():
            try:
                for run, request in group:
                    await self._deliver(link, run, request)  # one upload per snapshot, shared by all
                group = [(run, request) for run, request in group if not run.cancel_requested_by]
                if len(group) == 1:
                    await link.request("launch", request=to_plain(group[0][1]))
                elif group:
                    await link.request("launch_array", requests=[to_plain(request) for _, request in group],
                                       request_timeout=300)  # one sbatch, but a busy slurmctld is slow
            except Exception as exc:  # noqa: BLE001 - logged, retried next tick (the agent never submits twice)
                log.warning("launch of %d runs of a sweep on %s failed: %s (will retry)", len(group), link.name, exc)
                continue
            for run, request in group:
                self._launched(link, run, request)

    def _launched(self, link: HostLink, run: ActiveRun, request: LaunchRequest) -> None:
        run.launched = True
        if request.environment is not None:
            self.jobs.environments.warm.built(link.name, request.environment.env_hash)

    async def _request(self, link: HostLink, run: ActiveRun) -> LaunchRequest | None:
        """What the agent is sent for the run, its environment resolved first (None: not now, or it failed)."""
        # Every host, local included, runs the snapshot taken at submit (in a copy of its own per run).
        shipped = run.code_hash
        try:
            environment = await self._environment(link, run)
        except EnvironmentFailure as exc:  # the requirements, not the host: the job fails with the sentence
            if run.run_id in self.jobs.active and not run.cancel_requested_by:
                await self.jobs.host_runs.finish(run, RunStatus(run_id=run.run_id, state="exited",
                                                                reason="failed-to-start", message=str(exc)))
            return None
        except Exception as exc:  # noqa: BLE001 - the host or the index was not reached: retried next tick
            log.warning("preparing the environment of %s for %s failed: %s (will retry)", run.run_id, link.name, exc)
            return None
        try:  # the values travel in secret_env only, looked up now (docs/secrets.md); the spec keeps the names
            secret_env = SecretStore(self.jobs.ctx.home.secrets_file).values(run.spec.secret_refs()) \
                if run.spec.secret_refs() else {}
        except MlfleetError as exc:  # removed since submit, or a store refused: the run fails with the sentence
            if run.run_id in self.jobs.active and not run.cancel_requested_by:
                await self.jobs.host_runs.finish(run, RunStatus(run_id=run.run_id, state="exited",
                                                                reason="failed-to-start", message=str(exc)))
            return None
        request = LaunchRequest(
            secret_env=secret_env, run_id=run.run_id, job_id=run.job_id, argv=render_argv(run.spec), workdir=run.spec.workdir,
            env={**param_env(run.spec), **run.spec.env_strings()}, gpu_indices=run.gpus, code_hash=shipped,
            timeout=float(run.spec.timeout) if run.spec.timeout else None, inputs=list(run.spec.inputs),
            log_max_size=int(self.jobs.ctx.settings.logs.max_size), artifact_roots=self._artifact_roots(link.name),
            environment=environment, service=run.spec.service, slurm=self._slurm_plan(link.name, run),
            gpu_memory=int(run.spec.resources.gpu_memory) if run.spec.resources.gpu_memory is not None else None,
            controller=controller_identity(self.jobs.ctx.home.data_dir), owner=run.owner)  # the node's GPU claim
        if request.slurm is not None:
            request.gpu_indices = []  # Slurm picks the GPUs
        return request

    async def _deliver(self, link: HostLink, run: ActiveRun, request: LaunchRequest) -> None:
        """What the run needs on the host before its launch: its code snapshot and a replica's model file."""
        if request.code_hash:
            await self._ship(link, request.code_hash)
        if run.spec.service is not None and run.spec.service.model_sha256:
            await self.models.ship(link, run.spec.service)

    async def _environment(self, link: HostLink, run: ActiveRun) -> EnvPlan | None:
        """The run's environment resolved and shipped for this host (None: the node's own); the job is preparing."""
        if not run.spec.builds_environment or run.cancel_requested_by:
            return None
        assert run.spec.environment is not None
        if run.state == "dispatched":
            await self.jobs.ctx.store.run(records.mark_preparing, run.job_id, run.run_id, link.name)
            run.state = "preparing"
            await self.jobs.notify_jobs()
        plan = await self.jobs.environments.plan(link, run.spec.environment, run.code_hash)
        await self.jobs.ctx.store.run(env_records.record_run_environment, run.run_id, plan)
        return plan

    def _slurm_plan(self, host: str, run: ActiveRun) -> SlurmPlan | None:
        """sbatch's options for a run on a ``slurm`` host (None elsewhere): the host's defaults and the job's needs."""
        config = self.jobs.fleet.inventory.get(host)
        if config is None or config.slurm is None:
            return None
        res = run.spec.resources
        partition, gres = partition_and_gres(config.slurm, res.gpus, res.gpu_types)  # gpu_partitions, GRES types
        timeout = float(run.spec.timeout) if run.spec.timeout else None
        return SlurmPlan(partition=partition, account=config.slurm.account, qos=config.slurm.qos,
                         gres=gres, cpus=max(1, int(-(-res.cpus // 1))) if res.cpus else None,
                         memory_mb=int(res.memory) // 2**20 if res.memory else None,
                         time_limit_min=max(1, int(-(-timeout // 60))) if timeout else None)

    def _artifact_roots(self, host: str) -> list[str]:
        """Folders beyond a run's own whose files its agent may serve (hosts.yaml, or config.yaml's local:)."""
        config = self.jobs.fleet.inventory.get(host)
        return list(config.artifact_roots if config is not None else self.jobs.ctx.settings.local.artifact_roots)

    async def _ship(self, link: HostLink, sha256: str) -> None:
        """Upload a snapshot once per host and content; launches that need it at the same time share one upload."""
        key = (link.name, sha256)
        task = self._shipping.get(key)
        if task is None:
            task = self._shipping[key] = asyncio.get_running_loop().create_task(self._upload(link, sha256))
            task.add_done_callback(lambda _: self._shipping.pop(key, None))
        await asyncio.shield(task)

    async def _upload(self, link: HostLink, sha256: str) -> None:
        status = await link.request("code_status", sha256=sha256)
        if status["present"]:
            return
        archive = self.jobs.ctx.home.code_cache_dir / f"{sha256}.tar.gz"
        if not archive.exists():
            raise UsageError(f"snapshot {sha256[:12]} is no longer in {self.jobs.ctx.home.code_cache_dir}")
        await link.transport.upload(archive, status["incoming"])  # type: ignore[attr-defined]
        await link.request("code_unpack", sha256=sha256, request_timeout=300)
        log.info("shipped snapshot %s to %s", sha256[:12], link.name)
