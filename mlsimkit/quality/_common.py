"""Shared helpers of the quality metrics: column kinds, binning, encodings, resampling of schools."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import MultilevelData

N_BINS = 10  # bins for numerical columns in contingency / MI / JSD (SDMetrics' default num_discrete_bins)


def kinds_of(data: MultilevelData, table: str) -> dict[str, str]:
    """``{column: kind}`` of a table's data (non-key) columns."""
    t = data.schema.tables[table]
    return {c: t.columns[c].kind for c in t.data_columns}


def all_kinds(data: MultilevelData) -> dict[str, str]:
    """``{column: kind}`` of every data column of every table (names are unique across levels)."""
    out = {}
    for name in data.levels:
        out.update(kinds_of(data, name))
    return out


def table_of(data: MultilevelData) -> dict[str, str]:
    return {c: name for name in data.levels for c in data.schema.tables[name].data_columns}


def real_bin_edges(real: pd.Series, bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin edges over the real column's range, with open outer bins (-inf, +inf).

    As SDMetrics' ContingencySimilarity does (``np.histogram_bin_edges`` on the real data, outer edges
    replaced by infinities), so that synthetic values beyond the real range fall into the outer bins.
    """
    edges = np.histogram_bin_edges(real.to_numpy(dtype=float), bins=bins)
    edges = np.unique(edges)
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def discretize(real: pd.Series, syn: pd.Series, kind: str, bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of two columns on a common support; numerical columns binned on the real edges."""
    if kind == "numerical":
        edges = real_bin_edges(real, bins)
        r = np.searchsorted(edges, real.to_numpy(float), side="right") - 1
        s = np.searchsorted(edges, syn.to_numpy(float), side="right") - 1
        k = len(edges) - 1
        return np.clip(r, 0, k - 1), np.clip(s, 0, k - 1), k
    cats = real.cat.categories if isinstance(real.dtype, pd.CategoricalDtype) else pd.Index(sorted(set(real) | set(syn)))
    r = pd.Categorical(real, categories=cats).codes.astype(int)
    s = pd.Categorical(syn, categories=cats).codes.astype(int)
    return r, s, len(cats)


def category_codes(s: pd.Series) -> np.ndarray:
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy().astype(int)
    return pd.factorize(s, sort=True)[0]


def encode_features(real: pd.DataFrame, frames: list[pd.DataFrame], kinds: dict[str, str], *, scale: str = "std") -> list[np.ndarray]:
    """Numeric design matrices for distance-based metrics, fitted on ``real``.

    Numerical columns are standardised by the real mean and sd (``scale="std"``) or min-max scaled to the
    real range (``scale="minmax"``); category columns are one-hot coded (ordinal ones too), each dummy
    scaled by 1/sqrt(2) so that two different categories are at distance 1, as one real sd is.
    """
    out = [[] for _ in frames]
    for col, kind in kinds.items():
        if kind == "numerical":
            x = real[col].to_numpy(float)
            if scale == "std":
                loc, sc = x.mean(), x.std() or 1.0
            else:
                loc, sc = x.min(), (x.max() - x.min()) or 1.0
            for o, f in zip(out, frames):
                o.append(((f[col].to_numpy(float) - loc) / sc)[:, None])
        else:
            cats = real[col].cat.categories if isinstance(real[col].dtype, pd.CategoricalDtype) else sorted(real[col].unique())
            for o, f in zip(out, frames):
                codes = pd.Categorical(f[col], categories=cats).codes
                m = np.zeros((len(f), len(cats)))
                ok = codes >= 0
                m[np.flatnonzero(ok), codes[ok]] = 1.0 / np.sqrt(2)
                o.append(m)
    return [np.hstack(o) if o else np.zeros((len(f), 0)) for o, f in zip(out, frames)]


def resample_schools(data: MultilevelData, rng: np.random.Generator, n: int | None = None, *, replace: bool = True) -> MultilevelData:
    """A sample of top-level units (with replacement by default) with fresh ids, and everything below."""
    schema = data.schema
    top = schema.top
    pk = schema.tables[top].primary_key[0]
    ids = data[top][pk].to_numpy()
    n = len(ids) if n is None else n
    pick = rng.choice(len(ids), size=n, replace=replace)
    return take_units(data, ids[pick], relabel=replace)


def take_units(data: MultilevelData, top_ids, *, relabel: bool = True) -> MultilevelData:
    """Data restricted to the given top-level ids, in that order, with everything below them.

    With ``relabel`` every copy of a top-level unit gets a fresh id ``<id>#<k>`` and every key below it is
    prefixed with that id, so a unit drawn twice by a bootstrap becomes two distinct units.
    """
    schema = data.schema
    levels = schema.levels
    top_ids = np.asarray(top_ids, dtype=object)
    if not relabel:
        return data.subset(top_ids)
    new_ids = np.array([f"{i}#{k}" for k, i in enumerate(top_ids)], dtype=object)
    mapping = pd.DataFrame({"_top": top_ids, "_new": new_ids})
    top_of = {}
    t0 = schema.tables[levels[0]]
    top_of[levels[0]] = data[levels[0]][t0.primary_key[0]].to_numpy()
    for parent, child in zip(levels, levels[1:]):
        tp, tc = schema.tables[parent], schema.tables[child]
        lookup = pd.Series(top_of[parent], index=data[parent][tp.primary_key[0]].to_numpy())
        top_of[child] = lookup.reindex(data[child][tc.foreign_key].to_numpy()).to_numpy()
    tables = {}
    for depth, name in enumerate(levels):
        t = schema.tables[name]
        df = data[name].assign(_top=top_of[name]).merge(mapping, on="_top", how="inner", sort=False)
        keys = [k for k in t.key_columns]
        for key in keys:
            if (depth == 0 and key == t.primary_key[0]) or (depth == 1 and key == t.foreign_key):
                df[key] = df["_new"]
            else:
                df[key] = df["_new"].astype(str) + "/" + df[key].astype(str)
        tables[name] = df[list(t.columns)].reset_index(drop=True)
    return MultilevelData(schema, tables, validate=False)


def split_halves(data: MultilevelData, rng: np.random.Generator) -> tuple[MultilevelData, MultilevelData]:
    """Two disjoint halves of the real top-level units (a random split by school)."""
    top = data.schema.top
    pk = data.schema.tables[top].primary_key[0]
    ids = data[top][pk].to_numpy()
    perm = rng.permutation(len(ids))
    half = len(ids) // 2
    return data.subset(ids[perm[:half]]), data.subset(ids[perm[half:]])
