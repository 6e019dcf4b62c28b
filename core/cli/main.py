"""The batch CLI: the parser assembled from each capability's commands, then one sentence per error.

Each capability folder has a ``commands.py`` (``agent_commands.py`` too, in
core/fleet; the node's own ``agent`` commands are in this folder) whose ``register(sub, add)`` adds its commands to the
top-level subparsers, with the CLI toolkit of this folder: output.py,
render.py, parser.py. This module only assembles them, runs the command
chosen and turns an error into one sentence on stderr and an exit code.

Every command that prints data takes ``--json``. Exit codes (docs/cli.md):
0 ok, 1 the job or action failed, 2 bad input, 3 drift found, 4 not found,
5 controller or host unavailable. A user's mistake is one sentence on
stderr, never a traceback.

Nothing in core/ imports tui/: the ``mlfleet`` entry point above both
(package/main.py) hands in how to open the TUI as ``tui``, which becomes the
``tui`` command and what runs with no command. Used on its own, without
one, this CLI has no ``tui`` command and asks for a command.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mlfleet import __version__
from mlfleet.core.audit import commands as audit_commands
from mlfleet.core.base import controller_url
from mlfleet.core.base.errors import EXIT_OK, EXIT_USAGE, MlfleetError, UsageError
from mlfleet.core.cli import parser as cli_parser
from mlfleet.core.cli.output import Command, print_json
from mlfleet.core.controller import commands as controller_commands
from mlfleet.core.deploy import commands as deploy_commands
from mlfleet.core.drift import commands as drift_commands
from mlfleet.core.cli import agent_commands
from mlfleet.core.fleet import commands as fleet_commands
from mlfleet.core.jobs import commands as jobs_commands
from mlfleet.core.pipelines import commands as pipelines_commands
from mlfleet.core.registry import commands as registry_commands
from mlfleet.core.store import commands as store_commands
from mlfleet.core.sweeps import commands as sweeps_commands
from mlfleet.core.team import policy_commands, secret_commands
from mlfleet.core.tracking import commands as tracking_commands

# Each capability's commands, in the order ``mlfleet --help`` lists them.
REGISTERS = (jobs_commands.register,  # submit, jobs
             sweeps_commands.register,  # sweeps
             deploy_commands.register,  # deploy
             pipelines_commands.register,  # pipeline
             fleet_commands.register,  # hosts
             tracking_commands.register,  # runs
             registry_commands.register,  # models
             store_commands.register,  # db
             audit_commands.register,  # audit
             controller_commands.register,  # controller
             agent_commands.register,  # agent
             drift_commands.register,  # drift
             secret_commands.register,  # secrets
             policy_commands.register)  # policy


def build_parser(tui: Command | None = None) -> argparse.ArgumentParser:
    """Every command of every capability; with ``tui``, also the ``tui`` command it runs."""
    description = "A terminal control center for GPU fleets." + (" With no command, opens the TUI." if tui else "")
    parser = cli_parser.CommandParser(prog="mlfleet", description=description)
    parser.add_argument("--version", action="version", version=f"mlfleet {__version__}")
    parser.add_argument("--controller", metavar="URL", dest="controller_url",
                        help=f"a shared controller, ssh://[user@]host[:port][/socket] (sets {controller_url.ENV}; "
                             "before it: that variable, then controller.url in config.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(parent: Any, name: str, fn: Command, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        p.add_argument("--json", action="store_true",  # every command takes it (tests/test_cli_polish.py)
                       help="print JSON" if json_flag else "print an error as JSON on stdout (there is no data)")
        return p

    for register in REGISTERS:
        register(sub, add)
    if tui is not None:
        add(sub, "tui", tui, "open the TUI (the default with no command)", json_flag=False)
    return parser


def _no_command(args: argparse.Namespace) -> int:
    raise UsageError("give a command; 'mlfleet --help' lists them")


def main(argv: list[str] | None = None, tui: Command | None = None) -> int:
    """Run one command line; ``tui`` is what runs for ``tui`` and for no command (see the module's doc)."""
    parser = build_parser(tui)
    for position, arg in enumerate(sys.argv[1:] if argv is None else argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as surrogates and cannot travel
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            print(f"mlfleet: argument {position} ({shown!r}) is not UTF-8 text; check the terminal's or the script's encoding",
                  file=sys.stderr)
            return EXIT_USAGE
    args = argparse.Namespace(json=cli_parser.asked_for_json(argv))  # for a mistake found while parsing
    try:
        args = parser.parse_args(argv)
        if getattr(args, "controller_url", None):  # for this process and what it starts, as the variable would
            os.environ[controller_url.ENV] = args.controller_url
        if getattr(args, "command", None) is None:
            args.func = tui or _no_command
        return args.func(args)
    except MlfleetError as exc:
        if getattr(args, "json", False):
            print_json({"error": {"kind": getattr(exc, "kind", type(exc).__name__), "message": str(exc),
                                  "exit_code": exc.exit_code}})
        for sentence in str(exc).splitlines() or [""]:  # several spec mistakes: one sentence a line
            print(f"mlfleet: {sentence}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
