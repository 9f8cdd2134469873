"""Small numerical helpers of the causal module: covariate encoding, school means, a ridge-stabilised
logistic regression (IRLS) and a collinearity filter. numpy / scipy only, so that one replication with
every estimator cross-fitted stays well under a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataValidationError


# ============================================================================ treatment coding
def treatment_codes(values: pd.Series, column: str, treated=None) -> tuple[np.ndarray, tuple]:
    """0/1 codes of a binary treatment and its ``(control, treated)`` values.

    Accepted: numbers 0/1, booleans, or any two values with ``treated`` naming the treated one; a pandas
    categorical with two categories takes its last category as treated (a schema's ``binary`` levels are
    written ``[no, yes]``). Anything else is an error naming ``column``.
    """
    s = pd.Series(values)
    if s.isna().any():
        raise DataValidationError(f"treatment column '{column}': {int(s.isna().sum())} missing value(s); "
                                  "expected a binary treatment with no missing values")
    observed = pd.unique(s)
    if isinstance(s.dtype, pd.CategoricalDtype):
        cats = list(s.cat.categories)
        if len(cats) > 2 or len(observed) > 2:
            raise DataValidationError(f"treatment column '{column}': {len(cats)} categories {cats}; "
                                      "expected a binary treatment (two values)")
        if treated is None:
            if len(cats) != 2:
                raise DataValidationError(f"treatment column '{column}': one category {cats}; name the treated "
                                          "value or give two categories")
            treated = cats[1]
        control = next((c for c in cats if c != treated), None)
        if treated not in cats:
            raise DataValidationError(f"treatment column '{column}': treated value {treated!r} is not one of {cats}")
        return (s.astype(object) == treated).to_numpy(float), (control, treated)
    if len(observed) > 2:
        shown = sorted(map(str, observed))[:6]
        raise DataValidationError(f"treatment column '{column}': {len(observed)} distinct values (e.g. {shown}); "
                                  "expected a binary treatment (two values, e.g. 0/1)")
    if treated is None:
        ok = set(observed.tolist()) <= {0, 1, True, False, 0.0, 1.0}
        if not ok:
            raise DataValidationError(f"treatment column '{column}': values {sorted(map(str, observed))} are not "
                                      "0/1; name the treated value (treated=...)")
        return s.astype(float).to_numpy(), (0, 1)
    if treated not in set(observed.tolist()) and len(observed) == 2:
        raise DataValidationError(f"treatment column '{column}': treated value {treated!r} is not one of "
                                  f"{sorted(map(str, observed))}")
    control = next((v for v in observed.tolist() if v != treated), None)
    return (s == treated).to_numpy(float), (control, treated)


# ============================================================================ covariates
class Encoder:
    """Numeric design columns of some covariates, with categorical dummies (first level dropped) fixed
    when fitted, so that real and synthetic data get the same columns."""

    def fit(self, frame: pd.DataFrame, columns) -> "Encoder":
        self.columns_ = list(columns)
        self.levels_ = {}
        for c in self.columns_:
            if c not in frame.columns:
                raise DataValidationError(f"covariate column '{c}' is not in the data (have {list(frame.columns)})")
            s = frame[c]
            if isinstance(s.dtype, pd.CategoricalDtype):
                self.levels_[c] = list(s.cat.categories)
            elif s.dtype == object or pd.api.types.is_string_dtype(s) or s.dtype == bool:
                self.levels_[c] = sorted(pd.unique(s.dropna()).tolist(), key=str)
        self.names_ = []
        for c in self.columns_:
            if c in self.levels_:
                self.names_ += [f"{c}[T.{lv}]" for lv in self.levels_[c][1:]]
            else:
                self.names_.append(c)
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        out = []
        for c in self.columns_:
            if c not in frame.columns:
                raise DataValidationError(f"covariate column '{c}' is not in the data (have {list(frame.columns)})")
            s = frame[c]
            if c in self.levels_:
                v = s.astype(object).to_numpy()
                out += [(v == lv).astype(float) for lv in self.levels_[c][1:]]
            else:
                x = pd.to_numeric(s, errors="coerce").to_numpy(float)
                if not np.isfinite(x).all():
                    raise DataValidationError(f"covariate column '{c}': {int((~np.isfinite(x)).sum())} missing or "
                                              "non-numeric value(s)")
                out.append(x)
        n = len(frame)
        return np.column_stack(out) if out else np.empty((n, 0))


def group_codes(ids) -> tuple[np.ndarray, int]:
    """Integer codes 0..J-1 of cluster ids (in order of first appearance) and J."""
    codes, uniques = pd.factorize(pd.Series(ids), sort=False)
    return codes.astype(np.int64), len(uniques)


def group_means(X: np.ndarray, codes: np.ndarray, J: int) -> np.ndarray:
    """(J, p) cluster means of the rows of ``X``."""
    n_j = np.bincount(codes, minlength=J).astype(float)
    S = np.zeros((J, X.shape[1]))
    np.add.at(S, codes, X)
    return S / n_j[:, None]


def group_sums(v: np.ndarray, codes: np.ndarray, J: int) -> np.ndarray:
    return np.bincount(codes, weights=v, minlength=J)


def independent_columns(X: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Indices of the columns of ``X`` kept, in order, when each column that is (nearly) a linear
    combination of the columns kept before it is dropped (sequential Gram-Schmidt; earlier columns,
    such as the intercept and the treatment, take priority)."""
    n, p = X.shape
    basis = np.empty((n, 0))
    keep = []
    for k in range(p):
        z = X[:, k].astype(float)
        nz = np.linalg.norm(z)
        if nz == 0:
            continue
        r = z - basis @ (basis.T @ z) if basis.shape[1] else z
        r = r - basis @ (basis.T @ r) if basis.shape[1] else r
        nr = np.linalg.norm(r)
        if nr > tol * nz:
            basis = np.column_stack([basis, r / nr])
            keep.append(k)
    return np.asarray(keep, dtype=int)


# ============================================================================ logistic regression
def expit(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35, 35)))


def logit(p):
    return np.log(p) - np.log1p(-p)


class Logistic:
    """Logistic regression by Newton-Raphson (IRLS) on standardised covariates, with a small ridge
    penalty ``ridge * ||b||^2 / 2`` on the slopes so that separated data give finite (extreme) fits
    instead of diverging. An intercept is added. Hastie, Tibshirani & Friedman (2009), section 4.4.1."""

    def __init__(self, ridge: float = 1e-4, max_iter: int = 50, tol: float = 1e-9):
        self.ridge, self.max_iter, self.tol = ridge, max_iter, tol

    def fit(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> "Logistic":
        X = np.asarray(X, float)
        n, p = X.shape
        self.mean_ = X.mean(axis=0) if n else np.zeros(p)
        sd = X.std(axis=0) if n else np.ones(p)
        self.sd_ = np.where(sd > 0, sd, 1.0)
        Z = np.column_stack([np.ones(n), (X - self.mean_) / self.sd_])
        w0 = np.ones(n) if weights is None else np.asarray(weights, float)
        pen = np.full(p + 1, self.ridge)
        pen[0] = 0.0
        ybar = np.clip(np.average(y, weights=w0), 1e-6, 1 - 1e-6)
        b = np.zeros(p + 1)
        b[0] = logit(ybar)
        for _ in range(self.max_iter):
            mu = expit(Z @ b)
            W = w0 * mu * (1 - mu)
            g = Z.T @ (w0 * (y - mu)) - pen * b
            H = (Z * W[:, None]).T @ Z + np.diag(pen) + 1e-12 * np.eye(p + 1)
            step = np.linalg.solve(H, g)
            b = b + step
            if np.max(np.abs(step)) < self.tol:
                break
        self.coef_ = b
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, float) - self.mean_) / self.sd_
        return self.coef_[0] + Z @ self.coef_[1:]

    def predict_proba1(self, X: np.ndarray) -> np.ndarray:
        return expit(self.decision_function(X))


def no_overlap(X: np.ndarray, a: np.ndarray) -> bool:
    """True when the treatment ``a`` is perfectly predicted by ``X``: a nearly unpenalised logistic fit
    separates the arms completely (every treated unit's linear predictor above every control's), so the
    maximum-likelihood propensity is 0 or 1 everywhere (Albert & Anderson 1984), or every fitted propensity
    is within 1e-3 of 0 or 1."""
    if X.shape[1] == 0:
        return False
    eta = Logistic(ridge=1e-4).fit(X, a).decision_function(X)
    g = expit(eta)
    return bool(eta[a == 1].min() > eta[a == 0].max() or np.all((g < 1e-3) | (g > 1 - 1e-3)))
