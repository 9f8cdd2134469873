"""Between-table fidelity (Suk et al., section 3.4.2 and Table 3).

=============================  =========================================================================
referential integrity          share of child rows whose foreign key names an existing parent row
cardinality shape similarity   KS complement of the number of children per parent (parents without
                               children count as 0), as SDMetrics' CardinalityShapeSimilarity
k-hop correlation / contingency  the within-table pair metrics for pairs (ancestor column, descendant column)
/ eta-squared similarity       k levels apart, computed on the descendant table with its ancestors'
                               variables joined on: **each pair is weighted per child row** (per student),
                               so a school counts as many times as it has students, as in ClavaDDPM's k-hop
                               correlation on the denormalised table
k-hop MI similarity            ``1 - TVD`` of the cross-level block of the MI matrix (ancestor columns x
                               descendant columns), each block normalised to sum 1
ICC similarity                 ``1 - |ICC_syn^(1/3) - ICC_real^(1/3)|`` (eq. 8) for every variable of every
                               table below the top, relative to its parent (:mod:`mlsimkit.icc`: ANOVA
                               ICC(1) for numerical, latent-scale with pi^2/3 for binary, category dummies
                               weighted by p(1-p) for categorical, integer codes for ordinal)
reliability similarity         ``1 - |Rel_syn - Rel_real|`` (eq. 10), ``Rel = tau2 / (tau2 + sigma2 / n_bar)``
=============================  =========================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import icc as _icc
from ..data import MultilevelData
from ._common import N_BINS, discretize, kinds_of
from .within import ks_complement, mutual_information, pairwise_scores


def referential_integrity(data: MultilevelData, table: str) -> float:
    """Share of ``table``'s rows whose foreign key exists among the parent's primary keys."""
    t = data.schema.tables[table]
    pk = data.schema.tables[t.parent].primary_key[0]
    return float(data[table][t.foreign_key].isin(data[t.parent][pk]).mean())


def children_per_parent(data: MultilevelData, table: str) -> np.ndarray:
    t = data.schema.tables[table]
    pk = data.schema.tables[t.parent].primary_key[0]
    counts = data[table][t.foreign_key].value_counts()
    return counts.reindex(data[t.parent][pk].to_numpy(), fill_value=0).to_numpy(float)


def cardinality_shape_similarity(real: MultilevelData, syn: MultilevelData, table: str) -> float:
    """KS complement of the children-per-parent distributions."""
    return ks_complement(children_per_parent(real, table), children_per_parent(syn, table))


def joined_with_ancestors(data: MultilevelData, table: str) -> pd.DataFrame:
    """``table``'s rows with the variables of all its ancestors joined on (one row per ``table`` row)."""
    schema = data.schema
    out = data[table]
    t = schema.tables[table]
    while t.parent is not None:
        parent = schema.tables[t.parent]
        out = out.merge(data[t.parent], on=t.foreign_key, how="left", sort=False, suffixes=("", "_p"))
        t = parent
    return out


def _ancestors(schema, table):
    """``[(ancestor table, k)]`` for k = 1, 2, ..."""
    out, t, k = [], schema.tables[table], 1
    while t.parent is not None:
        out.append((t.parent, k))
        t, k = schema.tables[t.parent], k + 1
    return out


def khop_rows(real: MultilevelData, syn: MultilevelData, bins: int = N_BINS) -> list[dict]:
    """k-hop correlation / contingency / eta-squared / MI similarity for every (ancestor, descendant) pair."""
    schema = real.schema
    rows = []
    for table in schema.levels[1:]:
        kinds_t = kinds_of(real, table)
        jr, js = joined_with_ancestors(real, table), joined_with_ancestors(syn, table)
        for anc, k in _ancestors(schema, table):
            kinds_a = kinds_of(real, anc)
            kinds = {**kinds_a, **kinds_t}
            pairs = [(a, b) for a in kinds_a for b in kinds_t]
            for metric, _, a, b, v in pairwise_scores(jr, js, pairs, kinds, bins):
                rows.append(dict(metric=f"k-hop {metric}", variables=f"{a} × {b}", value=v, k=k,
                                 level=f"{anc}→{table}"))
            v = _cross_mi_similarity(jr, js, kinds_a, kinds_t, bins)
            rows.append(dict(metric="k-hop MI similarity", variables="all", value=v, k=k, level=f"{anc}→{table}"))
    for r in rows:
        r.update(domain="between-table", subdomain="k-hop")
    return rows


def _cross_mi(frame, ref, kinds_a, kinds_b, bins):
    codes = {c: discretize(ref[c], frame[c], kind, bins)[1:] for c, kind in {**kinds_a, **kinds_b}.items()}
    m = np.zeros((len(kinds_a), len(kinds_b)))
    for i, a in enumerate(kinds_a):
        for j, b in enumerate(kinds_b):
            (ca, ka), (cb, kb) = codes[a], codes[b]
            m[i, j] = mutual_information(ca, cb, ka, kb)
    return m


def _cross_mi_similarity(real, syn, kinds_a, kinds_b, bins) -> float:
    mr = _cross_mi(real, real, kinds_a, kinds_b, bins)
    ms = _cross_mi(syn, real, kinds_a, kinds_b, bins)
    if mr.sum() <= 0 or ms.sum() <= 0:
        return float(mr.sum() <= 0 and ms.sum() <= 0)
    return float(1.0 - 0.5 * np.abs(mr / mr.sum() - ms / ms.sum()).sum())


def icc_similarity(icc_syn: float, icc_real: float) -> float:
    """``1 - |cbrt(ICC_syn) - cbrt(ICC_real)|`` (eq. 8); negative ICCs are truncated at 0."""
    return float(1.0 - abs(np.cbrt(max(icc_syn, 0.0)) - np.cbrt(max(icc_real, 0.0))))


def reliability_similarity(rel_syn: float, rel_real: float) -> float:
    """``1 - |Rel_syn - Rel_real|`` (eq. 10)."""
    return float(1.0 - abs(rel_syn - rel_real))


def icc_tables(data: MultilevelData) -> dict[str, pd.DataFrame]:
    """:func:`mlsimkit.icc.icc_table` of every table below the top."""
    return {t: _icc.icc_table(data, t).set_index("variable") for t in data.schema.levels[1:]}


def icc_rows(real: MultilevelData, syn: MultilevelData, real_iccs: dict | None = None) -> list[dict]:
    """ICC and reliability similarity per variable; the raw ICCs and reliabilities ride along."""
    real_iccs = real_iccs or icc_tables(real)
    syn_iccs = icc_tables(syn)
    rows = []
    for table in real.schema.levels[1:]:
        parent = real.schema.tables[table].parent
        r, s = real_iccs[table], syn_iccs[table]
        for var in r.index:
            rows.append(dict(metric="ICC similarity", variables=var, value=icc_similarity(s.loc[var, "icc"], r.loc[var, "icc"]),
                             stat_real=r.loc[var, "icc"], stat_syn=s.loc[var, "icc"], level=f"{parent}→{table}"))
            rows.append(dict(metric="reliability similarity", variables=var,
                             value=reliability_similarity(s.loc[var, "reliability"], r.loc[var, "reliability"]),
                             stat_real=r.loc[var, "reliability"], stat_syn=s.loc[var, "reliability"], level=f"{parent}→{table}"))
    for row in rows:
        row.update(domain="between-table", subdomain="clustering")
    return rows


def between_tables(real: MultilevelData, syn: MultilevelData, *, real_iccs: dict | None = None, bins: int = N_BINS) -> list[dict]:
    """All between-table fidelity rows."""
    rows = []
    for table in real.schema.levels[1:]:
        parent = real.schema.tables[table].parent
        lvl = f"{parent}→{table}"
        rows.append(dict(metric="referential integrity", variables=real.schema.tables[table].foreign_key,
                         value=referential_integrity(syn, table), level=lvl, domain="between-table", subdomain="structure"))
        rows.append(dict(metric="cardinality shape similarity", variables="cluster size",
                         value=cardinality_shape_similarity(real, syn, table), level=lvl, domain="between-table",
                         subdomain="structure"))
    rows += khop_rows(real, syn, bins)
    rows += icc_rows(real, syn, real_iccs)
    return rows
