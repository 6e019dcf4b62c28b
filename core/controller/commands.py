"""``mlfleet controller start|stop|status|run|serve|trust``: the controller's life, by hand.

Any command that needs the controller starts it (core/controller/client.py);
these say whether one runs, start it ahead of time, stop it (stopped means
its lock is free: the DuckDB file is closed and checkpointed) or run it in
the foreground, which is what a detached start runs. ``serve --team GROUP``
runs it in the foreground for a team (core/controller/team_socket.py), and
``trust`` records a shared controller's head key (core/controller/remote.py).
With a shared controller set, ``status`` and ``stop`` talk to it over SSH and
``start``, ``run`` and ``serve`` refuse: it is started on its head node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base import logfile
from mlfleet.core.base.controller_url import parse_url
from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, MlfleetError, SpecError, UnavailableError, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import use_private_umask
from mlfleet.core.base.settings import load_settings
from mlfleet.core.base.words import plural
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, confirm_key, say
from mlfleet.core.controller.client import connect, controller_pid, lock_held, try_connect
from mlfleet.core.controller.target import STARTED_ON_HEAD, configured_target
from mlfleet.core.controller.team_socket import DEFAULT_TEAM_SOCKET, TeamSocket, team_socket


def cmd_controller(args: argparse.Namespace) -> int:
    home = Home.from_env()
    if args.action == "trust":
        return asyncio.run(_trust(home, args))
    if args.url is not None:
        raise UsageError(f"controller {args.action} takes no URL (only 'controller trust URL' does); "
                         "name a shared controller with --controller URL before the command")
    try:
        target = configured_target(home)
    except SpecError:
        if args.action not in ("status", "stop"):
            raise
        target = None  # a broken config.yaml must not keep this machine's controller from being seen or stopped
    if target is not None and args.action in ("start", "run", "serve"):
        raise UsageError(STARTED_ON_HEAD)
    if args.action != "serve" and (args.team or args.socket):
        raise UsageError("--team and --socket are for 'mlfleet controller serve --team GROUP [--socket PATH]'")
    if args.action == "run":
        return _controller_foreground(home)
    if args.action == "serve":
        if not args.team:
            raise UsageError("controller serve needs --team GROUP: the OS group whose members may use it")
        return _controller_foreground(home, team_socket(args.team, Path(args.socket) if args.socket else None))
    if target is not None:
        return asyncio.run(_remote_action(home, args))
    return asyncio.run(_controller_action(home, args))


def _controller_foreground(home: Home, team: TeamSocket | None = None) -> int:
    from mlfleet.core.controller.loop import Controller

    use_private_umask()  # first: the DuckDB file, its WAL, snapshots and logs are born 0600
    try:
        settings = load_settings(home.config_file)
        logfile.install(home.log_dir / "controller.log", int(settings.controller.log_max_size),
                        settings.controller.log_backups)
        asyncio.run(Controller(home, settings, team=team).run())
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
            hello = client.hello
        say(args, {**status, "running": True, "hello": hello}, _status_text(status, hello) + _policy_words(status))
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


async def _remote_action(home: Home, args: argparse.Namespace) -> int:
    """``controller status|stop`` of a shared controller, over SSH (it is never started from here)."""
    async with await connect(home, autostart=False) as client:
        if args.action == "status":
            status = await client.call("status")
            say(args, {**status, "running": True, "hello": client.hello, "url": client.remote and client.remote.url},
                f"{client.banner}\n{_status_text(status, client.hello)}")
            return EXIT_OK
        answer = await client.call("shutdown", stop_local_agent=False)
        with contextlib.suppress(asyncio.TimeoutError):  # it closes its clients once it stopped serving
            await asyncio.wait_for(client.peer.wait_closed(), 30)
    say(args, {"stopped": True, **answer}, f"the controller at {client.remote.url if client.remote else '?'} "
                                           "is stopping")
    return EXIT_OK


def _status_text(status: dict[str, Any], hello: dict[str, Any]) -> str:
    team = (f"; team {status['team']} on {status['team_socket']} ({status.get('team_connections', 0)} connected)"
            if status.get("team") else "")
    you = f"; you: {hello['user']} ({hello.get('role') or 'no role'})" if hello.get("user") else ""
    return (f"controller {status['pid']} running (mlfleet {status['version']}); db {status['db']}; "
            f"{status['pending']} pending, {status['active']} active; {_hosts_states(status['hosts'])}; "
            f"{status['connections']} of {status['max_connections']} connections{team}{you}; "
            f"log {status['log']} (rotated at {render.format_size(status['log_max_size'])}, "
            f"{status['log_backups']} kept)")


async def _trust(home: Home, args: argparse.Namespace) -> int:
    """Show the shared controller's head key and record it once the user confirms (like ``hosts trust``)."""
    from mlfleet.core.controller import remote  # an SSH client: imported only where one is dialled

    if args.url is not None:
        try:
            target = parse_url(args.url)
        except ValueError as exc:
            raise UsageError(f"controller trust: {exc}") from None
    else:
        target = configured_target(home)
        if target is None:
            raise UsageError("controller trust needs the shared controller's URL (controller trust ssh://head), "
                             "or --controller, MLFLEET_CONTROLLER or controller.url")
    key = await remote.presented_key(target)
    known = remote.recorded(home, target)
    where = f"the controller's head {target.host}:{target.port}"
    facts = {"url": target.url, "address": target.host, "port": target.port, "fingerprint": key.fingerprint,
             "key_type": key.line.split()[0], "known": known}
    if key.fingerprint in known:
        say(args, {**facts, "trusted": True, "recorded": False},
            f"{where} is already trusted: {facts['key_type']} {key.fingerprint}")
        return EXIT_OK
    if not confirm_key(args, where, facts["key_type"], key.fingerprint, known):
        return EXIT_FAILED
    remote.record(home, target, key)
    say(args, {**facts, "trusted": True, "recorded": True}, f"recorded {key.fingerprint} for {where}")
    return EXIT_OK


def _hosts_states(hosts: dict[str, str]) -> str:
    """``2 hosts (local up, gpu1 unreachable)``: the status's {name: state}, in words."""
    return plural(len(hosts), "host") + (f" ({', '.join(f'{n} {s}' for n, s in hosts.items())})" if hosts else "")


def register(sub: Any, add: Add) -> None:
    """Add the ``controller`` command to the top-level subparsers."""
    p = add(sub, "controller", cmd_controller, "start, stop or inspect the controller")
    p.add_argument("action", choices=["start", "stop", "status", "run", "serve", "trust"],
                   help="run = in the foreground; serve --team GROUP = in the foreground, for a team; "
                        "trust [URL] = record a shared controller's host key")
    p.add_argument("url", nargs="?", help="controller trust: the shared controller (ssh://[user@]head[:port][/socket])")
    p.add_argument("--team", metavar="GROUP", help="serve: the OS group whose members may use this controller")
    p.add_argument("--socket", metavar="PATH",
                   help=f"serve: the team's socket (default {DEFAULT_TEAM_SOCKET}; its folder is made 0750, group GROUP)")
    p.add_argument("--yes", action="store_true", help="trust: record the key without asking")


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
