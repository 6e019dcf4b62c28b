"""Client RPCs for tracked runs: filtering, comparison, export (mixed into ControllerApi)."""

from __future__ import annotations


class RunsApi:
    """``rpc_runs_*`` methods; ``self.store`` and ``self.c`` come from ControllerApi."""
