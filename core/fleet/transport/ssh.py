"""Reaching a remote agent over SSH (asyncssh), with strict host keys.

One SSH connection per host, with keepalives (directly, or through jump
hosts or a proxy command: see route.py). On it we run
``<agent_command> agent connect --state-dir DIR`` on the node: that command
starts the agent daemon (detached, so it outlives the SSH session) when it
is not running, then joins the channel's stdin/stdout to the agent's 0600
Unix socket. The line protocol runs over that channel unchanged.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import asyncssh

from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.fleet.inventory import HostConfig
from mlfleet.core.base.protocol import Peer
from mlfleet.core.fleet.transport import route


class SshAgentTransport:
    kind = "ssh"

    def __init__(self, config: HostConfig, known_hosts: Path) -> None:
        self._conn: asyncssh.SSHClientConnection | None = None
        self.config = config
        self.on_this_machine = False
        self.kind = config.kind  # "slurm" for a cluster's login node: hosts list and the TUI show it as a cluster
        self.host = config.name
        self.address = route.describe(config)
        self.known_hosts = known_hosts

    def agent_command(self) -> str:
        c = self.config
        argv = [*shlex.split(c.agent_command), "agent", "connect", "--state-dir", c.state_dir, "--name", c.name]
        if c.simulate_gpus:
            argv += ["--simulate-gpus", c.simulate_gpus]
        return " ".join(shlex.quote(a) for a in argv)

    async def open_connection(self) -> asyncssh.SSHClientConnection:
        """An authenticated connection, directly or through the host's jump hosts or proxy command."""
        return await route.connect(self.config, self.known_hosts)

    async def connect(self) -> Peer:
        conn = await self.open_connection()
        try:
            process = await conn.create_process(self.agent_command(), encoding=None)
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise UnavailableError(f"cannot start the agent on {self.host}: {exc}") from None
        peer = Peer(process.stdout, process.stdin, name=f"agent {self.host}")
        peer.on_close(conn.close)
        self._conn = conn
        peer.start()
        try:
            await peer.hello("controller")
        except Exception as exc:
            stderr = await _read_some(process)
            await peer.close()
            detail = f" (the node said: {stderr})" if stderr else ""
            raise UnavailableError(f"the agent on {self.host} did not answer: {exc}{detail}; "
                                   f"is mlfleet installed there ('agent_command' is {self.config.agent_command!r})? "
                                   f"'mlfleet hosts bootstrap {self.host}' installs it") from None
        return peer


    async def stop_agent(self, agent_command: str | None = None) -> dict:
        """Run ``agent stop`` on the node (with ``agent_command``, default the host's) and read its answer."""
        import asyncio
        import json

        c = self.config
        argv = [*shlex.split(agent_command or c.agent_command), "agent", "stop", "--state-dir", c.state_dir, "--json"]
        conn = await self.open_connection()
        try:
            result = await asyncio.wait_for(conn.run(" ".join(shlex.quote(a) for a in argv), check=False), 60)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"could not stop the agent on {self.host}: {exc or type(exc).__name__}") from None
        finally:
            conn.close()
        said = " ".join(str(result.stderr or "").split())[-300:]
        if result.exit_status != 0:
            raise UnavailableError(f"could not stop the agent on {self.host} (exit {result.exit_status}): "
                                   f"{said or 'no word'}; an mlfleet older than 'agent stop' needs "
                                   f"'mlfleet hosts bootstrap {self.host}' first")
        try:
            return dict(json.loads(str(result.stdout)))
        except ValueError:
            raise UnavailableError(f"{self.host} answered 'agent stop' with {str(result.stdout)[:100]!r}") from None

    async def upload(self, local: Path, remote: str) -> None:
        """Copy a file to the node over SFTP on the agent's connection (to a temporary name, then renamed)."""
        if self._conn is None:
            raise UnavailableError(f"no connection to {self.host}")
        try:
            async with self._conn.start_sftp_client() as sftp:
                parent = remote.rsplit("/", 1)[0]
                if parent and not await sftp.isdir(parent):  # e.g. the node's wheelhouse, before its first wheel
                    await sftp.makedirs(parent, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
                partial = f"{remote}.part"
                await sftp.put(str(local), partial)
                await sftp.posix_rename(partial, remote)
        except (OSError, asyncssh.Error) as exc:
            raise UnavailableError(f"upload of {local.name} to {self.host} failed: {exc}") from None


async def _read_some(process: asyncssh.SSHClientProcess) -> str:
    try:
        import asyncio

        data = await asyncio.wait_for(process.stderr.read(2000), 2.0)
    except Exception:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return " ".join(text.split())[-300:]
