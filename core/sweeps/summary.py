"""The words of a sweep's progress and best run: one definition for ``mlfleet sweeps`` and the TUI's sweeps view.

Pure functions over the plain answers of ``sweeps_list`` and ``sweep_show``.
"""

from __future__ import annotations

from typing import Any

from mlfleet.core.cli import render

SHOWN_STATES = ("pending", "running", "succeeded", "failed", "cancelled", "lost")


def done(p: dict[str, int]) -> int:
    """Children that have ended, however they ended."""
    return p["total"] - p["pending"] - p["running"]


def progress(p: dict[str, int]) -> str:
    """``4/6 done (1 pending, 1 running, 4 succeeded)``: the counts that are not zero."""
    parts = [f"{p[s]} {s}" for s in SHOWN_STATES if p.get(s)]
    return f"{done(p)}/{p['total']} done" + (f" ({', '.join(parts)})" if parts else "")


def best(best: dict[str, Any] | None) -> str:
    """``lr-2 val_loss=0.12 (params.lr=0.01)``, or ``-`` before any child logged the objective."""
    if not best:
        return "-"
    return f"{best['name']} {best['metric']}={render.number(best['value'])} ({render.value(best['point'])})"
