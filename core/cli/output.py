"""What every capability's CLI commands share: how they print, reach the controller and read numbers.

With :mod:`render` (tables, times, sizes) and :mod:`parser` (argparse that
speaks in one sentence) this is the CLI toolkit a capability's
``commands.py`` may import; ``core/cli/main.py`` only assembles the parts.
A command prints data as text or, with ``--json``, as one JSON document on
stdout (:func:`print_json`, :func:`say`); a command that needs the
controller is an async function wrapped by :func:`client_command`, which
starts the controller on demand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

from mlfleet.core.base import bounds
from mlfleet.core.base.output_path import check_output
from mlfleet.core.base.paths import Home
from mlfleet.core.controller.client import ControllerClient, connect

Command = Callable[[argparse.Namespace], int]  # what argparse's ``func`` default holds: run, return the exit code
ClientCommand = Callable[[ControllerClient, argparse.Namespace], Awaitable[int]]
Add = Callable[..., argparse.ArgumentParser]  # core/cli/main.py's add(parent, name, fn, help_text, json_flag=True)


def print_json(data: Any) -> None:
    """``data`` as one indented JSON document on stdout (values JSON lacks, such as datetimes, as text)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    """The outcome of an action: ``data`` as JSON with ``--json``, else the sentence ``text``."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        print(text)


def client_command(fn: ClientCommand) -> Command:
    """Wrap an async command that needs a controller (started on demand)."""

    def run(args: argparse.Namespace) -> int:
        async def go() -> int:
            async with await connect(Home.from_env()) as client:
                return await fn(client, args)

        return asyncio.run(go())

    return run


def checked_output(fn: ClientCommand) -> Command:
    """Like client_command, but refuse ``--output`` (core/base/output_path.py) before any controller is started."""

    def run(args: argparse.Namespace) -> int:
        if args.output not in (None, "-"):
            check_output(Path(args.output).expanduser().absolute(), Home.from_env().own_folders(), args.force)
        return client_command(fn)(args)

    return run


def positive(text: str) -> int:
    """A list's --limit: 1 to what one answer may carry (the controller checks the same bound)."""
    return bounded(1, bounds.MAX_LIST)(text)


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``, or one sentence saying so."""

    def parse(text: str) -> int:
        try:
            if not text.isascii():  # int() also reads '٣٣' (Arabic-Indic 33) as 33
                raise ValueError(text)
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be {high} or less, got {value}")
        return value

    return parse


def confirm_key(args: argparse.Namespace, where: str, key_type: str, fingerprint: str, known: list[str]) -> bool:
    """Show a host key and ask to trust it (``--yes`` skips the question); whether to record it.

    ``hosts trust`` and ``controller trust`` ask alike: without a terminal and
    without ``--yes`` it is the user's mistake, one sentence.
    """
    from mlfleet.core.base.errors import UsageError

    if not args.json:
        print(f"{where} presents {key_type} key {fingerprint}")
        if known:
            print(f"mlfleet had recorded {', '.join(known)} for it: the key has CHANGED")
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"confirm the key of {where} with --yes when there is no terminal to ask")
    try:
        answer = input("Trust this key? [y/N] ").strip().lower()
    except EOFError:
        answer = ""
    if answer not in ("y", "yes"):
        print("nothing recorded")
        return False
    return True
