"""``mlfleet hosts stop-agent|start-agent NAME`` and ``mlfleet agent stop``: an agent's life, by hand.

``hosts stop-agent`` asks the controller to stop the agent of a host (over
SSH it runs ``agent stop`` on the node) and to hold its link, so that the
agent is not started again by the next reconnect; ``hosts start-agent``
lets go, and the link starts it as usual. Runs in flight keep running on
the node, unobserved, so the stop is refused while the host has any.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from mlfleet.core.base.errors import EXIT_OK


async def cmd_hosts_stop_agent(client: Any, args: argparse.Namespace) -> int:
    from mlfleet.core.cli.main import _say

    answer = await client.call("hosts_stop_agent", name=args.name, request_timeout=120)
    text = (f"{args.name}: agent stopped (pid {answer['pid']}); 'mlfleet hosts start-agent {args.name}' starts it again"
            if answer["was_running"] else f"{args.name}: no agent was running; the controller will not start one "
                                          f"until 'mlfleet hosts start-agent {args.name}'")
    _say(args, answer, text)
    return EXIT_OK


async def cmd_hosts_start_agent(client: Any, args: argparse.Namespace) -> int:
    from mlfleet.core.cli.main import _say

    answer = await client.call("hosts_start_agent", name=args.name, request_timeout=60)
    _say(args, answer, f"{args.name}: {answer['state']}" + (f" ({answer['message']})" if answer["message"] else ""))
    return EXIT_OK


def cmd_agent_stop(args: argparse.Namespace) -> int:
    from mlfleet.core.fleet.agentstop import stop_agent
    from mlfleet.core.cli.main import _say

    state_dir = Path(args.state_dir).expanduser().absolute()
    answer = stop_agent(state_dir)
    _say(args, answer, f"agent (pid {answer['pid']}) of {state_dir} stopped; its runs go on" if answer["was_running"]
         else f"no agent was running with state dir {state_dir}")
    return EXIT_OK


def register_hosts(hosts: Any, add: Callable[..., argparse.ArgumentParser], client_command: Callable) -> None:
    add(hosts, "stop-agent", client_command(cmd_hosts_stop_agent),
        "stop a host's agent and keep it stopped (runs must have ended)").add_argument("name")
    add(hosts, "start-agent", client_command(cmd_hosts_start_agent),
        "let the controller start a stopped host's agent again").add_argument("name")


def register_agent(agent: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add(agent, "stop", cmd_agent_stop, "stop the agent of a state dir on this machine (its runs go on)")
    p.add_argument("--state-dir", required=True)
