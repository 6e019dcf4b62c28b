"""One column of a drift check: what could be computed, what could not, and why.

The decision against thresholds (and the multiple-testing policy, which
needs every column's p-value) happens afterwards in :mod:`verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mlfleet.core.drift import stats, types
from mlfleet.core.drift.config import DriftConfig
from mlfleet.core.drift.scan import CategorySummary, Engine, NumericSummary

STAT_KEYS = ("psi", "ks_d", "ks_p", "ks_method", "wasserstein", "wasserstein_raw", "js", "chi2", "chi2_p", "chi2_dof",
             "null_rate_ref", "null_rate_cur", "unseen_share", "out_of_range_share", "inf_ref", "inf_cur",
             "n_ref", "n_cur", "mean_ref", "mean_cur", "median_ref", "median_cur")
HISTOGRAM_CATEGORIES = 20
UNSEEN = "(unseen)"


class SideData(Protocol):
    """A side of a check (files or a saved profile), column by column."""

    label: str
    rows: int
    types: dict[str, str]

    def numeric_vc(self, column: str, measure: str) -> str: ...

    def text_vc(self, column: str) -> str: ...

    def stored_as_text(self, column: str) -> bool:
        """True when this side only has the column's values as text (a profile made before times were numbers)."""
        ...


@dataclass
class ColumnResult:
    column: str
    kind: str | None
    test: str
    ref_type: str | None = None
    cur_type: str | None = None
    stats: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(STAT_KEYS))
    notes: list[str] = field(default_factory=list)
    histogram: dict[str, Any] | None = None
    # Filled by the verdict:
    statistic: float | None = None
    threshold: float | None = None
    drifted: bool | None = None
    # What the verdict needs: None = the deciding test could not be computed.
    test_value: float | None = None
    schema_drift: bool = False
    no_rows: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "test": self.test, "statistic": self.statistic,
                "threshold": self.threshold, "drifted": self.drifted, "ref_type": self.ref_type,
                "cur_type": self.cur_type, "stats": self.stats, "notes": self.notes,
                "histogram": self.histogram or {}}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def analyse(engine: Engine, config: DriftConfig, column: str, ref: SideData, cur: SideData) -> ColumnResult:
    """Compare one column; every statistic that cannot be computed stays None with a note saying why."""
    rule = config.rule(column)
    ref_type, cur_type = ref.types.get(column), cur.types.get(column)
    if ref_type is None:
        result = ColumnResult(column, "numeric" if types.is_measure(cur_type) else "categorical", "presence",
                              None, cur_type)
        result.notes.append("only in the current data: nothing to compare it with (not counted in the verdict)")
        return result
    if cur_type is None:
        result = ColumnResult(column, "numeric" if types.is_measure(ref_type) else "categorical", "presence",
                              ref_type, None, schema_drift=True)
        result.notes.append("missing from the current data (counted as drifted)")
        return result
    how = types.compare(ref_type, cur_type)
    if how.refusal:
        return _type_changed(column, ref_type, cur_type, how.refusal)
    notes = [how.note] if how.note else []
    if how.measure:
        result = _measured(engine, config, column, ref, cur, how, notes)
    else:
        ref_lab, cur_lab = ref.text_vc(column), cur.text_vc(column)
        try:
            result = _categorical(engine, config, column, ref_lab, cur_lab)
        finally:
            engine.drop(ref_lab, cur_lab)
        if rule.kind == "numeric":
            result.notes.insert(0, f"kind numeric was asked for, but {ref_type} holds neither numbers nor times: "
                                   "compared as categories")
    result.ref_type, result.cur_type = ref_type, cur_type
    result.notes[:0] = notes
    return result


def _type_changed(column: str, ref_type: str, cur_type: str, sentence: str) -> ColumnResult:
    result = ColumnResult(column, None, "type", ref_type, cur_type, schema_drift=True)
    result.notes.append(sentence)
    return result


def _values(engine: Engine, side: SideData, column: str, measure: str,
            parse: bool) -> tuple[str, int, str | None, int]:
    """A side's values as numbers on the measure's scale, with how many did not parse, one of them and how many
    did; text (or a profile that kept text) is parsed."""
    if not parse and not side.stored_as_text(column):
        return side.numeric_vc(column, measure), 0, None, 0
    labels = side.text_vc(column)
    try:
        return engine.parse_labels(labels, measure)
    finally:
        engine.drop(labels)


def _measured(engine: Engine, config: DriftConfig, column: str, ref: SideData, cur: SideData,
              how: types.Comparison, notes: list[str]) -> ColumnResult:
    """Numbers, times, times of day or durations: compared as numbers (or, when few, as categories)."""
    rule = config.rule(column)
    measure = how.measure
    assert measure is not None
    ref_type, cur_type = ref.types[column], cur.types[column]
    ref_vc, bad_ref, odd_ref, good_ref = _values(engine, ref, column, measure, how.parse_ref)
    cur_vc, bad_cur, odd_cur, good_cur = None, 0, None, 0
    try:
        cur_vc, bad_cur, odd_cur, good_cur = _values(engine, cur, column, measure, how.parse_cur)
        for side, parsed, bad, odd, good in (("reference", how.parse_ref, bad_ref, odd_ref, good_ref),
                                             ("current data", how.parse_cur, bad_cur, odd_cur, good_cur)):
            if not parsed:
                continue
            text_type, other = (ref_type, f"the current data's {cur_type}") if side == "reference" else \
                (cur_type, f"the reference's {ref_type}")
            what = types.plural(measure)
            if bad:
                return _type_changed(column, ref_type, cur_type,
                                     f"the {side} holds {text_type} and {bad} of its values (such as {odd!r}) are "
                                     f"not {what} like {other}: they cannot be compared (counted as drifted)")
            if good:  # all null: nothing was read, and the null rate decides
                notes.append(f"the {side} holds {text_type}, and every value reads as one of the {what} of {other}: "
                             f"compared as {what}")
        rs = engine.numeric_summary(ref_vc)
        ref_vc = engine.compact(ref_vc, rs.rows, rs.distinct)
        kind = rule.kind
        if kind is None and rule.test == "chi2":
            kind = "categorical"
        elif kind is None and rule.test in ("ks", "wasserstein"):
            kind = "numeric"
        elif kind is None:
            kind = "numeric" if rs.distinct > config.low_cardinality else "categorical"
        if kind == "numeric":
            return _numeric(engine, config, column, ref_vc, cur_vc, rs)
        ref_lab, cur_lab = engine.labels_from_numbers(ref_vc, measure), engine.labels_from_numbers(cur_vc, measure)
        try:
            result = _categorical(engine, config, column, ref_lab, cur_lab)
        finally:
            engine.drop(ref_lab, cur_lab)
        if rule.kind is None and rule.test is None:
            result.notes.insert(0, f"{types.plural(measure)} with {rs.distinct} distinct reference values "
                                   f"(<= low_cardinality {config.low_cardinality}): compared as categories")
        return result
    finally:
        engine.drop(ref_vc, cur_vc)


def _null_rates(result: ColumnResult, ref_rows: int, ref_nulls: int, cur_rows: int, cur_nulls: int) -> bool:
    """Record the null rates; False when a side has no rows (nothing can be compared)."""
    result.stats["null_rate_ref"] = _share(ref_nulls, ref_rows)
    result.stats["null_rate_cur"] = _share(cur_nulls, cur_rows)
    result.stats["n_ref"], result.stats["n_cur"] = ref_rows - ref_nulls, cur_rows - cur_nulls
    for rows, side in ((ref_rows, "reference"), (cur_rows, "current data")):
        if rows == 0:
            result.notes.append(f"the {side} has no rows: nothing compared (not counted in the verdict)")
            result.no_rows = True
    return not result.no_rows


def _numeric(engine: Engine, config: DriftConfig, column: str, ref_vc: str, cur_vc: str,
             rs: NumericSummary) -> ColumnResult:
    rule = config.rule(column)
    cs = engine.numeric_summary(cur_vc)
    test = rule.test or ("ks" if rs.finite <= config.small_sample else "wasserstein")
    result = ColumnResult(column, "numeric", test)
    s = result.stats
    if not _null_rates(result, rs.rows, rs.nulls, cs.rows, cs.nulls):
        return result
    s["n_ref"], s["n_cur"] = rs.finite, cs.finite
    s["inf_ref"], s["inf_cur"] = rs.pos_inf + rs.neg_inf, cs.pos_inf + cs.neg_inf
    if s["inf_ref"] or s["inf_cur"]:
        result.notes.append(f"infinite values (reference {s['inf_ref']}, current {s['inf_cur']}) are in the outer "
                            "bins of PSI and JS and out of range, but not in KS or Wasserstein")
    if rs.finite == 0 or cs.finite == 0:
        side = "reference" if rs.finite == 0 else "current data"
        result.notes.append(f"the {side} has no finite values: PSI, KS, Wasserstein and JS not computed")
        return result
    bins = rule.bins or config.bins
    max_gap, w_raw, quantiles, medians = engine.ks_wasserstein(ref_vc, cur_vc, rs.finite, cs.finite, bins)
    s["mean_ref"], s["mean_cur"] = rs.mean, cs.mean
    s["median_ref"], s["median_cur"] = medians
    edges = stats.quantile_edges(quantiles)
    ref_bins, cur_bins = engine.bin_counts(ref_vc, edges), engine.bin_counts(cur_vc, edges)
    if len(edges) + 1 < bins:
        result.notes.append(f"{len(edges) + 1} bins instead of {bins}: reference quantiles repeat (ties)")
    s["psi"] = stats.psi(ref_bins, cur_bins, config.psi_epsilon)
    s["js"] = stats.js_distance(ref_bins, cur_bins)
    s["ks_d"] = stats.ks_statistic(max_gap, rs.finite, cs.finite)
    s["ks_p"], s["ks_method"] = stats.ks_pvalue(max_gap, rs.finite, cs.finite)
    s["wasserstein_raw"] = w_raw
    s["wasserstein"] = stats.normalised_wasserstein(w_raw, rs.std or 0.0, config.wasserstein_std_floor)
    if (rs.std or 0.0) < config.wasserstein_std_floor:
        result.notes.append(f"reference standard deviation {rs.std:.3g} is below the floor "
                            f"{config.wasserstein_std_floor:g}: Wasserstein is divided by the floor")
    outside = engine.out_of_range(cur_vc, rs.min, rs.max)
    s["out_of_range_share"] = _share(outside, cs.rows - cs.nulls)
    ref_total, cur_total = sum(ref_bins), sum(cur_bins)
    # numpy's convention: bins + 1 edges; the outer two are the extreme finite values of both sides
    # (the outer bins are open: values beyond them, and the infinities, are counted there).
    bounds = [min(rs.min, cs.min, edges[0]), *edges, max(rs.max, cs.max, edges[-1])]
    result.histogram = {"edges": bounds, "reference": [c / ref_total for c in ref_bins],
                        "current": [c / cur_total for c in cur_bins]}
    result.test_value = {"ks": s["ks_p"], "wasserstein": s["wasserstein"], "psi": s["psi"], "js": s["js"]}[test]
    return result


def _categorical(engine: Engine, config: DriftConfig, column: str, ref_lab: str, cur_lab: str) -> ColumnResult:
    rule = config.rule(column)
    rs = engine.category_summary(ref_lab, config.max_categories)
    cs = engine.category_summary(cur_lab, config.max_categories)
    test = rule.test if rule.test in ("chi2", "js", "psi") else None
    test = test or ("chi2" if rs.rows - rs.nulls <= config.small_sample else "js")
    result = ColumnResult(column, "categorical", test)
    if rule.test and rule.test != test:
        result.notes.append(f"test {rule.test} needs numbers: {test} used instead")
    s = result.stats
    if not _null_rates(result, rs.rows, rs.nulls, cs.rows, cs.nulls):
        return result
    if rs.counts is None:
        result.notes.append(f"more than max_categories ({config.max_categories}) distinct reference values "
                            f"({rs.distinct}): categories not compared")
        return result
    pooled = cs.counts is None
    if pooled:  # too many current categories to fetch: those unseen in the reference are pooled into one
        counts = engine.counts_of_reference_categories(cur_lab, ref_lab)
        counts[UNSEEN] = (cs.rows - cs.nulls) - sum(counts.values())
        cs = CategorySummary(cs.rows, cs.nulls, cs.distinct, {k: v for k, v in counts.items() if v or k != UNSEEN})
        result.notes.append(f"{cs.distinct} distinct current values (more than max_categories "
                            f"{config.max_categories}): categories unseen in the reference are pooled as {UNSEEN} "
                            "in chi-square, JS and PSI")
    if not rs.counts or not cs.counts:
        side = "reference" if not rs.counts else "current data"
        result.notes.append(f"the {side} has only nulls: chi-square, JS and PSI not computed")
        return result
    seen = sorted(rs.counts, key=lambda c: (-rs.counts[c], c))
    unseen = sorted((c for c in cs.counts if c not in rs.counts), key=lambda c: (-cs.counts[c], c))
    categories = seen + unseen
    ref_counts = [rs.counts.get(c, 0) for c in categories]
    cur_counts = [cs.counts.get(c, 0) for c in categories]
    chi = stats.chi2_homogeneity(ref_counts, cur_counts)
    if chi is not None:
        s["chi2"], s["chi2_p"], s["chi2_dof"] = chi
    s["js"] = stats.js_distance(ref_counts, cur_counts)
    s["psi"] = stats.psi(ref_counts, cur_counts, config.psi_epsilon)
    cur_total, ref_total = sum(cur_counts), sum(ref_counts)
    unseen_rows = sum(cs.counts[c] for c in unseen)
    s["unseen_share"] = unseen_rows / cur_total
    if unseen and not pooled:
        shown = ", ".join(repr(c) for c in unseen[:3]) + (", ..." if len(unseen) > 3 else "")
        result.notes.append(f"{len(unseen)} categor{'y' if len(unseen) == 1 else 'ies'} only in the current data ({shown}): "
                            f"{s['unseen_share']:.1%} of its values")
    top = sorted(categories, key=lambda c: (-(rs.counts.get(c, 0) + cs.counts.get(c, 0)), c))[:HISTOGRAM_CATEGORIES]
    hist_ref = [rs.counts.get(c, 0) / ref_total for c in top]
    hist_cur = [cs.counts.get(c, 0) / cur_total for c in top]
    if len(categories) > len(top):
        top = top + ["(other)"]
        hist_ref.append(max(0.0, 1.0 - sum(hist_ref)))
        hist_cur.append(max(0.0, 1.0 - sum(hist_cur)))
    result.histogram = {"categories": top, "reference": hist_ref, "current": hist_cur}
    result.test_value = {"chi2": s["chi2_p"], "js": s["js"], "psi": s["psi"]}[test]
    return result
