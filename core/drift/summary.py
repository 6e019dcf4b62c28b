"""The words of a drift report, one definition for every place that shows one (check, show, list, the TUI).

The counts are "drifted of compared" everywhere: a column that could not be
compared (only in the current data, no rows on a side) is in neither number
and is named apart, because the dataset verdict is the share of the compared
columns. The headline says the rule, so "no drift" next to "2 drifted" reads
as what it is: a share under ``drift_share``. Values are shown on their own
scale: a time as a date, a duration as a duration, not as seconds.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Mapping

from mlfleet.core.drift import types

WASSERSTEIN_MEANING = ("wasserstein is the Wasserstein-1 distance divided by the reference's standard deviation "
                       "(0.1: the current values moved a tenth of a standard deviation)")


def counts(report: Mapping[str, Any]) -> str:
    """``drifted/compared (share)``, and how many columns were not compared when there are any:
    '6/7 (86%), 1 not compared'. The share is ``drift_share``, the number the verdict holds to its threshold."""
    drifted = int(report.get("drifted_columns") or 0)
    total = int(report.get("column_count", report.get("columns")) or 0)
    compared = int(report.get("compared_columns", total) or 0)
    share = report.get("drift_share")
    text = f"{drifted}/{compared}" + (f" ({share:.0%})" if isinstance(share, (int, float)) and compared else "")
    if total > compared:
        text += f", {total - compared} not compared"
    return text


def headline(report: Mapping[str, Any]) -> str:
    """'no drift: 2 of 7 compared columns drifted (29%), under drift_share 50% ...': the verdict with its rule."""
    drifted = int(report.get("drifted_columns") or 0)
    total = int(report.get("column_count", report.get("columns")) or 0)
    compared = int(report.get("compared_columns", total) or 0)
    threshold = float(report.get("drift_share_threshold") or 0.0)
    share = float(report.get("drift_share") or 0.0)
    rule = f"the dataset counts as drifted when {threshold:.0%} of them or more drift (drift_share)"
    if not compared:
        text = f"no drift: no column could be compared ({rule})"
    else:
        verdict = "DRIFT" if report.get("drifted") else "no drift"
        text = f"{verdict}: {drifted} of {compared} compared column{'' if compared == 1 else 's'} drifted ({share:.0%}); {rule}"
    if total > compared:
        text += f"; {total - compared} column{'' if total - compared == 1 else 's'} not compared"
    return text


def measure(column: Mapping[str, Any]) -> str | None:
    """What a column's numeric statistics measure (types.MEASURES), from its two types; None for text."""
    ref_type, cur_type = column.get("ref_type"), column.get("cur_type")
    if not ref_type or not cur_type:
        return None
    return types.compare(ref_type, cur_type).measure


def value(v: Any, what: str | None) -> str:
    """A value on its measure's scale, as a person reads it (seconds since 1970 as a date and time)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "-"
    if not math.isfinite(v):
        return str(v)
    if what == types.TIME:
        try:
            stamp = dt.datetime.fromtimestamp(v, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return f"{v:.6g} s"
        if stamp.time() == dt.time(0):
            return stamp.strftime("%Y-%m-%d")
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    if what in (types.TIME_OF_DAY, types.DURATION):
        sign, s = ("-" if v < 0 else ""), abs(v)
        days, rest = divmod(s, 86400)
        clock = f"{int(rest // 3600):02d}:{int(rest % 3600 // 60):02d}:{rest % 60:02.0f}"
        return sign + (f"{int(days)}d " if days else "") + clock
    return f"{v:.4g}"


def shift(column: Mapping[str, Any], key: str, arrow: str = "->") -> str:
    """'reference -> current' of ``mean``, ``median`` or ``nulls`` (null rates); '-' when not computed."""
    s = column.get("stats") or {}
    if key == "nulls":
        a, b = s.get("null_rate_ref"), s.get("null_rate_cur")
        return "-" if a is None or b is None else f"{a:.1%} {arrow} {b:.1%}"
    a, b = s.get(f"{key}_ref"), s.get(f"{key}_cur")
    if a is None or b is None:
        return "-"
    what = measure(column)
    return f"{value(a, what)} {arrow} {value(b, what)}"
