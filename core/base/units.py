"""Parsing of human sizes ("20GiB") and durations ("2h30m").

Pure functions; they raise ValueError with a message that the config layer
wraps into a SpecError naming the file, line and field.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
    "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])")


def parse_size(value: int | float | str) -> int:
    """Return a size in bytes from ``20GiB``, ``512MB``, ``1.5TiB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 20GiB, got {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a size like 20GiB, got {value}")
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return int(value)
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"expected a size like 20GiB or 512MB, got {value!r}")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r} in {value!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    return int(float(number) * factor)


def parse_duration(value: int | float | str) -> float:
    """Return seconds from ``90``, ``45s``, ``30m``, ``2h30m`` or ``1d``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 2h or 30m, got {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a duration like 2h or 30m, got {value}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    if not text or _DURATION_RE.sub("", text):
        raise ValueError(f"expected a duration like 90s, 30m, 2h30m or 1d, got {value!r}")
    return float(sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(text)))


def format_size(n: int | float | None) -> str:
    """Return ``n`` bytes as a short binary size (``19.6 GiB``)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """Return a short duration (``1h02m``, ``4m05s``, ``12s``)."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
