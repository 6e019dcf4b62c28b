"""Drift statistics as pure functions over aggregated data.

Inputs are counts (per bin, per category) or integers that the DuckDB scan
has already reduced the data to; outputs are plain floats. No I/O, no clock,
no globals. Every formula, epsilon and log base is written down in
docs/drift.md; the tests compare each function with scipy.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: ks_2samp's 'auto' switches from the exact distribution to the asymptotic one above this sample size.
KS_EXACT_MAX_N = 10_000


def _as_counts(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(counts, dtype=np.float64)


def psi(ref_counts: Sequence[float], cur_counts: Sequence[float], epsilon: float = 1e-4) -> float | None:
    """Population stability index: sum over bins of (c - r) * ln(c / r).

    ``r`` and ``c`` are the shares of the reference and current counts in
    each bin; a share below ``epsilon`` is raised to ``epsilon`` (only in
    this formula) so that an empty bin gives a large, finite term. Natural
    log. None when either side has no counts at all.
    """
    r, c = _as_counts(ref_counts), _as_counts(cur_counts)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    r = np.maximum(r / r.sum(), epsilon)
    c = np.maximum(c / c.sum(), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def js_distance(ref_counts: Sequence[float], cur_counts: Sequence[float]) -> float | None:
    """Jensen-Shannon distance with log base 2 (so it lies in [0, 1]).

    sqrt((KL(p || m) + KL(q || m)) / 2) with m = (p + q) / 2, where p and q are
    the normalised counts; a zero share contributes 0 (the limit of x log x).
    """
    p, q = _as_counts(ref_counts), _as_counts(cur_counts)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log(a[mask] / m[mask])))

    divergence = (kl(p) + kl(q)) / 2.0 / math.log(2.0)
    return math.sqrt(max(divergence, 0.0))


def chi2_homogeneity(ref_counts: Sequence[float], cur_counts: Sequence[float]) -> tuple[float, float, int] | None:
    """Pearson's chi-square test of homogeneity on the 2 x K table (reference, current) x categories.

    Expected counts are row total * column total / N. With one degree of
    freedom (K = 2) Yates' continuity correction is applied, each cell moved
    toward its expectation by at most 0.5 (scipy's chi2_contingency default).
    A table with one category (dof 0) gives statistic 0 and p = 1.
    Categories empty on both sides are dropped. None when a side is empty.
    Returns (statistic, p-value, degrees of freedom).
    """
    table = np.vstack([_as_counts(ref_counts), _as_counts(cur_counts)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] == 0 or rows.min() <= 0:
        return None
    dof = table.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0, 0
    expected = np.outer(rows, table.sum(axis=0)) / table.sum()
    observed = table
    if dof == 1:
        diff = expected - observed
        observed = observed + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, dof), dof


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square with ``dof`` degrees of freedom: Q(dof/2, x/2)."""
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x): a power series below a + 1, a continued fraction above."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(100_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_prefix)))
    # Modified Lentz for the continued fraction of Q.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, max(0.0, math.exp(log_prefix) * h))


def ks_statistic(max_gap: int, n_ref: int, n_cur: int) -> float:
    """D from the exact integer numerator max |C_ref(x) * n_cur - C_cur(x) * n_ref| over the merged values."""
    return max_gap / (n_ref * n_cur)


def ks_pvalue(max_gap: int, n_ref: int, n_cur: int) -> tuple[float, str]:
    """Two-sided p-value of the two-sample KS test; returns (p, method).

    Method selection is scipy ks_2samp's ``method='auto'``: the exact
    distribution (no ties assumed) when both samples have at most
    10,000 values, the asymptotic one otherwise. ``max_gap`` is the exact
    integer numerator of D (see :func:`ks_statistic`).

    exact: the share of monotone lattice paths from (0, 0) to (n_ref, n_cur)
    that leave the band |i/n_ref - j/n_cur| < D (Hodges 1958), by dynamic
    programming over anti-diagonals with probabilities instead of counts, so
    nothing overflows.

    asymptotic: Kolmogorov's limiting distribution Q(lambda) =
    2 * sum_k (-1)^(k-1) exp(-2 k^2 lambda^2) at lambda = (sqrt(N) + 0.12 +
    0.11 / sqrt(N)) * D with N = n_ref * n_cur / (n_ref + n_cur) (Stephens'
    finite-sample correction). scipy evaluates the exact one-sample law at
    round(N) here; the two agree to about 1e-3 (see docs/drift.md).
    """
    if n_ref <= 0 or n_cur <= 0:
        raise ValueError("both samples need values")
    if max_gap <= 0:
        return 1.0, "exact" if max(n_ref, n_cur) <= KS_EXACT_MAX_N else "asymptotic"
    if max(n_ref, n_cur) <= KS_EXACT_MAX_N:
        return _ks_exact_sf(max_gap, n_ref, n_cur), "exact"
    d = ks_statistic(max_gap, n_ref, n_cur)
    en = n_ref * n_cur / (n_ref + n_cur)
    root = math.sqrt(en)
    return kolmogorov_q((root + 0.12 + 0.11 / root) * d), "asymptotic"


def kolmogorov_q(lam: float) -> float:
    """Kolmogorov's survival function Q(lambda) = P(K > lambda)."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 200):
        term = math.exp(-2.0 * k * k * lam * lam)
        total += term if k % 2 else -term
        if term < 1e-18:
            break
    return min(1.0, max(0.0, 2.0 * total))


def _ks_exact_sf(max_gap: int, m: int, n: int) -> float:
    """P(D >= observed) under H0 for sample sizes m and n, without ties.

    A path point (i, j) is inside when |i * n - j * m| < max_gap. a[i] on
    anti-diagonal k = i + j is the share of paths to (i, j) that stayed inside:
    a(i, j) = a(i-1, j) * i / k + a(i, j-1) * j / k.
    """
    a = np.zeros(m + 1)
    a[0] = 1.0
    left = np.zeros(m + 1)
    for k in range(1, m + n + 1):
        lo, hi = max(0, k - n), min(m, k)
        i = np.arange(lo, hi + 1)
        j = k - i
        left[1:] = a[:-1]
        band = (left[lo:hi + 1] * i + a[lo:hi + 1] * j) / k
        band[np.abs(i * n - j * m) >= max_gap] = 0.0
        a = np.zeros(m + 1)
        a[lo:hi + 1] = band
    return float(min(1.0, max(0.0, 1.0 - a[m])))


def quantile_edges(quantiles: Sequence[float | None]) -> list[float]:
    """Interior bin edges from the reference's exact quantiles, repeats merged.

    ``quantiles[k-1]`` (k = 1 .. bins-1) is the smallest finite reference value
    x with F(x) >= k / bins (the lower empirical quantile, no interpolation),
    as the scan computes it. Repeated values (heavy ties) are merged, so a
    column may get fewer bins; a constant column gets one edge and two bins.
    """
    edges: list[float] = []
    for value in quantiles:
        if value is not None and (not edges or value > edges[-1]):
            edges.append(float(value))
    return edges


def normalised_wasserstein(raw: float, ref_std: float, floor: float) -> float:
    """Wasserstein-1 divided by the reference's standard deviation, never by less than ``floor``."""
    return raw / max(ref_std, floor)


def adjusted_alphas(pvalues: dict[str, float], alphas: dict[str, float], policy: str) -> dict[str, float]:
    """The threshold each p-value column is held to (drifted when p < threshold).

    none: the column's own alpha. bonferroni (the default): alpha / m, with m
    the number of columns decided by a p-value test in this report.
    bh (Benjamini-Hochberg, controls the false discovery rate): with p-values
    ranked 1..m, k is the largest rank whose p_(k) <= k / m * alpha; the
    threshold is then just above k / m * alpha (1 / m * alpha when k = 0), so
    exactly the columns ranked <= k are drifted.
    """
    m = len(pvalues)
    if policy == "none" or m == 0:
        return {name: alphas[name] for name in pvalues}
    if policy == "bonferroni":
        return {name: alphas[name] / m for name in pvalues}
    if policy == "bh":
        ranked = sorted(pvalues, key=lambda name: pvalues[name])
        passed = 0
        for rank, name in enumerate(ranked, start=1):
            if pvalues[name] <= rank / m * alphas[name]:
                passed = rank
        if passed == 0:
            return {name: alphas[name] / m for name in pvalues}
        return {name: math.nextafter(passed / m * alphas[name], math.inf) for name in pvalues}
    raise ValueError(f"unknown multiple-testing policy {policy!r}")
