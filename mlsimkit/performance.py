"""Stage 5: performance measures with Monte Carlo standard errors, as pure functions of long results.

Definitions and MCSE formulas follow Morris, White & Crowther (2019), "Using simulation studies to
evaluate statistical methods", Statistics in Medicine 38:2074-2102, Table 6, as implemented in rsimsum
(Gasparini 2018, JOSS 3:739) and simsum (White 2010, Stata Journal 10:369-385).  With n usable
replications, estimates theta_i, model SEs s_i, true value theta, d_i = theta_i - theta:

============  =================================  ==================================================
measure       value                              MCSE
============  =================================  ==================================================
bias          mean(d)                            sd(d) / sqrt(n)
rel_bias      100 mean(d / theta)  (percent)      100 sd(d / theta) / sqrt(n)
empse         sd(theta_i)                        empse / sqrt(2 (n - 1))
mse           mean(d^2)                          sqrt(sum((d^2 - mse)^2) / (n (n - 1)))
rmse          sqrt(mse)                          jackknife (no closed form)
modelse       sqrt(mean(s^2))                    sqrt(var(s^2) / (4 n modelse^2))
relerror      100 (modelse / empse - 1)          100 (modelse/empse) sqrt(var(s^2)/(4 n modelse^4)
                                                  + 1 / (2 (n - 1)))
coverage      mean(lo <= theta <= hi)            sqrt(cov (1 - cov) / n)
becoverage    mean(lo <= theta + bias <= hi)     sqrt(becov (1 - becov) / n)
power         mean(CI excludes `null`)           sqrt(p (1 - p) / n)
pmse          mean(pred_error)                   sd(pred_error) / sqrt(n)
fail_rate     share of replications not usable   sqrt(p (1 - p) / n_reps)
rate_<status> share with that status             sqrt(p (1 - p) / n_reps)
mean_redraws  mean datasets redrawn per rep      sd / sqrt(n_reps)
============  =================================  ==================================================

sd and var use the n - 1 denominator.  Coverage, power and rates are proportions; rel_bias and relerror
percentages (rsimsum's convention).  A replication is *usable* for a parameter when its status is in
``usable`` (default ok, warning and singular: a singular fit, a variance component on the boundary, still
gives the estimates of the model without that component, as lme4 users report them; its share is
``rate_singular``) and its estimate is finite; a parameter missing from a replication (e.g. the method
raised) counts as that replication's failure, so every method is judged on the same replications it was
run on. A method that failed in every replication of a group still appears, with ``fail_rate`` 1: its
parameters are those it reported in other groups (or, when it never reported any, a missing parameter).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import MlsimkitError

MEASURES = ("bias", "rel_bias", "empse", "mse", "rmse", "modelse", "relerror", "coverage", "becoverage",
            "power", "pmse", "fail_rate", "mean_redraws")
_STANDARD = {"condition", "rep", "method", "parameter", "estimate", "se", "ci_lower", "ci_upper", "pred_error",
             "status", "message", "warnings", "fit_time", "seed", "redraws", "redraw_log", "truth", "true_value"}
_OUT = ("measure", "value", "mcse", "n_used", "n_usable", "n_reps")
_STATUSES = ("ok", "warning", "non-converged", "singular", "error")


class PerformanceError(MlsimkitError):
    """The results or truth given to a performance measure are malformed."""


# ------------------------------------------------------------------------------- single measures
def _sd(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def jackknife_mcse(x: np.ndarray, statistic: Callable[[np.ndarray], float]) -> float:
    """Jackknife standard error of ``statistic(x)``: sqrt((n-1)/n * sum_i (t_(-i) - mean t_(-i))^2)."""
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        return math.nan
    loo = np.array([statistic(np.delete(x, i, axis=0)) for i in range(n)])
    return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def bias(est, truth) -> tuple[float, float]:
    d = np.asarray(est, float) - np.asarray(truth, float)
    return float(d.mean()) if d.size else math.nan, _sd(d) / math.sqrt(d.size) if d.size > 1 else math.nan


def rel_bias(est, truth) -> tuple[float, float]:
    truth = np.broadcast_to(np.asarray(truth, float), np.shape(est))
    if np.any(truth == 0):
        return math.nan, math.nan
    r = (np.asarray(est, float) - truth) / truth
    return (100 * float(r.mean()) if r.size else math.nan,
            100 * _sd(r) / math.sqrt(r.size) if r.size > 1 else math.nan)


def empse(est) -> tuple[float, float]:
    est = np.asarray(est, float)
    n = est.size
    v = _sd(est)
    return v, v / math.sqrt(2 * (n - 1)) if n > 1 else math.nan


def mse(est, truth) -> tuple[float, float]:
    d2 = (np.asarray(est, float) - np.asarray(truth, float)) ** 2
    n = d2.size
    if n == 0:
        return math.nan, math.nan
    m = float(d2.mean())
    return m, float(np.sqrt(np.sum((d2 - m) ** 2) / (n * (n - 1)))) if n > 1 else math.nan


def rmse(est, truth) -> tuple[float, float]:
    """RMSE with a jackknife MCSE (leave-one-out MSEs in closed form: (sum d^2 - d_i^2) / (n - 1))."""
    d2 = (np.asarray(est, float) - np.asarray(truth, float)) ** 2
    n = d2.size
    if n == 0:
        return math.nan, math.nan
    value = math.sqrt(float(d2.mean()))
    if n < 2:
        return value, math.nan
    loo = np.sqrt((d2.sum() - d2) / (n - 1))
    return value, float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


def modelse(se) -> tuple[float, float]:
    s2 = np.asarray(se, float) ** 2
    n = s2.size
    if n == 0:
        return math.nan, math.nan
    m = math.sqrt(float(s2.mean()))
    if n < 2 or m == 0:
        return m, math.nan
    return m, math.sqrt(float(np.var(s2, ddof=1)) / (4 * n * m**2))


def relerror(est, se) -> tuple[float, float]:
    est, se = np.asarray(est, float), np.asarray(se, float)
    n = est.size
    emp, _ = empse(est)
    mod, _ = modelse(se)
    if n < 2 or not emp or not mod:
        return math.nan, math.nan
    ratio = mod / emp
    var_s2 = float(np.var(se**2, ddof=1))
    return 100 * (ratio - 1), 100 * ratio * math.sqrt(var_s2 / (4 * n * mod**4) + 1 / (2 * (n - 1)))


def proportion(flags) -> tuple[float, float]:
    f = np.asarray(flags, float)
    n = f.size
    if n == 0:
        return math.nan, math.nan
    p = float(f.mean())
    return p, math.sqrt(p * (1 - p) / n)


def coverage(lower, upper, truth) -> tuple[float, float]:
    lower, upper, truth = (np.asarray(a, float) for a in (lower, upper, truth))
    return proportion((lower <= truth) & (truth <= upper))


def mean_with_mcse(x) -> tuple[float, float]:
    x = np.asarray(x, float)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), _sd(x) / math.sqrt(x.size) if x.size > 1 else math.nan


# ------------------------------------------------------------------------------------------ truth
def _attach_truth(res: pd.DataFrame, truth: Any) -> pd.Series:
    if truth is None:
        for col in ("true_value", "truth"):
            if col in res:
                return pd.to_numeric(res[col], errors="coerce")
        return pd.Series(np.nan, index=res.index)
    if isinstance(truth, (int, float, np.number)) and not isinstance(truth, bool):
        return pd.Series(float(truth), index=res.index)
    if isinstance(truth, Mapping):
        unknown = set(truth) - set(res["parameter"].dropna().unique())
        if unknown:
            raise PerformanceError(f"truth names parameter(s) {sorted(unknown)} that the results do not contain; "
                                   f"parameters: {sorted(res['parameter'].dropna().unique())}")
        return res["parameter"].map({k: float(v) for k, v in truth.items()}).astype(float)
    if isinstance(truth, pd.DataFrame):
        tcol = "true_value" if "true_value" in truth else "truth" if "truth" in truth else None
        if tcol is None or "parameter" not in truth:
            raise PerformanceError("a truth table needs columns 'parameter' and 'true_value' (plus any factor "
                                   f"columns it varies with); got {list(truth.columns)}")
        keys = [c for c in truth.columns if c != tcol]
        missing = [k for k in keys if k not in res]
        if missing:
            raise PerformanceError(f"truth table column(s) {missing} are not columns of the results")
        if truth.duplicated(keys).any():
            raise PerformanceError(f"truth table has several true values for the same {keys}")
        merged = res[keys].merge(truth[keys + [tcol]], on=keys, how="left")
        return pd.Series(merged[tcol].to_numpy(float), index=res.index)
    raise PerformanceError(f"truth must be a number, a dict {{parameter: value}} or a DataFrame, got "
                           f"{type(truth).__name__}")


def factor_columns(results: pd.DataFrame) -> list[str]:
    """The design factor columns of a results table: those between ``condition`` and ``rep``."""
    cols = list(results.columns)
    if "condition" in cols and "rep" in cols and cols.index("rep") > cols.index("condition"):
        return cols[cols.index("condition") + 1: cols.index("rep")]
    return [c for c in cols if c not in _STANDARD and results[c].dtype != float]


# ---------------------------------------------------------------------------------------- summary
def _complete(res: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per (by, method, unit, parameter) for every unit the method ran on; a parameter missing
    from a unit takes the status and message of the method's parameter-less row there (or 'error')."""
    gm = by + ["method"]
    unit = ["condition", "rep"]
    have_param = res["parameter"].notna()
    rows = res[have_param]
    dup = rows.duplicated(list(dict.fromkeys(gm + unit + ["parameter"])))
    if dup.any():
        first = rows[dup].iloc[0]
        raise PerformanceError(
            f"results hold several rows for method '{first['method']}', parameter '{first['parameter']}', "
            f"condition '{first['condition']}', rep {first['rep']}; each (condition, rep, method, parameter) "
            "must appear once")
    units = res[list(dict.fromkeys(gm + unit))].drop_duplicates()
    params = rows[gm + ["parameter"]].drop_duplicates()
    # groups where the method never reported a parameter (every replication failed): the parameters it
    # reported elsewhere, or a missing one, so that the failures are counted, never dropped
    groups = units[gm].drop_duplicates()
    bare = groups.merge(params[gm].drop_duplicates(), on=gm, how="left", indicator=True)
    bare = bare[bare["_merge"] == "left_only"].drop(columns="_merge")
    if len(bare):
        known = rows[["method", "parameter"]].drop_duplicates()
        filled = bare.merge(known, on="method", how="left")
        params = pd.concat([params, filled[gm + ["parameter"]]], ignore_index=True)
    full = units.merge(params, on=gm, how="inner")
    out = full.merge(rows, on=list(dict.fromkeys(gm + unit + ["parameter"])), how="left")
    if (~have_param).any():
        mlevel = (res[~have_param].groupby(list(dict.fromkeys(gm + unit)), dropna=False)["status"]
                  .first().rename("_mstatus").reset_index())
        out = out.merge(mlevel, on=list(dict.fromkeys(gm + unit)), how="left")
        out["status"] = out["status"].fillna(out["_mstatus"])
        out = out.drop(columns=["_mstatus"])
    out["status"] = out["status"].fillna("error")
    return out


def summarise(
    results: pd.DataFrame,
    truth: Any = None,
    by: Sequence[str] | None = None,
    measures: Iterable[str] | None = None,
    usable: Iterable[str] = ("ok", "warning", "singular"),
    null: float = 0.0,
) -> pd.DataFrame:
    """Performance measures with MCSE, one row per (by..., method, parameter, measure).

    Parameters
    ----------
    results
        Long results (:func:`mlsimkit.simulate.run`): columns ``method, parameter, estimate`` and
        optionally ``condition, rep, se, ci_lower, ci_upper, pred_error, status, redraws`` and factors.
    truth
        The true value: a number, ``{parameter: value}``, or a DataFrame with ``parameter``, any factor
        columns it varies with, and ``true_value``.  None uses a ``true_value`` (or ``truth``) column of
        the results if there is one.  Parameters without a truth get no truth-based measures.
    by
        Columns to group by besides method and parameter; default ``condition`` and the factor columns.
    measures
        Subset of :data:`MEASURES` (default all that the columns allow); rates by status always follow
        ``fail_rate``.
    usable
        Statuses whose estimates are used (a replication with another status counts as failed); default
        ok, warning and singular.
    null
        The null value for ``power`` (share of intervals excluding it).

    Returns
    -------
    DataFrame with columns ``by..., method, parameter, measure, value, mcse, n_used, n_usable, n_reps``:
    ``n_used`` is the number of replications the measure was computed from, ``n_usable`` the usable replications of
    the group, ``n_reps`` all replications run.
    """
    if not isinstance(results, pd.DataFrame):
        raise PerformanceError(f"results must be a DataFrame, got {type(results).__name__}")
    missing = [c for c in ("method", "parameter", "estimate") if c not in results]
    if missing:
        raise PerformanceError(f"results lack column(s) {missing}; expected the long table of simulate.run")
    res = results.copy()
    if "condition" not in res:
        res["condition"] = ""
    if "rep" not in res:
        res["rep"] = res.groupby(["condition", "method", "parameter"], dropna=False).cumcount()
    if "status" not in res:
        res["status"] = "ok"
    if by is None:
        by = ["condition", *factor_columns(results)]
    by = list(by)
    bad = [b for b in by if b not in res]
    if bad:
        raise PerformanceError(f"by names column(s) {bad} that the results do not have")
    clash = [b for b in by if b in ("method", "parameter", *_OUT)]
    if clash:
        raise PerformanceError(f"by column(s) {clash} clash with the summary's own columns; rename them")
    wanted = list(MEASURES) if measures is None else list(measures)
    unknown = [m for m in wanted if m not in MEASURES]
    if unknown:
        raise PerformanceError(f"unknown measure(s) {unknown}; choose from {list(MEASURES)}")
    usable = set(usable)

    full = _complete(res, by)
    full["_truth"] = _attach_truth(full, truth).to_numpy()
    statuses_seen = [s for s in _STATUSES if s != "ok" and (full["status"] == s).any()]
    out = []
    gcols = by + ["method", "parameter"]
    for gkey, g in full.groupby(gcols, sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        base = dict(zip(gcols, gkey))
        n_reps = len(g)
        est = g["estimate"].to_numpy(float)
        ok = g["status"].isin(usable).to_numpy() & np.isfinite(est)
        n_usable = int(ok.sum())
        th = g["_truth"].to_numpy(float)
        has_truth = bool(np.isfinite(th[ok]).all()) and n_usable > 0
        e = est[ok]

        def add(measure, vm, n):
            if measure in wanted or measure.startswith("rate_") and "fail_rate" in wanted:
                out.append({**base, "measure": measure, "value": vm[0], "mcse": vm[1], "n_used": int(n),
                            "n_usable": n_usable, "n_reps": n_reps})

        if n_usable:
            if has_truth:
                add("bias", bias(e, th[ok]), n_usable)
                if np.all(th[ok] != 0):
                    add("rel_bias", rel_bias(e, th[ok]), n_usable)
            add("empse", empse(e), n_usable)
            if has_truth:
                add("mse", mse(e, th[ok]), n_usable)
                add("rmse", rmse(e, th[ok]), n_usable)
            if "se" in g:
                se = g["se"].to_numpy(float)
                okse = ok & np.isfinite(se)
                if okse.any():
                    add("modelse", modelse(se[okse]), okse.sum())
                    add("relerror", relerror(est[okse], se[okse]), okse.sum())
            if "ci_lower" in g and "ci_upper" in g:
                lo, hi = g["ci_lower"].to_numpy(float), g["ci_upper"].to_numpy(float)
                okci = ok & np.isfinite(lo) & np.isfinite(hi)
                if okci.any():
                    if has_truth:
                        add("coverage", coverage(lo[okci], hi[okci], th[okci]), okci.sum())
                    centre = th + float(np.mean(e - th[ok])) if has_truth else np.full(n_reps, e.mean())
                    add("becoverage", coverage(lo[okci], hi[okci], centre[okci]), okci.sum())
                    add("power", proportion((lo[okci] > null) | (hi[okci] < null)), okci.sum())
        if "pred_error" in g:
            pe = g["pred_error"].to_numpy(float)
            okpe = g["status"].isin(usable).to_numpy() & np.isfinite(pe)
            if okpe.any():
                add("pmse", mean_with_mcse(pe[okpe]), okpe.sum())
        usable_any = g["status"].isin(usable).to_numpy() & (np.isfinite(est) | (
            np.isfinite(g["pred_error"].to_numpy(float)) if "pred_error" in g else False))
        add("fail_rate", proportion(~usable_any), n_reps)
        for s in statuses_seen:
            add(f"rate_{s}", proportion(g["status"].to_numpy() == s), n_reps)
        if "redraws" in g and (full["redraws"].fillna(0) > 0).any():
            add("mean_redraws", mean_with_mcse(g["redraws"].fillna(0).to_numpy(float)), n_reps)
    cols = gcols + ["measure", "value", "mcse", "n_used", "n_usable", "n_reps"]
    return pd.DataFrame(out, columns=cols)


def to_wide(summary: pd.DataFrame, with_mcse: bool = True, digits: int | None = None) -> pd.DataFrame:
    """One row per (group, method, parameter), one column per measure (``value (mcse)`` strings if
    ``digits`` is given, else ``<measure>`` and ``<measure>_mcse`` numeric columns)."""
    idx = [c for c in summary.columns if c not in _OUT]
    if digits is not None:
        s = summary.assign(cell=[f"{v:.{digits}f} ({m:.{digits}f})" if with_mcse else f"{v:.{digits}f}"
                                 for v, m in zip(summary["value"], summary["mcse"])])
        return s.pivot_table(index=idx, columns="measure", values="cell", aggfunc="first", sort=False).reset_index()
    wide = summary.pivot_table(index=idx, columns="measure", values="value", sort=False)
    if with_mcse:
        m = summary.pivot_table(index=idx, columns="measure", values="mcse", sort=False).add_suffix("_mcse")
        wide = wide.join(m)
    return wide.reset_index()


# ---------------------------------------------------------------------------------------- planning
def plan_reps(
    target_mcse: float | Mapping[str, float],
    sd: float | None = None,
    measure: str = "bias",
    coverage: float | None = 0.95,
    pilot: pd.DataFrame | None = None,
) -> int | pd.DataFrame:
    """Replications needed for a target MCSE (Morris et al. 2019, section 5.3).

    Without ``pilot``: ``bias`` (sd = the empirical SE of the estimator) n = sd^2 / target^2;
    ``empse`` n = 1 + sd^2 / (2 target^2); ``coverage`` / ``power`` / ``fail_rate`` (any proportion p =
    ``coverage``; None for the worst case p = 0.5) n = p (1 - p) / target^2.  Returns an int (rounded up).

    With ``pilot`` (a :func:`summarise` table from a pilot run), every measure's MCSE is assumed to shrink
    as 1/sqrt(n): n = n_pilot (mcse / target)^2, returned as the pilot table with a ``reps_needed``
    column; ``target_mcse`` may then be a dict by measure.
    """
    if pilot is not None:
        p = pilot.copy()
        tgt = p["measure"].map(target_mcse) if isinstance(target_mcse, Mapping) else float(target_mcse)
        need = np.ceil(p["n_used"] * (p["mcse"] / tgt) ** 2)
        p["reps_needed"] = need.astype("Int64")
        return p
    if isinstance(target_mcse, Mapping) or not target_mcse or target_mcse <= 0:
        raise PerformanceError(f"target_mcse must be a positive number, got {target_mcse!r}")
    if measure == "bias":
        if sd is None or sd <= 0:
            raise PerformanceError("plan_reps for bias needs sd, the (guessed) empirical SE of the estimator")
        return int(math.ceil(sd**2 / target_mcse**2 - 1e-9))
    if measure == "empse":
        if sd is None or sd <= 0:
            raise PerformanceError("plan_reps for empse needs sd, the (guessed) empirical SE of the estimator")
        return int(math.ceil(1 + sd**2 / (2 * target_mcse**2) - 1e-9))
    if measure in ("coverage", "power", "fail_rate", "becoverage"):
        p = 0.5 if coverage is None else float(coverage)
        return int(math.ceil(p * (1 - p) / target_mcse**2 - 1e-9))
    raise PerformanceError(f"plan_reps knows measures bias, empse, coverage, power, fail_rate; for "
                           f"'{measure}' give a pilot summary")


# ------------------------------------------------------------------------------- paired differences
#: The measures that are means over replications, with the per-replication quantity they average.
PER_REPLICATION = {
    "pmse": "the data set's mean squared prediction error (pred_error)",
    "bias": "estimate - truth",
    "rel_bias": "100 (estimate - truth) / truth",
    "sq_error": "(estimate - truth)^2 (its mean is the MSE)",
    "coverage": "1 if the interval holds the truth, else 0",
}


def per_replication(results: pd.DataFrame, truth: Any = None, by: Sequence[str] | None = None,
                    measure: str = "pmse", usable: Iterable[str] = ("ok", "warning", "singular")) -> pd.DataFrame:
    """The per-replication contributions of a measure that is a mean over replications.

    ``pmse``, ``bias``, ``rel_bias``, ``sq_error`` and ``coverage`` (:data:`PER_REPLICATION`) are means of one number per
    usable replication; this returns those numbers, one row per (by..., method, parameter, rep) with a
    ``value`` column, so that two methods run on the same data sets can be compared replication by
    replication (:func:`paired_difference`).  The mean of ``value`` within a group equals the measure of
    :func:`summarise` on the same ``usable`` statuses.
    """
    if measure not in PER_REPLICATION:
        raise PerformanceError(f"per_replication knows the measures {list(PER_REPLICATION)}, got '{measure}'")
    if not isinstance(results, pd.DataFrame):
        raise PerformanceError(f"results must be a DataFrame, got {type(results).__name__}")
    need = {"pmse": ["pred_error"], "coverage": ["estimate", "ci_lower", "ci_upper"]}.get(measure, ["estimate"])
    missing = [c for c in ["method", "parameter", "rep", *need] if c not in results]
    if missing:
        raise PerformanceError(f"results lack column(s) {missing} needed for per-replication '{measure}'")
    res = results.copy()
    if "condition" not in res:
        res["condition"] = ""
    if "status" not in res:
        res["status"] = "ok"
    by = ["condition", *factor_columns(results)] if by is None else list(by)
    bad = [b for b in by if b not in res]
    if bad:
        raise PerformanceError(f"by names column(s) {bad} that the results do not have")
    ok = res["status"].isin(set(usable))
    if measure == "pmse":
        val = pd.to_numeric(res["pred_error"], errors="coerce")
    else:
        th = _attach_truth(res, truth).to_numpy(float)
        est = pd.to_numeric(res["estimate"], errors="coerce").to_numpy(float)
        if measure == "bias":
            val = est - th
        elif measure == "rel_bias":
            with np.errstate(divide="ignore", invalid="ignore"):
                val = np.where(th != 0, 100 * (est - th) / th, np.nan)
        elif measure == "sq_error":
            val = (est - th) ** 2
        else:
            lo, hi = (pd.to_numeric(res[c], errors="coerce").to_numpy(float) for c in ("ci_lower", "ci_upper"))
            val = np.where(np.isfinite(lo) & np.isfinite(hi) & np.isfinite(th) & np.isfinite(est),
                           ((lo <= th) & (th <= hi)).astype(float), np.nan)
        val = pd.Series(val, index=res.index)
    out = res.loc[ok, by + ["method", "parameter", "rep"]].assign(value=val[ok].to_numpy(float))
    return out[np.isfinite(out["value"])].reset_index(drop=True)


def paired_difference(a, b) -> tuple[float, float, int]:
    """Mean of ``a - b`` over the replications both hold, its MCSE ``sd(a - b) / sqrt(n)`` and n.

    ``a`` and ``b`` are Series indexed by replication (e.g. two methods' per-replication values from
    :func:`per_replication` on the same data sets).  Pairing removes the variation the two share (the
    data set), so the MCSE of a difference between methods is usually far smaller than the two MCSEs
    combined.  Replications usable for only one of the two are left out.
    """
    d = (pd.Series(a, dtype=float) - pd.Series(b, dtype=float)).dropna()
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(d.mean()), (_sd(d.to_numpy()) / math.sqrt(n) if n > 1 else math.nan), n


def reps_to_decide(distance: float, mcse: float, n_used: int, z: float = 2.0) -> int | None:
    """Replications that would put ``distance`` (an estimate's distance from the boundary of a decision,
    e.g. a difference from 0 or from an equivalence margin) ``z`` MCSEs away from it, assuming the MCSE
    shrinks as 1/sqrt(n) (:func:`plan_reps` with a pilot of ``n_used`` replications).  None when the
    distance is 0 or not finite, or the answer exceeds a billion (no practical number would decide)."""
    if not (np.isfinite(distance) and np.isfinite(mcse)) or distance == 0 or n_used < 1:
        return None
    if n_used * (z * mcse / distance) ** 2 > 1e9:
        return None
    pilot = pd.DataFrame({"measure": ["difference"], "mcse": [float(mcse)], "n_used": [int(n_used)]})
    return int(plan_reps(abs(float(distance)) / z, pilot=pilot)["reps_needed"].iloc[0])


def status_rates(results: pd.DataFrame, by: Sequence[str], notes: Mapping[str, str] | None = None,
                 statuses: Sequence[str] = _STATUSES) -> pd.DataFrame:
    """Share of fits per status, and of fits whose message contains each of ``notes``, with MCSE.

    One row per (by..., method, rate) with ``value``, ``mcse`` (``sqrt(p (1 - p) / n)``) and ``n_reps``;
    a fit is one (condition, rep, method), counted once whatever the number of its parameter rows.
    ``notes`` maps a label to a substring of the ``message`` column (e.g. a fallback the method records
    while still returning usable estimates), so such fits are counted beside the failures.
    """
    by = list(by)
    missing = [c for c in [*by, "method", "rep"] if c not in results]
    if missing:
        raise PerformanceError(f"results lack column(s) {missing} needed for status rates")
    keys = list(dict.fromkeys(by + ["condition", "method", "rep"] if "condition" in results else by + ["method", "rep"]))
    fits = results.copy()
    if "status" not in fits:
        fits["status"] = "ok"
    fits["message"] = fits["message"].fillna("").astype(str) if "message" in fits else ""
    fits = fits.groupby(keys, dropna=False, sort=False).agg(
        status=("status", lambda s: next((x for x in ("error", "non-converged", "singular", "warning") if (s == x).any()),
                                         "ok")),
        message=("message", " ".join)).reset_index()
    out = []
    for gkey, g in fits.groupby(by + ["method"], sort=False, dropna=False):
        gkey = gkey if isinstance(gkey, tuple) else (gkey,)
        base = dict(zip(by + ["method"], gkey))
        flags = {f"rate_{s}": g["status"].to_numpy() == s for s in statuses}
        for label, text in (notes or {}).items():
            flags[label] = g["message"].str.contains(text, regex=False).to_numpy()
        for rate, f in flags.items():
            v, m = proportion(f)
            out.append({**base, "rate": rate, "value": v, "mcse": m, "n_reps": len(g)})
    return pd.DataFrame(out, columns=by + ["method", "rate", "value", "mcse", "n_reps"])


def beyond_mcse(summary: pd.DataFrame, measure: str, reference: float = 0.0, z: float = 2.0) -> pd.DataFrame:
    """The rows of ``measure`` with ``z = (value - reference) / mcse`` and ``beyond`` (|z| >= ``z``).

    E.g. relative SE bias (``relerror``) against 0: a cell beyond 2 MCSE is a model SE that differs from
    the empirical SE by more than Monte Carlo error; among K cells where the truth is ``reference``,
    about 4.6% of K are beyond 2 MCSE by chance alone (``expected_by_chance``)."""
    d = summary[summary["measure"] == measure].copy()
    if d.empty:
        raise PerformanceError(f"the summary has no measure '{measure}'; it has {sorted(summary['measure'].unique())}")
    with np.errstate(divide="ignore", invalid="ignore"):
        d["z"] = (d["value"] - reference) / d["mcse"]
    d["beyond"] = d["z"].abs() >= z
    d.attrs["expected_by_chance"] = float(len(d) * math.erfc(z / math.sqrt(2)))
    return d
