"""``mlfleet hosts stop-agent|start-agent NAME``: a host's agent stopped and started on purpose.

The node side (``mlfleet agent ...``) is in core/cli/agent_commands.py.

``hosts stop-agent`` asks the controller to stop the agent of a host (over
SSH it runs ``agent stop`` on the node) and to hold its link, so that the
agent is not started again by the next reconnect; ``hosts start-agent``
lets go, and the link starts it as usual. Runs in flight keep running on
the node, unobserved, so the stop is refused while the host has any.
"""

from __future__ import annotations

import argparse
from typing import Any

from mlfleet.core.base.errors import EXIT_OK
from mlfleet.core.cli.output import Add, client_command, say


async def cmd_hosts_stop_agent(client: Any, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_stop_agent", name=args.name, request_timeout=120)
    text = (f"{args.name}: agent stopped (pid {answer['pid']}); 'mlfleet hosts start-agent {args.name}' starts it again"
            if answer["was_running"] else f"{args.name}: no agent was running; the controller will not start one "
                                          f"until 'mlfleet hosts start-agent {args.name}'")
    say(args, answer, text)
    return EXIT_OK


async def cmd_hosts_start_agent(client: Any, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_start_agent", name=args.name, request_timeout=60)
    say(args, answer, f"{args.name}: {answer['state']}" + (f" ({answer['message']})" if answer["message"] else ""))
    return EXIT_OK


def register_hosts(hosts: Any, add: Add) -> None:
    """Add ``stop-agent`` and ``start-agent`` to the ``hosts`` group (core/fleet/commands.py makes it)."""
    add(hosts, "stop-agent", client_command(cmd_hosts_stop_agent),
        "stop a host's agent and keep it stopped (runs must have ended)").add_argument("name")
    add(hosts, "start-agent", client_command(cmd_hosts_start_agent),
        "let the controller start a stopped host's agent again").add_argument("name")
