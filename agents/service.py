"""``mlfleet agent install-service``: a systemd user unit that keeps the agent up.

``KillMode=process``: stopping or restarting the unit stops the agent only.
Runs live in their own sessions and must survive an agent restart, which
systemd's default (kill the whole control group) would not allow.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from mlfleet.core.base.spawn import own_python

UNIT_NAME = "mlfleet-agent.service"


def unit_text(state_dir: Path, name: str | None, simulate_gpus: str | None) -> str:
    argv = own_python("agent", "serve", "--state-dir", str(state_dir), "--socket", str(state_dir / "agent.sock"))
    if name:
        argv += ["--name", name]
    if simulate_gpus:
        argv += ["--simulate-gpus", simulate_gpus]
    return "\n".join([
        "[Unit]",
        "Description=mlfleet agent (telemetry and job supervision for this node)",
        "After=network.target",
        "",
        "[Service]",
        f"ExecStart={' '.join(shlex.quote(a) for a in argv)}",
        "Restart=on-failure",
        "RestartSec=3",
        "KillMode=process",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def install(state_dir: Path, name: str | None, simulate_gpus: str | None) -> Path:
    """Write the unit into the user's systemd folder; return its path."""
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    unit = config / "systemd" / "user" / UNIT_NAME
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text(state_dir, name, simulate_gpus))
    return unit
