"""``mlfleet agent connect``: what a controller runs on a node over SSH.

It makes sure the agent daemon of STATE_DIR runs (starting it detached, in
its own session and with its own log, so it survives this SSH session),
then copies bytes between this process's stdin/stdout and the agent's Unix
socket until either side closes. The agent itself never listens on a
network port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.base.spawn import own_python

_START_TIMEOUT_S = 20.0
_CHUNK = 1 << 16


def ensure_agent(state_dir: Path, socket_path: Path, name: str | None, simulate_gpus: str | None) -> None:
    """Start the agent if nothing answers on its socket."""
    if _answers(socket_path):
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = own_python("agent", "serve", "--state-dir", str(state_dir),
                      "--socket", str(socket_path), "--log-file", str(state_dir / "agent.log"))  # rotated by size
    if name:
        argv += ["--name", name]
    if simulate_gpus:
        argv += ["--simulate-gpus", simulate_gpus]
    with open(state_dir / "agent.log", "ab") as log:
        subprocess.Popen(argv, cwd="/", start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         close_fds=True)
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if _answers(socket_path):
            return
        time.sleep(0.1)
    raise UnavailableError(f"the agent did not start within {_START_TIMEOUT_S:.0f} s; see {state_dir / 'agent.log'}")


def _answers(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


def bridge(socket_path: Path) -> int:
    """Copy stdin -> socket and socket -> stdout until one side closes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    # The descriptors themselves: with PYTHONUNBUFFERED set (a node's login profile may) sys.stdout.buffer is
    # a bare FileIO with no .raw, and nothing here wants Python's buffering anyway.
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    done = threading.Event()

    def upstream() -> None:
        try:
            while chunk := os.read(stdin_fd, _CHUNK):
                sock.sendall(chunk)
        except OSError:
            pass
        finally:
            done.set()

    def downstream() -> None:
        try:
            while chunk := sock.recv(_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(stdout_fd, view):]
        except OSError:
            pass
        finally:
            done.set()

    for target in (upstream, downstream):
        threading.Thread(target=target, daemon=True).start()
    done.wait()
    sock.close()
    return 0
