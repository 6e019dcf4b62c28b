"""``mlfleet controller start|stop|status|run``: the controller's life, by hand.

Any command that needs the controller starts it (core/controller/client.py);
these say whether one runs, start it ahead of time, stop it (stopped means
its lock is free: the DuckDB file is closed and checkpointed) or run it in
the foreground, which is what a detached start runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from mlfleet.core.base import logfile
from mlfleet.core.base.errors import EXIT_OK, EXIT_UNAVAILABLE, MlfleetError, UnavailableError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import use_private_umask
from mlfleet.core.base.settings import load_settings
from mlfleet.core.base.words import plural
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, say
from mlfleet.core.controller.client import connect, controller_pid, lock_held, try_connect


def cmd_controller(args: argparse.Namespace) -> int:
    home = Home.from_env()
    if args.action == "run":
        return _controller_foreground(home)
    return asyncio.run(_controller_action(home, args))


def _controller_foreground(home: Home) -> int:
    from mlfleet.core.controller.loop import Controller

    use_private_umask()  # first: the DuckDB file, its WAL, snapshots and logs are born 0600
    try:
        settings = load_settings(home.config_file)
        logfile.install(home.log_dir / "controller.log", int(settings.controller.log_max_size),
                        settings.controller.log_backups)
        asyncio.run(Controller(home, settings).run())
    except MlfleetError as exc:
        print(f"mlfleet: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return EXIT_OK


async def _controller_action(home: Home, args: argparse.Namespace) -> int:
    client = await try_connect(home)
    if client is None and controller_pid(home) is not None:
        client = await connect(home, autostart=False)  # one that is busy or starting: waited for, or said why
    if args.action == "status":
        if client is None:
            say(args, {"running": False}, f"no controller is running for {home.data_dir}")
            return EXIT_UNAVAILABLE
        async with client:
            status = await client.call("status")
        status["running"] = True
        say(args, status, f"controller {status['pid']} running (mlfleet {status['version']}); db {status['db']}; "
                          f"{status['pending']} pending, {status['active']} active; {_hosts_states(status['hosts'])}; "
                          f"{status['connections']} of {status['max_connections']} connections; "
                          f"log {status['log']} (rotated at {render.format_size(status['log_max_size'])}, "
                          f"{status['log_backups']} kept)" + _policy_words(status))
        return EXIT_OK
    if args.action == "start":
        if client is not None:
            async with client:
                status = await client.call("status")
            say(args, {"started": False, "pid": status["pid"]}, f"controller already running (pid {status['pid']})")
            return EXIT_OK
        async with await connect(home) as client:
            status = await client.call("status")
        say(args, {"started": True, "pid": status["pid"]}, f"controller started (pid {status['pid']})")
        return EXIT_OK
    # stop
    if client is None:
        say(args, {"stopped": False}, "no controller is running")
        return EXIT_OK
    async with client:
        answer = await client.call("shutdown")
    for _ in range(300):  # stopped means its lock is free: the file is closed and checkpointed
        await asyncio.sleep(0.1)
        if not lock_held(home.controller_lock):
            break
    else:
        raise UnavailableError("the controller did not stop within 30 s")
    say(args, {"stopped": True, **answer}, "controller stopped")
    return EXIT_OK


def _hosts_states(hosts: dict[str, str]) -> str:
    """``2 hosts (local up, gpu1 unreachable)``: the status's {name: state}, in words."""
    return plural(len(hosts), "host") + (f" ({', '.join(f'{n} {s}' for n, s in hosts.items())})" if hosts else "")


def register(sub: Any, add: Add) -> None:
    """Add the ``controller`` command to the top-level subparsers."""
    p = add(sub, "controller", cmd_controller, "start, stop or inspect the controller")
    p.add_argument("action", choices=["start", "stop", "status", "run"], help="run = in the foreground")


def _policy_words(status: dict[str, Any]) -> str:
    """``; policy /etc/.../policy.yaml in force`` (or absent, or the mistake of a file that turned bad)."""
    if "policy_path" not in status:  # an older controller
        return ""
    words = f"; policy {status['policy_path']} " + ("in force" if status.get("policy") else "absent")
    if status.get("team"):
        words += f"; team {status['team']}"
    if status.get("policy_error"):
        words += f"; policy error (the last good policy stays in force): {status['policy_error']}"
    return words
