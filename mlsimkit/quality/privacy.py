"""Generalization and privacy (Suk et al., section 3.4.3 last paragraph; Suk et al. 2025; Alaa et al. 2022).

=================================  ==================================================================================
new rows (student)                 share of synthetic bottom-table rows whose data values (all non-key columns) do
                                   not occur in the real bottom table (the generalization score; ideal 1)
new rows (school)                  the same for the parent table's rows
new whole schools                  share of synthetic schools that are not a copy of a real school, a copy being
                                   the same school row **and** the same multiset of student rows (ideal 1)
DCR (median)                       median distance from a synthetic student (with its school's variables) to the
                                   closest real one; numerical columns standardised by the real sd, category
                                   columns one-hot with dummies scaled by 1/sqrt(2) (two categories differ by 1)
DCR share closer to training       share of synthetic rows closer to the real rows used to train the generator than
                                   to real hold-out rows (ties count 1/2); ideal 0.5 (Platzer & Reutterer 2021;
                                   the "DCR share" of SynthEval). Meaningful only when the generator was trained
                                   on the training part alone: pass ``holdout``; without it the real schools are
                                   split in two halves at random and a value near 0.5 is expected whatever the
                                   generator (the report says so)
NNDR (mean)                        mean ratio of the distances to the closest and second-closest real row; near 0
                                   for copies, near 1 for points in dense real regions
=================================  ==================================================================================

Copies are found on exact values (floats compared after rounding to 10 significant digits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from ..data import MultilevelData
from ._common import all_kinds, encode_features, kinds_of


def _row_hashes(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    if not cols:
        return np.zeros(len(df), dtype=np.uint64)
    parts = {}
    for c in cols:
        s = df[c]
        if pd.api.types.is_float_dtype(s):
            parts[c] = s.map(lambda v: f"{v:.10g}")
        else:
            parts[c] = s.astype(str)
    return pd.util.hash_pandas_object(pd.DataFrame(parts), index=False).to_numpy()


def new_row_share(real: pd.DataFrame, syn: pd.DataFrame, cols: list[str]) -> float:
    """Share of ``syn`` rows whose values on ``cols`` match no ``real`` row."""
    return float(1.0 - np.isin(_row_hashes(syn, cols), _row_hashes(real, cols)).mean())


def _cluster_signatures(data: MultilevelData) -> pd.Series:
    """A hash per parent unit of the bottom table: its own row and the sorted multiset of its children."""
    schema = data.schema
    child, parent = schema.bottom, schema.tables[schema.bottom].parent
    fk = schema.tables[child].foreign_key
    pk = schema.tables[parent].primary_key[0]
    ccols, pcols = schema.tables[child].data_columns, schema.tables[parent].data_columns
    ch = pd.DataFrame({"k": data[child][fk].to_numpy(), "h": _row_hashes(data[child], ccols)})
    sets = ch.sort_values(["k", "h"]).groupby("k", sort=False)["h"].apply(lambda h: hash(tuple(h)))
    ph = pd.Series(_row_hashes(data[parent], pcols), index=data[parent][pk].to_numpy())
    sets = sets.reindex(ph.index)
    return pd.Series([hash((a, b)) for a, b in zip(ph.to_numpy(), sets.to_numpy())], index=ph.index)


def new_cluster_share(real: MultilevelData, syn: MultilevelData) -> float:
    """Share of synthetic schools that are not whole copies (school row + set of students) of a real school."""
    return float(1.0 - np.isin(_cluster_signatures(syn).to_numpy(), _cluster_signatures(real).to_numpy()).mean())


def _nn(train: np.ndarray, query: np.ndarray, k: int = 1) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k, algorithm="kd_tree" if train.shape[1] <= 20 else "auto").fit(train)
    return nn.kneighbors(query, return_distance=True)[0]


def privacy_rows(real: MultilevelData, syn: MultilevelData, *, holdout: MultilevelData | None = None,
                 rng: np.random.Generator | None = None) -> list[dict]:
    """All generalization and privacy rows."""
    rng = rng or np.random.default_rng(0)
    schema = real.schema
    rows = []
    for table in schema.levels:
        cols = schema.tables[table].data_columns
        rows.append(dict(metric="new rows", level=table, variables="all", value=new_row_share(real[table], syn[table], cols),
                         subdomain="generalization"))
    rows.append(dict(metric="new whole clusters", level=schema.tables[schema.bottom].parent, variables="row + children",
                     value=new_cluster_share(real, syn), subdomain="generalization"))
    kinds = all_kinds(real)
    jr, js = real.join_as_one(), syn.join_as_one()
    xr, xs = encode_features(jr, [jr, js], kinds)
    d2 = _nn(xr, xs, k=2)
    rows.append(dict(metric="DCR (median)", level=schema.bottom, variables="all", value=float(np.median(d2[:, 0])),
                     subdomain="privacy"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d2[:, 1] > 0, d2[:, 0] / d2[:, 1], 0.0)
    rows.append(dict(metric="NNDR (mean)", level=schema.bottom, variables="all", value=float(np.mean(ratio)), subdomain="privacy"))
    # closer to training than to hold-out
    if holdout is not None:
        train, hold = real, holdout
        note = "holdout given"
    else:
        from ._common import split_halves

        train, hold = split_halves(real, rng)
        note = "random halves of the real schools (generator saw both): ~0.5 expected"
    jt, jh = train.join_as_one(), hold.join_as_one()
    n = min(len(jt), len(jh))
    jt = jt.iloc[rng.choice(len(jt), n, replace=False)]
    jh = jh.iloc[rng.choice(len(jh), n, replace=False)]
    xt, xh, xs2 = encode_features(jr, [jt, jh, js], kinds)
    dt, dh = _nn(xt, xs2)[:, 0], _nn(xh, xs2)[:, 0]
    share = float(np.mean((dt < dh) + 0.5 * (dt == dh)))
    rows.append(dict(metric="DCR share closer to training", level=schema.bottom, variables=note, value=share, subdomain="privacy"))
    for r in rows:
        r["domain"] = "privacy"
    return rows
