"""A drift check and a reference profile, computed where the data lies.

Both run in the client's process with their own in-memory DuckDB connection
over the user's files; only the finished report or profile goes to the
controller. A profile keeps each reference column's exact value counts in a
Parquet file, so a later check against it scans only the current data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import UsageError

from mlfleet.core.drift import stats, types
from mlfleet.core.drift.columns import ColumnResult, analyse
from mlfleet.core.drift.config import DriftConfig
from mlfleet.core.drift.scan import Engine, Side
from mlfleet.core.drift.sources import FileSource
from mlfleet.core.drift.verdict import decide

PROFILE_CATEGORIES = 50


class FileSide:
    """A side read from files: value counts are built on demand, one column at a time."""

    def __init__(self, engine: Engine, side: Side) -> None:
        self.engine, self.side = engine, side
        self.label, self.rows, self.types = side.label, side.rows, side.types

    def numeric_vc(self, column: str, measure: str) -> str:
        return self.engine.numeric_counts(self.side, column, grouped=False, measure=measure)

    def text_vc(self, column: str) -> str:
        return self.engine.text_counts(self.side, column)

    def stored_as_text(self, column: str) -> bool:
        return False


class ProfileSide:
    """A side read from a saved profile: the value counts were written when it was made."""

    def __init__(self, engine: Engine, profile: dict[str, Any]) -> None:
        self.engine, self.profile = engine, profile
        self.label = f"profile {profile['name']}"
        self.rows = int(profile["rows"])
        self.types = {c["column"]: c["type"] for c in profile["columns"]}
        self._text = {c["column"] for c in profile["columns"] if not c.get("numeric")}
        self._files = {c["column"]: os.path.join(profile["values_dir"], c["values_file"]) for c in profile["columns"]}
        missing = [f for f in self._files.values() if not os.path.isfile(f)]
        if missing:
            raise UsageError(f"profile {profile['name']}: its value file {missing[0]} is gone; "
                             f"make it again with 'mlfleet drift profile REF --name {profile['name']} --replace'")

    def numeric_vc(self, column: str, measure: str) -> str:
        return self.engine.parquet_relation(self._files[column])

    def text_vc(self, column: str) -> str:
        return self.engine.parquet_relation(self._files[column])

    def stored_as_text(self, column: str) -> bool:
        return column in self._text


def _selected(columns: list[str] | None, ref_types: dict[str, str], cur_types: dict[str, str],
              config: DriftConfig) -> list[str]:
    union = list(ref_types) + [c for c in cur_types if c not in ref_types]
    if columns:
        unknown = [c for c in columns if c not in ref_types and c not in cur_types]
        if unknown:
            raise UsageError(f"--columns: {', '.join(unknown)} is in neither side; columns there: "
                             f"{', '.join(union[:20])}{', ...' if len(union) > 20 else ''}")
        return columns
    return [c for c in union if not config.rule(c).ignore]


def source_columns(config: DriftConfig, source: FileSource) -> list[str]:
    """The columns of a side's files that a check compares (the ignored ones left out)."""
    with Engine(config.memory_limit, config.threads) as engine:
        return [c for c in engine.describe(source) if not config.rule(c).ignore]


def check_columns(config: DriftConfig, reference: FileSource | None, current: FileSource,
                  columns: list[str] | None) -> None:
    """Fail early (before any controller is started) on unreadable files or unknown --columns."""
    with Engine(config.memory_limit, config.threads) as engine:
        cur_types = engine.describe(current)
        ref_types = engine.describe(reference) if reference is not None else {}
    if columns and reference is not None:
        _selected(columns, ref_types, cur_types, config)


def run_check(config: DriftConfig, reference: FileSource | dict[str, Any], current: FileSource,
              columns: list[str] | None = None) -> dict[str, Any]:
    """Compare ``current`` with ``reference`` (files, or a profile as returned by the controller)."""
    started = time.monotonic()
    with Engine(config.memory_limit, config.threads) as engine:
        ref = ProfileSide(engine, reference) if isinstance(reference, dict) else FileSide(engine, engine.open_side(reference))
        cur = FileSide(engine, engine.open_side(current))
        results: list[ColumnResult] = [analyse(engine, config, name, ref, cur)
                                       for name in _selected(columns, ref.types, cur.types, config)]
    verdict = decide(results, config)
    return {"reference": ref.label, "current": current.label,
            "profile": reference["name"] if isinstance(reference, dict) else None,
            "rows_reference": ref.rows, "rows_current": cur.rows, **verdict,
            "elapsed_s": round(time.monotonic() - started, 3), "config": config.summary(),
            "columns": [r.to_dict() for r in results]}


def build_profile(config: DriftConfig, source: FileSource, values_dir: Path, name: str,
                  columns: list[str] | None = None) -> dict[str, Any]:
    """Scan the reference once; write each column's value counts to ``values_dir``; return the summary."""
    values_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out = []
    with Engine(config.memory_limit, config.threads) as engine:
        side = engine.open_side(source)
        for position, column in enumerate(_selected(columns, side.types, {}, config)):
            duck_type = side.types[column]
            measure = types.value_class(duck_type)
            numeric = measure in types.MEASURES  # times, times of day and durations are kept as seconds
            vc = engine.numeric_counts(side, column, measure=measure) if numeric else engine.text_counts(side, column)
            try:
                filename = f"{position:04d}.parquet"
                engine.copy_to_parquet(vc, str(values_dir / filename))
                summary = _numeric_summary(engine, vc, config, column) if numeric else \
                    _category_summary(engine, vc, config)
            finally:
                engine.drop(vc)
            out.append({"column": column, "type": duck_type, "numeric": numeric, "values_file": filename,
                        "summary": summary})
    return {"name": name, "source": source.label, "files": list(source.files), "format": source.fmt,
            "rows": side.rows, "values_dir": str(values_dir), "columns": out,
            "elapsed_s": round(time.monotonic() - started, 3)}


def _numeric_summary(engine: Engine, vc: str, config: DriftConfig, column: str) -> dict[str, Any]:
    s = engine.numeric_summary(vc)
    summary: dict[str, Any] = {"rows": s.rows, "nulls": s.nulls, "null_rate": s.nulls / s.rows if s.rows else None,
                               "pos_inf": s.pos_inf, "neg_inf": s.neg_inf, "finite": s.finite,
                               "distinct": s.distinct, "min": s.min, "max": s.max, "mean": s.mean, "std": s.std,
                               "edges": [], "bin_counts": []}
    if s.finite:
        bins = config.rule(column).bins or config.bins
        edges = stats.quantile_edges(engine.quantiles(vc, bins, s.finite))
        summary["edges"], summary["bin_counts"] = edges, engine.bin_counts(vc, edges)
    return summary


def _category_summary(engine: Engine, vc: str, config: DriftConfig) -> dict[str, Any]:
    s = engine.category_summary(vc, config.max_categories)
    top = sorted((s.counts or {}).items(), key=lambda kv: (-kv[1], kv[0]))[:PROFILE_CATEGORIES]
    return {"rows": s.rows, "nulls": s.nulls, "null_rate": s.nulls / s.rows if s.rows else None,
            "distinct": s.distinct, "top_categories": [{"category": k, "count": v} for k, v in top]}
