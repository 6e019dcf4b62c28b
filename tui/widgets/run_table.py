"""The runs table: fixed columns, then one column per frequent param and metric.

Which params and metrics get a column is decided from the runs on view (the
most common keys first), so that any of them can be sorted on; the set
changes rarely, and only then is the table rebuilt.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.text import Text

from mlfleet.core.cli.render import elapsed, number, when

BASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("mark", " "), ("run_id", "RUN"), ("name", "NAME"), ("project", "PROJECT"), ("state", "STATE"),
    ("host", "HOST"), ("created", "CREATED"), ("runtime", "RUNTIME"),
)
MAX_PARAMS = 4
MAX_METRICS = 5
TAGS_WIDTH = 24


def run_columns(runs: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    params = Counter(k for r in runs for k in (r.get("params") or {}))
    metrics = Counter(k for r in runs for k in (r.get("metrics") or {}))
    return (BASE_COLUMNS
            + tuple((f"param:{k}", k) for k, _ in sorted(params.most_common(MAX_PARAMS)))
            + tuple((f"metric:{k}", f"{k} (last)") for k, _ in sorted(metrics.most_common(MAX_METRICS)))
            + (("tags", "TAGS"),))


def run_cells(run: dict[str, Any], columns: tuple[tuple[str, str], ...], selected: bool) -> tuple[str | Text, ...]:
    base = {
        "mark": Text("●", style="bold magenta") if selected else " ",
        "run_id": run["run_id"], "name": run.get("name") or "-", "project": run.get("project") or "-",
        "state": run.get("state") or "-", "host": run.get("host") or "-", "created": when(run.get("created_at")),
        "runtime": elapsed(run.get("started_at"), run.get("finished_at")),
    }
    tags = ",".join(f"{k}={v}" for k, v in sorted((run.get("tags") or {}).items())) or "-"
    base["tags"] = tags if len(tags) <= TAGS_WIDTH else tags[:TAGS_WIDTH - 1] + "…"
    cells: list[str | Text] = []
    for key, _label in columns:
        if key.startswith("param:"):
            cells.append(number((run.get("params") or {}).get(key[6:])))
        elif key.startswith("metric:"):
            summary = (run.get("metrics") or {}).get(key[7:])
            cells.append(number(summary.get("last")) if summary else "-")
        else:
            cells.append(base[key])
    return tuple(cells)
