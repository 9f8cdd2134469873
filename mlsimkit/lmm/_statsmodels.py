"""The statsmodels backend: ``MixedLM`` fitted on the same design, returned as an LMMResult.

Estimates, SEs, variance components, BLUPs and the log-likelihood are statsmodels' own.
statsmodels has no Satterthwaite df; ``df`` is computed by this package's routine at
statsmodels' estimate of theta.  ``criterion_profiled`` is this engine's profiled criterion
evaluated at statsmodels' theta (the number to compare with lme4's).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from . import _core


def theta_from_cov(G_rel):
    """lme4-order theta of the lower Cholesky factor of a relative covariance (PSD allowed)."""
    q = G_rel.shape[0]
    try:
        L = np.linalg.cholesky(G_rel)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(G_rel)
        G2 = (V * np.maximum(w, 0)) @ V.T + 1e-14 * np.eye(q)
        L = np.linalg.cholesky(G2)
    r, c = _core.tril_index(q)
    return L[r, c]


def fit_statsmodels(prep, reml, t0):
    from statsmodels.regression.mixed_linear_model import MixedLM

    from ._model import LMMResult, GRAD_TOL, SINGULAR_TOL

    p, q = prep.ss.p, prep.ss.q
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        md = MixedLM(prep.y, prep.X, groups=prep.codes, exog_re=prep.Z)
        f = md.fit(reml=reml)
    fit_time = time.perf_counter() - t0
    r = LMMResult()
    r.backend = "statsmodels"
    r.reml = bool(reml)
    r._prep = prep
    r.nobs, r.ngroups = prep.ss.n, prep.ss.m
    names = prep.fe_names
    r.sigma2 = float(f.scale)
    r.scale = r.sigma2
    r._fe_names, r._re_names = names, prep.re_names
    r._beta = np.asarray(f.fe_params, dtype=float)
    r._cov = np.asarray(f.cov_params())[:p, :p]
    G = np.asarray(f.cov_re, dtype=float).reshape(q, q)
    r._G = G
    r.theta = theta_from_cov(G / r.sigma2)
    r.loglik = float(f.llf)
    r.llf = r.loglik
    r.criterion = -2.0 * r.loglik
    try:
        e = _core.evaluate(r.theta, prep.ss, reml)
        r.criterion_profiled = float(e.dev)
        r._e = e
    except _core.NotPositiveDefinite:
        r.criterion_profiled, r._e = np.nan, None
    re = f.random_effects
    b = np.vstack([np.asarray(re[k], dtype=float).reshape(-1)[:q] for k in range(prep.ss.m)])
    r._ranef = pd.DataFrame(b, index=pd.Index(prep.levels, name=prep.group_name), columns=prep.re_names)
    r.converged = bool(getattr(f, "converged", True))
    r.singular = bool(np.any(np.diag(_core.lambda_of(r.theta, q)) < SINGULAR_TOL))
    msgs = [str(w.message).splitlines()[0] for w in wlist]
    r.message = "; ".join(msgs) if msgs else ("converged" if r.converged else "not converged")
    r.fit_time = fit_time
    r.nfev = None
    r._level2 = prep.level2
    return r
