"""``mlfleet agent stop --state-dir DIR``: stop the agent of a state dir; its runs go on.

The agent is found by the lock it holds in its state dir, not by a name or
a socket: the pid in ``agent.lock`` counts only while its flock is really
held, so a stale file never gets a stranger's process signalled. SIGTERM
is the agent's own clean stop (runs live in their own sessions and are
re-attached by the next agent). It works whatever version the running
agent is, which is what an upgrade (``hosts bootstrap`` again) needs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mlfleet.core.controller.client import lock_held
from mlfleet.core.base.errors import UnavailableError

STOP_TIMEOUT_S = 30.0


def stop_agent(state_dir: Path, timeout: float = STOP_TIMEOUT_S) -> dict[str, object]:
    """Stop the agent that holds ``state_dir``'s lock and wait until it let go; say whether one ran."""
    lock = state_dir / "agent.lock"
    if not lock_held(lock):
        return {"state_dir": str(state_dir), "was_running": False, "stopped": True, "pid": None}
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    if pid <= 0:
        raise UnavailableError(f"an agent holds {lock} but its pid is not in it; stop it by hand")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while lock_held(lock):
        if time.monotonic() >= deadline:
            raise UnavailableError(f"the agent (pid {pid}) of {state_dir} did not stop within {timeout:.0f} s "
                                   f"after SIGTERM; see its log in {state_dir}")
        time.sleep(0.05)
    return {"state_dir": str(state_dir), "was_running": True, "stopped": True, "pid": pid}
