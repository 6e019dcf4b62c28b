"""``mlfleet hosts bootstrap NAME``: install mlfleet's agent on a host that only has Python.

A wheel is built here from the source checkout, uploaded by SFTP, and
installed into a venv on the node (``PREFIX/venv``, PREFIX relative to the
remote home unless absolute) with only the agent's own dependencies; the
host's ``agent_command`` then points at it. Nothing is installed system-wide.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncssh

from mlfleet.core.errors import UnavailableError, UsageError
from mlfleet.core.transport.ssh import SshAgentTransport

# What ``mlfleet agent serve|connect`` imports: the node needs nothing else.
AGENT_REQUIREMENTS = ["msgspec>=0.18", "psutil>=5.9", "nvidia-ml-py>=12.535", "pyyaml>=6.0"]
MIN_PYTHON = (3, 11)


def source_root() -> Path:
    """The checkout mlfleet runs from (an editable install), where a wheel can be built."""
    import mlfleet.core

    root = Path(mlfleet.core.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise UsageError("bootstrap builds a wheel from the mlfleet source checkout, and this mlfleet was not "
                         "installed from one; run it from a clone (pip install -e .)")
    return root


def build_wheel(out_dir: Path) -> Path:
    root = source_root()
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                             "-w", str(out_dir), str(root)], capture_output=True, text=True, timeout=600)
    wheels = sorted(out_dir.glob("mlfleet-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = " ".join((result.stderr or result.stdout).split())[-300:]
        raise UnavailableError(f"building the mlfleet wheel failed: {tail}")
    return wheels[-1]


async def bootstrap(transport: SshAgentTransport, prefix: str = ".mlfleet", python: str = "python3") -> dict[str, str]:
    """Install the agent on the node; return the new agent command."""
    conn = await transport.open_connection()
    try:
        await _check_python(conn, transport.host, python)
        with tempfile.TemporaryDirectory(prefix="mlfleet-wheel-") as tmp:
            wheel = await asyncio.to_thread(build_wheel, Path(tmp))
            q_prefix = shlex.quote(prefix)
            await _run(conn, transport.host, f"mkdir -p {q_prefix}/wheels")
            remote_wheel = f"{prefix}/wheels/{wheel.name}"
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(wheel), remote_wheel)
        venv = f"{prefix}/venv"
        pip = f"{shlex.quote(venv)}/bin/python -m pip install -q --disable-pip-version-check"
        await _run(conn, transport.host, f"{shlex.quote(python)} -m venv {shlex.quote(venv)}", timeout=300)
        await _run(conn, transport.host, f"{pip} {' '.join(shlex.quote(r) for r in AGENT_REQUIREMENTS)}", timeout=900)
        await _run(conn, transport.host, f"{pip} --no-deps --force-reinstall {shlex.quote(remote_wheel)}", timeout=300)
        command = f"{venv}/bin/mlfleet"
        version = (await _run(conn, transport.host, f"{shlex.quote(command)} --version")).strip()
    finally:
        conn.close()
    return {"agent_command": command, "version": version, "wheel": wheel.name}


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
