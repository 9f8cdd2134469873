"""Result object, array and formula entry points, batch fitting, Satterthwaite inference."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import linalg, stats

from . import _core
from ._formula import DesignInfo, ParsedFormula, build_design, design_info, missing, parse_formula, variables
from .errors import LMMDataError, LMMError, LMMIdentificationError

_CONTROLLER = None


def single_thread_blas():
    """Context limiting BLAS to one thread during a fit.

    The engine's linear algebra is on p x p and q x q blocks; with multi-threaded OpenBLAS on a
    busy machine every tiny BLAS call inside the optimiser (scipy's L-BFGS-B included) can wait
    on worker threads, which made a random-slope fit ~8x slower in our measurements.
    """
    global _CONTROLLER
    try:
        if _CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        return _CONTROLLER.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or failing: run as is
        return contextlib.nullcontext()


SINGULAR_TOL = 1e-4  # lme4's isSingular(tol = 1e-4) on the relative (theta) scale
GRAD_TOL = 1e-3  # |projected d criterion / d theta| * max(|theta|, 1); theta is scale free


# --------------------------------------------------------------------------------------------
# checks and preparation of arrays
# --------------------------------------------------------------------------------------------
def _check_finite(a, what, names):
    bad = ~np.isfinite(a)
    if bad.any():
        if a.ndim == 1:
            raise LMMDataError(f"{what} has {int(bad.sum())} missing or infinite value(s)")
        j = int(np.nonzero(bad.any(axis=0))[0][0])
        raise LMMDataError(
            f"{what} column '{names[j]}' has {int(bad[:, j].sum())} missing or infinite value(s)"
        )


def _collinear_tol(n, p):
    """Below this |R_jj| (QR of the column-scaled X, n x p) a column counts as collinear."""
    return np.maximum(n, p) * np.finfo(float).eps * 1e3


def _collinear_columns(X, names):
    """Names of columns that are (numerically) linear combinations of earlier ones, or []."""
    if X.shape[1] == 0:
        return []
    scale = np.sqrt((X * X).sum(axis=0))
    if np.any(scale == 0):
        return [names[j] for j in np.nonzero(scale == 0)[0]]
    R = np.linalg.qr(X / scale, mode="r")
    d = np.abs(np.diag(R))
    return [names[j] for j in np.nonzero(d < _collinear_tol(*X.shape))[0]]


def _surely_full_rank(XtX, n):
    """For Gram matrices X'X (K, p, p) of data sets of n (K,) rows: True where
    :func:`_collinear_columns` surely finds no collinear column, from X'X alone (a screen for
    many data sets at once; a data set it does not vouch for is checked by :func:`prepare`).

    With C the correlation-scaled X'X, sigma_min(X / scale) = sqrt(lambda_min(C)), and every
    diagonal element of a triangular R with R'R = C satisfies |R_jj| >= sigma_min(R).  So
    lambda_min(C) well above tol^2, and above the rounding of C and of its eigenvalues
    (about p n eps), means no |R_jj| of prepare's QR is below its tolerance.
    """
    K, p = XtX.shape[:2]
    if p == 0:
        return np.ones(K, dtype=bool)
    d = np.sqrt(np.einsum("kii->ki", XtX))
    ok = np.all(d > 0, axis=1)
    d = np.where(d > 0, d, 1.0)
    lam = np.linalg.eigvalsh(XtX / (d[:, :, None] * d[:, None, :]))[:, 0]
    floor = np.maximum.reduce([(10 * _collinear_tol(n, p)) ** 2, 1e3 * p * n * np.finfo(float).eps,
                               np.full(K, 1e-8)])
    return ok & (lam > floor)


def _level2(max_range, abs_max):
    """Level-2 columns: the largest within-group range of the column (max_range) is zero up to
    rounding relative to the column's largest |value| (abs_max)."""
    return max_range <= 1e-12 * np.maximum(abs_max, 1e-300)


@dataclass
class Prepared:
    """Sorted design + group codes + sufficient statistics, reusable for refits."""

    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    codes: np.ndarray
    levels: np.ndarray
    order: np.ndarray | None
    starts: np.ndarray
    ss: _core.SuffStats
    fe_names: list
    re_names: list
    group_name: str
    level2: np.ndarray


def prepare(y, X, Z, groups, fe_names=None, re_names=None, group_name="group", response="y"):
    y = np.asarray(y, dtype=float).reshape(-1)
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    Z = np.asarray(Z, dtype=float)
    if Z.ndim == 1:
        Z = Z[:, None]
    n, p = X.shape
    q = Z.shape[1]
    fe_names = list(fe_names) if fe_names is not None else [f"x{j}" for j in range(p)]
    re_names = list(re_names) if re_names is not None else [f"z{j}" for j in range(q)]
    if len(fe_names) != p or len(re_names) != q:
        raise LMMDataError(f"fe_names/re_names have {len(fe_names)}/{len(re_names)} entries for {p}/{q} columns")
    if y.shape[0] != n or Z.shape[0] != n or len(groups) != n:
        raise LMMDataError(f"y, X, Z and groups must have the same number of rows ({y.shape[0]}, {n}, {Z.shape[0]}, {len(groups)})")
    if q == 0:
        raise LMMDataError("the random-effects design Z has no column")
    _check_finite(y, f"response '{response}'", None)
    _check_finite(X, "fixed-effects design", fe_names)
    _check_finite(Z, "random-effects design", re_names)
    g = groups.to_numpy() if isinstance(groups, pd.Series) else np.asarray(groups)
    codes, levels = pd.factorize(g, sort=True)
    if np.any(codes < 0):
        raise LMMDataError(f"grouping factor '{group_name}' has {int((codes < 0).sum())} missing value(s)")
    m = len(levels)
    if m < 2:
        raise LMMIdentificationError(
            f"grouping factor '{group_name}' has {m} level(s); a mixed model needs at least two groups"
        )
    nj = np.bincount(codes, minlength=m)
    if nj.max() <= 1:
        raise LMMIdentificationError(
            f"grouping factor '{group_name}': every group has a single observation, so the "
            "random-effect and residual variances are not separately identified"
        )
    if n <= p:
        raise LMMIdentificationError(f"{n} observations for {p} fixed effects")
    col = _collinear_columns(X, fe_names)
    if col:
        raise LMMIdentificationError(
            f"fixed-effect column(s) {col} are collinear with the other predictors (or constant zero); drop them"
        )
    order = None
    if np.any(codes[1:] < codes[:-1]):
        order = np.argsort(codes, kind="stable")
        y, X, Z, codes = y[order], X[order], Z[order], codes[order]
    starts = np.concatenate(([0], np.cumsum(nj)[:-1]))
    ss = _core.SuffStats(y, X, Z, codes, m)
    rng_ = np.maximum.reduceat(X, starts, axis=0) - np.minimum.reduceat(X, starts, axis=0)
    level2 = _level2(rng_.max(axis=0, initial=0.0), np.abs(X).max(axis=0, initial=0.0))
    return Prepared(y, X, Z, codes, np.asarray(levels), order, starts, ss, fe_names, re_names, group_name, level2)


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
class LMMResult:
    """A fitted one-factor linear mixed model (same type whatever the backend).

    Attributes follow statsmodels where they exist (``fe_params``, ``bse``, ``cov_re``) and lme4
    otherwise (``theta``, ``criterion`` = REML criterion or ML deviance = -2 log-likelihood).
    """

    def __init__(self):
        self._df = None
        self._ranef = None
        self._cache = {}
        self.info: DesignInfo | None = None
        self.formula = None

    # pandas views are built on first access (a fit in a simulation often needs two numbers)
    def _cached(self, key, make):
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = make()
        return v

    @property
    def fe_params(self) -> pd.Series:
        return self._cached("fe", lambda: pd.Series(self._beta, index=self._fe_names, name="estimate"))

    @property
    def cov_fe(self) -> pd.DataFrame:
        return self._cached("cov", lambda: pd.DataFrame(self._cov, index=self._fe_names, columns=self._fe_names))

    @property
    def bse(self) -> pd.Series:
        return self._cached("bse", lambda: pd.Series(np.sqrt(np.diag(self._cov)), index=self._fe_names, name="se"))

    @property
    def cov_re(self) -> pd.DataFrame:
        return self._cached("G", lambda: pd.DataFrame(self._G, index=self._re_names, columns=self._re_names))

    @property
    def level2(self) -> pd.Series:
        """True for level-2 coefficients: the column is constant within every group."""
        return self._cached("l2", lambda: pd.Series(self._level2, index=self._fe_names, name="level2"))

    # ---- construction from the native engine
    @classmethod
    def _from_opt(cls, prep: Prepared, opt, reml, fit_time, backend="mlsimkit"):
        r = cls()
        e, ss = opt.e, prep.ss
        r._prep, r._e = prep, e
        r.backend = backend
        r.reml = bool(reml)
        r.nobs, r.ngroups = ss.n, ss.m
        N = ss.n - ss.p if reml else ss.n
        r.sigma2 = e.r2 / N
        r.scale = r.sigma2
        r.theta = np.asarray(opt.theta, dtype=float)
        r._fe_names, r._re_names = prep.fe_names, prep.re_names
        r._beta = e.beta
        r._cov = r.sigma2 * e.Ainv
        r._G = r.sigma2 * (e.Lam @ e.Lam.T)
        r._level2 = prep.level2
        r.criterion = float(e.dev)
        r.loglik = -0.5 * r.criterion
        r.llf = r.loglik
        r.converged = bool(opt.converged)
        diag = np.diag(e.Lam)
        r.singular = bool(np.any(diag < SINGULAR_TOL))
        r.message = opt.message + ("; singular fit (a random-effect variance on the boundary)" if r.singular else "")
        r.fit_time = fit_time
        r.nfev = opt.nfev
        return r

    # ---- lazily computed pieces
    @property
    def ranef(self) -> pd.DataFrame:
        """BLUPs (conditional modes) of the random effects, one row per group."""
        if self._ranef is None:
            b = _core.blups(self._e, self._prep.ss)
            self._ranef = pd.DataFrame(b, index=pd.Index(self._prep.levels, name=self._prep.group_name),
                                       columns=self._prep.re_names)
        return self._ranef

    random_effects = ranef

    @property
    def df(self) -> pd.Series:
        """Satterthwaite degrees of freedom of each fixed effect (lmerTest's method)."""
        if self._df is None:
            if getattr(self, "_e", None) is None:
                return pd.Series(np.nan, index=self._fe_names, name="df")
            self._df = pd.Series(satterthwaite_df(self._e, self._prep.ss, self.reml),
                                 index=self._fe_names, name="df")
        return self._df

    @property
    def tvalues(self):
        return self.fe_params / self.bse

    def conf_int(self, alpha: float = 0.05, method: str = "mixed") -> pd.DataFrame:
        """Confidence intervals for the fixed effects.

        ``method="mixed"`` (default): level-2 coefficients (columns constant within every group,
        the intercept included) use t with Satterthwaite df; level-1 coefficients use z.  Where the
        Satterthwaite df are not available (singular fit, flat Hessian) level-2 coefficients use
        t with m - (number of level-2 columns) df (the between-group df of HLM).
        ``"satterthwaite"``: t with Satterthwaite df for all; ``"z"``: normal for all.
        """
        est, se = self.fe_params.to_numpy(), self.bse.to_numpy()
        zq = stats.norm.ppf(1 - alpha / 2)
        if method == "z":
            crit = np.full(est.shape, zq)
        else:
            df = self.df.to_numpy().copy()
            fallback = self.ngroups - int(self.level2.sum())
            df = np.where(np.isfinite(df) & (df > 0), df, max(fallback, 1))
            tq = stats.t.ppf(1 - alpha / 2, df)
            if method == "satterthwaite":
                crit = tq
            elif method == "mixed":
                crit = np.where(self.level2.to_numpy(), tq, zq)
            else:
                raise LMMError(f"conf_int method '{method}': expected 'mixed', 'satterthwaite' or 'z'")
        return pd.DataFrame({"lower": est - crit * se, "upper": est + crit * se}, index=self.fe_params.index)

    def predict(self, newdata=None, include_re: bool = True, *, X=None, Z=None, groups=None) -> np.ndarray:
        """Predictions: fixed part plus the BLUP of the observation's group.

        Groups not seen when fitting get the fixed part only.  Give ``newdata`` (a DataFrame, for
        formula fits) or the arrays ``X``, ``Z``, ``groups``; nothing gives the fitted values.
        """
        if newdata is not None:
            if self.info is None:
                raise LMMError("predict(newdata) needs a formula fit; pass X=, Z=, groups= for array fits")
            _, X, Z, groups, _ = build_design(self.info.parsed, newdata, info=self.info, need_y=False)
        elif X is None:
            p = self._prep
            X, Z, groups = p.X, p.Z, p.levels[p.codes]
            out = self._predict_arrays(X, Z, groups, include_re)
            if p.order is not None:
                res = np.empty_like(out)
                res[p.order] = out
                return res
            return out
        return self._predict_arrays(np.asarray(X, float), None if Z is None else np.asarray(Z, float), groups, include_re)

    def _predict_arrays(self, X, Z, groups, include_re):
        if X.ndim == 1:
            X = X[:, None]
        fixed = X @ self.fe_params.to_numpy()
        if not include_re:
            return fixed
        if Z is None or groups is None:
            raise LMMError("predict with include_re=True needs Z and groups")
        if Z.ndim == 1:
            Z = Z[:, None]
        re = self.ranef
        pos = re.index.get_indexer(pd.Index(groups))
        B = np.vstack([re.to_numpy(), np.zeros((1, re.shape[1]))])
        return fixed + np.einsum("nq,nq->n", Z, B[pos])  # pos == -1 picks the zero row

    def summary_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        ci = self.conf_int(alpha)
        return pd.DataFrame({"estimate": self.fe_params, "se": self.bse, "df": self.df,
                             "level2": self.level2, "lower": ci["lower"], "upper": ci["upper"]})

    def __repr__(self):
        kind = "REML" if self.reml else "ML"
        return (f"<LMMResult {self.backend} {kind}: n={self.nobs}, groups={self.ngroups}, "
                f"criterion={self.criterion:.4f}, converged={self.converged}, singular={self.singular}>")


# --------------------------------------------------------------------------------------------
# Satterthwaite
# --------------------------------------------------------------------------------------------
def _varpar_grad(theta, sigma, ss, reml):
    """Gradient of the *non-profiled* criterion D(theta, sigma) (lmerTest's devfun_vp)."""
    e = _core.evaluate(theta, ss, reml)
    g_M, g_r2, g_A = _core._grad_pieces(e, ss, need_A=reml)
    G = g_M + g_r2 / sigma**2
    if reml:
        G = G + g_A
    r, c = ss.tril
    N = ss.n - ss.p if reml else ss.n
    gs = 2.0 * N / sigma - 2.0 * e.r2 / sigma**3
    return np.append(G[r, c], gs)


def satterthwaite_df(e: _core.Eval, ss: _core.SuffStats, reml: bool) -> np.ndarray:
    """Satterthwaite df for each fixed effect, as lmerTest (Kuznetsova, Brockhoff & Christensen
    2017, J. Stat. Softw. 82(13), section 3.2) computes them:

        df_i = 2 C_ii^2 / (g_i' V g_i),   C = sigma^2 (R_X'R_X)^{-1} = Cov(beta-hat),

    with varpar = (theta, sigma), V = 2 H^{-1} where H is the Hessian of the criterion as a
    function of varpar (here by central differences of its *analytic* gradient) and g_i the
    gradient of C_ii with respect to varpar, analytic: dC/dtheta_k = sigma^2 A^{-1} T_k A^{-1}
    with T_k = sum_j Z_j'X_j' dW_j/dtheta_k Z_j'X_j, dC/dsigma = 2 sigma A^{-1}.
    Returns NaN where the Hessian is not positive definite (e.g. at a boundary optimum).
    """
    N = ss.n - ss.p if reml else ss.n
    sigma = np.sqrt(e.r2 / N)
    phi = np.append(e.theta, sigma)
    k = phi.size
    H = np.empty((k, k))
    for i in range(k):
        h = 1e-4 * max(abs(phi[i]), 1e-2)
        up, dn = phi.copy(), phi.copy()
        up[i] += h
        dn[i] -= h
        try:
            H[:, i] = (_varpar_grad(up[:-1], up[-1], ss, reml) - _varpar_grad(dn[:-1], dn[-1], ss, reml)) / (2 * h)
        except _core.NotPositiveDefinite:
            return np.full(ss.p, np.nan)
    H = 0.5 * (H + H.T)
    try:
        cH = linalg.cho_factor(H)
    except linalg.LinAlgError:
        return np.full(ss.p, np.nan)
    V = 2.0 * linalg.cho_solve(cH, np.eye(k))
    Ainv = e.Ainv
    grads = np.empty((ss.p, k))
    for kk, T in enumerate(_core.dW_dtheta(e, ss)):
        grads[:, kk] = sigma**2 * np.einsum("ip,pr,ri->i", Ainv, T, Ainv)
    grads[:, -1] = 2.0 * sigma * np.diag(Ainv)
    C = sigma**2 * np.diag(Ainv)
    denom = np.einsum("ik,kl,il->i", grads, V, grads)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = 2.0 * C**2 / denom
    return np.where(np.isfinite(df) & (df > 0), df, np.nan)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------
def _fit_prepared(prep: Prepared, reml: bool, t0: float, theta0=None):
    with single_thread_blas():
        if prep.ss.q == 1:
            opt = _core.optimize_ri(prep.ss, reml, GRAD_TOL)
        else:
            opt = _core.optimize_general(prep.ss, reml, theta0=theta0, rel_tol=GRAD_TOL)
    return LMMResult._from_opt(prep, opt, reml, time.perf_counter() - t0)


def fit_lmm(y, X, Z, groups, reml: bool = True, fe_names=None, re_names=None, *, backend: str = "mlsimkit",
            group_name: str = "group", response: str = "y", theta0=None) -> LMMResult:
    """Fit y = X beta + Z b_group + e from arrays (Z columns = the random-effect design)."""
    t0 = time.perf_counter()
    prep = prepare(y, X, Z, groups, fe_names, re_names, group_name, response)
    if backend == "statsmodels":
        from ._statsmodels import fit_statsmodels

        return fit_statsmodels(prep, reml, t0)
    if backend != "mlsimkit":
        raise LMMError(f"backend '{backend}': expected 'mlsimkit' or 'statsmodels'")
    return _fit_prepared(prep, reml, t0, theta0)


def lmm(formula: str, data: pd.DataFrame, reml: bool = True, backend: str = "mlsimkit", theta0=None) -> LMMResult:
    """Fit an lme4-style formula, e.g. ``lmm("MathAch ~ SES + Sector + (1 + SES | School)", df)``."""
    t0 = time.perf_counter()
    parsed = parse_formula(formula)
    if parsed.group is None:
        raise LMMError(f"formula {formula!r} has no random-effects term '(... | group)'")
    y, X, Z, g, info = build_design(parsed, data)
    if backend == "statsmodels":
        from ._statsmodels import fit_statsmodels

        prep = prepare(y, X, Z, g, info.fe_names, info.re_names, parsed.group, parsed.response)
        r = fit_statsmodels(prep, reml, t0)
    elif backend == "mlsimkit":
        with single_thread_blas():
            prep = prepare(y, X, Z, g, info.fe_names, info.re_names, parsed.group, parsed.response)
            r = _fit_prepared(prep, reml, t0, theta0)
    else:
        raise LMMError(f"backend '{backend}': expected 'mlsimkit' or 'statsmodels'")
    r.info = info
    r.formula = formula
    return r


class LMMDesign:
    """A prepared design (X, Z, groups and their sufficient statistics) for cheap refits.

    ``LMMDesign(formula, data).fit(y=new_response)`` reuses X'X, Z_j'Z_j and Z_j'X_j and only
    recomputes the response parts (X'y, Z_j'y_j, y'y) - the fast path of parametric bootstraps
    and of simulations that redraw the outcome on a fixed design.
    """

    def __init__(self, formula: str, data: pd.DataFrame):
        parsed = parse_formula(formula)
        if parsed.group is None:
            raise LMMError(f"formula {formula!r} has no random-effects term '(... | group)'")
        y, X, Z, g, info = build_design(parsed, data)
        self.prep = prepare(y, X, Z, g, info.fe_names, info.re_names, parsed.group, parsed.response)
        self.info, self.formula = info, formula

    def fit(self, y=None, reml: bool = True) -> LMMResult:
        t0 = time.perf_counter()
        prep = self.prep
        if y is not None:
            y = np.asarray(y, dtype=float).reshape(-1)
            if y.shape[0] != prep.ss.n:
                raise LMMDataError(f"y has {y.shape[0]} values for a design of {prep.ss.n} rows")
            _check_finite(y, f"response '{self.info.parsed.response}'", None)
            if prep.order is not None:
                y = y[prep.order]
            ss = prep.ss.with_response(prep.X.T @ y, float(y @ y),
                                       np.add.reduceat(prep.Z * y[:, None], prep.starts, axis=0))
            prep = Prepared(y, prep.X, prep.Z, prep.codes, prep.levels, prep.order, prep.starts, ss,
                            prep.fe_names, prep.re_names, prep.group_name, prep.level2)
        r = _fit_prepared(prep, reml, t0)
        r.info, r.formula = self.info, self.formula
        return r


def fit_many(formula: str, datasets, reml: bool = True, *, by: str | None = None, errors: str = "raise",
             batch: bool = True):
    """Fit the same formula to many data sets (a list of DataFrames, or one DataFrame split by
    the column ``by``).  Returns a list of results in order (``errors="none"``: a failed fit
    gives ``None`` instead of raising, for that data set only).  The formula is parsed once.

    ``batch=True`` (default): random-intercept models and models with a random intercept and one
    slope are fitted for all data sets together (their sufficient statistics are stacked and the
    profiled criterion is evaluated for all of them in each step,
    :func:`mlsimkit.lmm._core.optimize_ri_batch`, :func:`mlsimkit.lmm._core.optimize_q2_batch`);
    single fits (:func:`lmm`) run the same kernels with a batch of one, so the estimates are the
    same.  Other models are fitted one after the other.  The designs are prepared together too
    (:func:`prepare_many`: one stacked design, sort and group sum per set of data sets with the
    same codings), with the single path's results and errors.
    ``batch=False`` fits one data set after the other.  A result's ``fit_time`` is its share of
    the preparation plus its share of the batch's optimisation (``batch=False``: its own time).
    """
    if errors not in ("raise", "none"):
        raise LMMError(f"errors='{errors}': expected 'raise' or 'none'")
    parsed = parse_formula(formula)
    if parsed.group is None:
        raise LMMError(f"formula {formula!r} has no random-effects term '(... | group)'")
    if by is not None:
        datasets = [d for _, d in datasets.groupby(by, sort=True, observed=True)]
    with single_thread_blas():
        return _fit_list(parsed, formula, datasets, reml, errors, batch)


BATCH = 256  # data sets per batched optimisation (q = 1 or 2; bounds the work arrays)


# --------------------------------------------------------------------------------------------
# preparing many data sets of one formula
# --------------------------------------------------------------------------------------------
def _prepare_single(parsed: ParsedFormula, data):
    """``(Prepared, DesignInfo)`` of one data set, or the :class:`LMMError` its design or
    :func:`prepare` raises (the single path: what :func:`lmm` does before optimising)."""
    try:
        y, X, Z, g, info = build_design(parsed, data)
        return prepare(y, X, Z, g, info.fe_names, info.re_names, parsed.group, parsed.response), info
    except LMMError as err:
        return err


def prepare_many(parsed: ParsedFormula, datasets: list) -> list:
    """What :func:`_prepare_single` gives for each data set, built for many data sets together.

    Data sets whose columns have the same dtypes and whose predictors have the same codings
    (numeric, or categorical with the same levels; :func:`design_info`) have the same design
    columns; for each such set of data sets (:func:`_prepare_stack`) the columns are stacked and
    the design built once, the rows sorted by (data set, group) with one stable argsort, the
    per-group statistics summed in one reduceat and the checks of :func:`prepare` screened for
    all data sets at once.  A data set the batch cannot vouch for (missing or non-finite values,
    not a DataFrame, fewer than two groups, singleton groups only, n <= p, possibly collinear
    columns, ...) goes through :func:`_prepare_single` alone, so each error is the single
    path's own, class and message.  The rows, group codes and sufficient statistics of a data
    set are those :func:`prepare` computes (the same sort, the same group sums, X'X from the
    same matrix product); its y, X and Z are views of the stack.
    """
    out = [None] * len(datasets)
    vs = variables(parsed)
    by_design = {}  # (dtypes, codings) -> (DesignInfo, [(data set number, its columns)])
    for k, d in enumerate(datasets):
        if not (isinstance(d, pd.DataFrame) and len(d) > 1 and d.columns.is_unique
                and all(v in d.columns for v in vs)):
            continue
        cols = {v: d[v] for v in vs}
        try:
            info = design_info(parsed, cols)
        except LMMError:
            continue
        key = (tuple(c.dtype for c in cols.values()),
               tuple((v, c.kind, c.levels) for v, c in info.codings.items()))
        by_design.setdefault(key, (info, []))[1].append((k, cols))
    for info, members in by_design.values():
        for (k, _), pr in zip(members, _prepare_stack(parsed, info, [cols for _, cols in members])):
            out[k] = pr
    return [pr if pr is not None else _prepare_single(parsed, datasets[k]) for k, pr in enumerate(out)]


def _prepare_stack(parsed: ParsedFormula, info: DesignInfo, frames: list) -> list:
    """``(Prepared, info)`` for each of ``frames`` (the columns of data sets with one design,
    ``info``), or None for a data set to be prepared alone (see :func:`prepare_many`)."""
    K = len(frames)
    vs = variables(parsed)
    stack = pd.DataFrame({v: np.concatenate([f[v].to_numpy() for f in frames]) for v in vs}, copy=False)
    n = np.array([len(f[vs[0]]) for f in frames])
    row0 = np.concatenate(([0], np.cumsum(n)[:-1]))  # each data set's first row
    try:
        gc, glev = pd.factorize(stack[parsed.group].to_numpy(), sort=True)
    except TypeError:  # group labels that do not sort together (say numbers and text)
        return [None] * K
    # check_columns, per data set: the group column's missing values are its codes -1
    holes = gc < 0
    for v in vs:
        miss = missing(stack[v]) if v != parsed.group else None
        if miss is not None:
            holes |= miss
    holes = np.logical_or.reduceat(holes, row0)
    if holes.any():  # data sets with missing values are prepared alone (their own counts)
        out = [None] * K
        keep = np.flatnonzero(~holes)
        for k, pr in zip(keep, _prepare_stack(parsed, info, [frames[k] for k in keep]) if keep.size else []):
            out[k] = pr
        return out
    try:
        y, X, Z, _, _ = build_design(parsed, stack, info=info, checked=True)
    except LMMError:  # e.g. a non-numeric response: the single path's message
        return [None] * K
    N, p = X.shape
    if Z.shape[1] == 0:
        return [None] * K
    # rows sorted by (data set, group), stably: within a data set the order prepare sorts to
    key = np.repeat(np.arange(K), n) * len(glev) + gc
    resorted = np.zeros(K, dtype=bool)
    order = None
    if np.any(key[1:] < key[:-1]):
        order = np.argsort(key, kind="stable")
        y, X, Z, key = y[order], np.take(X, order, axis=0), np.take(Z, order, axis=0), key[order]
        resorted = np.logical_or.reduceat(order != np.arange(N), row0)
    new = np.concatenate(([True], key[1:] != key[:-1]))
    gstart = np.flatnonzero(new)  # first row of each (data set, group)
    gid = np.cumsum(new) - 1  # row -> its (data set, group)
    m = np.bincount(key[gstart] // len(glev), minlength=K)  # groups per data set
    g0 = np.concatenate(([0], np.cumsum(m)[:-1]))  # each data set's first group
    nj = np.diff(np.append(gstart, N))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite data sets go alone below
        sums = _core.group_sums(y, X, Z, gstart)
        rng_ = np.maximum.reduceat(X, gstart, axis=0) - np.minimum.reduceat(X, gstart, axis=0)
    # prepare's checks, screened (non-finite values show in the group sums: Z'Z holds Z^2, and
    # with Z's, X's or y's non-finite entries Z'X and Z'y or X'X, X'y, y'y below are non-finite)
    alone = ((m < 2) | (np.maximum.reduceat(nj, g0) <= 1) | (n <= p)
             | ~np.logical_and.reduceat(np.isfinite(sums).all(axis=1), g0))
    level2 = _level2(np.maximum.reduceat(rng_, g0, axis=0), np.maximum.reduceat(np.abs(X), row0, axis=0))
    levels = np.asarray(glev)[key[gstart] % len(glev)]
    out = [None] * K
    for k in np.flatnonzero(~alone):
        a, b, ga, gb = row0[k], row0[k] + n[k], g0[k], g0[k] + m[k]
        codes = gid[a:b] - ga
        ss = _core.SuffStats(y[a:b], X[a:b], Z[a:b], codes, int(m[k]), sums=sums[ga:gb])
        if not (np.isfinite(ss.XtX).all() and np.isfinite(ss.Xty).all() and np.isfinite(ss.yty)):
            continue
        out[k] = (Prepared(y[a:b], X[a:b], Z[a:b], codes, levels[ga:gb], order[a:b] - a if resorted[k] else None,
                           gstart[ga:gb] - a, ss, info.fe_names, info.re_names, parsed.group, level2[k]), info)
    done = [k for k in range(K) if out[k] is not None]
    if done:
        full = _surely_full_rank(np.stack([out[k][0].ss.XtX for k in done]), n[done])
        for k in np.asarray(done)[~full]:
            out[k] = None
    return out


# --------------------------------------------------------------------------------------------
# fitting many data sets
# --------------------------------------------------------------------------------------------
def _fit_one(pr, formula, reml, t0, errors):
    """Fit one data set of :func:`fit_many` from its :func:`_prepare_single` result; None
    where preparing or fitting fails and ``errors == "none"``."""
    try:
        if isinstance(pr, LMMError):
            raise pr
        prep, info = pr
        r = _fit_prepared(prep, reml, t0)
    except (LMMError, _core.NotPositiveDefinite):  # design, identification or final fit
        if errors == "raise":
            raise
        return None
    r.info, r.formula = info, formula
    return r


def _fit_list(parsed, formula, datasets, reml, errors, batch=True):
    datasets = list(datasets)
    if not batch:
        out = []
        for d in datasets:
            t0 = time.perf_counter()
            out.append(_fit_one(_prepare_single(parsed, d), formula, reml, t0, errors))
        return out
    out = [None] * len(datasets)
    t0 = time.perf_counter()
    preps = prepare_many(parsed, datasets)
    ptime = (time.perf_counter() - t0) / max(len(datasets), 1)  # each data set's share
    # random intercept (q = 1) or intercept and slope (q = 2): one batched optimisation per
    # (q, number of fixed effects) and, for q = 2, number of groups: padding with empty groups
    # changes the order of floating-point sums, and BFGS, which stops at a gradient tolerance,
    # could then stop a rounding-level step away from where the data set alone stops (the
    # random-intercept root is solved to 1e-14, padding does not show there); other models
    # are fitted one after the other
    by_qp = {}
    for k, pr in enumerate(preps):
        if isinstance(pr, LMMError) or pr[0].ss.q > 2:
            out[k] = _fit_one(pr, formula, reml, time.perf_counter() - ptime, errors)  # t0: share included
            continue
        ss = pr[0].ss
        by_qp.setdefault((ss.q, ss.p, ss.m if ss.q == 2 else 0), []).append(k)
    for (q, _p, _m), ks in by_qp.items():
        opt_batch = _core.optimize_ri_batch if q == 1 else _core.optimize_q2_batch
        for c in range(0, len(ks), BATCH):
            chunk = ks[c : c + BATCH]
            t0 = time.perf_counter()
            opts = opt_batch([preps[k][0].ss for k in chunk], reml, GRAD_TOL)
            share = (time.perf_counter() - t0) / len(chunk)
            for k, opt in zip(chunk, opts):
                prep, info = preps[k]
                if isinstance(opt, Exception):
                    if errors == "raise":
                        raise LMMIdentificationError(
                            f"data set {k}: the fixed effects are collinear at the optimum ({opt})")
                    continue
                r = LMMResult._from_opt(prep, opt, reml, ptime + share)
                r.info, r.formula = info, formula
                out[k] = r
    return out
