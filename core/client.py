"""What the CLI and the TUI use to talk to the controller.

:func:`connect` returns a client for a running controller, starting one in
the background first when none runs (``autostart``). Clients hold no state
of their own and never open the DuckDB file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from mlfleet.core.errors import UnavailableError
from mlfleet.core.paths import Home
from mlfleet.core.private import open_private
from mlfleet.core.inventory import load_inventory
from mlfleet.core.settings import load_settings
from mlfleet.core.protocol import Peer, open_unix_peer

START_TIMEOUT_S = 30.0


class ControllerClient:
    """A connection to the controller; ``await client.call("jobs_list")``."""

    def __init__(self, peer: Peer, home: Home) -> None:
        self.peer = peer
        self.home = home

    async def call(self, method: str, request_timeout: float | None = 60.0, **params: Any) -> Any:
        """Call one controller method; ``request_timeout`` bounds the wait (params are the method's own)."""
        return await self.peer.request(method, request_timeout=request_timeout, **params)

    @property
    def connected(self) -> bool:
        return not self.peer.closed

    async def close(self) -> None:
        await self.peer.close()

    async def __aenter__(self) -> "ControllerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def try_connect(home: Home) -> ControllerClient | None:
    """A client for a running controller, or None when none answers."""
    if not home.trusted_socket(home.controller_socket):  # one another user could have planted is refused
        return None
    try:
        peer = await open_unix_peer(str(home.controller_socket), "controller")
    except UnavailableError:
        return None
    try:
        await peer.hello("client")
    except UnavailableError:
        await peer.close()
        return None
    return ControllerClient(peer, home)


async def connect(home: Home | None = None, autostart: bool = True) -> ControllerClient:
    """Connect to the controller of ``home``, starting it if needed."""
    home = home or Home.from_env()
    client = await try_connect(home)
    if client is not None:
        return client
    if not autostart:
        raise UnavailableError(f"no controller is running for {home.data_dir}; start one with 'mlfleet controller start'")
    load_settings(home.config_file)  # a mistake there is the user's to fix: say it here, with its line
    load_inventory(home.hosts_file)
    process = start_controller_process(home)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        client = await try_connect(home)
        if client is not None:
            return client
        if process.poll() is not None:
            # It exited: maybe another controller won the race, maybe it failed. Ask once more.
            client = await try_connect(home)
            if client is not None:
                return client
            raise UnavailableError(f"the controller could not start: {_last_log_line(home)}")
    raise UnavailableError(f"the controller did not answer within {START_TIMEOUT_S:.0f} s; "
                           f"see {home.log_dir / 'controller.log'}")


def start_controller_process(home: Home) -> subprocess.Popen[bytes]:
    """Start ``mlfleet controller run`` detached from this terminal, logging to the home's log dir."""
    home.ensure()
    log = os.fdopen(open_private(home.log_dir / "controller.log"), "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "mlfleet", "controller", "run"],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
            env={**os.environ, **home.to_env()},
        )
    finally:
        log.close()


def _last_log_line(home: Home) -> str:
    try:
        lines = (home.log_dir / "controller.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log was written"
    for line in reversed(lines):
        if line.startswith("mlfleet: "):
            return line.removeprefix("mlfleet: ")
    return lines[-1] if lines else "no log was written"
