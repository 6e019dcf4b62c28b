"""The controller: one per workstation, the only writer of the DuckDB file.

Each tick it pulls every host's telemetry, run states and new metric lines
in one request per host, commits the metrics exactly once, asks the pure
scheduler where waiting jobs should go, and dispatches them. Clients talk
to it through :mod:`mlfleet.core.controller.api` on a 0600 Unix socket.

Crash safety: a dispatch is written to DuckDB before the agent is asked to
launch (and launching is idempotent by run id), and a run is closed only
after its metrics stream has been read to the end. A controller killed at
any point therefore resumes without losing a point or starting a job twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mlfleet.core.jobs import scheduler
from mlfleet.core.base.errors import MlfleetError, RemoteError, UnavailableError, UsageError
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.tracking.ingest import parse_lines
from mlfleet.core.base.listener import UnixListener
from mlfleet.core.tracking.lineage import gpu_usage
from mlfleet.core.base.models import JobSpec, LaunchRequest, RunStatus, StreamChunk, spec_from_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.base.protocol import Peer
from mlfleet.core.base.settings import Settings, file_digest, store_memory_limit
from mlfleet.core.audit import records as audit_records
from mlfleet.core.fleet import records as fleet_records
from mlfleet.core.jobs import records as job_records
from mlfleet.core.tracking import records as run_records
from mlfleet.core.store import rows as store_rows
from mlfleet.core.store.db import Store
from mlfleet.core.fleet.inventory import HostConfig, load_inventory
from mlfleet.core.fleet.transport.local import LocalAgentTransport
from mlfleet.core.fleet.transport.ssh import SshAgentTransport

log = logging.getLogger(__name__)



@dataclass
class PendingJob:
    job_id: str
    spec: JobSpec
    priority: int
    submitted: float
    attempt: int
    max_attempts: int
    owner: str
    code_hash: str | None = None
    failed_hosts: tuple[str, ...] = ()


@dataclass
class ActiveRun:
    job_id: str
    run_id: str
    host: str
    state: str  # dispatched | running
    offset: int
    lines: int
    attempt: int
    max_attempts: int
    spec: JobSpec
    gpus: list[int]
    owner: str
    cancel_requested_by: str | None = None
    code_hash: str | None = None
    started_at: float | None = None
    failed_hosts: tuple[str, ...] = ()
    launched: bool = False
    finished_status: RunStatus | None = field(default=None)
    node_lineage: bool = False  # the agent's lineage.json is merged into the run's lineage
    lineage_asked: float = 0.0


class Controller:
    def __init__(self, home: Home, settings: Settings | None = None) -> None:
        self.home = home
        self.settings = settings or Settings()
        self.tick_interval = float(self.settings.controller.tick)
        self.answer_timeout = float(self.settings.controller.answer_timeout)  # unanswered: the link is torn down
        self.store: Store | None = None
        self.links: dict[str, HostLink] = {
            "local": HostLink(LocalAgentTransport(home, "local",
                                                  sample_interval=float(self.settings.telemetry.sample_interval),
                                                  simulate_gpus=self.settings.local.simulate_gpus,
                                                  log_max_size=int(self.settings.controller.log_max_size),
                                                  log_backups=self.settings.controller.log_backups),
                              labels={"provider": "local", **self.settings.local.labels}, on_connect=self._fence),
        }
        self.inventory: dict[str, HostConfig] = {}
        self.drained: dict[str, str] = {}  # host -> why (who and reason)
        self.policy = scheduler.Policy(
            memory_margin=int(self.settings.scheduler.memory_margin),
            busy_utilization=self.settings.scheduler.busy_utilization,
            aging_per_hour=self.settings.scheduler.aging_per_hour,
            fair_share_weight=self.settings.scheduler.fair_share_weight,
            backfill=self.settings.scheduler.backfill)
        self._refusals_audited: set[tuple[str, str]] = set()
        self.cancels: dict[str, str] = {}  # job -> who, for cancels that arrive while a job changes state
        self._launching: set[str] = set()
        self._shipping: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._inventory_digest: str | None = None
        self.pending: dict[str, PendingJob] = {}
        self.active: dict[str, ActiveRun] = {}  # by run id
        self.waiting_reasons: dict[str, list[scheduler.Reason]] = {}
        self.job_changed = asyncio.Condition()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._stopped_by: str | None = None  # who asked (controller stop); None: a signal
        self._lock_fd: int | None = None
        self._server: UnixListener | None = None

    # ------------------------------------------------------------ lifecycle
    def _take_lock(self) -> None:
        self.home.ensure()
        fd = os.open(self.home.controller_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UnavailableError(f"another controller is already running for {self.home.data_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until stopped (SIGTERM, SIGINT or a client's ``controller stop``)."""
        from mlfleet.core.controller.api import ControllerApi

        self._take_lock()
        foreign = await asyncio.to_thread(self.home.tighten)  # an installation made before files were private
        if foreign:
            log.warning("%d file(s) in %s belong to root and were left as they are: %s", len(foreign),
                        self.home.data_dir, ", ".join(map(str, foreign[:5])))
        self.apply_inventory(load_inventory(self.home.hosts_file))
        self._inventory_digest = file_digest(self.home.hosts_file)
        self.store = Store(self.home.db_path, query_workers=self.settings.query.workers,
                           memory_limit=store_memory_limit(self.settings),
                           spill_limit=int(self.settings.store.spill_limit))
        await self._load_state()
        # The start and any config change are on record before the socket opens: a client that
        # started this controller (``audit list`` on a stopped installation) must find them.
        await self.store.run(audit_records.audit, _os_user(), "controller.start", None, {"pid": os.getpid()})
        await self._audit_config_change()
        api = ControllerApi(self)
        self._server = await api.listen(self.home.controller_socket)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("controller serving on %s", self.home.controller_socket)
        if ready is not None:
            ready.set()
        tasks = [loop.create_task(self._tick_loop()), loop.create_task(self._telemetry_loop())]
        try:
            await self._stop.wait()
        finally:
            self._server.close()
            # Users' queries are interrupted and answer their clients before the connections close.
            await self.store.queries.stop_all("the controller is stopping")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await api.close()
            await self._flush_telemetry()
            for link in self.links.values():
                await link.close()
            # On the chain only once it really stopped serving (not when asked: a stop may yet fail).
            try:
                await self.store.run(audit_records.audit, self._stopped_by or _os_user(), "controller.stop", None,
                                     {"pid": os.getpid(), "how": "request" if self._stopped_by else "signal"})
            except Exception:  # a full disk must not keep the controller from stopping; the log says it
                log.exception("could not record controller.stop on the audit chain")
            self.store.close()
            with contextlib.suppress(FileNotFoundError):
                self.home.controller_socket.unlink()
            log.info("controller stopped")

    def apply_inventory(self, hosts: list[HostConfig]) -> None:
        """Make the links match the inventory: new hosts get a link, removed or changed ones lose theirs."""
        wanted = {h.name: h for h in hosts}
        for name in list(self.inventory):
            if name not in wanted or wanted[name] != self.inventory[name]:
                if self.active_on(name):
                    log.error("host %s left hosts.yaml with runs in flight; keeping its link until they end", name)
                    continue
                link = self.links.pop(name, None)
                if link is not None:
                    asyncio.get_event_loop().create_task(link.close())
                del self.inventory[name]
        for name, host in wanted.items():
            if name not in self.links:
                self.links[name] = HostLink(SshAgentTransport(host, self.home.known_hosts_file),
                                            labels=dict(host.labels), on_connect=self._fence)
                self.inventory[name] = host

    def active_on(self, host: str) -> list[str]:
        """Runs in flight on ``host``."""
        return [r.run_id for r in self.active.values() if r.host == host]

    def note_inventory_written(self) -> None:
        """The controller itself changed hosts.yaml (and audited why): not a hand edit."""
        self._inventory_digest = file_digest(self.home.hosts_file)

    async def _watch_inventory(self) -> None:
        """Pick up hand edits of hosts.yaml; a broken edit keeps the fleet as it was and says why."""
        digest = file_digest(self.home.hosts_file)
        if digest == self._inventory_digest:
            return
        self._inventory_digest = digest
        try:
            hosts = load_inventory(self.home.hosts_file)
        except MlfleetError as exc:
            log.error("hosts.yaml not applied: %s", exc)
            return
        self.apply_inventory(hosts)
        await self._audit_config_change()

    async def _audit_config_change(self) -> None:
        """Record a config file that changed since the controller last saw it (who: the file's owner)."""
        assert self.store is not None
        for path in (self.home.config_file, self.home.hosts_file):
            digest = file_digest(path)
            rows = await self.store.read(store_rows.rows, """select detail->>'sha256' as sha256 from audit
                                          where action = 'config.change' and target = ? order by id desc limit 1""",
                                         [str(path)])
            last = rows[0]["sha256"] if rows else None
            if digest != last and (digest is not None or last is not None):
                owner = _file_owner(path) if digest else _os_user()
                await self.store.run(audit_records.audit, owner, "config.change", str(path),
                                     {"sha256": digest, "previous": last})

    def stop(self, by: str | None = None) -> None:
        """Stop serving; ``by`` is the user who asked (audited as the controller stops)."""
        self._stopped_by = self._stopped_by or by
        self._stop.set()

    async def _load_state(self) -> None:
        """Rebuild the in-memory queue and active runs from the file (after a crash too)."""
        assert self.store is not None
        for name, link in self.links.items():
            await self.store.run(fleet_records.upsert_host, name, link.transport.kind, link.transport.address,
                                 link.labels, "connecting")
        for row in await self.store.read(store_rows.rows, "select name, drained_by, drain_reason from hosts "
                                                       "where drained_by is not null"):
            self.drained[row["name"]] = f"by {row['drained_by']}: {row['drain_reason'] or 'no reason given'}"
        for row in await self.store.run(job_records.jobs_in_states, ("pending", "dispatched", "running")):
            spec = spec_from_plain(json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"])
            if row["state"] == "pending" and row.get("cancel_requested_by"):
                await self.store.run(job_records.cancel_pending, row["job_id"], row["cancel_requested_by"])
            elif row["state"] == "pending":
                self.pending[row["job_id"]] = PendingJob(row["job_id"], spec, row["priority"], row["submitted_epoch"],
                                                         row["attempt"], row["max_attempts"], row["owner"],
                                                         code_hash=row["code_hash"],
                                                         failed_hosts=tuple(row.get("failed_hosts") or ()))
            else:
                self.active[row["run_id"]] = ActiveRun(
                    job_id=row["job_id"], run_id=row["run_id"], host=row["host"], state=row["state"],
                    offset=row["byte_offset"] or 0, lines=row["lines"] or 0, attempt=row["attempt"],
                    max_attempts=row["max_attempts"], spec=spec, gpus=list(row["gpus"] or []), owner=row["owner"],
                    cancel_requested_by=row.get("cancel_requested_by"), code_hash=row["code_hash"],
                    failed_hosts=tuple(row.get("failed_hosts") or ()),
                    # a dispatched run may never have reached its agent: launch again (idempotent)
                    launched=row["state"] == "running")

    # ------------------------------------------------------------ the loop
    async def _tick_loop(self) -> None:
        syncing: dict[str, asyncio.Task[None]] = {}  # a host's sync goes on across ticks while it is slow
        first = True
        try:
            while True:
                started = time.monotonic()
                try:
                    await self._watch_inventory()
                    # The first placement after a start waits for every host's first connection (up to
                    # answer_timeout): a retry that prefers another host must not go back to the failed
                    # one only because the other was still connecting.
                    await self._sync_hosts(syncing, self.answer_timeout if first else self.tick_interval)
                    first = False
                    await self._schedule()
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad tick must not stop the controller
                    log.exception("controller tick failed")
                # A host with metric lines still waiting gets the next tick at once (after scheduling ran),
                # so ingestion keeps pace with a fast-logging job rather than with the tick.
                backlog = any(link.metrics_backlog for link in self.links.values())
                await asyncio.sleep(0 if backlog else max(0.05, self.tick_interval - (time.monotonic() - started)))
        finally:
            for task in syncing.values():
                task.cancel()

    async def _sync_hosts(self, syncing: dict[str, asyncio.Task[None]], wait: float) -> None:
        """Sync every host, waiting a tick at most: one frozen host never holds up the others or the scheduler.

        A host whose sync is still under way (a poll waiting out
        ``controller.answer_timeout``, a connect to a dead address) keeps it
        running in the background and gets no second one; the rest are
        polled, and the queue scheduled, every tick as if it were not there.
        """
        for name, link in self.links.items():
            if name not in syncing:
                syncing[name] = asyncio.get_running_loop().create_task(self._sync_host(link), name=f"sync {name}")
        await asyncio.wait(list(syncing.values()), timeout=max(wait, 0.5))
        for name, task in list(syncing.items()):
            if not task.done():
                continue
            del syncing[name]
            if not task.cancelled() and task.exception() is not None:  # one host's trouble never stops the others
                log.error("sync of %s failed: %r", name, task.exception(), exc_info=task.exception())

    async def _sync_host(self, link: HostLink) -> None:
        assert self.store is not None
        link.metrics_backlog = False  # set again below only by a poll that left lines waiting
        up = await link.ensure_connected()
        if link.state != "up" and link.down_since is None:
            link.down_since = time.time()  # reset only by an answered poll: a link that connects and stalls is down
        if not up or link.state != "up":
            await self._give_up_on_lost_runs(link)
        if link.state != link.recorded_state:  # write host rows on changes only, not every tick
            await self.store.run(fleet_records.upsert_host, link.name, link.transport.kind, link.transport.address,
                                 link.labels, link.state, link.info.get("version") if up else None,
                                 link.info if up else None, up)
            link.recorded_state = link.state
        if not up:
            return
        runs = [r for r in self.active.values() if r.host == link.name]
        for run in runs:
            if run.job_id in self.cancels and not run.cancel_requested_by:
                run.cancel_requested_by = self.cancels.pop(run.job_id)
            if run.state == "dispatched" and not run.launched and not run.cancel_requested_by:
                self.launch_soon(link, run)
            if run.cancel_requested_by and run.finished_status is None:
                with contextlib.suppress(MlfleetError):
                    await link.request("cancel", run_id=run.run_id)
        # A run that writes faster than one answer per tick carries is drained by asking again at once
        # (for up to half a tick, so scheduling and cancels elsewhere are not held back), so ingestion keeps up
        # with the job, not with the tick. Only a run whose chunk was taken asks again: one that failed would
        # otherwise be re-read in a loop.
        drain_until = time.monotonic() + self.tick_interval / 2
        while True:
            asked = {r.run_id: r.offset for r in runs
                     if (r.launched or r.cancel_requested_by) and r.run_id in self.active}
            try:
                answer = await link.request("poll", request_timeout=self.answer_timeout,
                                            telemetry_since=link.telemetry_seq,
                                            metrics=asked)
            except MlfleetError as exc:
                # Unanswered: HostLink.request has torn the link down (it reconnects next tick). Answered
                # with an error: shown like lost, but the connection and the runs are left alone.
                log.warning("poll of %s failed: %s", link.name, exc)
                link.mark_slow(str(exc))
                return
            link.mark_answering()
            link.down_since = None
            link.absorb_telemetry(answer.get("telemetry", []), answer.get("agent_started_at", 0.0))
            more = False
            for run_id, item in answer.get("runs", {}).items():
                run = self.active.get(run_id)
                if run is not None:
                    offset_before = run.offset
                    try:
                        await self._absorb_run(link, run, item)
                    except Exception:  # one run's trouble never stops the others
                        log.exception("run %s on %s could not be absorbed", run_id, link.name)
                    more = more or (bool((item.get("metrics") or {}).get("more")) and run.offset > offset_before)
            link.metrics_backlog = more
            if not more or time.monotonic() > drain_until:
                break

    async def _give_up_on_lost_runs(self, link: HostLink) -> None:
        """A host gone longer than ``lost_after``: its runs count as lost and retry elsewhere (per ``retries``)."""
        limit = float(self.settings.scheduler.lost_after)
        if link.down_since is None or time.time() - link.down_since < limit:
            return
        for run in [r for r in self.active.values() if r.host == link.name]:
            log.warning("giving up on %s: %s unreachable for %.0f s", run.run_id, link.name, limit)
            await self._finish(run, RunStatus(run_id=run.run_id, state="exited", reason="lost",
                                              message=f"{link.name} was unreachable for {limit:.0f} s"))

    async def _fence(self, link: HostLink, peer: Peer) -> None:
        """On every new connection, before anything else uses it: a run still going on the node that the
        controller has closed (given up on it as lost, or cancelled it while the host was away) is
        stopped, so a job never runs twice past the partition. A fence that cannot be completed fails
        the connection (it is tried again), so nothing is launched on a node that was not fenced."""
        assert self.store is not None
        statuses = await peer.request("status", request_timeout=self.answer_timeout)
        going = [s["run_id"] for s in statuses if s.get("state") in ("starting", "running")
                 and s["run_id"] not in self.active]
        if not going:
            return
        marks = ",".join("?" for _ in going)
        closed = await self.store.read(store_rows.rows, f"select run_id, state from runs where run_id in ({marks}) "
                                                     "and state not in ('dispatched', 'running')", going)
        for row in closed:
            log.warning("stopping stray run %s on %s (it is %s here)", row["run_id"], link.name, row["state"])
            try:
                await peer.request("cancel", run_id=row["run_id"], request_timeout=self.answer_timeout)
            except RemoteError as exc:  # it ended on its own meanwhile: nothing left to stop
                log.info("stray run %s on %s: %s", row["run_id"], link.name, exc)
            await self.store.run(audit_records.audit, "controller", "run.stop-stray", row["run_id"],
                                 {"host": link.name, "state": row["state"]})

    def launch_soon(self, link: HostLink, run: ActiveRun) -> None:
        """Launch in the background: shipping code can take a while and must not hold up the tick."""
        if run.run_id in self._launching:
            return
        self._launching.add(run.run_id)
        task = asyncio.get_running_loop().create_task(self._launch(link, run))
        task.add_done_callback(lambda _: self._launching.discard(run.run_id))

    async def _launch(self, link: HostLink, run: ActiveRun) -> None:
        # Every host, local included, runs the snapshot taken at submit (in a copy of its own per run).
        shipped = run.code_hash
        request = LaunchRequest(
            run_id=run.run_id, job_id=run.job_id, argv=run.spec.argv, workdir=run.spec.workdir,
            env=run.spec.env_strings(), gpu_indices=run.gpus, code_hash=shipped,
            timeout=float(run.spec.timeout) if run.spec.timeout else None, inputs=list(run.spec.inputs),
            log_max_size=int(self.settings.logs.max_size), artifact_roots=self._artifact_roots(link.name))
        try:
            if shipped:
                await self._ship(link, shipped)
            if run.cancel_requested_by:
                return  # cancelled while its code was on the way: never start it
            await link.request("launch", request=msgspec.to_builtins(request))
        except Exception as exc:  # noqa: BLE001 - logged, retried next tick
            log.warning("launch of %s on %s failed: %s (will retry)", run.run_id, link.name, exc)
            return
        run.launched = True

    def _artifact_roots(self, host: str) -> list[str]:
        """Folders beyond a run's own whose files its agent may serve (hosts.yaml, or config.yaml's local:)."""
        config = self.inventory.get(host)
        return list(config.artifact_roots if config is not None else self.settings.local.artifact_roots)

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
        archive = self.home.code_cache_dir / f"{sha256}.tar.gz"
        if not archive.exists():
            raise UsageError(f"snapshot {sha256[:12]} is no longer in {self.home.code_cache_dir}")
        await link.transport.upload(archive, status["incoming"])  # type: ignore[attr-defined]
        await link.request("code_unpack", sha256=sha256, request_timeout=300)
        log.info("shipped snapshot %s to %s", sha256[:12], link.name)

    async def _absorb_run(self, link: HostLink, run: ActiveRun, item: dict[str, Any]) -> None:
        assert self.store is not None
        if "error" in item:
            log.warning("agent on %s could not report run %s: %s", link.name, run.run_id, item["error"])
            return
        status_raw = item.get("status", {})
        if status_raw.get("state") == "unknown":
            if run.state == "dispatched" and run.cancel_requested_by:
                await self._finish(run, RunStatus(run_id=run.run_id, state="exited", reason="cancelled",
                                                  message="cancelled before it started"))
                return
            if run.state == "dispatched":
                # Written down but never launched there (a crash in between): launch it now.
                run.launched = False
                return
            # It ran there, and the agent has forgotten it (its state dir was wiped).
            status_raw = {"run_id": run.run_id, "state": "exited", "reason": "lost",
                          "message": f"the agent on {link.name} no longer knows this run"}
            item = {"status": status_raw, "metrics": {"run_id": run.run_id, "stream": "metrics", "offset": run.offset,
                                                      "end": run.offset, "data": "", "eof": True}}
        status = msgspec.convert(status_raw, RunStatus)
        chunk_raw = item.get("metrics")
        drained = False
        if chunk_raw is not None:
            chunk = msgspec.convert(chunk_raw, StreamChunk)
            if chunk.end > chunk.offset:
                parsed = await asyncio.to_thread(parse_lines, chunk.data, run.lines, chunk.long_lines)
                taken = await self.store.run(run_records.ingest_metrics, run.run_id, chunk.offset, chunk.end, parsed)
                if taken:
                    run.offset, run.lines = chunk.end, run.lines + parsed.lines
                else:
                    await self._reload_offset(run)
            drained = chunk.eof and chunk.end == run.offset
        if status.started_at:
            run.started_at = status.started_at
        if run.state == "dispatched" and status.state in ("running", "exited") and status.started_at:
            await self.store.run(job_records.mark_running, run.job_id, run.run_id, status.started_at)
            run.state = "running"
        if not run.node_lineage and status.state in ("running", "exited") and status.started_at:
            await self._fetch_node_lineage(link, run, force=status.state == "exited")
        if status.state == "exited" and drained:
            await self._finish(run, status)

    async def _fetch_node_lineage(self, link: HostLink, run: ActiveRun, force: bool = False) -> None:
        """Merge the agent's lineage.json (inputs, Python, packages) into the run, once."""
        assert self.store is not None
        if not force and time.monotonic() - run.lineage_asked < 2.0:
            return
        run.lineage_asked = time.monotonic()
        try:
            found = await link.request("lineage", run_id=run.run_id)
        except MlfleetError as exc:  # an older agent, or the run's folder is gone: lineage stays partial
            log.info("no lineage for %s from %s: %s", run.run_id, link.name, exc)
            run.node_lineage = force
            return
        if found:
            await self.store.run(run_records.merge_run_lineage, run.run_id, found)
            run.node_lineage = True
        elif force:
            run.node_lineage = True  # exited without one (it never started): do not ask forever

    async def _usage(self, run: ActiveRun, status: RunStatus) -> dict[str, Any]:
        """GPU-hours and GPU use of a run that ended, from the telemetry held here and in the file."""
        assert self.store is not None
        started, finished = status.started_at or run.started_at, status.finished_at
        if started is None or finished is None:
            return {}
        rows: list[dict[str, Any]] = []
        if run.gpus:
            marks = ",".join("?" for _ in run.gpus)
            rows = await self.store.read(store_rows.rows, f"""select epoch(ts) as ts, window_s, gpu_index, utilization,
                                         memory_used from gpu_telemetry where host = ? and gpu_index in ({marks})
                                         and ts between to_timestamp(?) and to_timestamp(?)""",
                                         [run.host, *run.gpus, started, finished + 3600])
        link = self.links.get(run.host)
        samples = list(link.history) if link is not None else []
        return gpu_usage(run.run_id, run.gpus, started, finished, samples, rows,
                         float(self.settings.telemetry.sample_interval))

    async def _reload_offset(self, run: ActiveRun) -> None:
        assert self.store is not None
        rows = await self.store.read(store_rows.rows, "select byte_offset, lines from ingest_offsets where run_id = ?",
                                     [run.run_id])
        if rows:
            run.offset, run.lines = rows[0]["byte_offset"], rows[0]["lines"]

    async def _finish(self, run: ActiveRun, status: RunStatus) -> None:
        assert self.store is not None
        run.cancel_requested_by = run.cancel_requested_by or self.cancels.pop(run.job_id, None)
        if status.reason == "cancelled" or (run.cancel_requested_by and status.exit_code != 0):
            run_state, job_state = "cancelled", "cancelled"
            reason = f"cancelled by {run.cancel_requested_by or 'a user'}"
        elif status.exit_code == 0 and status.reason == "exited":
            run_state, job_state, reason = "succeeded", "succeeded", "exited 0"
        else:
            run_state = "failed"
            reason = _failure_words(status)
            if run.attempt < run.max_attempts:
                job_state = "pending"
                reason = f"attempt {run.attempt} {reason}; retrying ({run.attempt + 1} of {run.max_attempts})"
            else:
                job_state = "failed"
        try:
            usage = await self._usage(run, status)
        except Exception:  # lineage must never keep a run from closing
            log.exception("GPU use of %s could not be computed", run.run_id)
            usage = {}
        await self.store.run(job_records.finish_run, run.job_id, run.run_id, run_state, job_state, reason,
                             status.exit_code, status.signal, status.finished_at, status.reason, lineage=usage)
        del self.active[run.run_id]
        if job_state == "pending" and run.job_id in self.cancels:  # cancelled while it was being re-queued
            await self.store.run(job_records.cancel_pending, run.job_id, self.cancels.pop(run.job_id))
        elif job_state == "pending":
            # The job's priority as it stands now: `jobs priority` may have changed it since submit.
            priority = (await self.store.read(store_rows.rows, "select priority from jobs where job_id = ?",
                                              [run.job_id]))[0]["priority"]
            self.pending[run.job_id] = PendingJob(run.job_id, run.spec, priority, time.time(), run.attempt,
                                                  run.max_attempts, run.owner, code_hash=run.code_hash,
                                                  failed_hosts=run.failed_hosts + (run.host,))
        await self.notify_jobs()

    async def notify_jobs(self) -> None:
        async with self.job_changed:
            self.job_changed.notify_all()

    async def _schedule(self) -> None:
        assert self.store is not None
        if not self.pending:
            return
        views = self.host_views()
        queue = [_queued(job) for job in self.pending.values()]
        usage: dict[str, int] = {}
        for run in self.active.values():
            usage[run.spec.project] = usage.get(run.spec.project, 0) + len(run.gpus)
        # Pure and CPU-bound: off the event loop, so a big queue never stalls polling or clients.
        decision = await asyncio.to_thread(scheduler.schedule, views, queue, self.policy, time.time(), usage)
        self.waiting_reasons = decision.waiting
        await self.store.run(job_records.set_pending_reason,
                             {job_id: decision.short_reason(job_id) for job_id in decision.waiting})
        await self._audit_refusals(decision)
        for placement in decision.placements:
            job = self.pending.pop(placement.job_id, None)
            if job is None or placement.host not in self.links:
                continue  # cancelled, or its host removed, while the scheduler was thinking
            await self._dispatch(job, placement)

    async def _audit_refusals(self, decision: scheduler.Decision) -> None:
        """Data residency: every host a job's hard constraints kept it off is audited, once.

        One event per job and tick at most, naming the hosts newly refused
        (a fleet of hundreds must not write hundreds of rows per job).
        """
        assert self.store is not None
        events = []
        for job_id, reasons in decision.waiting.items():
            new: dict[str, str] = {}
            for reason in reasons:
                if reason.check == "constraint":
                    for host in reason.hosts or (reason.host,):
                        if (job_id, host) not in self._refusals_audited:
                            new[host] = reason.message
            if new:
                self._refusals_audited.update((job_id, host) for host in new)
                events.append((job_id, {"hosts": sorted(new)[:100], "count": len(new),
                                        "reasons": sorted(set(new.values()))[:10]}))
        for job_id, detail in events:
            await self.store.run(audit_records.audit, "scheduler", "scheduler.refuse", job_id, detail)

    async def _dispatch(self, job: PendingJob, placement: scheduler.Placement) -> None:
        assert self.store is not None
        attempt = job.attempt + 1
        run_id = f"{job.job_id}-{attempt}"
        await self.store.run(job_records.dispatch, job.job_id, {
            "run_id": run_id, "attempt": attempt, "project": job.spec.project, "name": job.spec.name,
            "owner": job.owner, "host": placement.host, "gpus": list(placement.gpu_indices),
            "spec_hash": job.spec.content_hash(), "workdir": job.spec.workdir, "command": job.spec.argv,
            "code_hash": job.code_hash, "params": job.spec.params, "tags": job.spec.tags})
        run = ActiveRun(job_id=job.job_id, run_id=run_id, host=placement.host, state="dispatched", offset=0, lines=0,
                        attempt=attempt, max_attempts=job.max_attempts, spec=job.spec,
                        gpus=list(placement.gpu_indices), owner=job.owner, code_hash=job.code_hash,
                        failed_hosts=job.failed_hosts, cancel_requested_by=self.cancels.pop(job.job_id, None))
        self.active[run_id] = run
        link = self.links.get(placement.host)
        if link is not None and link.up and not run.cancel_requested_by:
            self.launch_soon(link, run)
        await self.notify_jobs()

    def host_views(self) -> list[scheduler.HostView]:
        return [self._host_view(link) for link in self.links.values()]

    def _host_view(self, link: HostLink) -> scheduler.HostView:
        """What the scheduler sees of a host: live telemetry plus what mlfleet has placed there."""
        latest = link.latest
        in_use = [r for r in self.active.values() if r.host == link.name]
        since = time.time() - float(self.settings.scheduler.utilization_window)
        window = [s for s in link.history if s.ts >= since] or ([latest] if latest else [])
        gpus = []
        for g in latest.gpus if latest else []:
            peaks = [x.utilization for s in window for x in s.gpus if x.index == g.index and x.utilization is not None]
            visible = {p.run_id for p in g.processes if p.run_id}
            reserved = sum(int(r.spec.resources.gpu_memory or 0) for r in in_use
                           if r.spec.resources.gpu_memory and g.index in r.gpus and r.run_id not in visible)
            gpus.append(scheduler.GpuView(
                index=g.index, name=g.name, memory_total=g.memory_total, memory_free=g.memory_free,
                utilization=max(peaks) if peaks else None,
                processes=tuple(scheduler.GpuProcessView(p.pid, p.used_memory, p.run_id, p.name) for p in g.processes),
                ecc_errors=g.ecc_errors, throttle_reasons=tuple(g.throttle_reasons), reserved_memory=reserved))
        return scheduler.HostView(
            name=link.name, up=link.up and link.state == "up" and latest is not None, labels=link.labels,
            cpu_count=latest.cpu_count if latest else 0, memory_total=latest.memory_total if latest else 0,
            gpus=tuple(gpus),
            gpus_in_use=frozenset(i for r in in_use if r.spec.resources.gpu_memory is None for i in r.gpus),
            cpus_in_use=sum(r.spec.resources.cpus for r in in_use),
            memory_in_use=sum(r.spec.resources.memory or 0 for r in in_use),
            drained=self.drained.get(link.name),
            gpu_links=tuple(tuple(row) for row in latest.gpu_links) if latest and latest.gpu_links else None,
            releases=tuple(scheduler.Release(r.started_at + float(r.spec.timeout), tuple(r.gpus))
                           for r in in_use if r.spec.timeout and r.started_at and r.gpus))

    # ---------------------------------------------------------- telemetry
    async def _telemetry_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(float(self.settings.telemetry.window))
            try:
                await self._flush_telemetry()
                if time.time() - last_prune > 3600:
                    assert self.store is not None
                    await self.store.run(fleet_records.prune_telemetry, float(self.settings.telemetry.retention))
                    last_prune = time.time()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("telemetry flush failed")

    async def _flush_telemetry(self) -> None:
        """Write one averaged row per host (and per GPU) for the last window."""
        assert self.store is not None
        window_s = float(self.settings.telemetry.window)
        cutoff = time.time() - window_s
        host_rows, gpu_rows = [], []
        for link in self.links.values():
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
            await self.store.run(fleet_records.write_telemetry, host_rows, gpu_rows)


def _queued(job: PendingJob) -> scheduler.QueuedJob:
    return queued_job(job.job_id, job.spec, job.submitted, job.owner, job.failed_hosts)


def queued_job(job_id: str, spec: JobSpec, submitted: float, owner: str,
               failed_hosts: tuple[str, ...] = ()) -> scheduler.QueuedJob:
    r = spec.resources
    return scheduler.QueuedJob(
        job_id=job_id, priority=spec.priority, submitted=submitted, gpus=r.gpus,
        gpu_memory=int(r.gpu_memory) if r.gpu_memory is not None else None,
        gpu_types=tuple(r.gpu_types), cpus=r.cpus, memory=int(r.memory) if r.memory is not None else None,
        labels=dict(spec.constraints.labels), hosts=tuple(spec.constraints.hosts), project=spec.project,
        owner=owner, timeout=float(spec.timeout) if spec.timeout else None, avoid_hosts=failed_hosts)


def _failure_words(status: RunStatus) -> str:
    if status.reason == "timeout":
        return "hit its timeout"
    if status.reason == "failed-to-start":
        return f"failed to start: {status.message}"
    if status.reason == "lost":
        return f"was lost: {status.message}"
    if status.signal:
        try:
            name = signal.Signals(status.signal).name
        except ValueError:
            name = f"signal {status.signal}"
        return f"was killed by {name}" + (f": {status.message}" if status.message else "")
    return f"exited {status.exit_code}" + (f": {status.message}" if status.message else "")  # the agent's why


def _file_owner(path: Path) -> str:
    import pwd

    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (KeyError, OSError):
        return _os_user()


def _os_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
