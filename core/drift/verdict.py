"""From column results to drifted or not: thresholds, multiple testing, the dataset verdict.

A pure function over the column results; no NaN can reach it, because a
statistic that could not be computed is None and the rules below say what
None means.
"""

from __future__ import annotations

from typing import Any

from mlfleet.core.base.words import plural

from mlfleet.core.drift import stats
from mlfleet.core.drift.columns import ColumnResult
from mlfleet.core.drift.config import PVALUE_TESTS, DriftConfig


def decide(results: list[ColumnResult], config: DriftConfig) -> dict[str, Any]:
    """Set statistic, threshold and drifted on each column; return the dataset verdict."""
    pvalues: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for r in results:
        if r.schema_drift:
            r.drifted = True
            continue
        if r.test == "presence" or r.no_rows:
            r.drifted = None
            continue
        if r.test_value is not None and r.test in PVALUE_TESTS:
            pvalues[r.column] = r.test_value
            rule = config.rule(r.column)
            alphas[r.column] = rule.threshold if rule.threshold is not None else config.alpha
    levels = stats.adjusted_alphas(pvalues, alphas, config.multiple_testing)
    for r in results:
        if r.schema_drift or r.test == "presence" or r.no_rows:
            continue
        ref_rate, cur_rate = r.stats["null_rate_ref"], r.stats["null_rate_cur"]
        null_change = abs(cur_rate - ref_rate)
        null_drift = null_change > config.null_rate_threshold
        if null_drift:
            r.notes.append(f"null rate changed from {ref_rate:.1%} to {cur_rate:.1%} "
                           f"(more than null_rate_threshold {config.null_rate_threshold:g}): drifted")
        if r.test_value is None:
            r.notes.append(f"{r.test} could not be computed: the null-rate change decides")
            r.test, r.statistic, r.threshold, r.drifted = "null_rate", null_change, config.null_rate_threshold, null_drift
            continue
        r.statistic = r.test_value
        if r.test in PVALUE_TESTS:
            r.threshold = levels[r.column]
            test_drift = r.test_value < r.threshold
        else:
            rule = config.rule(r.column)
            r.threshold = rule.threshold if rule.threshold is not None else config.thresholds[r.test]
            test_drift = r.test_value >= r.threshold
        r.drifted = bool(test_drift or null_drift)
    decided = [r for r in results if r.drifted is not None]
    drifted = [r for r in decided if r.drifted]
    share = len(drifted) / len(decided) if decided else 0.0
    notes = []
    if not decided:
        notes.append("no column could be compared: the verdict is 'no drift' by default, check the column notes")
    if pvalues and config.multiple_testing != "none":
        notes.append(f"{plural(len(pvalues), 'column')} decided by a p-value test, corrected with {config.multiple_testing}")
    return {"drifted": bool(decided) and share >= config.drift_share, "drifted_columns": len(drifted),
            "column_count": len(results), "compared_columns": len(decided), "drift_share": share,
            "drift_share_threshold": config.drift_share, "multiple_testing": config.multiple_testing,
            "notes": notes}
