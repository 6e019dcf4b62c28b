"""Client RPCs for data drift reports and reference profiles (mixed into ControllerApi)."""

from __future__ import annotations


class DriftApi:
    """``rpc_drift_*`` methods; ``self.store`` and ``self.c`` come from ControllerApi."""
