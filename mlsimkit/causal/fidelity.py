"""Causal fidelity of synthetic data: fully generative against hybrid, beside TSTR and DCR (issue 13, items 2
and 6).

*Generative Synthetic Data for Causal Inference: Pitfalls, Remedies, and Opportunities* (arXiv 2604.23904),
Figure 1: "Privacy, predictive utility, and ATE MSE diagnostics reveal that hybrid synthetic data outperform
fully generative models on causal fidelity, while DCR and TSTR do not reliably indicate ATE preservation".
Here, for two-level data with a school-level treatment:

- **fully generative**: a generator trained on the whole real table, treatment and outcome included; its
  implied ATE is what a fixed reference estimator (e.g. multilevel OR or AIPW of
  :func:`~mlsimkit.causal.estimate_ate`) finds on ``draws`` synthetic data sets of the real number of schools;
- **hybrid**: the same generator's covariates, with treatment and outcome drawn by a
  :class:`~mlsimkit.causal.hybrid.HybridGenerator` fitted on the real data; same estimator, same draws;
- the **reference** is the same estimator on the real data (treated as fixed, as in the paper). Per
  generator, construction and estimator: the mean estimate, its error, and the **ATE MSE** over the draws,
  ``mean_r (est_r - ref)^2``, with its Monte Carlo SE ``sd_r((est_r - ref)^2) / sqrt(R)``.

Privacy of the hybrid data (:func:`hybrid_privacy`): covariates from a generator trained **without** the
hold-out schools, treatment and outcome from a hybrid fitted on the training schools only; the DCR share
closer to hold-out of :mod:`mlsimkit.quality.privacy` (about 0.5 for data drawn from the population, 0 for
copies of the training schools) at row level (a student with its school's variables) and at school level
(a school = its variables and the school means of its students' variables, :func:`school_rows`), the median
DCR to the training rows, and the TSTR AUROC (OOD) of :mod:`mlsimkit.quality.seed001` on the hold-out schools.

What the paper got wrong and we do not copy: its outcomes had no residual noise and its truth was estimated;
here the comparison's target is the real-data estimate, reported with the estimator named, and every MSE
carries its MCSE. With few draws (the quick profile's one) the MCSE is not defined (NaN).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..data import MultilevelData
from ..errors import MlsimkitError, ParamsError
from .estimators import CausalSpec, estimate_ate

CONSTRUCTIONS = ("fully generative", "hybrid")
DCR = "DCR share closer to hold-out"
TSTR = "TSTR AUROC (OOD)"


# ============================================================================ school rows
def school_rows(data: MultilevelData) -> tuple[pd.DataFrame, dict]:
    """One row per school: its own variables and the school means of its students' variables (category
    columns as the share of each level), with ``{column: kind}`` for :func:`~mlsimkit.quality.privacy.
    dcr_share_frames` (the means are numerical)."""
    if len(data.levels) != 2:
        raise MlsimkitError(f"data set '{data.schema.name}': school rows need two levels, got {data.levels}")
    top, bottom = data.levels
    tp, tc = data.schema.tables[top], data.schema.tables[bottom]
    pk = tp.primary_key[0]
    parent = data[top].reset_index(drop=True)
    child = data[bottom]
    codes = pd.Index(parent[pk].astype(str)).get_indexer(child[tc.foreign_key].astype(str))
    kinds = {c: tp.columns[c].kind for c in tp.data_columns}
    out = parent[tp.data_columns].copy()
    n = np.bincount(codes, minlength=len(parent)).astype(float)
    n[n == 0] = np.nan
    for c in tc.data_columns:
        col = tc.columns[c]
        if col.kind == "numerical":
            parts = {f"{c} (school mean)": child[c].to_numpy(float)}
        else:
            s = child[c].astype(str)
            levels = list(child[c].cat.categories) if isinstance(child[c].dtype, pd.CategoricalDtype) else sorted(
                s.unique())
            parts = {f"{c}={lev} (school share)": (s == str(lev)).to_numpy(float) for lev in levels}
        for name, v in parts.items():
            out[name] = np.bincount(codes, weights=v, minlength=len(parent)) / n
            kinds[name] = "numerical"
    return out, kinds


# ============================================================================ ATE of each construction
def _check(draws, estimators, version):
    from .estimators import ESTIMATORS, VERSIONS

    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ParamsError(f"parameter 'draws': expected an integer >= 1, got {draws!r}")
    bad = [e for e in estimators if e not in ESTIMATORS or e == "DiM"]
    if not estimators or bad:
        raise ParamsError(f"parameter 'estimators': expected a non-empty list of {list(ESTIMATORS[1:])}, "
                          f"got {list(estimators)!r}")
    if version not in VERSIONS:
        raise ParamsError(f"parameter 'version': expected one of {list(VERSIONS)}, got {version!r}")


def _estimate(data: MultilevelData, spec: CausalSpec, estimators, version, settings, seed, check_overlap):
    res = estimate_ate(data.join_as_one(), spec, estimators=tuple(estimators), versions=(version,), seed=seed,
                       **{**settings, "check_overlap": check_overlap})
    return {f"{r.estimator} ({r.version})": (float(r.estimate), r.status) for r in res.itertuples()}


def generative_vs_hybrid(real: MultilevelData, models: dict, hybrid, spec: CausalSpec, *, draws: int = 5,
                         estimators=("OR", "AIPW"), version: str = "multilevel", settings: dict | None = None,
                         seed: int = 0) -> pd.DataFrame:
    """The implied ATE of each generator, fully generative and hybrid (module docstring).

    Parameters
    ----------
    real : the real data (the reference estimate's data; the size of each draw).
    models : ``{name: fitted generator}`` trained on the whole real table, treatment and outcome included.
    hybrid : a fitted :class:`~mlsimkit.causal.hybrid.HybridGenerator` (on ``real``).
    spec : the estimators' roles (:class:`~mlsimkit.causal.CausalSpec`).
    draws : synthetic data sets per generator (each ``real.n_clusters`` schools); draw ``r`` of every
        generator uses the ``r``-th child of ``SeedSequence(seed)``, as :func:`mlsimkit.workflow.candidates`,
        so with Stage 3's seed and ``draws = n_synthetic`` the fully generative data are Stage 3's candidates.
        The hybrid draw ``r`` replaces their treatment and outcome.
    estimators, version : the reference estimators (of :func:`~mlsimkit.causal.estimate_ate`, not ``DiM``).
    settings : other keyword arguments of :func:`~mlsimkit.causal.estimate_ate` (folds, bounds, ridge, ...).

    Returns
    -------
    A long table: ``generator, construction, draw, method, estimate, reference, error, status`` (one row per
    draw and method; ``error = estimate - reference``).
    """
    _check(draws, estimators, version)
    if not models:
        raise MlsimkitError("models: expected at least one fitted generator")
    settings = dict(settings or {})
    ref = _estimate(real, spec, estimators, version, settings, np.random.SeedSequence(seed, spawn_key=(1,)), True)
    seeds = np.random.SeedSequence(seed).spawn(draws)
    rows = []
    for name, gen in models.items():
        for r, ss in enumerate(seeds):
            full = gen.sample(real.n_clusters, seed=ss)
            hyb = hybrid.draw(full, np.random.SeedSequence(seed, spawn_key=(2, r)))[0]
            for construction, data in zip(CONSTRUCTIONS, (full, hyb)):
                try:
                    est = _estimate(data, spec, estimators, version, settings,
                                    np.random.SeedSequence(seed, spawn_key=(3, r)), False)
                except MlsimkitError as exc:  # recorded, never dropped (e.g. no treated school drawn)
                    est = {m: (np.nan, f"failed: {exc}") for m in ref}
                for m, (value, status) in est.items():
                    rows.append({"generator": name, "construction": construction, "draw": r, "method": m,
                                 "estimate": value, "reference": ref[m][0], "error": value - ref[m][0],
                                 "status": status})
    return pd.DataFrame(rows)


def ate_errors(draws: pd.DataFrame) -> pd.DataFrame:
    """Per generator, construction and method (from :func:`generative_vs_hybrid`): ``reference``, ``mean
    estimate``, ``error`` (mean estimate - reference), ``ATE MSE`` and its ``MSE MCSE``, ``draws`` (usable)
    and ``failed``."""
    def one(g):
        ok = g["estimate"].notna()
        e2 = g.loc[ok, "error"].to_numpy(float) ** 2
        k = len(e2)
        return pd.Series({"reference": g["reference"].iloc[0], "mean estimate": g.loc[ok, "estimate"].mean(),
                          "error": g.loc[ok, "error"].mean(), "ATE MSE": e2.mean() if k else np.nan,
                          "MSE MCSE": e2.std(ddof=1) / np.sqrt(k) if k > 1 else np.nan, "draws": k,
                          "failed": int((~ok).sum())})

    keys = ["generator", "construction", "method"]
    out = draws.groupby(keys, sort=False)[["estimate", "reference", "error"]].apply(one).reset_index()
    return out.astype({"draws": int, "failed": int})


# ============================================================================ privacy of the hybrid data
def hybrid_privacy(train: MultilevelData, holdout: MultilevelData, covariates: dict, hybrid, *,
                   seed: int = 0) -> pd.DataFrame:
    """DCR and TSTR of hybrid data against real schools the generators never saw (module docstring).

    Parameters
    ----------
    train, holdout : the real schools the covariate generators were trained on, and the held-out ones.
    covariates : ``{name: [data sets]}`` sampled from generators trained on ``train`` only (e.g.
        ``holdout_synthetic`` of :func:`mlsimkit.workflow.quality_inputs`).
    hybrid : a :class:`~mlsimkit.causal.hybrid.HybridGenerator` fitted on ``train`` only.

    Returns
    -------
    Long table ``generator, draw, metric, value`` with the metrics ``DCR share closer to hold-out (students)``,
    ``... (schools)``, ``median DCR (students)``, ``median DCR (schools)`` and ``TSTR AUROC (OOD)``.
    """
    from ..quality._common import all_kinds
    from ..quality.privacy import dcr_share_frames
    from ..quality.seed001 import tstr_auroc

    if not holdout.schema.same_structure(train.schema):
        raise MlsimkitError("holdout: expected the training data's schema")
    kinds = all_kinds(train)
    jt, jh = train.join_as_one(), holdout.join_as_one()
    st, sk = school_rows(train)
    sh, _ = school_rows(holdout)
    rows = []
    with threadpool_limits(1):  # as quality.evaluate: OpenMP threads of the classifiers slow a shared machine
        for name, lst in covariates.items():
            for r, w in enumerate(lst):
                syn = hybrid.draw(w, np.random.SeedSequence(seed, spawn_key=(4, r)))[0]
                js = syn.join_as_one()
                share, dt, _ = dcr_share_frames(jt, jh, js, kinds, return_distances=True)
                s_share, s_dt, _ = dcr_share_frames(st, sh, school_rows(syn)[0], sk, return_distances=True)
                vals = {f"{DCR} (students)": share, f"{DCR} (schools)": s_share,
                        "median DCR (students)": float(np.median(dt)), "median DCR (schools)": float(np.median(s_dt)),
                        TSTR: tstr_auroc(jh, js, kinds, seed=seed + r)}
                rows += [{"generator": name, "draw": r, "metric": m, "value": v} for m, v in vals.items()]
    return pd.DataFrame(rows, columns=["generator", "draw", "metric", "value"])


def real_privacy(train: MultilevelData, holdout: MultilevelData, fresh: MultilevelData) -> dict:
    """The same DCR shares for real schools ``fresh`` that are in neither ``train`` nor ``holdout`` (what
    data drawn from the population give: about 0.5), at row and school level."""
    from ..quality._common import all_kinds
    from ..quality.privacy import dcr_share_frames

    st, sk = school_rows(train)
    return {f"{DCR} (students)": dcr_share_frames(train.join_as_one(), holdout.join_as_one(), fresh.join_as_one(),
                                                   all_kinds(train)),
            f"{DCR} (schools)": dcr_share_frames(st, school_rows(holdout)[0], school_rows(fresh)[0], sk)}


# ============================================================================ Figure 1
def _mean_mcse(v: pd.Series) -> tuple[float, float]:
    v = v.dropna().astype(float)
    return (float(v.mean()) if len(v) else np.nan, float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else np.nan)


def fidelity_table(errors: pd.DataFrame, privacy: pd.DataFrame, summary: pd.DataFrame | None, method: str,
                   k: int | None = None) -> pd.DataFrame:
    """Figure 1's numbers, one row per generator and construction: DCR share closer to hold-out, TSTR AUROC
    (OOD) (fully generative: the rows of Stage 3's ``summary``, MCSE = sd / sqrt(k); hybrid: :func:`hybrid_privacy`,
    students), ATE MSE of ``method`` (MCSE), the mean error, and the hybrid's school-level DCR share."""
    rows = []
    for (gen, con), e in errors[errors["method"] == method].groupby(["generator", "construction"], sort=False):
        e = e.iloc[0]
        row = {"generator": gen, "construction": con, "ATE error": e["error"], "ATE MSE": e["ATE MSE"],
               "ATE MSE MCSE": e["MSE MCSE"]}
        for metric in (DCR, TSTR):
            v = s = np.nan
            if con == "fully generative" and summary is not None and len(summary):
                hit = summary[(summary["dataset"] == gen) & (summary["item"] == metric)]
                if len(hit):
                    v = float(hit["value"].iloc[0])
                    sd = float(hit["sd"].iloc[0]) if "sd" in hit else np.nan
                    s = sd / np.sqrt(k) if k and k > 1 and np.isfinite(sd) else np.nan
            elif con == "hybrid" and len(privacy):
                p = privacy[(privacy["generator"] == gen)
                            & (privacy["metric"] == (f"{DCR} (students)" if metric == DCR else metric))]
                v, s = _mean_mcse(p["value"])
            row[metric], row[f"{metric} MCSE"] = v, s
        p = privacy[(privacy["generator"] == gen) & (privacy["metric"] == f"{DCR} (schools)")] if (
            con == "hybrid" and len(privacy)) else privacy.iloc[:0]
        row[f"{DCR} (schools)"] = _mean_mcse(p["value"])[0] if len(p) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def figure(table: pd.DataFrame, *, reference: dict | None = None, title: str = ""):
    """The paper's Figure 1 layout: panels DCR share closer to hold-out, TSTR AUROC (OOD) and ATE MSE (log
    scale), one bar per generator and construction, MCSE bars where there is one; ``reference``: ``{metric:
    value}`` drawn as a dashed line (e.g. the real-vs-real band's centre)."""
    import matplotlib.pyplot as plt

    reference = reference or {}
    labels = [f"{g}\n{c}" for g, c in zip(table["generator"], table["construction"])]
    colors = ["#4c72b0" if c == "fully generative" else "#dd8452" for c in table["construction"]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric in zip(axes, (DCR, TSTR, "ATE MSE")):
        v = table[metric].to_numpy(float)
        err = table[f"{metric} MCSE"].to_numpy(float)
        x = np.arange(len(v))
        ax.bar(x, np.where(np.isfinite(v), v, 0.0), color=colors,
               yerr=np.where(np.isfinite(err), err, 0.0), capsize=3)
        for i in np.flatnonzero(~np.isfinite(v)):
            ax.text(x[i], 0, "n/a", ha="center", va="bottom", fontsize=8)
        if metric in reference and np.isfinite(reference[metric]):
            ax.axhline(reference[metric], color="grey", ls="--", lw=0.8, label="real vs real")
            ax.legend(fontsize=7, loc="best")
        if metric == "ATE MSE" and np.nanmin(np.where(v > 0, v, np.nan), initial=np.inf) < np.inf:
            ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(metric + (" (log scale)" if metric == "ATE MSE" else ""), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _order(values: pd.Series, key) -> list:
    v = values.dropna()
    return list(v.index[np.argsort([key(x) for x in v.to_numpy(float)], kind="stable")])


def agreement(table: pd.DataFrame, method: str) -> str:
    """One paragraph from ``table`` (:func:`fidelity_table`): do TSTR (higher better) and the DCR share (closer
    to 0.5 better) order the data sets as the ATE MSE (lower better) does, among the fully generative data
    sets, and which construction has the smaller ATE MSE per generator (with the MSE difference in MCSE)."""
    t = table.set_index(["generator", "construction"])
    full = t.xs("fully generative", level="construction") if "fully generative" in set(
        table["construction"]) else t.iloc[:0]
    by_mse = _order(full["ATE MSE"], lambda x: x)
    parts = []
    if len(by_mse) > 1:
        for metric, key, how in ((TSTR, lambda x: -x, "highest first"), (DCR, lambda x: abs(x - 0.5),
                                                                           "closest to 0.5 first")):
            order = _order(full[metric], key)
            if len(order) < 2:
                parts.append(f"{metric} is not available for the fully generative data sets of this build.")
                continue
            same = order == by_mse
            parts.append(f"Fully generative: {metric} ({how}) orders the generators {', '.join(order)}, the ATE "
                         f"MSE (smallest first) {', '.join(by_mse)}: "
                         f"{'the same order' if same else 'a different order'}.")
        m, se = full["ATE MSE"], full["ATE MSE MCSE"]
        gaps = [(m[b] - m[a]) / np.hypot(se[a], se[b]) for a, b in zip(by_mse, by_mse[1:])]
        if not all(np.isfinite(g) and g > 2 for g in gaps):
            parts.append("The ATE MSE order itself is not resolved beyond 2 MCSE at this number of draws, so "
                         "these comparisons are tentative.")
    elif len(by_mse) == 1:
        parts.append("With a single generator there is no ranking to compare.")
    t = table.set_index("generator")
    for gen, sub in t.groupby(level="generator", sort=False):
        sub = sub.set_index("construction")
        if set(CONSTRUCTIONS) <= set(sub.index):
            f, h = sub.loc["fully generative"], sub.loc["hybrid"]
            d = f["ATE MSE"] - h["ATE MSE"]
            se = np.hypot(f["ATE MSE MCSE"], h["ATE MSE MCSE"])
            z = f" ({d / se:.1f} MCSE)" if np.isfinite(se) and se > 0 else " (no MCSE with one draw)"
            better = "hybrid" if d > 0 else "fully generative"
            gap = []
            for metric in (TSTR, DCR):
                if np.isfinite(f[metric]) and np.isfinite(h[metric]):
                    gap.append(f"{metric} {f[metric]:.3f} against {h[metric]:.3f}")
            parts.append(f"{gen}: ATE MSE of {method} {f['ATE MSE']:.3g} fully generative against "
                         f"{h['ATE MSE']:.3g} hybrid, smaller for the {better} data by {abs(d):.3g}{z}"
                         + (f"; {'; '.join(gap)}." if gap else "."))
    return " ".join(parts)
