"""``mlfleet drift ...``: the batch twins of the TUI's drift screen."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def register(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``drift`` command group to the top-level subparsers."""
