"""Within-table fidelity (Suk et al., section 3.4.1 and Table 2).

Every score lies in [0, 1], 1 meaning the synthetic table reproduces the real one:

=========================  =================================================================================
KS complement (KSC)        ``1 - KS``, KS the largest gap between the two empirical CDFs (numerical columns)
TV complement (TVC)        ``1 - TVD``, ``TVD = 1/2 sum_k |p_k^real - p_k^syn|`` (binary / categorical / ordinal)
correlation similarity     ``1 - |r^syn - r^real| / 2``, Pearson r (numerical x numerical)
contingency similarity     ``1 - TVD`` of the joint cell proportions (pairs with at least one category column;
                           numerical columns binned into 10 equal-width bins over the real range, the outer
                           bins open, as SDMetrics' ContingencySimilarity)
eta-squared similarity     ``1 - |eta2^syn - eta2^real|``, ``eta2 = SS_between / SS_total`` of the numerical
                           column across the categories (numerical x category), eq. 5
MI similarity              one number per table: the mutual-information matrices of all columns (numerical
                           columns binned as above) with zero diagonal, each normalised to sum 1, and
                           ``1 - TVD`` between them (Yang et al. 2024; eq. 6)
=========================  =================================================================================

The definitions of KSC, TVC, correlation and contingency similarity are SDMetrics' (KSComplement,
TVComplement, CorrelationSimilarity, ContingencySimilarity; docs.sdv.dev/sdmetrics), re-implemented here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from ._common import N_BINS, discretize


# ------------------------------------------------------------------------------------------ marginal
def ks_complement(real, syn) -> float:
    """``1 - sup_x |F_real(x) - F_syn(x)|`` (two-sample KS statistic)."""
    a = np.sort(np.asarray(real, dtype=float))
    b = np.sort(np.asarray(syn, dtype=float))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(1.0 - np.max(np.abs(fa - fb)))


def tv_complement(real: pd.Series, syn: pd.Series) -> float:
    """``1 - 1/2 sum_k |p_k - q_k|`` over the categories of a category column."""
    r, s, k = discretize(real, syn, "categorical")
    p = np.bincount(r[r >= 0], minlength=k) / len(r)
    q = np.bincount(s[s >= 0], minlength=k) / len(s)
    return float(1.0 - 0.5 * np.abs(p - q).sum())


# ------------------------------------------------------------------------------------------ pairwise
def correlation_similarity(real_a, real_b, syn_a, syn_b) -> float:
    """``1 - |r_syn - r_real| / 2`` with Pearson correlations."""
    r = np.corrcoef(np.asarray(real_a, float), np.asarray(real_b, float))[0, 1]
    s = np.corrcoef(np.asarray(syn_a, float), np.asarray(syn_b, float))[0, 1]
    r, s = np.nan_to_num(r), np.nan_to_num(s)
    return float(1.0 - abs(s - r) / 2.0)


def _joint(codes_a, codes_b, ka, kb) -> np.ndarray:
    return np.bincount(codes_a * kb + codes_b, minlength=ka * kb).reshape(ka, kb) / len(codes_a)


def contingency_similarity(real: pd.DataFrame, syn: pd.DataFrame, a: str, b: str, kinds: dict, bins: int = N_BINS) -> float:
    """``1 - TVD`` between the joint proportions of two columns (numerical ones binned on real edges)."""
    ra, sa, ka = discretize(real[a], syn[a], kinds[a], bins)
    rb, sb, kb = discretize(real[b], syn[b], kinds[b], bins)
    return float(1.0 - 0.5 * np.abs(_joint(ra, rb, ka, kb) - _joint(sa, sb, ka, kb)).sum())


def eta_squared(y, groups) -> float:
    """``SS_between / SS_total`` of ``y`` across the levels of ``groups`` (integer codes)."""
    y = np.asarray(y, float)
    g = np.asarray(groups)
    ok = g >= 0
    y, g = y[ok], g[ok]
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst == 0:
        return 0.0
    n = np.bincount(g)
    sums = np.bincount(g, weights=y)
    nz = n > 0
    ssb = float(np.sum(sums[nz] ** 2 / n[nz]) - y.sum() ** 2 / y.size)
    return max(0.0, min(1.0, ssb / sst))


def eta_squared_similarity(real_num, real_cat, syn_num, syn_cat) -> float:
    """``1 - |eta2_syn - eta2_real|`` (eq. 5); the category columns as integer codes on a common support."""
    rc, sc, _ = discretize(pd.Series(real_cat), pd.Series(syn_cat), "categorical")
    return float(1.0 - abs(eta_squared(syn_num, sc) - eta_squared(real_num, rc)))


def mutual_information(a_codes, b_codes, ka, kb) -> float:
    """Plug-in mutual information (nats) of two discrete variables."""
    p = _joint(a_codes, b_codes, ka, kb)
    pa, pb = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (pa @ pb)[nz])))


def mi_matrix(frame: pd.DataFrame, ref: pd.DataFrame, kinds: dict, bins: int = N_BINS) -> np.ndarray:
    """Mutual-information matrix of ``frame``'s columns, numerical columns binned on ``ref``'s edges."""
    cols = list(kinds)
    codes = {}
    for c in cols:
        _, s, k = discretize(ref[c], frame[c], kinds[c], bins)
        codes[c] = (s, k)
    m = np.zeros((len(cols), len(cols)))
    for i, j in itertools.combinations(range(len(cols)), 2):
        (a, ka), (b, kb) = codes[cols[i]], codes[cols[j]]
        m[i, j] = m[j, i] = mutual_information(a, b, ka, kb)
    return m


def mi_similarity(real: pd.DataFrame, syn: pd.DataFrame, kinds: dict, bins: int = N_BINS) -> float:
    """``1 - TVD(M_syn, M_real)`` of the zero-diagonal MI matrices normalised to sum 1 (eq. 6)."""
    if len(kinds) < 2:
        return float("nan")
    mr = mi_matrix(real, real, kinds, bins)
    ms = mi_matrix(syn, real, kinds, bins)
    if mr.sum() <= 0 or ms.sum() <= 0:
        return float(mr.sum() <= 0 and ms.sum() <= 0)
    return float(1.0 - 0.5 * np.abs(mr / mr.sum() - ms / ms.sum()).sum())


# ------------------------------------------------------------------------------------------ a table
def pair_kind(ka: str, kb: str) -> str:
    na, nb = ka == "numerical", kb == "numerical"
    return "num-num" if na and nb else ("num-cat" if na or nb else "cat-cat")


def pairwise_scores(real: pd.DataFrame, syn: pd.DataFrame, pairs, kinds: dict, bins: int = N_BINS):
    """Correlation / contingency / eta-squared similarity rows for the given column pairs.

    Yields ``(metric, pair_kind, a, b, value)``: num-num pairs get correlation similarity; pairs with a
    category column get contingency similarity; num-cat pairs also get eta-squared similarity.
    """
    for a, b in pairs:
        pk = pair_kind(kinds[a], kinds[b])
        if pk == "num-num":
            yield "correlation similarity", pk, a, b, correlation_similarity(real[a], real[b], syn[a], syn[b])
            continue
        yield "contingency similarity", pk, a, b, contingency_similarity(real, syn, a, b, kinds, bins)
        if pk == "num-cat":
            num, cat = (a, b) if kinds[a] == "numerical" else (b, a)
            yield "eta-squared similarity", pk, a, b, eta_squared_similarity(real[num], real[cat], syn[num], syn[cat])


def within_table(real: pd.DataFrame, syn: pd.DataFrame, kinds: dict, table: str, bins: int = N_BINS) -> list[dict]:
    """All within-table fidelity rows of one table (long format)."""
    rows = []
    for col, kind in kinds.items():
        if kind == "numerical":
            rows.append(dict(metric="KSC", subdomain="marginal", variables=col, value=ks_complement(real[col], syn[col])))
        else:
            rows.append(dict(metric="TVC", subdomain="marginal", variables=col, value=tv_complement(real[col], syn[col])))
    for metric, _, a, b, v in pairwise_scores(real, syn, itertools.combinations(kinds, 2), kinds, bins):
        rows.append(dict(metric=metric, subdomain="pairwise", variables=f"{a} × {b}", value=v))
    if len(kinds) >= 2:
        rows.append(dict(metric="MI similarity", subdomain="pairwise", variables="all", value=mi_similarity(real, syn, kinds, bins)))
    for r in rows:
        r.update(domain="within-table", level=table)
    return rows


# ------------------------------------------------------------------------------------------ validity
def out_of_range_share(real, syn) -> float:
    """Share of synthetic values outside ``[min, max]`` of the real column (0 ideal; a validity check, not a
    similarity: e.g. a recomposed ``deviation + school mean`` can leave the range of either part)."""
    r = np.asarray(real, dtype=float)
    s = np.asarray(syn, dtype=float)
    if s.size == 0:
        return float("nan")
    return float(np.mean((s < np.nanmin(r)) | (s > np.nanmax(r))))


def range_rows(real: pd.DataFrame, syn: pd.DataFrame, kinds: dict[str, str], table: str) -> list[dict]:
    """``share outside the real range`` per numerical column of one table (domain ``validity``)."""
    return [dict(metric="share outside the real range", variables=c, level=table, domain="validity", subdomain="range",
                 value=out_of_range_share(real[c], syn[c]))
            for c, k in kinds.items() if k == "numerical"]
