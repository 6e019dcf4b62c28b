"""``mlfleet deploy open NAME [--port 8080] [--bind 127.0.0.1]``: a deployment on a local port, until Ctrl-C.

A foreground client process (like ``ssh -L``): the controller only says
which replicas are healthy (``deploy_endpoints``, asked every 0.5 s); the
bytes go from this process to the replicas directly or over this process's
own SSH connections (core/deploy/dialers.py), never through the controller.
``add_open_command(sub, add)`` adds it to the ``deploy`` group
(core/deploy/commands.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.cli.output import Add, bounded
from mlfleet.core.controller.client import ControllerClient, connect
from mlfleet.core.deploy.forward import Endpoint, serve_forward


def add_open_command(sub: Any, add: Add) -> None:
    p = add(sub, "open", cmd_open, "forward a local port to a deployment's healthy replicas, each new "
            "connection to the next one (like ssh -L; Ctrl-C stops)")
    p.add_argument("name", help="the deployment")
    p.add_argument("--port", type=bounded(0, 65535), default=8080, help="local port (0: a free one, printed)")
    p.add_argument("--bind", default="127.0.0.1", help="local address to listen on (default 127.0.0.1)")


class _Endpoints:
    """``deploy_endpoints`` for one deployment, reconnecting to the controller when it went away."""

    def __init__(self, home: Home, client: ControllerClient, name: str) -> None:
        self.home, self.client, self.name = home, client, name

    async def __call__(self) -> list[Endpoint]:
        if not self.client.connected:
            self.client = await connect(self.home)
        answer = await self.client.call("deploy_endpoints", request_timeout=10.0, name=self.name)
        return [Endpoint.from_rpc(item) for item in answer["endpoints"]]

    async def close(self) -> None:
        await self.client.close()


def cmd_open(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_open(args))
    except KeyboardInterrupt:  # Ctrl-C is how it ends: the forwarder closed its connections on the way out
        return 0


def _refuse_shared(home: Home, name: str, port: int) -> None:
    """With a shared controller, this machine is the wrong end: say where to run it instead.

    WHY: the forwarder dials a replica on the controller's machine at this machine's 127.0.0.1 and the
    others with this machine's hosts.yaml; with the controller on a head node both are the head's.
    """
    from mlfleet.core.controller.client import shared_controller

    shared = shared_controller(home)
    if shared is not None:
        shown = port or 8080
        raise UsageError(f"deploy open reaches the replicas from the controller's machine (its loopback and "
                         f"hosts.yaml), and the controller is shared ({shared.url}): run 'mlfleet deploy open {name} "
                         f"--port {shown}' on {shared.host} and reach it from here with "
                         f"'ssh -L {shown}:127.0.0.1:{shown} {shared.where}'")


async def _open(args: argparse.Namespace) -> int:
    home = Home.from_env()
    _refuse_shared(home, args.name, args.port)
    source = _Endpoints(home, await connect(home), args.name)
    from mlfleet.core.deploy.dialers import FleetDialer  # asyncssh: only here, never when a node's agent starts

    dialer = FleetDialer(home)
    as_json = bool(getattr(args, "json", False))

    def say(line: str) -> None:
        print(json.dumps({"message": line}) if as_json else line, flush=True)

    def ready(port: int) -> None:
        where = f"{args.bind}:{port}"
        print(json.dumps({"deployment": args.name, "bind": args.bind, "port": port}) if as_json
              else f"forwarding {where} to {args.name} (Ctrl-C to stop)", flush=True)

    try:
        await source()  # a deployment that does not exist is the user's mistake: one sentence, now
        try:
            await serve_forward(source, args.bind, args.port, dialer, ready, name=args.name, say=say)
        except OSError as exc:
            raise UsageError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}; choose another "
                             "--port (0 picks a free one) or --bind") from None
    finally:
        await dialer.close()
        await source.close()
    return 0
