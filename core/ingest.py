"""Parse the metric lines that jobs write (``MLFLEET_METRICS_FILE``).

One JSON object per line; any program in any language may write them::

    {"ts": 1732800000.5, "step": 10, "metrics": {"loss": 0.31, "acc": 0.9}}
    {"ts": 1732800000.5, "params": {"lr": 0.001, "model": "resnet18"}}
    {"ts": 1732800000.5, "tags": {"dataset": "cifar10"}}

``ts`` (Unix seconds) and ``step`` are optional. Metric values are numbers;
``"nan"``, ``"inf"`` and ``"-inf"`` (or the bare NaN/Infinity tokens that
Python's json writes) are kept as such. A line that is not one of these is
counted as bad and skipped; the lines around it still count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_MAX_TS = 253402300800.0  # year 10000: anything larger is not Unix seconds (nanoseconds, say)
_MAX_STEP = 1 << 62
_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
            "infinity": math.inf, "-infinity": -math.inf}


@dataclass
class ParsedBatch:
    """Columns ready for a bulk insert, plus params and tags (last value wins)."""

    keys: list[str] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[float | None] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    bad_lines: int = 0
    first_error: str = ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _SPECIAL.get(value.strip().lower())
    return None


def parse_lines(text: str, first_seq: int) -> ParsedBatch:
    """Parse whole lines; ``first_seq`` is the stream line number of the first one."""
    batch = ParsedBatch()
    for i, line in enumerate(text.splitlines()):
        batch.lines += 1
        if not line.strip():
            continue
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            try:
                record = json.loads(line)  # tolerates NaN/Infinity tokens
            except ValueError as exc:
                _bad(batch, first_seq + i, f"not JSON ({exc.msg})")
                continue
        if not isinstance(record, dict):
            _bad(batch, first_seq + i, "not a JSON object")
            continue
        ts = _number(record.get("ts"))
        if ts is not None and not (0 <= ts < _MAX_TS):
            _bad(batch, first_seq + i, f"ts {record.get('ts')!r} is not Unix seconds")
            continue
        step = record.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            step = int(step) if isinstance(step, float) and step.is_integer() else None
        if step is not None and not (-_MAX_STEP <= step < _MAX_STEP):
            _bad(batch, first_seq + i, f"step {step} is out of range")
            continue
        metrics = record.get("metrics")
        if isinstance(metrics, dict):
            line_is_bad = False
            for key, raw in metrics.items():
                value = _number(raw)
                if value is None or not isinstance(key, str):
                    if not line_is_bad:  # bad_lines counts lines; the good values on it are kept
                        _bad(batch, first_seq + i, f"metric {key!r} is not a number")
                        line_is_bad = True
                    continue
                batch.keys.append(key)
                batch.steps.append(step)
                batch.values.append(value)
                batch.timestamps.append(ts)
                batch.seqs.append(first_seq + i)
        params = record.get("params")
        if isinstance(params, dict):
            batch.params.update({str(k): v for k, v in params.items()})
        tags = record.get("tags")
        if isinstance(tags, dict):
            batch.tags.update({str(k): str(v) for k, v in tags.items()})
        if not any(isinstance(record.get(k), dict) for k in ("metrics", "params", "tags")):
            _bad(batch, first_seq + i, "has none of metrics, params or tags")
    return batch


def _bad(batch: ParsedBatch, seq: int, why: str) -> None:
    batch.bad_lines += 1
    if not batch.first_error:
        batch.first_error = f"line {seq + 1}: {why}"
