"""The embedded host ``local``: an agent process on this machine, no SSH.

It speaks the same protocol over the same kind of socket as a remote agent;
the only difference is that we start it ourselves when it is not running.
It runs detached in its own session, so restarting the controller never
touches it or its jobs.

The same transport serves a Slurm cluster whose login node runs the
controller (hosts.yaml ``transport: local``, docs/slurm.md): a second agent
of its own name, with its state dir on the shared filesystem and a socket
of its own, which keeps ``SLURM_CONF`` so its sbatch reaches the cluster
the controller's user would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from mlfleet.core.base.errors import UnavailableError, UnsafePathError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import open_private, private_dir
from mlfleet.core.base.protocol import Peer, open_unix_peer
from mlfleet.core.base.spawn import local_agent_environment, own_python

_START_TIMEOUT_S = 20.0
IDLE_EXIT_S = 300
# What a login node's agent keeps from the controller's environment beyond a login's (core/base/spawn.py).
SLURM_VARIABLES = ("SLURM_CONF",)


class LocalAgentTransport:
    kind = "local"  # "slurm" for a cluster whose login node runs the controller (set by the fleet)
    address = None
    on_this_machine = True  # files reach it by link or copy, never by upload

    def __init__(self, home: Home, host: str = "local", sample_interval: float = 1.0,
                 simulate_gpus: str | None = None, log_max_size: int = 10 * 1024**2, log_backups: int = 3,
                 state_dir: Path | None = None, keep_env: tuple[str, ...] = ()) -> None:
        self.simulate_gpus = simulate_gpus
        self.log_max_size = log_max_size
        self.log_backups = log_backups
        self.home = home
        self.host = host
        self.socket_path: Path = home.local_agent_socket if state_dir is None else agent_socket(home, host)
        self.state_dir: Path = home.local_agent_dir if state_dir is None else state_dir
        self.log_path = home.log_dir / f"agent-{host}.log"
        self.keep_env = keep_env
        self.sample_interval = sample_interval
        self._child: subprocess.Popen[bytes] | None = None

    async def connect(self) -> Peer:
        if self._child is not None and self._child.poll() is not None:
            self._child = None  # reaped: an agent we started has exited
        try:
            return await self._hello()
        except UnsafePathError:
            raise
        except UnavailableError:
            pass
        self._spawn()
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        last: Exception | None = None
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            try:
                return await self._hello()
            except UnsafePathError:
                raise
            except UnavailableError as exc:
                last = exc
        raise UnavailableError(f"the local agent did not start within {_START_TIMEOUT_S:.0f} s ({last}); "
                               f"see {self.log_path}")

    async def _hello(self) -> Peer:
        if not self.home.trusted_socket(self.socket_path):  # never send a launch (and its env) to a planted socket
            raise UnavailableError(f"no agent listens on {self.socket_path}")
        peer = await open_unix_peer(str(self.socket_path), f"agent {self.host}")
        try:
            await peer.hello("controller")
        except Exception:
            await peer.close()
            raise
        return peer

    async def upload(self, local: Path, remote: str) -> None:
        """Hand a snapshot to the local agent: the same path as SFTP to a node, a temporary name then a rename."""
        await asyncio.to_thread(_copy_private, local, Path(remote))

    async def stop_agent(self) -> dict:
        from mlfleet.core.fleet.agentstop import stop_agent

        return await asyncio.to_thread(stop_agent, self.state_dir)

    def _spawn(self) -> None:
        private_dir(self.home.log_dir)
        log_path = self.log_path
        log = open_private(log_path)  # also as stdout/stderr: a crash before logging is set up lands there too
        try:
            self._child = subprocess.Popen(
                own_python("agent", "serve",
                 "--state-dir", str(self.state_dir), "--socket", str(self.socket_path),
                 "--name", self.host, "--idle-exit", str(IDLE_EXIT_S),
                 "--sample-interval", str(self.sample_interval),
                 "--log-file", str(log_path), "--log-max-size", str(self.log_max_size),
                 "--log-backups", str(self.log_backups),
                 *(["--simulate-gpus", self.simulate_gpus] if self.simulate_gpus else [])),
                cwd="/", start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                env={**local_agent_environment(os.environ),
                     **{k: os.environ[k] for k in self.keep_env if k in os.environ}},
            )
        finally:
            os.close(log)


def agent_socket(home: Home, host: str) -> Path:
    """The socket of host ``host``'s agent on this machine, beside the controller's (short enough for AF_UNIX)."""
    path = home.run_dir / f"agent-{host}.sock"
    if len(str(path)) > 100:
        path = home.run_dir / f"agent-{hashlib.sha256(host.encode()).hexdigest()[:12]}.sock"
    return path


def _copy_private(source: Path, target: Path) -> None:
    partial = target.with_name(f"{target.name}.part")
    try:
        with open(source, "rb") as src, os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                                          0o600), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UnavailableError(f"handing snapshot {source.name} to the local agent failed: {exc}") from None
