"""Captured lines to table columns (pure): what one chunk of a replica's ``capture.jsonl`` becomes in Parquet.

A line is ``{"ts": ..., "inputs": ..., "outputs": ...}`` (mlfleet.serve.capture). Why flatten here and not
in SQL: a capture's inputs are whatever the model server hands over (a dict of features, a batch of
rows, a bare vector), and drift compares columns, so each input field becomes a column of its own.
A line that cannot be read is skipped and counted, never an error: one bad line must not stop a
deployment's captures. No I/O, no clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

# Columns every capture file has; an input field of one of these names is stored as input_<name>.
META = ("ts", "version", "replica_id", "run_id", "output")
MAX_LINE = 1024 * 1024  # a captured line longer than this is skipped (counted as bad)
MAX_COLUMNS = 512  # input columns per chunk; fields past it are left out (counted)
_MAX_TS = 253402300799.0  # 9999-12-31: past it a timestamp cannot be stored


@dataclass
class Batch:
    """One chunk's rows as columns: ``columns`` maps a column name to (DuckDB type, numpy array)."""

    rows: int = 0
    bad_lines: int = 0
    dropped_fields: int = 0
    first_ts: float | None = None  # seconds since the epoch of the first row (names the file's day)
    ts_us: list[int] = field(default_factory=list)
    outputs: list[str | None] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)  # column -> a value per row (None: missing)
    _lower: dict[str, str] = field(default_factory=dict)  # DuckDB names are case-insensitive

    def column(self, key: str) -> str | None:
        """The column a field goes to (created, back-filled with None, on first sight), or None past the limit."""
        if key in self.values:
            return key
        name = f"input_{key}" if key.lower() in META else key
        n = 2
        while name.lower() in self._lower and self._lower[name.lower()] != name:
            name = f"{key}_{n}"
            n += 1
        if name in self.values:
            return name
        if len(self.values) >= MAX_COLUMNS:
            self.dropped_fields += 1
            return None
        self.values[name] = [None] * self.rows
        self._lower[name.lower()] = name
        return name

    def add_row(self, ts: float, fields: dict[str, Any], output: str | None) -> None:
        if self.first_ts is None:
            self.first_ts = ts
        for key, value in fields.items():
            name = self.column(key)
            if name is not None:
                self.values[name].append(_cell(value))
        self.rows += 1
        for column in self.values.values():
            if len(column) < self.rows:
                column.append(None)
        self.ts_us.append(int(round(ts * 1_000_000)))
        self.outputs.append(output)

    def arrays(self) -> dict[str, tuple[str, np.ndarray]]:
        """Each input column's DuckDB type and values (a column of mixed kinds is stored as text)."""
        return {name: _typed(values) for name, values in self.values.items()}


def _cell(value: Any) -> Any:
    """A value as one cell: nested values become their JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def _typed(values: list[Any]) -> tuple[str, np.ndarray]:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "BOOLEAN", np.array(values, dtype=object)
    if present and all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63 for v in present):
        if len(present) == len(values):
            return "BIGINT", np.array(values, dtype=np.int64)
        return "BIGINT", np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "DOUBLE", np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return "VARCHAR", np.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                               dtype=object)


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 text (naive means UTC); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    else:
        return None
    return ts if math.isfinite(ts) and 0 <= ts <= _MAX_TS else None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def input_rows(inputs: Any) -> list[dict[str, Any]] | None:
    """The rows one capture's inputs make; None when there are none to read.

    A dict is one row of features; a list of dicts is a batch, one row each; a number or text is
    column ``input``; a list of scalars is ``input_0..n``; a list of such lists is one row each.
    """
    if isinstance(inputs, dict):
        return [{str(k): v for k, v in inputs.items()}]
    if isinstance(inputs, list):
        if inputs and all(isinstance(r, dict) for r in inputs):
            return [{str(k): v for k, v in r.items()} for r in inputs]
        if all(_scalar(v) for v in inputs):
            return [{f"input_{i}": v for i, v in enumerate(inputs)}] if inputs else []
        if all(isinstance(r, list) and all(_scalar(v) for v in r) for r in inputs):
            return [{f"input_{i}": v for i, v in enumerate(r)} for r in inputs]
        return [{"input": inputs}]
    if inputs is None:
        return None
    return [{"input": inputs}]


def add_lines(batch: Batch, text: str, max_line: int = MAX_LINE) -> None:
    """Add the whole lines in ``text`` to ``batch``; a line that is not a capture is counted in ``bad_lines``."""
    for line in text.split("\n"):
        if not line.strip():
            continue
        if len(line) > max_line or len(line.encode("utf-8", errors="replace")) > max_line:
            batch.bad_lines += 1
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            batch.bad_lines += 1
            continue
        if not isinstance(record, dict):
            batch.bad_lines += 1
            continue
        ts = _timestamp(record.get("ts"))
        rows = input_rows(record.get("inputs"))
        if ts is None or rows is None:
            batch.bad_lines += 1
            continue
        outputs = record.get("outputs")
        per_row = isinstance(outputs, list) and len(rows) > 1 and len(outputs) == len(rows)
        for i, row in enumerate(rows):
            out = outputs[i] if per_row else outputs
            batch.add_row(ts, row, None if out is None else json.dumps(out, separators=(",", ":"), default=str))
