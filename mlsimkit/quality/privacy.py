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
DCR share closer to hold-out       share of synthetic rows closer to a real **hold-out** row (schools the generator
                                   never saw) than to every row it was trained on, ties 1/2, rescaled by
                                   ``0.5 / h`` (``h``: the hold-out's share of the real rows) so that a generator
                                   drawing from the population scores about 0.5 and one that copies its training
                                   rows 0 (the "DCR share" of Platzer & Reutterer 2021 and SynthEval, oriented so
                                   that a copy falls below the real-vs-real band). Needs ``holdout``; without one
                                   the row is NaN (a split of the training data would give about 0.5 whatever
                                   the generator, so it could not fail)
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


def privacy_rows(real: MultilevelData, syn: MultilevelData, *, holdout: MultilevelData | None = None) -> list[dict]:
    """All generalization and privacy rows (deterministic: nearest-neighbour distances)."""
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
    rows.append(dict(metric="DCR share closer to hold-out", level=schema.bottom, variables="all",
                     value=np.nan if holdout is None else dcr_holdout_share(real, syn, holdout),
                     subdomain="privacy"))
    for r in rows:
        r["domain"] = "privacy"
    return rows


def dcr_holdout_share(train: MultilevelData, syn: MultilevelData, holdout: MultilevelData, *,
                      return_distances: bool = False):
    """``0.5 × (share of synthetic rows closer to a hold-out row than to any training row) / h``, ``h`` the
    hold-out's share of the real rows; ties count 1/2.

    If synthetic rows were drawn from the population the real rows come from, the closest of all real rows
    to one of them would be a hold-out row with probability ``h`` (exchangeability), so the rescaled value
    is about 0.5; a generator that copies its training rows scores 0. Rescaling instead of subsampling the
    training rows to the hold-out's size: a subsample would leave most copied rows without their original
    and dilute the score toward 0.5. Features as for the DCR (scaled on the training rows). With
    ``return_distances`` also returns the two distance vectors (to the training rows, to the hold-out rows).
    """
    return dcr_share_frames(train.join_as_one(), holdout.join_as_one(), syn.join_as_one(), all_kinds(train),
                            return_distances=return_distances)


def dcr_share_frames(train: pd.DataFrame, holdout: pd.DataFrame, syn: pd.DataFrame, kinds: dict[str, str], *,
                     return_distances: bool = False):
    """:func:`dcr_holdout_share` on three single tables with the columns of ``kinds`` (``{column: kind}``), e.g.
    one row per school (:func:`mlsimkit.causal.fidelity.school_rows`); features scaled on ``train``."""
    xt, xh, xs = encode_features(train, [train, holdout, syn], kinds)
    dt, dh = _nn(xt, xs)[:, 0], _nn(xh, xs)[:, 0]
    h = len(holdout) / (len(train) + len(holdout))
    share = float(0.5 * np.mean((dh < dt) + 0.5 * (dh == dt)) / h)
    return (share, dt, dh) if return_distances else share


def dcr_diagnosis(train: MultilevelData, holdout: MultilevelData, syn: MultilevelData, *, seed: int = 0) -> dict:
    """Why synthetic rows sit close to real rows: **memorisation** or **concentration**?

    Comparisons, each against real hold-out rows (real students the generator never saw, which is
    what a perfect generator's rows would be like):

    * ``median DCR`` of the synthetic rows and ``median DCR (hold-out rows)`` of the hold-out rows, both to
      the training rows: synthetic rows closer than unseen real rows are the finding to explain;
    * ``DCR share closer to hold-out`` (:func:`dcr_holdout_share`): about 0.5 unless rows are closer to the
      training rows *than to equally near unseen rows*, i.e. unless the generator memorised;
    * ``spread ratio``: median distance to the real centre, synthetic / hold-out rows, and ``NN distance
      ratio``: median distance to the nearest other row *within* the data set, synthetic / hold-out rows
      (equal numbers of rows): below 1 means the synthetic rows are packed into the dense middle of the
      data (concentration), which also brings them close to real rows without copying any;
    * the same DCR share **per table** (``DCR share closer to hold-out (<table>)``, each table's own
      variables): it says at which level the rows are copied (e.g. school rows reproduced by a school model
      that learned its 128 training schools by heart, while the students are new).
    """
    rng = np.random.default_rng(seed)
    kinds = all_kinds(train)
    jt, jh, js = train.join_as_one(), holdout.join_as_one(), syn.join_as_one()
    xt, xh, xs = encode_features(jt, [jt, jh, js], kinds)
    share = dcr_holdout_share(train, syn, holdout)
    centre = xt.mean(axis=0)
    n = min(len(xh), len(xs))
    xh_n = xh[rng.choice(len(xh), n, replace=False)]
    xs_n = xs[rng.choice(len(xs), n, replace=False)]
    nn_s, nn_h = _nn(xs_n, xs_n, k=2)[:, 1], _nn(xh_n, xh_n, k=2)[:, 1]
    per_table = {}
    for table in train.levels:
        k = kinds_of(train, table)
        at, ah, as_ = encode_features(train[table], [train[table], holdout[table], syn[table]], k)
        dt, dh = _nn(at, as_)[:, 0], _nn(ah, as_)[:, 0]
        h = len(ah) / (len(at) + len(ah))
        per_table[f"DCR share closer to hold-out ({table})"] = float(0.5 * np.mean((dh < dt) + 0.5 * (dh == dt)) / h)
    return {
        **per_table,
        "median DCR": float(np.median(_nn(xt, xs)[:, 0])),
        "median DCR (hold-out rows)": float(np.median(_nn(xt, xh)[:, 0])),
        "DCR share closer to hold-out": share,
        "spread ratio": float(np.median(np.linalg.norm(xs - centre, axis=1)) / np.median(np.linalg.norm(xh - centre, axis=1))),
        "NN distance ratio": float(np.median(nn_s) / np.median(nn_h)),
    }


def dcr_verdict(diag: dict, share_lo: float = 0.4) -> str:
    """One sentence reading :func:`dcr_diagnosis`: memorisation when the DCR share is below ``share_lo``
    (e.g. the lower end of the real-vs-real band), concentration when the synthetic rows are closer than the
    hold-out rows while their spread or nearest-neighbour distances are below the hold-out rows'."""
    closer = diag["median DCR"] < diag["median DCR (hold-out rows)"]
    memo = diag["DCR share closer to hold-out"] < share_lo
    conc = diag["spread ratio"] < 0.95 or diag["NN distance ratio"] < 0.95
    head = (f"median DCR {diag['median DCR']:.3f} against {diag['median DCR (hold-out rows)']:.3f} for real students "
            f"the generator never saw")
    if memo:
        prefix = "DCR share closer to hold-out ("
        levels = {k[len(prefix):-1]: v for k, v in diag.items() if k.startswith(prefix)}
        low = [f"{t} ({v:.2f})" for t, v in levels.items() if v < share_lo]
        ok = [f"{t} ({v:.2f})" for t, v in levels.items() if v >= share_lo]
        where = (f" The copying is in the {', '.join(low)} table{'s' if len(low) > 1 else ''}"
                 + (f"; the {', '.join(ok)} rows are as close to unseen rows as to training rows." if ok else ".")
                 if low else "")
        return (f"Memorisation: {head}, and the DCR share closer to hold-out is "
                f"{diag['DCR share closer to hold-out']:.2f} (0.5 expected, copies 0): the synthetic rows are "
                f"nearer to the training rows than to equally many unseen ones.{where}")
    if closer and conc:
        return (f"Concentration, not memorisation: {head}; the DCR share closer to hold-out is "
                f"{diag['DCR share closer to hold-out']:.2f} (0.5 expected, copies 0), while the synthetic rows "
                f"spread {diag['spread ratio']:.2f} times as far from the centre and sit "
                f"{diag['NN distance ratio']:.2f} times as far from each other as real rows do: they crowd the "
                "dense middle of the data.")
    if closer:
        return (f"Closer than real rows without a sign of copying or of concentration: {head}; DCR share "
                f"{diag['DCR share closer to hold-out']:.2f}, spread ratio {diag['spread ratio']:.2f}.")
    return (f"Neither memorisation nor concentration: {head}; DCR share {diag['DCR share closer to hold-out']:.2f}, "
            f"spread ratio {diag['spread ratio']:.2f}.")
