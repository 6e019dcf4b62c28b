"""What clients (CLI, TUI) may ask the controller, over its 0600 Unix socket.

Each ``rpc_*`` method is one client action. The caller's identity for the
audit trail is the OS user behind the socket (SO_PEERCRED), not anything
the client says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from mlfleet import __version__
from mlfleet.core.fleet import hostkeys
from mlfleet.core.fleet import hostseen
from mlfleet.core.fleet import node_restart
from mlfleet.core.drift.api import DriftApi
from mlfleet.core.tracking.api import RunsApi
from mlfleet.core.base.bounds import (ChunkSize, History, Ident, KeyCount, ListLimit, Offset, QueryRows, WaitSeconds,
                                 usage_dispatcher)
from mlfleet.core.jobs.spec import validate_job_spec
from mlfleet.core.base.errors import MlfleetError, NotFoundError, UnavailableError, UsageError
from mlfleet.core.fleet.inventory import LOCAL_HOST, HostConfig, add_host, load_inventory, remove_host
from mlfleet.core.base.models import SHOWN_JOB_STATES, TERMINAL_STATES, JobSpec, to_plain
from mlfleet.core.tracking.lineage import git_lineage
from mlfleet.core.jobs.snapshot import snapshot
from mlfleet.core.jobs.submit_key import check_submit_key
from mlfleet.core.fleet.transport.ssh import SshAgentTransport
from mlfleet.core.fleet.transport import route
from mlfleet.core.fleet.hostcheck import host_from_request
from mlfleet.core.base.listener import HELLO_DEADLINE_S, UnixListener
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import SERVER_FRAME_DEADLINE_S, SERVER_MAX_REQUEST, Peer
from mlfleet.core.base.rpc import method_dispatcher
from mlfleet.core.base.send_budget import SendBudget
from mlfleet.core.audit import records as audit_records
from mlfleet.core.fleet import records as fleet_records
from mlfleet.core.jobs import records as job_records
from mlfleet.core.tracking import records as run_records
from mlfleet.core.store import rows as store_rows
from mlfleet.core.jobs import submit_store as submit_keys
from mlfleet.core.base.words import plural

if TYPE_CHECKING:
    from mlfleet.core.controller.loop import Controller


async def _round_trip(peer: Peer) -> float:
    started = time.monotonic()
    await peer.request("telemetry", request_timeout=10, since=1 << 62)
    return time.monotonic() - started


def _peer_user(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ControllerApi(DriftApi, RunsApi):
    def __init__(self, controller: "Controller") -> None:
        self.c = controller
        self.peers: set[Peer] = set()
        self.listener: UnixListener | None = None
        self._send_budget = SendBudget()  # answers made and not read, all clients together
        self.handler = usage_dispatcher(self, method_dispatcher(self))  # a bad parameter: exit 2, one sentence

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        assert self.c.store is not None
        return self.c.store

    async def listen(self, path: Path) -> UnixListener:
        """Serve clients on ``path`` (0600), at most ``controller.max_connections`` at a time."""
        self.listener = UnixListener(path, self._on_connect, name="the controller",
                                     max_connections=self.c.settings.controller.max_connections,
                                     setting="controller.max_connections in config.yaml")
        return await self.listener.start()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, self.handler, name="client", hello_deadline=HELLO_DEADLINE_S,
                    max_incoming=SERVER_MAX_REQUEST, frame_deadline=SERVER_FRAME_DEADLINE_S, require_hello=True,
                    send_budget=self._send_budget)
        peer.info["actor"] = _peer_user(writer)
        self.peers.add(peer)
        peer.start()
        try:
            await peer.wait_closed()
        finally:
            self.peers.discard(peer)

    async def close(self) -> None:
        for peer in list(self.peers):
            await peer.close()

    # ------------------------------------------------------------ basics
    async def rpc_hello(self, peer: Peer, protocol: int, role: str = "") -> dict[str, Any]:
        if self.listener is not None:
            self.listener.greeted(peer)  # a client, not a bare socket: evicted for a newcomer only when idle
        return {"protocol": PROTOCOL_VERSION, "role": "controller", "version": __version__}

    async def rpc_status(self, peer: Peer) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "version": __version__, "started_at": self.c.started_at,
            "db": str(self.c.home.db_path), "socket": str(self.c.home.controller_socket),
            "hosts": {name: link.state for name, link in self.c.links.items()},
            "pending": len(self.c.pending), "active": len(self.c.active), "schema_version": self.store.version,
            "db_queries": self.store.queries.running,
            **(self.listener.facts() if self.listener is not None else {}),
            "log": str(self.c.home.log_dir / "controller.log"), "log_max_size": int(self.c.settings.controller.log_max_size),
            "log_backups": self.c.settings.controller.log_backups,
        }

    async def rpc_shutdown(self, peer: Peer, stop_local_agent: bool = True) -> dict[str, Any]:
        agent_stopping = False
        local = self.c.links.get("local")
        if stop_local_agent and local is not None and local.up:
            with contextlib.suppress(Exception):
                answer = await local.request("shutdown", only_if_idle=True, request_timeout=5)
                agent_stopping = bool(answer.get("stopping"))
        asyncio.get_running_loop().call_later(0.05, self.c.stop, peer.info["actor"])
        return {"stopping": True, "local_agent_stopping": agent_stopping}

    # -------------------------------------------------------------- jobs
    async def rpc_submit(self, peer: Peer, spec: dict[str, Any], spec_path: str | None = None,
                         queue_anyway: bool = False, key: str | None = None) -> dict[str, Any]:
        """Queue a job. With ``key`` (the client's idempotency key) a retry gets the same job back."""
        job_spec = validate_job_spec(spec)
        if not Path(job_spec.workdir).is_absolute():
            raise UsageError("workdir must be an absolute path when submitting through the API")
        actor = peer.info["actor"]
        if key is not None:
            check_submit_key(key)
            earlier = await self.store.read(submit_keys.find, actor, key)
            if earlier is not None:  # a retry: the job is there, whatever the fleet looks like now
                return submit_keys.same_job(earlier, job_spec.content_hash(), to_plain(job_spec))
        from mlfleet.core.controller.loop import queued_job
        from mlfleet.core.jobs.scheduler import never_fits

        impossible = never_fits(self.c.host_views(), queued_job("new", job_spec, time.time(), peer.info["actor"]),
                                self.c.policy)
        if impossible and not queue_anyway:
            where = "; ".join(f"{r.host}: {r.message}" for r in impossible[:5])
            raise UsageError(f"{job_spec.name} can never fit on this fleet ({where}); change its resources or "
                             "constraints, or add a host that has them and submit with --queue-anyway")
        job_id = await self._new_job_id()
        submitted = time.time()
        workdir = Path(job_spec.workdir)
        snap, git = await asyncio.gather(asyncio.to_thread(snapshot, workdir, self.c.home.code_cache_dir,
                                                                   self.c.home.own_paths()),
                                         asyncio.to_thread(git_lineage, workdir))
        answer = {"job_id": job_id, "state": "pending", "name": job_spec.name, "project": job_spec.project,
                  "code_hash": snap.sha256, "code_files": snap.files, "code_skipped": snap.skipped, "lineage": git,
                  "key": key}
        # Shielded: a client that hangs up mid-submit must not leave a job in the file but not in the queue.
        earlier = await asyncio.shield(self._record_job(job_id, job_spec, snap.sha256, spec_path, actor, submitted,
                                                        git, key, answer))
        if earlier is not None:  # another attempt with this key was recorded while this one snapshotted
            return submit_keys.same_job(earlier, job_spec.content_hash(), to_plain(job_spec))
        await self.c.notify_jobs()
        return {**answer, "existing": False}

    async def _record_job(self, job_id: str, job_spec: JobSpec, code_hash: str, spec_path: str | None, actor: str,
                          submitted: float, lineage: dict[str, Any], key: str | None = None,
                          answer: dict[str, Any] | None = None) -> submit_keys.EarlierSubmit | None:
        """The job, its lineage, event, audit and key in one transaction, then in the queue."""
        from mlfleet.core.controller.loop import PendingJob

        job = {"code_hash": code_hash, "lineage": lineage,  # lineage before the job can be dispatched
            "job_id": job_id, "name": job_spec.name, "project": job_spec.project, "owner": actor,
            "spec": to_plain(job_spec), "spec_hash": job_spec.content_hash(), "spec_path": spec_path,
            "priority": job_spec.priority, "max_attempts": job_spec.retries + 1, "submitted_at": submitted}
        if key is None:
            await self.store.run(job_records.insert_job, job, actor)
        else:
            earlier = await self.store.run(submit_keys.record, job, actor, key, answer or {"job_id": job_id})
            if earlier is not None:
                return earlier
        self.c.pending[job_id] = PendingJob(job_id, job_spec, job_spec.priority, submitted, 0, job_spec.retries + 1, actor,
                                            code_hash=code_hash)
        return None

    async def _new_job_id(self) -> str:
        while True:
            job_id = "j" + secrets.token_hex(4)
            found = await self.store.read(store_rows.rows, "select 1 from jobs where job_id = ?", [job_id])
            if not found and job_id not in self.c.pending:
                return job_id

    async def rpc_jobs_list(self, peer: Peer, limit: ListLimit = 200, states: list[str] | None = None,
                            key: str | None = None) -> list[dict[str, Any]]:
        unknown = sorted(set(states or ()) - set(SHOWN_JOB_STATES))
        if unknown:
            raise UsageError(f"unknown job state {unknown[0]!r}; use one of {', '.join(SHOWN_JOB_STATES)}")
        if key is not None:  # the caller's job submitted with this key: does a submit that lost its answer exist?
            jobs = [j for j in await self.store.read(submit_keys.jobs_with_key, peer.info["actor"], key)
                    if not states or j["state"] in states]
        else:
            jobs = await self.store.read(job_records.list_jobs, limit, states)
        for job in jobs:
            if job["state"] == "pending" and job["job_id"] in self.c.pending:
                job["reason"] = self._short_reason(job["job_id"]) or job["reason"]
        return jobs

    def _short_reason(self, job_id: str) -> str | None:
        reasons = self.c.waiting_reasons.get(job_id)
        if not reasons:
            return None
        from mlfleet.core.jobs.scheduler import Decision

        return Decision(waiting={job_id: reasons}).short_reason(job_id)

    async def rpc_job_show(self, peer: Peer, job: Ident) -> dict[str, Any]:
        detail = await self.store.read(job_records.get_job, job)
        reasons = self.c.waiting_reasons.get(detail["job_id"], []) if detail["state"] == "pending" else []
        detail["why_pending"] = [{"host": r.host, "check": r.check, "message": r.message} for r in reasons]
        detail["key"] = await self.store.read(submit_keys.key_of, detail["job_id"])
        return detail

    async def rpc_job_wait(self, peer: Peer, job: Ident, timeout: WaitSeconds = 30.0) -> dict[str, Any]:
        """Return when the job has ended, or after ``timeout`` seconds with its current state."""
        job_id = (await self.store.read(job_records.job_run, job))["job_id"]
        deadline = time.monotonic() + max(0.0, min(timeout, 300.0))
        while True:
            current = await self.store.read(job_records.job_run, job_id)
            left = deadline - time.monotonic()
            if current["state"] in TERMINAL_STATES or left <= 0:
                return await self.store.read(job_records.get_job, job_id)
            async with self.c.job_changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.c.job_changed.wait(), min(left, 1.0))

    async def rpc_job_cancel(self, peer: Peer, job: Ident) -> dict[str, Any]:
        actor = peer.info["actor"]
        current = await self.store.read(job_records.job_run, job)
        job_id, state = current["job_id"], current["state"]
        if state in TERMINAL_STATES:
            return {"job_id": job_id, "state": state, "changed": False, "message": f"job {job_id} already {state}"}
        pending = self.c.pending.pop(job_id, None)
        if pending is not None:
            await self.store.run(job_records.cancel_pending, job_id, actor)
            await self.c.notify_jobs()
            return {"job_id": job_id, "state": "cancelled", "changed": True, "message": f"job {job_id} cancelled"}
        await self.store.run(job_records.request_cancel, job_id, actor)
        run = self.c.active.get(current["run_id"]) if current["run_id"] else None
        if run is None or run.job_id != job_id or current["state"] == "pending":
            self.c.cancels[job_id] = actor  # between states (being dispatched or re-queued): applied there
        if run is not None and run.job_id == job_id:
            run.cancel_requested_by = actor
            link = self.c.links.get(run.host)
            if link is not None and link.up and run.launched:
                with contextlib.suppress(Exception):
                    await link.request("cancel", run_id=run.run_id)
        return {"job_id": job_id, "state": "cancelling", "changed": True,
                "message": f"job {job_id} is being stopped (SIGTERM, then SIGKILL after the grace period)"}

    async def rpc_job_set_priority(self, peer: Peer, job: Ident, priority: int) -> dict[str, Any]:
        """Change a job's priority (higher is placed first); a queued job is re-ranked at once."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise UsageError(f"priority must be a whole number, not {priority!r}")
        if not -1000 <= priority <= 1000:
            raise UsageError(f"priority {priority} is out of range; use a number from -1000 to 1000, as in job specs")
        job_id = (await self.store.read(job_records.job_run, job))["job_id"]
        before = await self.store.run(job_records.set_job_priority, job_id, priority, peer.info["actor"])
        pending = self.c.pending.get(job_id)
        if pending is not None:
            pending.priority = priority
            await self.c.notify_jobs()
        return {"job_id": job_id, "priority": priority, "previous": before, "changed": before != priority,
                "message": f"job {job_id} priority {before} -> {priority}"}

    async def rpc_job_retry(self, peer: Peer, job: Ident, force: bool = False) -> dict[str, Any]:
        """Queue an ended job (failed, cancelled, lost; succeeded only with ``force``) for one more attempt."""
        current = await self.store.read(job_records.job_run, job)
        job_id, state = current["job_id"], current["state"]
        if state not in TERMINAL_STATES:
            raise UsageError(f"job {job_id} is {state}; only an ended job can be retried (cancel it first)")
        from mlfleet.core.controller.loop import PendingJob
        from mlfleet.core.base.models import spec_from_plain

        row = await self.store.run(job_records.retry_job, job_id, peer.info["actor"], force)
        self.c.pending[job_id] = PendingJob(job_id, spec_from_plain(row["spec"]), row["priority"], time.time(),
                                            row["attempt"], row["max_attempts"], row["owner"],
                                            code_hash=row["code_hash"], failed_hosts=tuple(row["failed_hosts"] or ()))
        await self.c.notify_jobs()
        return {"job_id": job_id, "state": "pending", "previous": state, "attempt": row["attempt"] + 1,
                "message": f"job {job_id} queued again (attempt {row['attempt'] + 1})"}

    async def rpc_job_logs(self, peer: Peer, job: Ident, stream: str = "stdout", offset: Offset = 0,
                           max_bytes: ChunkSize = 256 * 1024, run: Ident | None = None) -> dict[str, Any]:
        if stream not in ("stdout", "stderr"):
            raise UsageError(f"unknown log stream {stream!r}; use stdout or stderr")
        current = await self.store.read(job_records.job_run, job)
        run_id = run or current["run_id"]
        if run_id is None:
            return {"job_id": current["job_id"], "run_id": None, "state": current["state"], "offset": offset,
                    "end": offset, "data": "", "eof": current["state"] in TERMINAL_STATES}
        host = current["host"]
        if run is not None or host is None:
            rows = await self.store.read(store_rows.rows, "select host from runs where run_id = ?", [run_id])
            if not rows:
                raise NotFoundError(f"no run {run_id!r}")
            host = rows[0]["host"]
        link = self.c.links.get(host)
        if link is None:
            raise NotFoundError(f"host {host} is no longer configured")
        chunk = await link.request("read", run_id=run_id, stream=stream, offset=offset, max_bytes=max_bytes)
        chunk.update(job_id=current["job_id"], state=current["state"])
        return chunk

    # ------------------------------------------------------------- hosts
    async def rpc_hosts_list(self, peer: Peer, history: History = 0) -> list[dict[str, Any]]:
        out = []
        for link in self.c.links.values():
            item = link.summary()
            item.update(hostseen.freshness(link.state, link.last_seen, self.c.tick_interval))
            item["running_jobs"] = sum(1 for r in self.c.active.values() if r.host == link.name)
            item["drained"] = self.c.drained.get(link.name)
            if history:
                item["history"] = link.history_series(history)
            out.append(item)
        return out

    async def rpc_hosts_add(self, peer: Peer, host: dict[str, Any]) -> dict[str, Any]:
        config = host_from_request(host)  # every field and key file checked now, in the user's words
        add_host(self.c.home.hosts_file, config)
        await self._apply_hosts_file(peer, "host.add", config.name, msgspec.to_builtins(config))
        return {"name": config.name, "added": True, "known_hosts": str(self.c.home.known_hosts_file)}

    async def rpc_hosts_remove(self, peer: Peer, name: Ident) -> dict[str, Any]:
        busy = self.c.active_on(name)
        if busy:
            raise UsageError(f"host {name} has {plural(len(busy), 'run')} in flight ({', '.join(busy[:3])}); "
                             "cancel them or wait for them to end")
        remove_host(self.c.home.hosts_file, name)
        await self._apply_hosts_file(peer, "host.remove", name, {})
        await self.store.run(fleet_records.set_host_state, name, "removed")
        return {"name": name, "removed": True}

    async def _apply_hosts_file(self, peer: Peer, action: str, target: str, detail: dict[str, Any]) -> None:
        self.c.apply_inventory(load_inventory(self.c.home.hosts_file))
        self.c.note_inventory_written()
        await self.store.run(audit_records.audit, peer.info["actor"], action, target, detail)

    async def rpc_hosts_drain(self, peer: Peer, name: Ident, reason: Annotated[str, Meta(max_length=500)] = "",
                              drain: bool = True) -> dict[str, Any]:
        """No new placements on the host (runs in flight go on); ``drain=False`` undoes it."""
        if name not in self.c.links:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        actor = peer.info["actor"]
        if drain:
            self.c.drained[name] = f"by {actor}: {reason or 'no reason given'}"
        else:
            self.c.drained.pop(name, None)
        await self.store.run(fleet_records.set_drain, name, actor if drain else None, reason if drain else None)
        await self.store.run(audit_records.audit, actor, "host.drain" if drain else "host.undrain", name, {"reason": reason})
        return {"name": name, "drained": drain, "running": len(self.c.active_on(name))}

    def _ssh_host(self, name: str) -> HostConfig:
        if name == LOCAL_HOST:
            raise UsageError(f"'{LOCAL_HOST}' is reached without SSH; it has no host key")
        host = self.c.inventory.get(name)
        if host is None:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        return host

    async def rpc_host_key(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """The key the host presents now, and what we have recorded for it."""
        hop, presented, known = await route.first_untrusted(self._ssh_host(name), self.c.home.known_hosts_file)
        return {"name": name, "address": hop.address, "port": hop.port, "fingerprint": presented.fingerprint,
                "key_type": presented.line.split()[0], "known": known, "trusted": presented.fingerprint in known,
                "jump_host": hop.jump}

    async def rpc_host_trust(self, peer: Peer, name: Ident, fingerprint: Ident) -> dict[str, Any]:
        """Record the host's key, but only if it is still the one the user was shown."""
        # the key asked about is the first on the route not yet recorded: a jump host's, then the host's own
        host, presented, previous = await route.first_untrusted(self._ssh_host(name), self.c.home.known_hosts_file)
        if presented.fingerprint != fingerprint:
            raise UsageError(f"{name} now presents {presented.fingerprint}, not the {fingerprint} you confirmed; "
                             "nothing was recorded: run 'mlfleet hosts trust' again and check the key")
        hostkeys.trust(self.c.home.known_hosts_file, host.address, host.port, presented)
        await self.store.run(audit_records.audit, peer.info["actor"], "host.trust", name,
                             {"fingerprint": fingerprint, "previous": previous,
                              **({"jump_host": f"{host.address}:{host.port}"} if host.jump else {})})
        link = self.c.links.get(name)
        if link is not None:
            link.retry_now()
        return {"name": name, "fingerprint": fingerprint, "replaced": previous, "jump_host": host.jump}

    async def rpc_hosts_bootstrap(self, peer: Peer, name: Ident, prefix: Ident = ".mlfleet",
                                  python: Ident = "python3") -> dict[str, Any]:
        """Install the agent on the node, then point the host's agent_command at it."""
        from mlfleet.core.fleet.bootstrap import bootstrap, check_node_path

        check_node_path("--prefix", prefix, ".mlfleet or /opt/mlfleet")
        check_node_path("--python", python, "python3 or /usr/bin/python3.11")
        host = self._ssh_host(name)
        result = await bootstrap(SshAgentTransport(host, self.c.home.known_hosts_file), self.c.home.wheel_cache_dir,
                                 prefix, python)
        return {"name": name, **result, **await node_restart.restart_from(self, peer, host, result)}

    async def rpc_hosts_stop_agent(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Stop the host's agent and keep its link down until ``hosts start-agent`` (runs must have ended)."""
        return await node_restart.stop(self, peer, name)

    async def rpc_hosts_start_agent(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Let go of a link held by ``hosts stop-agent``: the next connect starts the agent."""
        return await node_restart.start(self, peer, name)

    async def rpc_hosts_check(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Connect afresh, say hello, read the agent's facts; report each step."""
        link = self.c.links.get(name)
        if link is None:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        started = time.monotonic()
        # A transport of its own: the probe must not replace the link's connection (uploads use it).
        transport = SshAgentTransport(self.c.inventory[name], self.c.home.known_hosts_file) \
            if name in self.c.inventory else link.transport
        try:
            probe = await transport.connect()
        except MlfleetError as exc:
            return {"name": name, "ok": False, "problem": str(exc), "state": link.state}
        try:
            info = await probe.request("info", request_timeout=10)
            latency = await _round_trip(probe)
        finally:
            await probe.close()
        return {"name": name, "ok": True, "connect_s": round(time.monotonic() - started, 3),
                "round_trip_ms": round(latency * 1000, 2), "agent_version": info.get("version"),
                "simulated_gpus": bool(info.get("simulated_gpus")), "info": info, "state": link.state}

    # -------------------------------------------------------------- runs
    async def rpc_run_show(self, peer: Peer, run: Ident, keys: str | None = None,
                           max_keys: KeyCount = 100) -> dict[str, Any]:
        return await self.store.read(run_records.get_run, run, keys, max_keys)

    async def rpc_run_artifacts(self, peer: Peer, run: Ident) -> list[dict[str, Any]]:
        return await self.store.read(run_records.list_artifacts, run)

    async def rpc_run_artifact_read(self, peer: Peer, run: Ident, path: Annotated[str, Meta(min_length=1)],
                                    offset: Offset = 0, max_bytes: ChunkSize = 1024 * 1024) -> dict[str, Any]:
        """A chunk of a run's artifact, read on its node by the agent (base64 ``data``; ``sha256`` as logged)."""
        artifact = await self.store.read(run_records.find_artifact, run, path)
        link = self.c.links.get(artifact["host"])
        if link is None:
            raise NotFoundError(f"host {artifact['host']} of run {artifact['run_id']} is no longer configured")
        if not link.up:
            raise UnavailableError(f"host {artifact['host']} is {link.state}; its artifacts are there, try again later")
        chunk = await link.request("artifact_read", run_id=artifact["run_id"], path=artifact["path"], offset=offset,
                                   max_bytes=max_bytes, request_timeout=60)
        chunk.update(sha256=artifact["sha256"], logged_size=artifact["size"], host=artifact["host"])
        return chunk

    # ---------------------------------------------------------- db, audit
    async def rpc_db_query(self, peer: Peer, sql: str, limit: QueryRows = 10_000) -> dict[str, Any]:
        """One read-only statement (core/store/user_query.py has the rules); interrupted if this client goes away."""
        if not isinstance(sql, str) or not sql.strip():
            raise UsageError("give a SQL query, e.g. mlfleet db query \"select count(*) from metrics\"")
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        settings = self.c.settings.query
        return await self.store.query(sql, limit, time_limit=float(settings.time_limit),
                                      allow_file_reads=settings.allow_file_reads)

    async def rpc_audit_list(self, peer: Peer, limit: ListLimit = 200, action: str | None = None) -> list[dict[str, Any]]:
        return await self.store.read(audit_records.list_audit, limit, action)

