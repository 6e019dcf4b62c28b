"""``deploy open``'s forwarder in a process of its own, its endpoints read from a JSON file (tests).

The command asks the controller's ``deploy_endpoints``; here the list is a
file the test rewrites (atomically), so a story can add, remove and flip
replicas at will while the forwarder, its dialers (the real FleetDialer,
SSH included, from MLFLEET_HOME's hosts.yaml and known_hosts) and its Ctrl-C
path are the command's own. Prints ``port N`` when listening, then each
line the forwarder says; SIGINT ends it with exit 0.

    python forward_harness.py ENDPOINTS.json [REFRESH_SECONDS]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from mlfleet.core.base.paths import Home
from mlfleet.core.deploy.dialers import FleetDialer
from mlfleet.core.deploy.forward import Endpoint, serve_forward


async def main(path: Path, refresh: float) -> None:
    async def endpoints() -> list[Endpoint]:
        return [Endpoint.from_rpc(item) for item in json.loads(path.read_text())]

    dialer = FleetDialer(Home.from_env())
    try:
        await serve_forward(endpoints, "127.0.0.1", 0, dialer, lambda port: print(f"port {port}", flush=True),
                            refresh=refresh, name="iris", say=lambda line: print(line, flush=True))
    finally:
        await dialer.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.5))
    except KeyboardInterrupt:
        print("closed", flush=True)
