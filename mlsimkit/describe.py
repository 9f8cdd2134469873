"""Stage 1: describe the real multilevel data — statistics per level, cluster sizes, cross-level correlations.

Everything here returns tables or matplotlib figures for the Stage 1 notebook; nothing is printed.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .data import MultilevelData


def by_level(data: MultilevelData) -> dict[str, pd.DataFrame]:
    """Descriptive statistics per table: numerical columns (n, mean, SD, min, quartiles, max) and the
    category shares of binary / categorical / ordinal columns, one row per (column, statistic)."""
    out = {}
    for name in data.levels:
        t = data.schema.tables[name]
        df = data[name]
        rows = []
        for col in t.data_columns:
            kind = t.columns[col].kind
            s = df[col]
            if kind == "numerical":
                q = s.quantile([0.25, 0.5, 0.75])
                rows.append({"column": col, "kind": kind, "n": int(s.notna().sum()), "mean": s.mean(),
                             "sd": s.std(), "min": s.min(), "q25": q[0.25], "median": q[0.5], "q75": q[0.75],
                             "max": s.max(), "categories": ""})
            else:
                shares = s.value_counts(normalize=True, sort=False)
                txt = ", ".join(f"{k}: {v:.1%}" for k, v in shares.items())
                rows.append({"column": col, "kind": kind, "n": int(s.notna().sum()), "categories": txt})
        out[name] = pd.DataFrame(rows).set_index("column")
    return out


def cluster_size_summary(data: MultilevelData) -> pd.DataFrame:
    """Number of units and the distribution of cluster sizes for every parent-child relation."""
    rows = []
    for name in data.levels[1:]:
        t = data.schema.tables[name]
        sizes = data.cluster_sizes(name)
        rows.append({"relation": f"{name} per {t.parent}", "clusters": len(sizes), "units": int(sizes.sum()),
                     "mean": sizes.mean(), "sd": sizes.std(), "min": sizes.min(), "median": sizes.median(),
                     "max": sizes.max()})
    return pd.DataFrame(rows).set_index("relation")


def plot_cluster_sizes(data: MultilevelData, *, ax=None):
    """Histogram of the number of bottom-level units per cluster (students per school)."""
    sizes = data.cluster_sizes()
    t = data.schema.tables[data.schema.bottom]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    sns.histplot(sizes, bins=min(30, max(5, sizes.nunique())), ax=ax, color="#4C72B0")
    ax.axvline(sizes.mean(), color="k", ls="--", lw=1, label=f"mean {sizes.mean():.1f}")
    ax.set_xlabel(f"{t.name} per {t.parent}")
    ax.set_ylabel(f"number of {t.parent}")
    ax.legend(frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def numeric_join(data: MultilevelData) -> pd.DataFrame:
    """The join-as-one table with every variable numeric: binary columns coded 0/1 (second declared level
    = 1), ordinal columns by level rank, categorical columns as one 0/1 column per non-reference level."""
    joined = data.join_as_one()
    cols = {}
    for name in data.levels:
        t = data.schema.tables[name]
        for col in t.data_columns:
            c = t.columns[col]
            s = joined[col]
            if c.kind == "numerical":
                cols[col] = s.astype(float)
            elif c.kind in ("binary", "ordinal"):
                cols[col] = s.cat.codes.astype(float).where(s.notna())
            else:
                for lev in c.levels[1:]:
                    cols[f"{col}[{lev}]"] = (s == lev).astype(float).where(s.notna())
    return pd.DataFrame(cols)


def cross_level_correlation(data: MultilevelData) -> pd.DataFrame:
    """Pearson correlations of all variables of all levels on the join-as-one table (one row per student,
    so school variables are weighted by school size)."""
    return numeric_join(data).corr()


def plot_correlation_heatmap(data: MultilevelData, *, ax=None):
    """Heatmap of :func:`cross_level_correlation`, with each variable's level in its label."""
    corr = cross_level_correlation(data)
    level_of = {}
    for name in data.levels:
        for col in data.schema.tables[name].data_columns:
            level_of[col] = name
    labels = [f"{c} ({level_of.get(c.split('[')[0], '')})" for c in corr.columns]
    if ax is None:
        n = len(labels)
        _, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    mask = np.triu(np.ones_like(corr, dtype=bool), k=1)
    sns.heatmap(corr, mask=mask, vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=labels, yticklabels=labels, cbar_kws={"shrink": 0.6}, ax=ax)
    ax.set_title("Correlations across levels (join-as-one table)")
    ax.figure.tight_layout()
    return ax.figure
