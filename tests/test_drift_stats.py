"""The drift statistics equal scipy's (the reference implementation) on generated data.

Two levels: the pure functions over counts, and the whole DuckDB pipeline
(files in, report out) against scipy run on the raw arrays.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from drift_data import rng, write
from mlfleet.core.drift import stats
from mlfleet.core.drift.check import run_check
from mlfleet.core.drift.config import DriftConfig
from mlfleet.core.drift.sources import resolve_files

TOL = 1e-9


def _gap(x: np.ndarray, y: np.ndarray) -> int:
    """The integer KS numerator max |C_x n_y - C_y n_x| the scan computes, here from raw arrays."""
    xs, ys = np.sort(x), np.sort(y)
    merged = np.concatenate([xs, ys])
    cx = np.searchsorted(xs, merged, side="right").astype(np.int64)
    cy = np.searchsorted(ys, merged, side="right").astype(np.int64)
    return int(np.max(np.abs(cx * len(y) - cy * len(x))))


# ------------------------------------------------------------ pure functions

@pytest.mark.parametrize("m,n,shift", [(40, 40, 0.5), (37, 91, 0.2), (500, 800, 0.1), (3000, 1000, 0.05),
                                       (1200, 1200, 0.0), (10_000, 2_000, 0.04)])
def test_ks_exact_pvalue_equals_scipy_auto(m: int, n: int, shift: float) -> None:
    g = rng(m + n)
    x, y = g.normal(size=m), g.normal(shift, size=n)
    expected = sps.ks_2samp(x, y)  # method='auto': exact here, as max(m, n) <= 10,000
    gap = _gap(x, y)
    p, method = stats.ks_pvalue(gap, m, n)
    assert method == "exact"
    assert abs(stats.ks_statistic(gap, m, n) - expected.statistic) < TOL
    assert abs(p - expected.pvalue) < TOL


@pytest.mark.parametrize("m,n,shift", [(20_000, 3_000, 0.03), (50_000, 40_000, 0.01), (15_000, 15_000, 0.0)])
def test_ks_asymptotic_pvalue_is_close_to_scipy(m: int, n: int, shift: float) -> None:
    """Above 10,000 values both switch to an asymptotic law; ours (Stephens-corrected Kolmogorov) agrees to 1e-3."""
    g = rng(m)
    x, y = g.normal(size=m), g.normal(shift, size=n)
    expected = sps.ks_2samp(x, y)
    gap = _gap(x, y)
    p, method = stats.ks_pvalue(gap, m, n)
    assert method == "asymptotic"
    assert abs(stats.ks_statistic(gap, m, n) - expected.statistic) < TOL
    assert abs(p - expected.pvalue) < 1e-3


def test_js_distance_equals_scipy_base_2() -> None:
    g = rng(3)
    for _ in range(20):
        k = int(g.integers(2, 30))
        p, q = g.integers(0, 1000, k), g.integers(0, 1000, k)
        p[0], q[-1] = 0, 0  # empty bins on each side
        assert abs(stats.js_distance(p, q) - jensenshannon(p, q, base=2)) < TOL
    assert stats.js_distance([5, 5], [5, 5]) == 0.0
    assert abs(stats.js_distance([1, 0], [0, 1]) - 1.0) < TOL
    assert stats.js_distance([0, 0], [1, 2]) is None


@pytest.mark.parametrize("table", [
    [[120, 80, 50, 10], [100, 95, 60, 3]],
    [[30, 70], [45, 55]],  # dof 1: Yates' correction, as chi2_contingency's default
    [[3, 1], [1, 3]],  # dof 1 with |o - e| below 0.5 in some cells
    [[500, 0, 20], [480, 7, 25]],  # a category only in the current data
])
def test_chi2_equals_chi2_contingency(table: list[list[int]]) -> None:
    expected = sps.chi2_contingency(np.array(table))
    stat, p, dof = stats.chi2_homogeneity(table[0], table[1])
    assert dof == expected.dof
    assert abs(stat - expected.statistic) < TOL * max(1.0, expected.statistic)
    assert abs(p - expected.pvalue) < TOL


def test_chi2_edge_tables() -> None:
    assert stats.chi2_homogeneity([10], [7]) == (0.0, 1.0, 0)  # one category: nothing can differ
    assert stats.chi2_homogeneity([0, 0], [3, 4]) is None  # an empty side
    for x, k in [(0.5, 1), (3.0, 2), (25.0, 7), (400.0, 350), (5000.0, 4000), (1e-3, 30)]:
        assert abs(stats.chi2_sf(x, k) - sps.chi2.sf(x, k)) < TOL


def test_psi_is_the_hand_computation() -> None:
    ref, cur = [50, 30, 20], [40, 40, 20]
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3) + 0.0
    assert abs(stats.psi(ref, cur) - by_hand) < TOL
    # An empty bin takes epsilon (1e-4) as its share instead of 0, so the term stays finite.
    ref, cur = [100, 0], [90, 10]
    by_hand = (0.9 - 1.0) * math.log(0.9 / 1.0) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert abs(stats.psi(ref, cur, epsilon=1e-4) - by_hand) < TOL
    assert stats.psi([1, 2, 3], [2, 4, 6]) == 0.0
    assert stats.psi([], []) is None


def test_quantile_edges_merge_repeated_quantiles() -> None:
    assert stats.quantile_edges([1.0, 3.0, 5.0]) == [1.0, 3.0, 5.0]
    assert stats.quantile_edges([1.0, 1.0, 3.0, 3.0]) == [1.0, 3.0]  # ties: fewer bins
    assert stats.quantile_edges([7.0] * 9) == [7.0]  # a constant column: one edge, two bins


def test_multiple_testing_policies() -> None:
    p = {"a": 0.001, "b": 0.02, "c": 0.04, "d": 0.5}
    alpha = dict.fromkeys(p, 0.05)
    assert stats.adjusted_alphas(p, alpha, "none") == alpha
    assert stats.adjusted_alphas(p, alpha, "bonferroni") == dict.fromkeys(p, 0.0125)
    bh = stats.adjusted_alphas(p, alpha, "bh")  # ranks: .001 <= .0125, .02 <= .025, .04 <= .0375? no -> k = 2
    assert sorted(name for name in p if p[name] < bh[name]) == ["a", "b"]


# ----------------------------------------------------- through DuckDB, from files

def test_pipeline_numeric_statistics_equal_scipy(tmp_path: Path) -> None:
    g = rng(11)
    ref_x, cur_x = g.normal(10, 2, 4000), g.normal(10.4, 2.2, 1500)
    ref_i, cur_i = g.integers(0, 50, 4000), g.integers(3, 60, 1500)  # integers with ties
    write(tmp_path / "ref.parquet", {"x": ref_x, "i": ref_i})
    write(tmp_path / "cur.csv", {"x": cur_x, "i": cur_i})
    report = run_check(DriftConfig(), resolve_files(str(tmp_path / "ref.parquet"), "reference"),
                       resolve_files(str(tmp_path / "cur.csv"), "current"))
    cols = {c["column"]: c for c in report["columns"]}
    for name, ref, cur in (("x", ref_x, cur_x), ("i", ref_i.astype(float), cur_i.astype(float))):
        s = cols[name]["stats"]
        ks = sps.ks_2samp(ref, cur)
        assert abs(s["ks_d"] - ks.statistic) < TOL
        assert s["ks_method"] == "exact" and abs(s["ks_p"] - ks.pvalue) < TOL
        raw = sps.wasserstein_distance(ref, cur)
        assert abs(s["wasserstein_raw"] - raw) < TOL * max(1.0, raw)
        assert abs(s["wasserstein"] - raw / np.std(ref)) < TOL
        bounds = cols[name]["histogram"]["edges"]
        assert bounds[0] == min(ref.min(), cur.min()) and bounds[-1] == max(ref.max(), cur.max())
        edges = bounds[1:-1]  # the interior edges: the reference quantiles
        ref_bins = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=len(edges) + 1)
        cur_bins = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=len(edges) + 1)
        assert abs(s["js"] - jensenshannon(ref_bins, cur_bins, base=2)) < TOL
        assert abs(s["psi"] - stats.psi(ref_bins, cur_bins)) < TOL
        hand_edges = []
        srt = np.sort(ref)
        for k in range(1, 10):
            e = float(srt[math.ceil(k * len(ref) / 10) - 1])
            if not hand_edges or e > hand_edges[-1]:
                hand_edges.append(e)
        assert edges == hand_edges
        assert s["out_of_range_share"] == pytest.approx(np.mean((cur < ref.min()) | (cur > ref.max())), abs=TOL)


def test_pipeline_categorical_statistics_equal_scipy(tmp_path: Path) -> None:
    g = rng(12)
    ref = g.choice(["a", "b", "c", "d"], 900, p=[0.4, 0.3, 0.2, 0.1])
    cur = g.choice(["a", "b", "c", "e"], 700, p=[0.3, 0.3, 0.3, 0.1])
    write(tmp_path / "ref.jsonl", {"s": ref.astype(object)})
    write(tmp_path / "cur.parquet", {"s": cur.astype(object)})
    report = run_check(DriftConfig(), resolve_files(str(tmp_path / "ref.jsonl"), "reference"),
                       resolve_files(str(tmp_path / "cur.parquet"), "current"))
    col = report["columns"][0]
    cats = ["a", "b", "c", "d", "e"]
    table = np.array([[np.sum(ref == c) for c in cats], [np.sum(cur == c) for c in cats]])
    expected = sps.chi2_contingency(table)
    assert col["kind"] == "categorical" and col["test"] == "chi2"  # 900 reference values <= small_sample
    assert abs(col["stats"]["chi2"] - expected.statistic) < TOL * expected.statistic
    assert abs(col["stats"]["chi2_p"] - expected.pvalue) < TOL
    assert abs(col["stats"]["js"] - jensenshannon(table[0], table[1], base=2)) < TOL
    assert abs(col["stats"]["psi"] - stats.psi(table[0], table[1])) < TOL
    assert col["stats"]["unseen_share"] == pytest.approx(np.mean(cur == "e"), abs=TOL)
    assert col["statistic"] == col["stats"]["chi2_p"] and col["drifted"] is True
