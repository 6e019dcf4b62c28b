"""``mlfleet agent ...``: the node daemon's own commands, run in this process.

``agent serve`` is the node daemon in the foreground, ``agent connect``
what the controller runs over SSH (start the agent if needed, then join
stdin/stdout to its socket), ``agent install-service`` a systemd user unit
for it, and ``agent stop`` stops the agent of a state dir on this machine.

They live with the CLI, not in a capability: they start agents/ code in
this process, and only the CLI (above agents/) may import it.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from mlfleet.core.base import logfile
from mlfleet.core.base.errors import EXIT_OK
from mlfleet.core.base.private import private_agent_state, private_dir, trusted_socket, use_private_umask
from mlfleet.core.cli.output import Add, bounded, say


def cmd_agent_serve(args: argparse.Namespace) -> int:
    from mlfleet.agents.daemon import AgentDaemon

    use_private_umask()  # first: run folders, logs and metric files are born 0600 (jobs get the user's umask back)
    log_file = Path(args.log_file).expanduser().absolute() if args.log_file else None
    if log_file is not None:
        logfile.take_over(log_file)
    logfile.install(log_file, args.log_max_size, args.log_backups)
    state_dir = Path(args.state_dir).expanduser().absolute()
    socket_path = Path(args.socket).expanduser().absolute() if args.socket else state_dir / "agent.sock"
    private_agent_state(state_dir, socket_path)
    gpus = None
    if args.simulate_gpus:
        from mlfleet.agents.simulated import SimulatedGpuSource

        gpus = SimulatedGpuSource(Path(args.simulate_gpus).expanduser().absolute())
    daemon = AgentDaemon(state_dir, socket_path, host_name=args.name, sample_interval=args.sample_interval,
                         idle_exit=args.idle_exit, gpu_source=gpus)
    asyncio.run(daemon.serve(max_connections=args.max_connections))
    return EXIT_OK


def cmd_agent_connect(args: argparse.Namespace) -> int:
    from mlfleet.agents.bridge import bridge, ensure_agent

    use_private_umask()
    state_dir = Path(args.state_dir).expanduser().absolute()
    socket_path = state_dir / "agent.sock"
    private_dir(state_dir)
    trusted_socket(socket_path)  # a socket that is not ours is refused before anything is sent to it
    ensure_agent(state_dir, socket_path, args.name, args.simulate_gpus)
    return bridge(socket_path)


def cmd_agent_install_service(args: argparse.Namespace) -> int:
    from mlfleet.agents.service import UNIT_NAME, install

    unit = install(Path(args.state_dir).expanduser().absolute(), args.name, args.simulate_gpus)
    say(args, {"unit": str(unit)}, f"wrote {unit}\nstart it with: systemctl --user daemon-reload && "
                                   f"systemctl --user enable --now {UNIT_NAME}\n(and 'loginctl enable-linger' "
                                   "to keep it running while you are logged out)")
    return EXIT_OK


def cmd_agent_stop(args: argparse.Namespace) -> int:
    from mlfleet.core.fleet.agentstop import stop_agent

    state_dir = Path(args.state_dir).expanduser().absolute()
    answer = stop_agent(state_dir)
    say(args, answer, f"agent (pid {answer['pid']}) of {state_dir} stopped; its runs go on" if answer["was_running"]
        else f"no agent was running with state dir {state_dir}")
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``agent`` command group to the top-level subparsers."""
    agent = sub.add_parser("agent", help="the node daemon").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(agent, "serve", cmd_agent_serve, "run the agent in the foreground", json_flag=False)
    p.add_argument("--state-dir", required=True, help="where the agent keeps its journal, logs and metrics")
    p.add_argument("--socket", help="Unix socket path (default STATE_DIR/agent.sock)")
    p.add_argument("--name", help="host name to report (default: the machine's)")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between telemetry samples")
    p.add_argument("--simulate-gpus", metavar="FILE", help="simulated GPUs described in FILE (re-read each sample)")
    p.add_argument("--max-connections", type=bounded(4, 65536), default=64,
                   help="connections held at once; a newcomer over it is told the agent is busy (default 64)")
    p.add_argument("--log-file", help="write the log (and stdout/stderr) to FILE, rotated by size")
    p.add_argument("--log-max-size", type=bounded(64 * 1024, 1024**4), default=logfile.DEFAULT_MAX_SIZE,
                   metavar="BYTES", help=f"rotate the log file at this size (default {logfile.DEFAULT_MAX_SIZE})")
    p.add_argument("--log-backups", type=bounded(0, 100), default=logfile.DEFAULT_BACKUPS,
                   help=f"rotated log files kept (default {logfile.DEFAULT_BACKUPS})")
    p = add(agent, "install-service", cmd_agent_install_service, "write a systemd user unit for the agent")
    p.add_argument("--state-dir", default="~/.mlfleet/agent")
    p.add_argument("--name")
    p.add_argument("--simulate-gpus", metavar="FILE")
    p = add(agent, "connect", cmd_agent_connect, "start the agent if needed and join stdin/stdout to it "
            "(what the controller runs over SSH)", json_flag=False)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name")
    p.add_argument("--simulate-gpus", metavar="FILE")

    p = add(agent, "stop", cmd_agent_stop, "stop the agent of a state dir on this machine (its runs go on)")
    p.add_argument("--state-dir", required=True)
