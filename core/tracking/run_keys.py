"""How ``runs list|show|compare`` print a run's metric keys when there may be a million of them.

The controller answers with a bounded page and says how many keys it left
out; this module says so to the user in one line, with the flags that show
the rest, and pages ``runs show --all-keys`` through ``run_metrics`` so
that neither side ever holds every key (the JSON is written as it comes).
"""

from __future__ import annotations

import json
import sys
from typing import Any, AsyncIterator, TextIO

from mlfleet.core.cli import render
from mlfleet.core.controller.client import ControllerClient

PAGE = 10_000  # keys per run_metrics call (the controller's most)
SHOW_HEADERS = ["metric", "points", "min", "max", "mean", "last", "last step", "summary"]


def left_out_note(counts: dict[str, Any], what: str, how: str) -> str | None:
    """``and 999,900 more metric keys (1,000,000 in all); HOW`` or None when nothing was left out."""
    left = int(counts.get("left_out") or 0)
    if not left:
        return None
    pattern = counts.get("pattern")
    matching = f" matching {pattern!r}" if pattern else ""
    total = counts.get("matching") if pattern else counts.get("total", counts.get("matching"))
    about = "about " if counts.get("estimated") else ""
    return f"... and {about}{left:,} more {what}{matching} ({about}{total:,} in all); {how}"


def param_at(params: dict[str, Any], key: str) -> Any:
    """``params.optimizer.lr`` in a listed run, as the filter reads it: the longest key logged whose value has the
    rest of the path (core/tracking/run_queries.py, ``_nested_param``)."""
    parts = key.split(".")
    missing = object()
    for n in range(len(parts), 0, -1):
        value = params.get(".".join(parts[:n]), missing)
        for part in parts[n:]:
            if isinstance(value, dict):
                value = value.get(part, missing)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                value = missing
        if value is not missing:
            return value
    return None


def show_rows(metrics: list[dict[str, Any]], summary: dict[str, Any]) -> list[list[Any]]:
    return [[m["key"], m["points"], m["min"], m["max"], m.get("mean"), m["last"], m["last_step"],
             _summary_cell(summary[m["key"]]) if m["key"] in summary else None] for m in metrics]


def _summary_cell(summary: dict[str, Any]) -> str:
    value = summary["value"]
    return f"{summary['mode']} = {value:.4g}" if isinstance(value, float) else f"{summary['mode']} = {value}"


async def later_pages(client: ControllerClient, run: dict[str, Any],
                      pattern: str | None) -> AsyncIterator[dict[str, Any]]:
    """The pages after ``run_show``'s first one, by key (keys logged meanwhile before the cursor are not seen)."""
    after = run["metric_keys"].get("next")
    while after is not None:
        page = await client.call("run_metrics", run=run["run_id"], keys=pattern, after=after, limit=PAGE)
        if not page["metrics"]:
            return
        yield page
        after = page.get("next")


async def print_all_keys_text(client: ControllerClient, run: dict[str, Any], pattern: str | None,
                              out: TextIO = sys.stdout) -> int:
    """The metrics table, page by page (each page aligned on its own, one header); returns the keys printed."""
    shown = len(run["metrics"])
    if run["metrics"]:
        out.write(render.table(SHOW_HEADERS, show_rows(run["metrics"], run.get("summary") or {})) + "\n")
    async for page in later_pages(client, run, pattern):
        lines = render.table(SHOW_HEADERS, show_rows(page["metrics"], page.get("summary") or {})).split("\n")
        out.write("\n".join(lines[1:]) + "\n")
        shown += len(page["metrics"])
    return shown


async def print_all_keys_json(client: ControllerClient, run: dict[str, Any], pattern: str | None,
                              out: TextIO = sys.stdout) -> None:
    """``runs show --all-keys --json``: the run as one JSON object whose ``metrics`` list is written page by page."""
    head = {k: v for k, v in run.items() if k not in ("metrics", "summary", "metric_keys")}
    text = json.dumps({**head, "metrics": None}, indent=2, default=str)
    out.write(text[:text.rindex("null")] + "[")
    summary = dict(run.get("summary") or {})
    count = 0

    def put(metrics: list[dict[str, Any]]) -> None:
        nonlocal count
        for m in metrics:
            out.write(("," if count else "") + "\n    " + json.dumps(m, default=str))
            count += 1

    put(run["metrics"])
    async for page in later_pages(client, run, pattern):
        put(page["metrics"])
        summary.update(page.get("summary") or {})
    counts = {**run["metric_keys"], "shown": count, "left_out": 0, "next": None}
    out.write(("\n  ]" if count else "]") + ",\n")
    tail = json.dumps({"summary": summary, "metric_keys": counts}, indent=2, default=str)
    out.write(tail[tail.index("\n") + 1:] + "\n")
