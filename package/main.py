"""``mlfleet``: the TUI with no command (or ``mlfleet tui``), the batch CLI otherwise.

This entry point sits above core/ and tui/, so that core/ never imports
tui/ (docs/architecture.md). It does not pick TUI or CLI by peeking at the
words itself: ``mlfleet --json``, ``mlfleet tui --bogus`` and ``--help``
must be read by the one parser, refused in one sentence and mapped to exit
codes in one place. So it hands the CLI (core/cli/main.py) how to open the
TUI, and the CLI makes that the ``tui`` command and what runs with no
command; the TUI itself is imported only when it opens, which keeps
``mlfleet agent connect`` (run over SSH for every link) quick to start.
"""

from __future__ import annotations

import argparse
import os

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.cli import main as cli


def open_tui(args: argparse.Namespace) -> int:
    """``mlfleet`` and ``mlfleet tui``: the TUI on this installation."""
    if getattr(args, "json", False):
        raise UsageError("the TUI draws on the terminal and has no JSON output; its batch twins take --json "
                         "(mlfleet --help lists them)")
    # Textual draws at most TEXTUAL_FPS frames a second, and after a frame that ran long (the 1 Hz
    # refresh of a big fleet) it waits one to two frame periods before it draws again: at 60 that
    # is up to 33 ms a key press can sit idle. 120 halves it; frames are drawn only when something
    # changed, so idle cost stays the same. Read when Textual is imported; a user's setting wins.
    os.environ.setdefault("TEXTUAL_FPS", "120")
    from mlfleet.tui.app import run_app

    return run_app(Home.from_env())


def build_parser() -> argparse.ArgumentParser:
    """The whole ``mlfleet`` command tree, ``tui`` included."""
    return cli.build_parser(tui=open_tui)


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, tui=open_tui)
