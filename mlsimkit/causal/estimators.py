"""The estimator engine: the average treatment effect of a binary school-level treatment.

Estimators (the four of the causal paper, *Generative Synthetic Data for Causal Inference: Pitfalls,
Remedies, and Opportunities*, arXiv 2604.23904, section "Synthetic simulation engine", plus the naive
contrast):

=========  ===========================================================================================
``DiM``    difference in means of the outcome between treated and control students (no adjustment)
``OR``     outcome regression / g-computation: mean over units of Q(1, W) - Q(0, W)
``IPW``    inverse probability weighting, Hajek (normalised, "stabilised") weights, propensities bounded
``AIPW``   augmented IPW (Robins, Rotnitzky & Zhao 1994; the efficient influence function as estimator)
``TMLE``   targeted maximum likelihood (van der Laan & Rubin 2006; Gruber & van der Laan 2010): the outcome
           scaled to [0, 1] by its observed range, a logistic fluctuation (by default the weighted one, per
           arm with weights A/g and (1-A)/(1-g); optionally along the clever covariate
           H = A/g - (1-A)/(1-g)), and the substitution estimator of the updated fit
=========  ===========================================================================================

Each adjusted estimator comes in two versions:

``single``
    what a single-level analysis does: the propensity is a logistic regression on the student rows (student
    and school covariates), the outcome model a linear regression on the student rows.
``multilevel``
    multilevel-aware nuisance models: the propensity is fitted where the treatment lives, one row per school,
    on the school covariates and the school means of the student covariates; the outcome model is a linear
    random-intercept model (the project's engine, :func:`mlsimkit.lmm.fit_lmm`) with the student covariates,
    their school means and the school covariates. Out-of-sample predictions use its fixed part (a held-out
    school has no predicted random effect).

The outcome model of AIPW and TMLE is **cross-fitted** (Chernozhukov et al. 2018): the schools are split
into K folds (stratified by the school's treatment, so every training set has both arms) and each school's
predictions come from the model fitted without its fold. The propensity is cross-fitted too with
``crossfit="all"``; by default it is fitted on all schools (a parametric logistic model needs no
cross-fitting, and cross-fitting it cost bias in finite samples: see :func:`estimate_ate`). OR is the plug-in of one parametric fit on all
the data (a linear model needs no cross-fitting; its influence function is the delta-method one of the
coefficient, OLS or GLS), which keeps its standard error honest.

Standard errors come from each estimator's influence function IF_i (the efficient one for AIPW / TMLE; the
one with the propensity treated as known for IPW, which is conservative; the delta-method one for OR):
**cluster-robust**, summed within schools, ``var = J/(J-1) * sum_j (sum_{i in j} IF_i)^2 / n^2`` (the factor
J/(J-1) is the usual small-sample correction, off with ``small_sample=False``), and the **naive** i.i.d.
``var = sum_i IF_i^2 / n^2`` for comparison: with a school-level treatment the naive one ignores that the
students of a school share both their treatment and their school effect, and under-covers.

The cluster-robust Wald interval uses by default the quantile of Student's t on J - 1 degrees of freedom
(``df="clusters"``): the variance is a sum of J school terms, and with few schools its sampling error widens
the distribution of the t statistic well beyond the normal (Cameron & Miller 2015, "A practitioner's guide to
cluster-robust inference", J. Human Resources 50(2), section VI; the J/(J-1) factor alone leaves intervals
too short at 20 schools). ``df="normal"`` gives the normal quantile. The naive interval always uses the
normal quantile (it is the i.i.d. comparison).

The causal paper's weak points that this module does not copy: in-sample nuisance fits, no standard errors,
and no clustering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm, t as student_t

from ..errors import DataValidationError, ParamsError
from ..lmm._model import single_thread_blas
from ._design import (Encoder, Logistic, expit, group_codes, group_means, group_sums, independent_columns,
                      logit, no_overlap, treatment_codes)

ESTIMATORS = ("DiM", "OR", "IPW", "AIPW", "TMLE")
VERSIONS = ("single", "multilevel")
#: Bound of the scaled outcome predictions inside (0, 1) for the TMLE fluctuation.
TMLE_BOUND = 1e-4


@dataclass(frozen=True)
class CausalSpec:
    """Roles of the columns of a join-as-one frame (one row per student).

    ``student`` / ``school``: the covariates W at each level. ``outcome_*`` and ``propensity_*`` override
    them for one nuisance model (to study misspecification); ``None`` means the common lists. ``treated``:
    the value of ``treatment`` meaning treated (not needed for 0/1, booleans, or a two-category categorical
    whose last category is the treated one).
    """

    treatment: str
    outcome: str
    cluster: str
    student: tuple = ()
    school: tuple = ()
    treated: object = None
    outcome_student: tuple | None = None
    outcome_school: tuple | None = None
    propensity_student: tuple | None = None
    propensity_school: tuple | None = None

    def covariates(self, model: str) -> tuple[list, list]:
        st = getattr(self, f"{model}_student")
        sc = getattr(self, f"{model}_school")
        return list(self.student if st is None else st), list(self.school if sc is None else sc)


@dataclass
class Prepared:
    """Arrays of one data set, validated (see :func:`prepare`)."""

    y: np.ndarray
    a: np.ndarray                 # per row, 0/1
    codes: np.ndarray             # school code per row
    J: int
    a_school: np.ndarray          # per school, 0/1
    out_single: np.ndarray        # [1, A, student, school] outcome design (A in column 1)
    out_multi: np.ndarray         # [1, A, student, school means of student, school]
    ps_single: np.ndarray         # propensity design, rows
    ps_multi: np.ndarray          # propensity design, one row per school
    spec: CausalSpec = field(repr=False)
    dropped_single: int = 0       # outcome-design columns dropped as collinear or constant (all the data)
    dropped_multi: int = 0


def _independent(X: np.ndarray, spec: CausalSpec, what: str) -> np.ndarray:
    keep = independent_columns(X)
    if len(keep) < 2 or keep[0] != 0 or keep[1] != 1:
        raise DataValidationError(f"treatment column '{spec.treatment}': the {what} design has no separate "
                                  "intercept and treatment (constant treatment?)")
    return X[:, keep]


def prepare(frame: pd.DataFrame, spec: CausalSpec, check_overlap: bool = True) -> Prepared:
    """Validate ``frame`` for ``spec`` and build the design arrays.

    Errors (:class:`~mlsimkit.errors.DataValidationError`, naming the column): a missing column, a
    treatment that is not binary, varies within a school, or leaves fewer than two treated or two control
    schools; a non-numeric or missing outcome; with ``check_overlap`` (default), a treatment perfectly
    predicted by the school-level covariates (estimated propensity 0 or 1 for every school: no overlap).

    ``check_overlap=False`` is for simulated replications of a design already checked on the real data
    (:func:`mlsimkit.objectives.causal.prepare`): with few schools and several school-level covariates a
    draw is often separated by chance; the ridge-penalised propensity then stays finite, the bounds cap it
    (``share_trimmed``), and the difference in means never needs it.
    """
    for role in ("treatment", "outcome", "cluster"):
        c = getattr(spec, role)
        if c not in frame.columns:
            raise DataValidationError(f"{role} column '{c}' is not in the data (have {list(frame.columns)})")
    a, _ = treatment_codes(frame[spec.treatment], spec.treatment, spec.treated)
    y = pd.to_numeric(frame[spec.outcome], errors="coerce").to_numpy(float)
    if not np.isfinite(y).all():
        raise DataValidationError(f"outcome column '{spec.outcome}': {int((~np.isfinite(y)).sum())} missing or "
                                  "non-numeric value(s)")
    codes, J = group_codes(frame[spec.cluster])
    lo = np.full(J, np.inf)
    hi = np.full(J, -np.inf)
    np.minimum.at(lo, codes, a)
    np.maximum.at(hi, codes, a)
    if (lo != hi).any():
        raise DataValidationError(f"treatment column '{spec.treatment}' varies within {int((lo != hi).sum())} "
                                  f"cluster(s) of '{spec.cluster}'; expected a school-level treatment")
    a_school = lo
    n1 = int(a_school.sum())
    if n1 < 2 or J - n1 < 2:
        raise DataValidationError(f"treatment column '{spec.treatment}': {n1} treated and {J - n1} control "
                                  f"cluster(s) of '{spec.cluster}'; expected at least two of each")
    n = len(frame)
    ones = np.ones((n, 1))

    def enc(cols):
        return Encoder().fit(frame, cols).transform(frame)

    o_st, o_sc = spec.covariates("outcome")
    S, C = enc(o_st), enc(o_sc)
    Sbar = group_means(S, codes, J)[codes] if S.shape[1] else S
    full_single = np.column_stack([ones, a, S, C])
    full_multi = np.column_stack([ones, a, S, Sbar, C])
    out_single = _independent(full_single, spec, "outcome")
    out_multi = _independent(full_multi, spec, "outcome")
    p_st, p_sc = spec.covariates("propensity")
    S, C = enc(p_st), enc(p_sc)
    ps_single = np.column_stack([S, C])
    ps_multi = np.column_stack([group_means(S, codes, J), group_means(C, codes, J)])
    ps_single = ps_single[:, independent_columns(np.column_stack([ones, ps_single]))[1:] - 1] \
        if ps_single.shape[1] else ps_single
    if ps_multi.shape[1]:
        ps_multi = ps_multi[:, independent_columns(np.column_stack([np.ones((J, 1)), ps_multi]))[1:] - 1]
    prep = Prepared(y, a, codes, J, a_school, out_single, out_multi, ps_single, ps_multi, spec,
                    full_single.shape[1] - out_single.shape[1], full_multi.shape[1] - out_multi.shape[1])
    if check_overlap and no_overlap(ps_multi, a_school):
        raise DataValidationError(f"treatment column '{spec.treatment}' is perfectly predicted by the "
                                  "school-level covariates (estimated propensity 0 or 1 in every school): "
                                  "there is no overlap to estimate an effect from")
    return prep


# ============================================================================ folds and nuisances
def school_folds(a_school: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold (0..k-1) of each school, stratified by treatment: treated and control schools are each
    shuffled and dealt round-robin, so every training set holds both arms."""
    J = len(a_school)
    if not 2 <= k <= J:
        raise ParamsError(f"parameter 'folds': expected an integer between 2 and the number of schools ({J}), got {k}")
    fold = np.empty(J, dtype=int)
    start = int(rng.integers(k))
    for arm in (1.0, 0.0):
        idx = rng.permutation(np.flatnonzero(a_school == arm))
        fold[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return fold


def _ols(X, y):
    return np.linalg.lstsq(X, y, rcond=None)[0]


def _lmm(X, y, codes):
    from ..lmm import fit_lmm

    r = fit_lmm(y, X, np.ones((len(y), 1)), codes)
    tau2 = float(np.asarray(r.cov_re, dtype=float).reshape(-1)[0])
    return np.asarray(r.fe_params, dtype=float), tau2, float(r.sigma2)


def _kept(X: np.ndarray) -> np.ndarray:
    """Columns of an outcome design kept in one fit: those not collinear with earlier ones (or constant)
    on the fit's training rows; the intercept and the treatment (columns 0 and 1) must stay."""
    keep = independent_columns(X)
    if len(keep) < 2 or keep[0] != 0 or keep[1] != 1:
        raise DataValidationError("the treatment is constant or collinear with the covariates in a training "
                                  "fold of the outcome model")
    return keep


def _with_a(X, value):
    Z = X.copy()
    Z[:, 1] = value
    return Z


def _crossfit(prep: Prepared, version: str, folds: np.ndarray, propensity: bool = True,
              ridge: float = 1.0) -> dict:
    """Out-of-fold predictions ``Q1, Q0`` (outcome model) and ``g`` (propensity) for every row; with
    ``propensity=False`` the propensity is fitted once on all the schools (rows) instead.

    Each fold's outcome model drops the columns that are collinear or constant on its training rows (a
    school-level column often is, with few schools in a fold) and predicts with the columns it kept;
    ``dropped`` is the most columns dropped in any one fold. The propensity is a logistic regression with
    the penalty ``ridge`` on its standardised slopes (finite under separation)."""
    n = len(prep.y)
    dropped = 0
    Q1, Q0, g = np.empty(n), np.empty(n), np.empty(n)
    row_fold = folds[prep.codes]
    X = prep.out_single if version == "single" else prep.out_multi
    for k in np.unique(folds):
        te = row_fold == k
        tr = ~te if len(np.unique(folds)) > 1 else np.ones(n, dtype=bool)  # one fold: in-sample fits
        keep = _kept(X[tr])
        dropped = max(dropped, X.shape[1] - len(keep))
        Xk = X[:, keep]
        if version == "single":
            beta = _ols(Xk[tr], prep.y[tr])
            if propensity:
                ps = Logistic(ridge=ridge).fit(prep.ps_single[tr], prep.a[tr])
                g[te] = ps.predict_proba1(prep.ps_single[te])
        else:
            tr_codes, _ = group_codes(prep.codes[tr])
            beta = _lmm(Xk[tr], prep.y[tr], tr_codes)[0]
            s_tr = folds != k
            if propensity:
                ps = Logistic(ridge=ridge).fit(prep.ps_multi[s_tr], prep.a_school[s_tr])
                g[te] = ps.predict_proba1(prep.ps_multi[~s_tr])[_school_rank(prep.codes[te], ~s_tr)]
        Q1[te] = _with_a(Xk[te], 1.0) @ beta
        Q0[te] = _with_a(Xk[te], 0.0) @ beta
    if not propensity:
        if version == "single":
            g = Logistic(ridge=ridge).fit(prep.ps_single, prep.a).predict_proba1(prep.ps_single)
        else:
            g = Logistic(ridge=ridge).fit(prep.ps_multi, prep.a_school).predict_proba1(prep.ps_multi)[prep.codes]
    return {"Q1": Q1, "Q0": Q0, "g": g, "dropped": dropped}


def _school_rank(codes_te: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Position of each test row's school among the schools selected by ``mask`` (in code order)."""
    pos = np.cumsum(mask) - 1
    return pos[codes_te]


# ============================================================================ estimators
def _dropped(prep: Prepared, version: str) -> int:
    return prep.dropped_single if version == "single" else prep.dropped_multi


def _or_fit(prep: Prepared, version: str) -> tuple[float, np.ndarray]:
    """OR on all the data: the treatment coefficient of the linear model (= mean of Q(1,W) - Q(0,W)) and
    its delta-method influence function, per row. OLS: ``IF_i = n [(X'X)^-1 x_i e_i]_A``. GLS of the
    random-intercept model: ``IF_i = n [M^-1 xt_i e_i]_A`` with ``xt_i = x_i - c_j n_j xbar_j``,
    ``c_j = tau2 / (sigma2 + n_j tau2)`` and ``M = sum_i xt_i x_i'`` (V_j^-1 of a compound-symmetric block)."""
    n = len(prep.y)
    if version == "single":
        X = prep.out_single
        beta = _ols(X, prep.y)
        Xt = X
    else:
        X = prep.out_multi
        beta, tau2, sigma2 = _lmm(X, prep.y, prep.codes)
        n_j = np.bincount(prep.codes, minlength=prep.J).astype(float)
        c = tau2 / (sigma2 + n_j * tau2)
        Xbar = group_means(X, prep.codes, prep.J)
        Xt = X - (c * n_j)[prep.codes, None] * Xbar[prep.codes]
    e = prep.y - X @ beta
    M = Xt.T @ X
    row = np.linalg.solve(M.T, np.eye(X.shape[1])[:, 1])  # (M^-1)[1, :]
    IF = n * (Xt @ row) * e
    return float(beta[1]), IF


def _dim(prep: Prepared):
    a, y = prep.a, prep.y
    p1 = a.mean()
    mu1, mu0 = y[a == 1].mean(), y[a == 0].mean()
    IF = a / p1 * (y - mu1) - (1 - a) / (1 - p1) * (y - mu0)
    return mu1 - mu0, IF


def _ipw(prep: Prepared, g):
    a, y = prep.a, prep.y
    w1, w0 = a / g, (1 - a) / (1 - g)
    mu1 = np.sum(w1 * y) / np.sum(w1)
    mu0 = np.sum(w0 * y) / np.sum(w0)
    IF = w1 * (y - mu1) / w1.mean() - w0 * (y - mu0) / w0.mean()
    return mu1 - mu0, IF


def _aipw(prep: Prepared, Q1, Q0, g):
    a, y = prep.a, prep.y
    phi = Q1 - Q0 + a / g * (y - Q1) - (1 - a) / (1 - g) * (y - Q0)
    psi = phi.mean()
    return psi, phi - psi


def _newton_offset(ys, off, cov, w, iters=50):
    """The epsilon of a quasi-binomial fit ``logit p = off + eps * cov`` with weights ``w`` (Newton)."""
    eps = 0.0
    for _ in range(iters):
        p = expit(off + eps * cov)
        step = np.sum(w * cov * (ys - p)) / max(np.sum(w * cov * cov * p * (1 - p)), 1e-300)
        eps += step
        if abs(step) < 1e-10:
            break
    return eps


def _tmle(prep: Prepared, Q1, Q0, g, fluctuation: str = "weighted"):
    """TMLE of the ATE with the outcome scaled to [0, 1] by its observed range (Gruber & van der Laan 2010).

    ``fluctuation="clever"``: one epsilon along the clever covariate ``H = A/g - (1-A)/(1-g)``,
    ``logit Q*(a) = logit Q(a) + eps H(a)``. ``"weighted"`` (default): per arm an intercept shift fitted with
    weights ``A/g`` (``(1-A)/(1-g)``), ``logit Q*(a) = logit Q(a) + eps_a`` (the weighted fluctuation of
    Robins, Sued, Lei-Gomez & Rotnitzky 2007, Statistical Science 22(4)); both solve the efficient score
    equation ``sum_i H_i (Y_i - Q*(A_i)) = 0``, but the weighted one cannot bend single predictions towards
    0 or 1 when some weights are extreme. On HSB hybrid draws with weak overlap (overlap 1, a third of the
    students' propensities truncated) it cut TMLE's RMSE from 1.3-1.5 to 0.6 and raised its coverage from
    0.38-0.44 to 0.76-0.80 (100 replications of 160 schools).
    """
    a, y = prep.a, prep.y
    lo, hi = y.min(), y.max()
    span = hi - lo
    ys = (y - lo) / span
    b = TMLE_BOUND
    q1 = np.clip((Q1 - lo) / span, b, 1 - b)
    q0 = np.clip((Q0 - lo) / span, b, 1 - b)
    H1, H0 = 1.0 / g, -1.0 / (1 - g)
    H = np.where(a == 1, H1, H0)
    if fluctuation == "clever":
        eps = _newton_offset(ys, logit(np.where(a == 1, q1, q0)), H, np.ones_like(ys))
        q1s = expit(logit(q1) + eps * H1)
        q0s = expit(logit(q0) + eps * H0)
    elif fluctuation == "weighted":
        one = np.ones_like(ys)
        q1s = expit(logit(q1) + _newton_offset(ys, logit(q1), one, a / g))
        q0s = expit(logit(q0) + _newton_offset(ys, logit(q0), one, (1 - a) / (1 - g)))
    else:
        raise ParamsError(f"parameter 'fluctuation': expected 'weighted' or 'clever', got {fluctuation!r}")
    qas = np.where(a == 1, q1s, q0s)
    psi_s = np.mean(q1s - q0s)
    IF = span * (H * (ys - qas) + q1s - q0s - psi_s)
    return span * psi_s, IF


def _variances(IF, codes, J, small_sample):
    n = len(IF)
    s = group_sums(IF, codes, J)
    v = np.sum(s * s) / n**2 * (J / (J - 1) if small_sample else 1.0)
    return float(np.sqrt(v)), float(np.sqrt(np.sum(IF * IF) / n**2))


DF_CHOICES = ("clusters", "normal")


def critical_value(alpha: float, n_clusters: int, df: str = "clusters") -> float:
    """The ``1 - alpha/2`` quantile of the cluster-robust Wald interval: Student's t on ``n_clusters - 1``
    degrees of freedom (``df="clusters"``) or the standard normal (``df="normal"``)."""
    if df not in DF_CHOICES:
        raise ParamsError(f"parameter 'df': expected 'clusters' (t on J - 1 degrees of freedom) or 'normal', "
                          f"got {df!r}")
    if df == "normal":
        return float(norm.ppf(1 - alpha / 2))
    return float(student_t.ppf(1 - alpha / 2, n_clusters - 1))


def estimate_ate(frame: pd.DataFrame | Prepared, spec: CausalSpec | None = None, *, estimators=ESTIMATORS,
                 versions=VERSIONS, folds: int = 5, bounds=(0.01, 0.99), alpha: float = 0.05, seed=0,
                 small_sample: bool = True, df: str = "clusters", crossfit: str = "outcome",
                 fluctuation: str = "weighted", ridge: float = 1.0, check_overlap: bool = True) -> pd.DataFrame:
    """All the estimators on one data set, a tidy table with one row per (estimator, version).

    Parameters
    ----------
    frame : a join-as-one frame (one row per student) and its :class:`CausalSpec`, or a :class:`Prepared`.
    estimators, versions : subsets of :data:`ESTIMATORS` and :data:`VERSIONS` (``DiM`` has one row, version
        ``unadjusted``).
    folds : K of the school-grouped cross-fitting.
    crossfit : ``"outcome"`` (default): the outcome model is cross-fitted, the (parametric, logistic)
        propensity fitted on all the schools; ``"all"``: both cross-fitted; ``"none"``: both fitted on all
        the data. Why not ``"all"`` by default: with a parametric propensity, out-of-fold propensities are
        pulled away from each school's own treatment and lose the covariate balance of the in-sample
        maximum-likelihood fit; in :mod:`~mlsimkit.causal.examples` (300 schools of 6 students, 100
        replications) that biased Hajek IPW by -0.14 (3.6 MCSE) with a correct propensity and AIPW by
        -0.12 (4.7 MCSE) with a misspecified outcome model, against +0.02 and -0.02 (< 1 MCSE) with the
        propensity fitted on all schools. Use ``"all"`` when the nuisance learners are flexible.
    bounds : propensities outside ``[low, high]`` are set to the bound (truncation; "trimming" in the causal
        literature); ``share_trimmed`` is the share of students whose propensity was bounded.
    alpha : 1 - the confidence level of the Wald intervals.
    df : critical value of the cluster-robust interval: ``"clusters"`` (default) the ``1 - alpha/2`` quantile
        of Student's t on J - 1 degrees of freedom (J schools; the small-cluster remedy of Cameron & Miller
        2015), ``"normal"`` the normal quantile. The naive interval uses the normal quantile either way.
    seed : seeds the fold split (an int, SeedSequence or Generator).
    small_sample : multiply the cluster-robust variance by J/(J-1) (default); ``False`` gives the plain
        ``sum_j (sum_{i in j} IF_i)^2 / n^2``.
    fluctuation : TMLE's fluctuation, ``"weighted"`` (default) or ``"clever"`` (see :func:`_tmle`).
    ridge : penalty ``ridge * ||b||^2 / 2`` on the standardised slopes of the logistic propensity (as the
        hybrid generator's, :class:`~mlsimkit.causal.hybrid.HybridGenerator`): separated data give finite
        propensities, which ``bounds`` then caps (``share_trimmed``).
    check_overlap : raise when a frame's treatment is perfectly predicted by the school-level covariates
        (see :func:`prepare`); ``False`` for simulated replications of a design checked on the real data.

    BLAS is limited to one thread while it runs: the arrays are small, and multi-threaded BLAS on a shared
    machine made one replication 5-10x slower in our measurements (1.1 s against 0.1 s at 160 schools;
    ``benchmarks/bench_causal.py``).

    Columns: ``estimator, version, parameter ("ATE"), estimate, se, ci_low, ci_high`` (cluster-robust),
    ``se_naive, ci_low_naive, ci_high_naive`` (i.i.d.), ``share_trimmed``, ``n``, ``n_clusters``,
    ``n_treated_clusters``, ``dropped`` (the most outcome-model columns dropped as collinear or constant in
    one fit, on all the data or a training fold; NaN for DiM and IPW), ``status``, ``fit_time``.
    """
    with single_thread_blas():
        return _estimate_ate(frame, spec, estimators=estimators, versions=versions, folds=folds, bounds=bounds,
                             alpha=alpha, seed=seed, small_sample=small_sample, df=df, crossfit=crossfit,
                             fluctuation=fluctuation, ridge=ridge, check_overlap=check_overlap)


def _estimate_ate(frame: pd.DataFrame | Prepared, spec: CausalSpec | None = None, *, estimators=ESTIMATORS,
                 versions=VERSIONS, folds: int = 5, bounds=(0.01, 0.99), alpha: float = 0.05, seed=0,
                 small_sample: bool = True, df: str = "clusters", crossfit: str = "outcome",
                 fluctuation: str = "weighted", ridge: float = 1.0, check_overlap: bool = True,
                 evaluate: np.ndarray | None = None) -> pd.DataFrame:
    """The body of :func:`estimate_ate`.

    ``evaluate`` (a boolean mask of the rows, whole schools; used by
    :func:`mlsimkit.causal.augmentation.estimate_ate_augmented`): the nuisance models are fitted on every
    row, the estimates and their influence functions taken over the rows of the mask only (their schools
    form the clusters of the SE)."""
    prep = frame if isinstance(frame, Prepared) else prepare(frame, spec, check_overlap=check_overlap)
    fit_prep = prep
    if evaluate is not None:
        ev = np.asarray(evaluate, bool)
        prep = _subset(prep, ev)
    if not np.isfinite(ridge) or ridge < 0:
        raise ParamsError(f"parameter 'ridge': expected a number >= 0, got {ridge!r}")
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ParamsError(f"parameter 'estimators': {bad} not known; expected some of {list(ESTIMATORS)}")
    bad = [v for v in versions if v not in VERSIONS]
    if bad:
        raise ParamsError(f"parameter 'versions': {bad} not known; expected some of {list(VERSIONS)}")
    lo_b, hi_b = map(float, bounds)
    if not 0 <= lo_b < 0.5 < hi_b <= 1:
        raise ParamsError(f"parameter 'bounds': expected [low, high] with 0 <= low < 0.5 < high <= 1, got {bounds}")
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    if not 0 < alpha < 1:
        raise ParamsError(f"parameter 'alpha': expected a number in (0, 1), got {alpha!r}")
    z_naive = norm.ppf(1 - alpha / 2)
    z = critical_value(alpha, prep.J, df)
    rows = []

    def add(name, version, est, IF, share, t0, dropped=np.nan):
        se, se_n = _variances(IF, prep.codes, prep.J, small_sample)
        rows.append({"estimator": name, "version": version, "parameter": "ATE", "estimate": float(est),
                     "se": se, "ci_low": est - z * se, "ci_high": est + z * se, "se_naive": se_n,
                     "ci_low_naive": est - z_naive * se_n, "ci_high_naive": est + z_naive * se_n,
                     "share_trimmed": share,
                     "n": len(prep.y), "n_clusters": prep.J, "n_treated_clusters": int(prep.a_school.sum()),
                     "dropped": dropped, "status": "ok", "fit_time": time.perf_counter() - t0})

    if "DiM" in estimators:
        t0 = time.perf_counter()
        add("DiM", "unadjusted", *_dim(prep), np.nan, t0)
    if fluctuation not in ("weighted", "clever"):
        raise ParamsError(f"parameter 'fluctuation': expected 'weighted' or 'clever', got {fluctuation!r}")
    if crossfit not in ("outcome", "all", "none"):
        raise ParamsError(f"parameter 'crossfit': expected 'outcome', 'all' or 'none', got {crossfit!r}")
    need_cf = any(e in estimators for e in ("IPW", "AIPW", "TMLE"))
    fold = school_folds(fit_prep.a_school, folds, rng) if need_cf else None
    if crossfit == "none" and fold is not None:
        fold = np.zeros(fit_prep.J, dtype=int)
    for version in versions:
        if "OR" in estimators:
            t0 = time.perf_counter()
            est, IF = _or_fit(fit_prep, version)
            if evaluate is not None:  # the coefficient's IF, real rows only, rescaled to their count
                IF = IF[ev] * ev.sum() / len(ev)
            add("OR", version, est, IF, np.nan, t0, _dropped(fit_prep, version))
        if not need_cf:
            continue
        t0 = time.perf_counter()
        nu = _crossfit(fit_prep, version, fold, propensity=crossfit == "all", ridge=ridge)
        if evaluate is not None:
            nu = {**nu, "Q1": nu["Q1"][ev], "Q0": nu["Q0"][ev], "g": nu["g"][ev]}
        dropped = _dropped(fit_prep, version) + nu["dropped"]
        g_raw = nu["g"]
        share = float(np.mean((g_raw < lo_b) | (g_raw > hi_b)))
        g = np.clip(g_raw, lo_b, hi_b)
        t_nu = time.perf_counter() - t0
        for name, fn in (("IPW", lambda: _ipw(prep, g)), ("AIPW", lambda: _aipw(prep, nu["Q1"], nu["Q0"], g)),
                         ("TMLE", lambda: _tmle(prep, nu["Q1"], nu["Q0"], g, fluctuation))):
            if name in estimators:
                t1 = time.perf_counter() - t_nu
                add(name, version, *fn(), share, t1, np.nan if name == "IPW" else dropped)
    return pd.DataFrame(rows)


def _subset(prep: Prepared, rows: np.ndarray) -> Prepared:
    """The rows ``rows`` (whole schools) of a :class:`Prepared`, school codes renumbered."""
    if rows.shape != prep.y.shape:
        raise ParamsError(f"parameter 'evaluate': expected a mask of {len(prep.y)} rows, got shape {rows.shape}")
    codes, J = group_codes(prep.codes[rows])
    schools = np.zeros(prep.J, dtype=bool)
    schools[prep.codes[rows]] = True
    if np.bincount(prep.codes[rows], minlength=prep.J)[schools].tolist() != \
            np.bincount(prep.codes, minlength=prep.J)[schools].tolist():
        raise ParamsError("parameter 'evaluate': the mask must keep or drop whole schools")
    first = np.unique(prep.codes[rows], return_index=True)
    order = prep.codes[rows][np.sort(first[1])]  # original codes in order of first appearance
    return Prepared(prep.y[rows], prep.a[rows], codes, J, prep.a_school[order], prep.out_single[rows],
                    prep.out_multi[rows], prep.ps_single[rows], prep.ps_multi[order], prep.spec,
                    prep.dropped_single, prep.dropped_multi)


# ============================================================================ overlap diagnostics
def overlap_table(frame: pd.DataFrame | Prepared, spec: CausalSpec | None = None, *, version: str = "multilevel",
                  bounds=(0.01, 0.99), ridge: float = 1.0) -> pd.DataFrame:
    """Overlap diagnostics of the propensity (fitted on all the data, as the estimators use it by default).

    One row per arm (``treated``, ``control``): the numbers of schools and students, quantiles of the
    students' propensities, the share of students whose propensity lies outside ``bounds`` (the estimators'
    ``share_trimmed``, per arm), and Kish's effective sample size of the arm's inverse-probability weights,
    ``(sum w)^2 / sum w^2`` with ``w = 1/g`` (treated) or ``1/(1-g)`` (control), absolute and as a share of
    the arm's students.
    """
    if version not in VERSIONS:
        raise ParamsError(f"parameter 'version': expected one of {list(VERSIONS)}, got {version!r}")
    prep = frame if isinstance(frame, Prepared) else prepare(frame, spec)
    lo_b, hi_b = map(float, bounds)
    with single_thread_blas():
        if version == "single":
            g = Logistic(ridge=ridge).fit(prep.ps_single, prep.a).predict_proba1(prep.ps_single)
        else:
            g = Logistic(ridge=ridge).fit(prep.ps_multi, prep.a_school).predict_proba1(prep.ps_multi)[prep.codes]
    rows = []
    for arm, name in ((1.0, "treated"), (0.0, "control")):
        m = prep.a == arm
        ga = g[m]
        w = 1 / ga if arm == 1 else 1 / (1 - ga)
        ess = float(w.sum() ** 2 / np.sum(w * w))
        q = np.quantile(ga, [0, 0.05, 0.5, 0.95, 1])
        rows.append({"arm": name, "version": version, "n_schools": int(np.sum(prep.a_school == arm)),
                     "n_students": int(m.sum()), "g_min": q[0], "g_q05": q[1], "g_median": q[2], "g_q95": q[3],
                     "g_max": q[4], "share_trimmed": float(np.mean((ga < lo_b) | (ga > hi_b))), "ess": ess,
                     "ess_share": ess / m.sum()})
    return pd.DataFrame(rows)
