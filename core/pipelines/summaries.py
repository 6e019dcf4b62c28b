"""What a gate reads of a run: the params and metric summaries its requirements name, from the store.

A run may log a million metric keys; a gate names a few. So only the keys
the requirements name are read (one ``metric_keys`` row each, with the mode
the run declared for ``.summary``), with the same meaning the runs filter
gives ``metrics.K.min/max/mean/last/count`` (core/tracking/metric_keys.py's
``summary_sql``). A summary the run does not have (no finite point, a NaN
last value) is left out rather than set to None, so the gate's sentence
lists what the run has. Params are read whole: a nested ``params.opt.lr``
may be the key ``opt.lr`` or ``lr`` inside ``opt``, and gates.py picks.

Plain functions over a DuckDB connection, run on the store's reader threads.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.pipelines.gates import RunSummary, parse_requirements
from mlfleet.core.tracking.metric_keys import summary_sql
from mlfleet.core.tracking.runfilter import Arith, Operand, Term

SUMMARIES = ("min", "max", "mean", "last", "count")


def named_metrics(require: list[str]) -> list[str]:
    """The metric keys the requirements read, on either side, in the order they are first named."""
    keys: list[str] = []
    for relation in parse_requirements(require):
        for term in (relation.left, relation.right):
            keys += _metric_keys(term)
    return list(dict.fromkeys(keys))


def _metric_keys(term: Term) -> list[str]:
    if isinstance(term, Operand):
        return [term.field.key] if term.field.source == "metrics" else []
    if isinstance(term, Arith):
        return _metric_keys(term.left) + _metric_keys(term.right)
    return []


def run_exists(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    return bool(con.execute("select 1 from runs where run_id = ?", [run_id]).fetchall())


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str, label: str, metrics: list[str]) -> RunSummary:
    """The run's params and the summaries of ``metrics`` (those it logged); a run that is gone has neither."""
    params = {key: json.loads(value) if isinstance(value, str) else value
              for key, value in con.execute("select key, value from params where run_id = ?", [run_id]).fetchall()}
    found: dict[str, dict[str, float]] = {}
    if metrics:
        columns = ", ".join(f"{summary_sql('k', s)} as {s}" for s in SUMMARIES)
        declared = ("case s.mode when 'min' then k.min_value when 'max' then k.max_value "
                    f"when 'last' then {summary_sql('k', 'last')} end")
        for row in con.execute(f"""select k.key, {columns}, {declared} as summary
                                   from metric_keys k
                                   left join metric_summaries s on s.run_id = k.run_id and s.key = k.key
                                   where k.run_id = ? and list_contains(?::varchar[], k.key)""",
                               [run_id, metrics]).fetchall():
            values = dict(zip((*SUMMARIES, "summary"), row[1:]))
            found[row[0]] = {name: _plain(v) for name, v in values.items() if _plain(v) is not None}
    return RunSummary(label=label, params=params, metrics=found)


def _plain(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if number != number else (int(number) if isinstance(value, int) else number)
