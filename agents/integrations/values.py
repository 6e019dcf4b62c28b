"""Turn a framework's hyperparameters and metrics into what ``mlfleet.track`` stores.

Frameworks hand loggers nested configs (dicts, argparse Namespaces,
dataclasses, enums, paths, tensors, callables) and metrics as tensors or
numpy scalars. The metrics file wants flat params with JSON values and
metrics that are plain numbers, so both adapters pass them through here.
Only the standard library is used: this module is imported without torch.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from argparse import Namespace
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["flatten_params", "numeric_metrics"]

# A list of scalars longer than this is stored as its text, not as a JSON array.
_MAX_LIST = 64


def flatten_params(params: Any, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested params as one level, keys joined by ``sep`` (``{"optim": {"lr": 1}}`` -> ``{"optim/lr": 1}``).

    Every value comes back JSON-safe: numbers, strings, booleans, None, or a
    short list of those. Non-finite floats become ``"nan"``/``"inf"``/``"-inf"``,
    a one-element tensor its number, anything else its ``str``; so one odd
    value never makes the whole params line unreadable.
    """
    out: dict[str, Any] = {}
    _flatten_into(out, _as_mapping(params), sep, prefix)
    return out


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The entries of ``metrics`` that are numbers (tensors and numpy scalars included), as floats.

    A framework's log dict can hold strings (a progress fraction, say); those
    are dropped here rather than written as a line the controller counts as bad.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        number = _scalar(value)
        if isinstance(number, (int, float)):  # bool is an int: True logs as 1.0
            out[f"{prefix}{key}"] = float(number)
    return out


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, Namespace):
        return vars(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return None


def _flatten_into(out: dict[str, Any], params: Mapping[str, Any] | None, sep: str, prefix: str) -> None:
    if params is None:
        return
    for key, value in params.items():
        name = f"{prefix}{key}"
        nested = _as_mapping(value)
        if nested is not None:
            if nested:
                _flatten_into(out, nested, sep, f"{name}{sep}")
            else:
                out[name] = {}  # an empty section still says it was there
            continue
        out[name] = _json_value(value)


def _json_value(value: Any) -> Any:
    value = _scalar(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, enum.Enum):
        return _json_value(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_json_value(v) for v in (sorted(value, key=str) if isinstance(value, (set, frozenset)) else value)]
        if len(items) <= _MAX_LIST and all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            return items
        return str(items)
    if callable(value):
        return getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or str(value)
    return str(value)


def _scalar(value: Any) -> Any:
    """A tensor or numpy value with one element as its Python number; anything else unchanged."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    numel = getattr(value, "numel", None) or getattr(value, "size", None)
    try:
        count = numel() if callable(numel) else numel
    except (TypeError, ValueError):
        return value
    item = getattr(value, "item", None)
    if count == 1 and callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value
