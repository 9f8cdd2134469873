"""The metric suite of Khalil et al. (seed-001, "Creating artificial students that never existed"), which
used the synthcity library; re-implemented here (no synthcity dependency) on the join-as-one table.

=========================  ===========================================================================
Wasserstein distance       mean over columns of the 1-D Wasserstein-1 distance after min-max scaling to
                           the real range (category columns one-hot); synthcity solves a joint Sinkhorn
                           problem instead, which we skip for speed; lower is better, 0 ideal
Jensen-Shannon distance    mean over columns of the JS distance (base 2, in [0, 1]) between histograms:
                           10 equal-width bins over the real range (fewer if the column has fewer
                           values) or categories; synthcity adds 1 to each normalised bin, which we don't
alpha-precision            synthcity's "delta precision alpha" (Alaa et al. 2022): share of synthetic
beta-recall                rows inside the alpha-quantile ball around the real centre, compared with
authenticity               alpha over 30 levels, ``1 - sum|curve - alpha| / sum alpha``; beta-recall
                           likewise for real rows covered by synthetic ones; authenticity = share of
                           synthetic rows farther from their closest real row than that real row is from
                           its own closest real neighbour. The "naive" variant: centre = real mean of
                           the scaled features, no one-class embedding network. Equal sizes are
                           required, so the larger table is subsampled
quality                    mean of alpha-precision, beta-recall and authenticity
detection AUC              out-of-fold AUROC of a gradient-boosted classifier telling real from
                           synthetic rows (3 folds **grouped by school**: rows of one school share its
                           variables, so row-wise folds would let the classifier recognise schools and
                           flag even real-vs-real as detectable). A synthetic row that **duplicates a
                           real row** (all values equal) is counted as detected (scored above every
                           classifier output): a copy must not pass as "indistinguishable". 0.5 ideal
detection score            ``1 - 2|AUC - 0.5|``, two-sided: an AUC *below* 0.5 (the classifier, trained
                           on folds that hold copies of the test rows under the other label, is
                           systematically wrong) is as suspicious as one above; 1 ideal
TSTR AUROC (OOD)           AUROC on **real hold-out schools the generator never saw** of a classifier
                           trained on synthetic data, averaged over the binary columns as targets (other
                           columns as predictors). Without a hold-out it is computed on the real rows the
                           generator was trained on and named ``TSTR AUROC (training rows)``: not
                           out-of-distribution, and a copy of the training data scores high on it
SDIS                       ``quality + OOD AUROC + detection score`` (seed-001's sum, with the two-sided
                           detection score in place of ``1 - AUC``); named ``SDIS (no hold-out)`` when its
                           OOD term comes from the training rows; higher is better, at most 3, and a copy
                           of the real data scores *below* the real-vs-real band (its authenticity and
                           detection score are 0)
=========================  ===========================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import NearestNeighbors

from ..data import MultilevelData
from ._common import all_kinds, category_codes, encode_features

N_ALPHAS = 30


def wasserstein_mean(xr: np.ndarray, xs: np.ndarray) -> float:
    return float(np.mean([wasserstein_distance(xr[:, j], xs[:, j]) for j in range(xr.shape[1])]))


def js_distance_mean(real: pd.DataFrame, syn: pd.DataFrame, kinds: dict, bins: int = 10) -> float:
    out = []
    for c, kind in kinds.items():
        if kind == "numerical":
            r = real[c].to_numpy(float)
            k = min(bins, len(np.unique(r)))
            edges = np.linspace(r.min(), r.max(), k + 1)
            p = np.histogram(np.clip(r, edges[0], edges[-1]), edges)[0]
            q = np.histogram(np.clip(syn[c].to_numpy(float), edges[0], edges[-1]), edges)[0]
        else:
            cats = real[c].cat.categories
            p = pd.Categorical(real[c], categories=cats).value_counts().to_numpy()
            q = pd.Categorical(syn[c], categories=cats).value_counts().to_numpy()
        out.append(jensenshannon(p / p.sum(), q / q.sum(), base=2))
    return float(np.mean(out))


def alpha_beta_authenticity(xr: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """(alpha-precision, beta-recall, authenticity), naive variant (see module docstring)."""
    n = min(len(xr), len(xs))
    if len(xr) > n:
        xr = xr[rng.choice(len(xr), n, replace=False)]
    if len(xs) > n:
        xs = xs[rng.choice(len(xs), n, replace=False)]
    alphas = np.linspace(0, 1, N_ALPHAS)
    center = xr.mean(axis=0)
    radii = np.quantile(np.linalg.norm(xr - center, axis=1), alphas)
    syn_center = xs.mean(axis=0)
    syn_to_center = np.linalg.norm(xs - center, axis=1)
    d_rr = NearestNeighbors(n_neighbors=2).fit(xr).kneighbors(xr)[0][:, 1]
    d_rs, idx = NearestNeighbors(n_neighbors=1).fit(xs).kneighbors(xr)
    d_rs, idx = d_rs[:, 0], idx[:, 0]
    closest_d = np.linalg.norm(xs[idx] - syn_center, axis=1)
    syn_radii = np.quantile(closest_d, alphas)
    prec = np.array([(syn_to_center <= r).mean() for r in radii])
    cov = np.array([((d_rs <= d_rr) & (closest_d <= r)).mean() for r in syn_radii])
    alpha_precision = 1 - np.abs(alphas - prec).sum() / alphas.sum()
    beta_recall = 1 - np.abs(alphas - cov).sum() / alphas.sum()
    # authenticity: per synthetic row, its closest real row r*; authentic if d(s, r*) > d(r*, nearest real)
    d_sr, idx_sr = NearestNeighbors(n_neighbors=1).fit(xr).kneighbors(xs)
    authenticity = float(np.mean(d_sr[:, 0] > d_rr[idx_sr[:, 0]]))
    return float(alpha_precision), float(beta_recall), authenticity


def _clf(seed):
    return HistGradientBoostingClassifier(max_iter=30, learning_rate=0.2, max_leaf_nodes=15, early_stopping=False,
                                          random_state=seed)


def _design(frame: pd.DataFrame, kinds: dict) -> np.ndarray:
    cols = []
    for c, k in kinds.items():
        cols.append(frame[c].to_numpy(float) if k == "numerical" else category_codes(frame[c]).astype(float))
    return np.column_stack(cols)


def duplicate_mask(jr: pd.DataFrame, js: pd.DataFrame, kinds: dict) -> np.ndarray:
    """Per synthetic row: does it duplicate a real row on every data column (floats to 10 significant digits)?"""
    from .privacy import _row_hashes

    cols = list(kinds)
    return np.isin(_row_hashes(js, cols), _row_hashes(jr, cols))


def detection_auc(jr: pd.DataFrame, js: pd.DataFrame, kinds: dict, groups_r, groups_s, seed: int = 0, folds: int = 3) -> float:
    """Out-of-fold AUROC of real-vs-synthetic classification, folds grouped by school; synthetic rows that
    duplicate a real row are counted as detected (scored 2, above every predicted probability)."""
    X = np.vstack([_design(jr, kinds), _design(js, kinds)])
    y = np.r_[np.zeros(len(jr)), np.ones(len(js))]
    g = np.r_[np.char.add("r:", np.asarray(groups_r, dtype=str)), np.char.add("s:", np.asarray(groups_s, dtype=str))]
    cat_mask = np.array([k != "numerical" for k in kinds.values()])
    pred = np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=folds).split(X, y, g):
        m = _clf(seed).set_params(categorical_features=cat_mask if cat_mask.any() else None).fit(X[tr], y[tr])
        pred[te] = m.predict_proba(X[te])[:, 1]
    pred[len(jr):][duplicate_mask(jr, js, kinds)] = 2.0
    return float(roc_auc_score(y, pred))


def detection_score(auc: float) -> float:
    """Two-sided detection score ``1 - 2|AUC - 0.5|``: 1 when the classifier is at chance, 0 at AUC 0 or 1."""
    return float(1.0 - 2.0 * abs(auc - 0.5))


def tstr_auroc(jr: pd.DataFrame, js: pd.DataFrame, kinds: dict, seed: int = 0) -> float:
    """Mean AUROC on the real rows ``jr`` (hold-out schools, for the OOD score) of classifiers trained on the
    synthetic rows ``js``, one per binary column (macro over targets)."""
    targets = [c for c, k in kinds.items() if k == "binary"]
    if not targets:
        return float("nan")
    out = []
    for t in targets:
        feats = {c: k for c, k in kinds.items() if c != t}
        Xs, Xr = _design(js, feats), _design(jr, feats)
        cats = jr[t].cat.categories
        ys = (js[t].to_numpy() == cats[-1]).astype(int)
        yr = (jr[t].to_numpy() == cats[-1]).astype(int)
        if len(np.unique(ys)) < 2 or len(np.unique(yr)) < 2:
            out.append(0.5)
            continue
        cat_mask = np.array([k != "numerical" for k in feats.values()])
        m = _clf(seed).set_params(categorical_features=cat_mask if cat_mask.any() else None).fit(Xs, ys)
        out.append(roc_auc_score(yr, m.predict_proba(Xr)[:, 1]))
    return float(np.mean(out))


def seed001_rows(real: MultilevelData, syn: MultilevelData, *, holdout: MultilevelData | None = None,
                 seed: int = 0) -> list[dict]:
    """The seed-001 rows of one pair. ``real`` is the data the generator was trained on, ``holdout`` real
    schools it never saw (the test set of the OOD score; see the module docstring for what changes without)."""
    rng = np.random.default_rng(seed)
    kinds = all_kinds(real)
    jr, js = real.join_as_one(), syn.join_as_one()
    xr, xs = encode_features(jr, [jr, js], kinds, scale="minmax")
    wd = wasserstein_mean(xr, xs)
    jsd = js_distance_mean(jr, js, kinds)
    a, b, auth = alpha_beta_authenticity(xr, xs, rng)
    quality = (a + b + auth) / 3
    key = real.cluster_key
    det = detection_auc(jr, js, kinds, jr[key], js[key], seed=seed)
    if holdout is not None:
        ood = tstr_auroc(holdout.join_as_one(), js, kinds, seed=seed)
        ood_name, sdis_name = "TSTR AUROC (OOD)", "SDIS"
    else:
        ood = tstr_auroc(jr, js, kinds, seed=seed)
        ood_name, sdis_name = "TSTR AUROC (training rows)", "SDIS (no hold-out)"
    sdis = quality + ood + detection_score(det)
    vals = {"Wasserstein distance": wd, "Jensen-Shannon distance": jsd, "alpha-precision": a, "beta-recall": b,
            "authenticity": auth, "quality (seed-001)": quality, "detection AUC": det,
            "detection score": detection_score(det), ood_name: ood, sdis_name: sdis}
    return [dict(metric=m, value=v, domain="seed-001", subdomain="seed-001", level="joined", variables="all")
            for m, v in vals.items()]
