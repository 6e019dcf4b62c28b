"""``mlfleet hosts bootstrap NAME``: install mlfleet's agent on a host that only has Python.

The node's Python is asked what it is (version, ABI, platform); a wheel of
this mlfleet and the agent's dependency wheels for that Python and platform
are made here (core/fleet/nodewheels.py), uploaded by SFTP and installed with
``--no-index`` into a venv on the node (``PREFIX/venv``, PREFIX relative to
the remote home unless absolute): the node never needs a package index.
Nothing is installed system-wide. The host's ``agent_command`` then points
at the venv, and the agent that ran before is restarted from it (see
``rpc_hosts_bootstrap``): running it again is how a node is upgraded.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import tempfile
from pathlib import Path

import asyncssh

from mlfleet.core.base.errors import UnavailableError, UsageError
from mlfleet.core.fleet.nodewheels import AGENT_REQUIREMENTS, PROBE, dependency_wheels, mlfleet_wheel, node_target
from mlfleet.core.fleet.transport.ssh import SshAgentTransport

MIN_PYTHON = (3, 11)
# What a node path or interpreter may be made of. Why no spaces or shell characters: pip writes a /bin/sh
# launcher for a venv whose path holds a space, double-quoting the path, so `$(...)` in a prefix ran on
# the node; a leading '-' reads as an option to mkdir or python.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._~+/-]+$")


def check_node_path(what: str, value: str, example: str) -> None:
    """Refuse a --prefix or --python that is not a plain path, in one sentence, before anything connects."""
    if not _SAFE_PATH.match(value) or value.startswith("-"):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise UsageError(f"{what} {shown!r} is not a plain path: use letters, digits and . _ ~ + - / only, "
                         f"not starting with '-' (no spaces or shell characters), e.g. {example}")


async def bootstrap(transport: SshAgentTransport, wheel_cache: Path, prefix: str = ".mlfleet",
                    python: str = "python3") -> dict[str, str]:
    """Install the agent on the node; return the new agent command (the running agent is not touched)."""
    host = transport.host
    conn = await transport.open_connection()
    try:
        await _check_python(conn, host, python)
        target = node_target(await _run(conn, host, f"{shlex.quote(python)} -c {shlex.quote(PROBE)}"), host)
        q_prefix, wheels_dir = shlex.quote(prefix), f"{prefix}/wheels"
        with tempfile.TemporaryDirectory(prefix="mlfleet-wheels-") as tmp:
            own = Path(tmp) / "mlfleet"
            deps = Path(tmp) / "deps"
            own.mkdir()
            deps.mkdir()
            wheel = await asyncio.to_thread(mlfleet_wheel, own)
            dependencies = await asyncio.to_thread(dependency_wheels, wheel_cache, target, deps, host)
            # A clean folder each time: what pip finds there is exactly what was resolved for this node.
            await _run(conn, host, f"rm -rf {shlex.quote(wheels_dir)} && mkdir -p {shlex.quote(wheels_dir)}")
            async with conn.start_sftp_client() as sftp:
                for local in (wheel, *dependencies):
                    await sftp.put(str(local), f"{wheels_dir}/{local.name}")
        venv = f"{prefix}/venv"
        pip = (f"{shlex.quote(venv)}/bin/python -m pip install -q --disable-pip-version-check --no-index "
               f"--find-links {shlex.quote(wheels_dir)}")
        await _run(conn, host, f"mkdir -p {q_prefix} && {shlex.quote(python)} -m venv {shlex.quote(venv)}", timeout=300)
        await _run(conn, host, f"{pip} {' '.join(shlex.quote(r) for r in AGENT_REQUIREMENTS)}", timeout=900)
        # By name and version from the folder, never by path: pip reads '; ' in a path as a marker.
        exact = f"mlfleet=={wheel.name.split('-')[1]}"
        await _run(conn, host, f"{pip} --no-deps --force-reinstall {shlex.quote(exact)}", timeout=300)
        command = shlex.quote(f"{venv}/bin/mlfleet")  # agent_command is split like a shell line: a prefix may hold spaces
        version = (await _run(conn, host, f"{command} --version")).strip()
    finally:
        conn.close()
    return {"agent_command": command, "version": version, "wheel": wheel.name, "node": target.describe(),
            "dependencies": ", ".join(sorted(p.name for p in dependencies))}


async def _check_python(conn: asyncssh.SSHClientConnection, host: str, python: str) -> None:
    out = await _run(conn, host, f"{shlex.quote(python)} -c 'import sys; print(*sys.version_info[:2])'")
    try:
        version = tuple(int(x) for x in out.split()[:2])
    except ValueError:
        raise UnavailableError(f"{host}: could not read the Python version ({out.strip()[:100]})") from None
    if version < MIN_PYTHON:
        raise UnavailableError(f"{host} has Python {'.'.join(map(str, version))}; the agent needs "
                               f"{'.'.join(map(str, MIN_PYTHON))} or newer (pass --python with a newer one)")


async def _run(conn: asyncssh.SSHClientConnection, host: str, command: str, timeout: float = 60) -> str:
    try:
        result = await asyncio.wait_for(conn.run(command, check=False), timeout)
    except asyncio.TimeoutError:
        raise UnavailableError(f"{host}: '{command[:80]}' did not finish within {timeout:.0f} s") from None
    if result.exit_status != 0:
        err = " ".join(str(result.stderr or result.stdout or "").split())[-300:]
        raise UnavailableError(f"{host}: '{command[:80]}' failed (exit {result.exit_status}): {err}")
    return str(result.stdout or "")
