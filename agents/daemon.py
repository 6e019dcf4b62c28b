"""``mlfleet agent serve``: the headless node daemon.

It listens on a Unix socket (mode 0600) and nowhere else; remote
controllers reach it through SSH. It samples telemetry at 1 Hz into a ring
buffer that the controller pulls in batches, and answers the run requests
(launch, status, cancel, read) from the run folders.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import platform
import signal
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from mlfleet import __version__
from mlfleet.core.base.errors import NotFoundError, UnavailableError, UsageError
from mlfleet.core.base.models import HostSample, LaunchRequest
from mlfleet.core.base.listener import HELLO_DEADLINE_S, UnixListener
from mlfleet.core.base.frames import MAX_FRAME
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import SERVER_FRAME_DEADLINE_S, SERVER_MAX_REQUEST, Peer
from mlfleet.core.base.rpc import method_dispatcher
from mlfleet.core.base.send_budget import SendBudget

from mlfleet.agents.envs.build import is_ready
from mlfleet.agents.envs.gc import collect_garbage
from mlfleet.agents.envs.probe import node_facts
from mlfleet.agents.services import ServiceWatch, decode
from mlfleet.agents.modelstore import ModelStore
from mlfleet.agents.supervisor import Supervisor
from mlfleet.agents.telemetry import GpuSource, HostSampler, NvmlGpuSource

log = logging.getLogger(__name__)

TELEMETRY_HISTORY = 600  # samples kept for a controller that was away (10 min at 1 Hz)
MAX_POLL_RUNS = 1000
MAX_ENV_HASHES = 1000  # env_ready asks about this many at most
POLL_BUDGET = MAX_FRAME // 8  # bytes of metric lines in one poll answer, all runs together (msgpack: unescaped)


class AgentDaemon:
    """One agent: a state dir, a socket, a sampler and a supervisor."""

    def __init__(self, state_dir: Path, socket_path: Path, host_name: str | None = None,
                 sample_interval: float = 1.0, idle_exit: float | None = None,
                 gpu_source: GpuSource | None = None) -> None:
        self.state_dir = state_dir
        self.socket_path = socket_path
        self._send_budget = SendBudget()  # answers made and not read, all connections together
        self.host_name = host_name or socket.gethostname()
        self.sample_interval = sample_interval
        self.idle_exit = idle_exit
        self.gpu_source = gpu_source
        self.supervisor = Supervisor(state_dir)
        self.services = ServiceWatch(self.supervisor.runs_dir, self.supervisor.probe_views,
                                     lambda run_id: self.supervisor.status(run_id).state != "exited")
        self.models = ModelStore(state_dir)
        self.samples: collections.deque[HostSample] = collections.deque(maxlen=TELEMETRY_HISTORY)
        self.peers: set[Peer] = set()
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        self._last_contact = time.time()
        self._env_facts: dict[str, Any] | None = None  # env_probe's answer, found once (interpreters do not move often)
        self._env_probing = asyncio.Lock()
        self._env_collecting = asyncio.Lock()  # one garbage collection at a time

    # ------------------------------------------------------------ running
    def _take_lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UnavailableError(f"another agent is already running with state dir {self.state_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def serve(self, max_connections: int = 64) -> None:
        """Run until SIGTERM/SIGINT, a shutdown request, or idle exit.

        At most ``max_connections`` are held (the controller needs one, a probe
        another): a flood of idle connections is evicted or told "busy", never
        let to use up the agent's descriptors.
        """
        self._take_lock()
        if self.gpu_source is None:
            self.gpu_source = NvmlGpuSource()
        sampler = HostSampler(self.state_dir, self.gpu_source)
        self.samples.append(self._sample(sampler))
        self.socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._listener = UnixListener(self.socket_path, self._on_connect, name=f"the agent of {self.host_name}",
                                      max_connections=max_connections, setting="agent serve --max-connections")
        server = await self._listener.start()  # born 0600: no window where others may connect
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("agent %s serving on %s (state dir %s)", self.host_name, self.socket_path, self.state_dir)
        tasks = [asyncio.create_task(self._sample_loop(sampler)), asyncio.create_task(self._housekeeping()),
                 asyncio.create_task(self.services.run())]  # health of the model servers here (agents/services.py)
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            server.close()
            for peer in list(self.peers):
                await peer.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self.gpu_source.close()
            log.info("agent stopped; %d run(s) keep running on their own", self.supervisor.active_count())

    def _sample(self, sampler: HostSampler) -> HostSample:
        """A telemetry sample with the node's GPU claims (agents/claims.py): every controller sees them at once."""
        sample = sampler.sample()
        self.supervisor.gpu_memory_totals = {g.index: g.memory_total for g in sample.gpus if g.memory_total}
        try:
            sample.gpu_claims = self.supervisor.gpu_claims()
        except OSError:  # a run folder removed while being read: the next sample has them
            log.warning("the GPU claims could not be read for this sample", exc_info=True)
        return sample

    async def _sample_loop(self, sampler: HostSampler) -> None:
        while True:
            started = time.monotonic()
            try:
                self.samples.append(await asyncio.to_thread(self._sample, sampler))
            except Exception:  # telemetry must never take the agent down
                log.exception("telemetry sample failed")
            await asyncio.sleep(max(0.05, self.sample_interval - (time.monotonic() - started)))

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.supervisor.reap()
            if self.idle_exit is not None and not self.peers:
                if time.time() - self._last_contact > self.idle_exit and self.supervisor.active_count() == 0:
                    log.info("no controller and no runs for %.0f s: exiting", self.idle_exit)
                    self._stop.set()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dispatch = method_dispatcher(self)

        async def handle(peer: Peer, method: str, params: dict[str, Any]) -> Any:
            answer = await dispatch(peer, method, params)
            if method == "hello":  # a real peer, not an idle socket: never evicted for a newcomer
                self._listener.greeted(peer)
            return answer

        peer = Peer(reader, writer, handle, name="controller", hello_deadline=HELLO_DEADLINE_S,
                    max_incoming=SERVER_MAX_REQUEST, frame_deadline=SERVER_FRAME_DEADLINE_S, require_hello=True,
                    send_budget=self._send_budget)
        self.peers.add(peer)
        self._last_contact = time.time()
        peer.start()
        try:
            await peer.wait_closed()
        finally:
            self.peers.discard(peer)
            self._last_contact = time.time()

    # --------------------------------------------------------------- RPCs
    async def rpc_hello(self, peer: Peer, protocol: int, role: str = "") -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "role": "agent", "version": __version__, "host": self.host_name}

    async def rpc_slurm_info(self, peer: Peer) -> dict[str, Any]:
        """The Slurm cluster this (login) node submits to: partitions, nodes, GPUs by type (one sinfo)."""
        from mlfleet.agents.slurm import slurm_info

        return await asyncio.to_thread(slurm_info)

    async def rpc_info(self, peer: Peer) -> dict[str, Any]:
        latest = self.samples[-1] if self.samples else None
        return {
            "host": self.host_name,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "platform": platform.platform(),
            "python": platform.python_version(),
            "state_dir": str(self.state_dir),
            "cpu_count": latest.cpu_count if latest else os.cpu_count(),
            "memory_total": latest.memory_total if latest else None,
            "simulated_gpus": bool(getattr(self.gpu_source, "simulated", False)),
        }

    async def rpc_telemetry(self, peer: Peer, since: int = 0) -> list[dict[str, Any]]:
        """Samples newer than ``since`` (a seq); an agent restart restarts seq at 1."""
        return [msgspec.to_builtins(s) for s in self.samples if s.seq > since or since > self.samples[-1].seq]

    async def rpc_launch(self, peer: Peer, request: dict[str, Any]) -> dict[str, Any]:
        try:
            launch = decode(request, LaunchRequest)  # a service's durations come as plain seconds
        except msgspec.ValidationError as exc:
            raise UsageError(f"bad launch request: {exc}") from None
        # In a thread: the run's copy of its snapshot may take a moment, and telemetry must not wait for it.
        status = await asyncio.to_thread(self.supervisor.launch, launch)
        if launch.service is not None:
            self.services.nudge()
        return msgspec.to_builtins(status)

    async def rpc_launch_array(self, peer: Peer, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Slurm runs of one sweep submitted as one job array (agents/slurm_array.py); each run's status."""
        try:
            launches = [decode(request, LaunchRequest) for request in requests]
        except msgspec.ValidationError as exc:
            raise UsageError(f"bad launch request: {exc}") from None
        statuses = await asyncio.to_thread(self.supervisor.launch_array, launches)  # sbatch may take a while
        return [msgspec.to_builtins(status) for status in statuses]

    async def rpc_status(self, peer: Peer, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        ids = self.supervisor.run_ids() if run_ids is None else run_ids
        out = []
        for run_id in ids:
            try:
                status = msgspec.to_builtins(self.supervisor.status(run_id))
                if controller := self.supervisor.controller_of(run_id):  # whose run: a fence stops only its own
                    status["controller"] = controller
                out.append(status)
            except NotFoundError as exc:  # one unknown run must not hide the others
                out.append({"run_id": run_id, "state": "unknown", "message": str(exc)})
        return out

    async def rpc_cancel(self, peer: Peer, run_id: str) -> dict[str, Any]:
        return msgspec.to_builtins(self.supervisor.cancel(run_id))

    async def rpc_read(self, peer: Peer, run_id: str, stream: str, offset: int = 0,
                       max_bytes: int = 1024 * 1024) -> dict[str, Any]:
        return msgspec.to_builtins(await asyncio.to_thread(self.supervisor.read, run_id, stream, offset, max_bytes))

    async def rpc_lineage(self, peer: Peer, run_id: str) -> dict[str, Any] | None:
        """The run's lineage.json (inputs, Python, packages), or None until the runner has written it."""
        return await asyncio.to_thread(self.supervisor.lineage, run_id)

    async def rpc_artifact_read(self, peer: Peer, run_id: str, path: str, offset: int = 0,
                                max_bytes: int = 1024 * 1024) -> dict[str, Any]:
        """A chunk of a file the run logged as an artifact (base64); any other path is refused."""
        return await asyncio.to_thread(self.supervisor.read_artifact, run_id, path, offset, max_bytes)

    async def rpc_outputs_pack(self, peer: Peer, run_id: str, outputs: dict[str, str]) -> dict[str, Any]:
        """A pipeline step's outputs hashed and packed on this node: {name: {path, sha256, size, files, archive_size}}."""
        return await asyncio.to_thread(self.supervisor.outputs_pack, run_id, outputs)

    async def rpc_outputs_read(self, peer: Peer, run_id: str, name: str, offset: int = 0,
                               max_bytes: int = 1024 * 1024) -> dict[str, Any]:
        """A chunk of a packed output's tar, raw bytes in ``data``; only what outputs_pack packed."""
        return await asyncio.to_thread(self.supervisor.outputs_read, run_id, name, offset, max_bytes)

    async def rpc_poll(self, peer: Peer, telemetry_since: int = 0, metrics: dict[str, int] | None = None,
                       max_bytes: int = POLL_BUDGET) -> dict[str, Any]:
        """One round trip for everything the controller pulls each tick.

        ``metrics`` maps run id to the offset the controller has committed;
        the answer has each run's status and the metric lines after it.
        """
        metrics = metrics or {}
        if len(metrics) > MAX_POLL_RUNS:
            raise UsageError(f"poll asks for {len(metrics)} runs; {MAX_POLL_RUNS} at most")

        def collect() -> dict[str, Any]:
            runs: dict[str, Any] = {}
            budget = POLL_BUDGET  # the whole answer must stay far below MAX_FRAME
            for run_id, offset in metrics.items():
                try:
                    status = self.supervisor.status(run_id)
                    if budget <= 0:  # the rest of the lines come next tick
                        runs[run_id] = {"status": msgspec.to_builtins(status)}
                        continue
                    chunk = self.supervisor.read(run_id, "metrics", offset, min(max_bytes, budget))
                    budget -= len(chunk.data)  # what travels: a skipped overlong line costs nothing here
                except NotFoundError as exc:  # only "never heard of it" means unknown
                    runs[run_id] = {"status": {"run_id": run_id, "state": "unknown", "message": str(exc)}}
                    continue
                except Exception as exc:
                    runs[run_id] = {"error": str(exc)}
                    continue
                runs[run_id] = {"status": msgspec.to_builtins(status), "metrics": msgspec.to_builtins(chunk)}
            return runs

        runs = await asyncio.to_thread(collect)
        telemetry = await self.rpc_telemetry(peer, telemetry_since)
        return {"runs": runs, "telemetry": telemetry, "agent_started_at": self.started_at}

    async def rpc_code_status(self, peer: Peer, sha256: str) -> dict[str, Any]:
        return self.supervisor.code.status(sha256)

    async def rpc_code_unpack(self, peer: Peer, sha256: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.supervisor.code.unpack, sha256)

    async def rpc_model_status(self, peer: Peer, sha256: str, file_name: str | None = None) -> dict[str, Any]:
        """Whether model ``sha256`` is committed here (as ``file_name`` when given) and where to upload it."""
        return await asyncio.to_thread(self.models.status, sha256, file_name)

    async def rpc_model_commit(self, peer: Peer, sha256: str, file_name: str) -> dict[str, Any]:
        """Verify the uploaded model by its sha256 and move it to models/<sha256>/<file_name> (agents/modelstore.py)."""
        return await asyncio.to_thread(self.models.commit, sha256, file_name)

    async def rpc_env_probe(self, peer: Peer, refresh: bool = False) -> dict[str, Any]:
        """What a job's environment can be built from here: interpreters (path, full version, implementation),
        machine, glibc, uv's ``--python-platform`` name, and whether uv is installed (agents/envs/probe.py).

        Found on the first call and kept; ``refresh`` looks again (a Python installed since)."""
        async with self._env_probing:
            if self._env_facts is None or refresh:
                self._env_facts = await asyncio.to_thread(node_facts)
            return self._env_facts

    async def rpc_env_ready(self, peer: Peer, env_hashes: list[str]) -> dict[str, bool]:
        """Which of these environments are built on this host (placement prefers warm hosts)."""
        if len(env_hashes) > MAX_ENV_HASHES:
            raise UsageError(f"env_ready asks about {len(env_hashes)} environments; {MAX_ENV_HASHES} at most")
        return {h: is_ready(self.state_dir, h) for h in env_hashes}

    async def rpc_env_gc(self, peer: Peer, keep_for: float, disk_budget: int | None = None) -> dict[str, Any]:
        """Remove environments unused for ``keep_for`` seconds, then LRU ones past ``disk_budget`` bytes
        (never one a live run uses or one being built: agents/envs/gc.py). The controller asks at most every
        few minutes, with its settings (environments.keep_for, environments.disk_budget)."""
        if self._env_collecting.locked():
            return {"removed": {}, "busy": True}
        async with self._env_collecting:
            return await asyncio.to_thread(collect_garbage, self.state_dir, float(keep_for),
                                           None if disk_budget is None else int(disk_budget), time.time())

    async def rpc_env_wheels_missing(self, peer: Peer, sha256: list[str]) -> list[str]:
        """Which of these wheels (by sha256) this host's wheelhouse lacks: the workstation ships only those."""
        if len(sha256) > MAX_ENV_HASHES:
            raise UsageError(f"env_wheels_missing asks about {len(sha256)} wheels; {MAX_ENV_HASHES} at most")
        house = self.state_dir / "wheelhouse"
        return [h for h in sha256 if not (len(h) == 64 and all(c in "0123456789abcdef" for c in h)
                                          and (house / h).is_file())]

    async def rpc_shutdown(self, peer: Peer, only_if_idle: bool = False) -> dict[str, Any]:
        active = self.supervisor.active_count()
        if only_if_idle and active:
            return {"stopping": False, "active_runs": active}
        asyncio.get_running_loop().call_later(0.05, self._stop.set)
        return {"stopping": True, "active_runs": active}
