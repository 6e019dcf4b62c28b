"""Parse the metric lines that jobs write (``MLFLEET_METRICS_FILE``).

One JSON object per line; any program in any language may write them::

    {"ts": 1732800000.5, "step": 10, "metrics": {"loss": 0.31, "acc": 0.9}}
    {"ts": 1732800000.5, "params": {"lr": 0.001, "model": "resnet18"}}
    {"ts": 1732800000.5, "tags": {"dataset": "cifar10"}}
    {"ts": 1732800000.5, "summary": {"val_loss": "min"}}
    {"ts": 1732800000.5, "artifact": {"path": "/abs/model.pt", "size": 1234, "sha256": "9f86d0..."}}

``ts`` (Unix seconds) and ``step`` are optional. Metric values are numbers;
``"nan"``, ``"inf"`` and ``"-inf"`` (or the bare NaN/Infinity tokens that
Python's json writes) are kept as such. A line that is not one of these is
counted as bad and skipped; the lines around it still count. A line longer
than ``MAX_METRIC_LINE`` (1 MiB) never reaches the parser: the agent sends
only its place (``long_lines``) and it counts as one bad line.

Speed: a chunk is first decoded in one call into typed records
(msgspec ``decode_lines``), which is several times faster than a Python
loop over ``json.loads``; a chunk with anything unusual in it (a bad line,
a blank line, bare NaN tokens) is parsed again line by line, which gives
the same result and names the first bad line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from mlfleet.core.base.models import MAX_METRIC_LINE

_decoder = msgspec.json.Decoder()
_MAX_TS = 253402300800.0  # year 10000: anything larger is not Unix seconds (nanoseconds, say)
_MAX_STEP = 1 << 62
_SPECIAL = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf,
            "infinity": math.inf, "-infinity": -math.inf}
SUMMARY_MODES = ("min", "max", "last")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("metrics", "params", "tags", "summary", "artifact")


class _Line(msgspec.Struct, gc=False):
    """The common shape of a line, for the fast path (anything else takes the slow one)."""

    ts: float | None = None
    step: int | float | None = None
    metrics: dict[str, float | str | bool] | None = None
    params: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    artifact: dict[str, Any] | None = None


_lines_decoder = msgspec.json.Decoder(_Line)


@dataclass
class ParsedBatch:
    """Columns ready for a bulk insert, plus params, tags, summaries and artifacts (last value wins)."""

    keys: list[str] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[float | None] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)  # metric -> min | max | last
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> sha256, size, ts
    lines: int = 0
    bad_lines: int = 0
    first_error: str = ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # a 400-digit integer is valid JSON but no double: the line is bad, not the stream
            return None
    if isinstance(value, str):
        return _SPECIAL.get(value.strip().lower())
    return None


def _split(text: str) -> list[str]:
    """Lines as the agent counts them: ended by ``\\n`` (a line number is a seq)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_lines(text: str, first_seq: int, long_lines: int = 0) -> ParsedBatch:
    """Parse whole lines; ``first_seq`` is the stream line number of the first one.

    ``long_lines`` lines longer than the limit came before ``text`` without
    their bytes (StreamChunk.long_lines): each is one line and one bad line,
    so the line numbers of the lines after them stay exact.
    """
    if not text:
        batch = ParsedBatch()
    else:
        fast = _parse_typed(text, first_seq + long_lines)
        batch = fast if fast is not None else _parse_each(text, first_seq + long_lines)
    if long_lines:
        batch.lines += long_lines
        batch.bad_lines += long_lines
        batch.first_error = (f"line {first_seq + 1}: longer than {MAX_METRIC_LINE // 1024**2} MiB; skipped"
                             if long_lines == 1 else
                             f"lines {first_seq + 1}-{first_seq + long_lines}: longer than "
                             f"{MAX_METRIC_LINE // 1024**2} MiB; skipped")
    return batch


def _parse_typed(text: str, first_seq: int) -> ParsedBatch | None:
    """The whole chunk in one decode, or None when it needs the careful path."""
    try:
        records = _lines_decoder.decode_lines(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    count = text.count("\n") + (0 if text.endswith("\n") else 1)
    if len(records) != count:  # blank lines (skipped by decode_lines) would shift every seq
        return None
    batch = ParsedBatch(lines=count)
    keys, steps, values, stamps, seqs = batch.keys, batch.steps, batch.values, batch.timestamps, batch.seqs
    for i, record in enumerate(records):
        seq = first_seq + i
        ts = record.ts
        if ts is not None and not (0 <= ts < _MAX_TS):
            _bad(batch, seq, f"ts {ts!r} is not Unix seconds")
            continue
        step = record.step
        if step is not None and step.__class__ is not int:
            step = int(step) if step.is_integer() else None
        if step is not None and not (-_MAX_STEP <= step < _MAX_STEP):
            _bad(batch, seq, f"step {step} is out of range")
            continue
        metrics = record.metrics
        if metrics is not None:
            line_is_bad = False
            for key, value in metrics.items():
                if value.__class__ is not float:
                    value = _number(value)
                    if value is None:
                        if not line_is_bad:
                            _bad(batch, seq, f"metric {key!r} is not a number")
                            line_is_bad = True
                        continue
                keys.append(key)
                steps.append(step)
                values.append(value)
                stamps.append(ts)
                seqs.append(seq)
        if record.params is not None or record.tags is not None or record.summary is not None \
                or record.artifact is not None:
            _absorb_other(batch, seq, ts, record.params, record.tags, record.summary, record.artifact)
        elif metrics is None:
            _bad(batch, seq, "has none of metrics, params, tags, summary or artifact")
    return batch


def _parse_each(text: str, first_seq: int) -> ParsedBatch:
    """Line by line: tolerant of anything, and names the first bad line."""
    batch = ParsedBatch()
    for i, line in enumerate(_split(text)):
        batch.lines += 1
        seq = first_seq + i
        if not line.strip():
            continue
        try:
            record = _decoder.decode(line)
        except msgspec.DecodeError:
            try:
                record = json.loads(line)  # tolerates NaN/Infinity tokens
            except ValueError as exc:
                _bad(batch, seq, f"not JSON ({exc.msg})")
                continue
        if not isinstance(record, dict):
            _bad(batch, seq, "not a JSON object")
            continue
        ts = _number(record.get("ts"))
        if ts is not None and not (0 <= ts < _MAX_TS):
            _bad(batch, seq, f"ts {record.get('ts')!r} is not Unix seconds")
            continue
        step = record.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            step = int(step) if isinstance(step, float) and step.is_integer() else None
        if step is not None and not (-_MAX_STEP <= step < _MAX_STEP):
            _bad(batch, seq, f"step {step} is out of range")
            continue
        metrics = record.get("metrics")
        if isinstance(metrics, dict):
            line_is_bad = False
            for key, raw in metrics.items():
                value = _number(raw)
                if value is None or not isinstance(key, str):
                    if not line_is_bad:  # bad_lines counts lines; the good values on it are kept
                        _bad(batch, seq, f"metric {key!r} is not a number")
                        line_is_bad = True
                    continue
                batch.keys.append(key)
                batch.steps.append(step)
                batch.values.append(value)
                batch.timestamps.append(ts)
                batch.seqs.append(seq)
        parts = [record.get(k) if isinstance(record.get(k), dict) else None for k in _KINDS[1:]]
        if any(p is not None for p in parts):
            _absorb_other(batch, seq, ts, *parts)
        elif not isinstance(metrics, dict):
            _bad(batch, seq, "has none of metrics, params, tags, summary or artifact")
    return batch


def _absorb_other(batch: ParsedBatch, seq: int, ts: float | None, params: dict[str, Any] | None,
                  tags: dict[str, Any] | None, summary: dict[str, Any] | None,
                  artifact: dict[str, Any] | None) -> None:
    if params is not None:
        batch.params.update({str(k): v for k, v in params.items()})
    if tags is not None:
        batch.tags.update({str(k): str(v) for k, v in tags.items()})
    if summary is not None:
        for key, mode in summary.items():
            if mode not in SUMMARY_MODES:
                _bad(batch, seq, f"summary mode {mode!r} for {key!r} is not one of {', '.join(SUMMARY_MODES)}")
                continue
            batch.summaries[str(key)] = mode
    if artifact is not None:
        path, size, digest = artifact.get("path"), artifact.get("size"), artifact.get("sha256")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            _bad(batch, seq, f"artifact path {path!r} is not an absolute path")
        elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
            _bad(batch, seq, f"artifact size {size!r} is not a byte count")
        elif not isinstance(digest, str) or not _SHA256.match(digest):
            _bad(batch, seq, "artifact sha256 is not 64 lowercase hex digits")
        else:
            batch.artifacts[path] = {"sha256": digest, "size": size, "ts": ts}


def _bad(batch: ParsedBatch, seq: int, why: str) -> None:
    batch.bad_lines += 1
    if not batch.first_error:
        batch.first_error = f"line {seq + 1}: {why}"
