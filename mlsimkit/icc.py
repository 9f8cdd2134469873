"""Intraclass correlations (ICC) and cluster-mean reliabilities (Suk et al., section 3.4.2, eqs. 7 and 9).

The ICC is the share of a variable's variance that lies between clusters,
``ICC = tau2 / (tau2 + sigma2)``, with ``tau2`` the between-cluster (school) variance and ``sigma2`` the
within-cluster (student) variance. How the two are estimated depends on the column's kind:

``numerical``
    The one-way ANOVA estimator ICC(1) (Snijders & Bosker 2012, eq. 3.12; McGraw & Wong 1996):
    ``MSB = SSB / (J - 1)``, ``MSW = SSW / (N - J)``, ``n0 = (N - sum n_j^2 / N) / (J - 1)``,
    ``tau2 = (MSB - MSW) / n0``, ``sigma2 = MSW`` and ``ICC(1) = (MSB - MSW) / (MSB + (n0 - 1) MSW)``.
    The ANOVA value can be negative when clusters are less alike than chance; :func:`icc1` returns it as
    is, :func:`icc_table` truncates ``tau2`` at 0 (a variance cannot be negative).
``binary``
    The latent-scale ICC (Snijders & Bosker 2012, section 17.3.3; Nakagawa & Schielzeth 2010):
    ``tau2`` is the random-intercept variance of a logistic random-intercept model
    ``logit P(y=1) = b0 + u_j, u_j ~ N(0, tau2)`` fitted by maximum likelihood (adaptive-free
    Gauss-Hermite quadrature with 40 nodes; the model depends on the data only through each cluster's
    size and count of ones, so the fit takes milliseconds), and ``sigma2 = pi^2 / 3``, the variance of
    the standard logistic distribution.
``categorical``
    One latent-scale ICC per category's dummy variable (category vs the rest), aggregated as the mean of
    the category ICCs weighted by each category's Bernoulli variance ``p_k (1 - p_k)``
    (Nakagawa & Schielzeth 2010, section "multinomial data", suggest category-specific values; the
    variance weights keep a rare category, whose ICC is noisy, from dominating).
``ordinal``
    The ANOVA ICC(1) of the integer codes 0, 1, ..., K-1 of the ordered levels.

Reliability of the cluster means (eq. 9): ``Rel = tau2 / (tau2 + sigma2 / n_bar)`` with ``n_bar`` the average
cluster size, i.e. Spearman-Brown ``n_bar ICC / (1 + (n_bar - 1) ICC)``; ``sigma2 = pi^2/3`` for binary
variables as in the paper.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from scipy import optimize, special

from .errors import MlsimkitError

LOGISTIC_VARIANCE = np.pi**2 / 3
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)  # probabilists' Hermite: weight exp(-x^2/2)
_GH_LOGW = np.log(_GH_W / np.sqrt(2 * np.pi))


def _codes(groups) -> tuple[np.ndarray, int]:
    codes, uniq = pd.factorize(pd.Series(groups), sort=False)
    if (codes < 0).any():
        raise MlsimkitError("cluster key has missing values; every row needs a cluster")
    return codes, len(uniq)


def anova_components(y, groups) -> dict:
    """One-way ANOVA variance components of ``y`` by ``groups``.

    Returns a dict with ``msb``, ``msw``, ``n0``, ``tau2`` (untruncated), ``sigma2``, ``icc`` (ICC(1),
    untruncated), ``n_clusters``, ``n``, ``mean_size``.
    """
    y = np.asarray(y, dtype=float)
    codes, J = _codes(groups)
    N = y.size
    if J < 2 or N <= J:
        raise MlsimkitError(f"ICC needs at least 2 clusters and more rows than clusters (got {J} clusters, {N} rows)")
    n = np.bincount(codes, minlength=J).astype(float)
    sums = np.bincount(codes, weights=y, minlength=J)
    means = sums / n
    grand = y.mean()
    ssb = float(np.sum(n * (means - grand) ** 2))
    ssw = float(np.sum((y - means[codes]) ** 2))
    msb = ssb / (J - 1)
    msw = ssw / (N - J)
    n0 = (N - np.sum(n**2) / N) / (J - 1)
    denom = msb + (n0 - 1) * msw
    icc = (msb - msw) / denom if denom > 0 else 0.0
    return dict(msb=msb, msw=msw, n0=n0, tau2=(msb - msw) / n0, sigma2=msw, icc=float(icc),
                n_clusters=J, n=N, mean_size=N / J)


def icc1(data_frame: pd.DataFrame, column: str, cluster_key: str) -> float:
    """ANOVA ICC(1) of ``column`` clustered by ``cluster_key`` (untruncated; see module docstring).

    A categorical column is used through its integer codes.
    """
    s = data_frame[column]
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.cat.codes.astype(float)
    return anova_components(s.to_numpy(dtype=float), data_frame[cluster_key].to_numpy())["icc"]


def _negll_logistic_ri(theta, grad=False, *, n, s, counts, logcomb):
    """Negative marginal log-likelihood of :func:`logistic_random_intercept` at ``theta = (b0, log_sd)``
    (clusters collapsed to distinct (n, s) with ``counts``), and with ``grad`` its analytic gradient."""
    b0, log_sd = theta
    sd = np.exp(log_sd)
    eta = b0 + sd * _GH_X[None, :]
    # log p^s (1-p)^(n-s) = s*eta - n*log(1+exp(eta))
    ll = s * eta - n * np.logaddexp(0.0, eta) + _GH_LOGW[None, :]
    lse = special.logsumexp(ll, axis=1, keepdims=True)
    f = -float(np.sum(counts * (lse + logcomb)[:, 0]))
    if not grad:
        return f
    # d lse / d eta_k = softmax_k(ll) * (s - n * sigmoid(eta_k)), and eta_k = b0 + sd * x_k
    d = np.exp(ll - lse) * (s - n * special.expit(eta))
    return f, -np.array([np.sum(counts * d.sum(axis=1)), np.sum(counts * (d @ _GH_X)) * sd])


def logistic_random_intercept(y, groups) -> dict:
    """ML fit of ``logit P(y=1) = b0 + u_j``, ``u_j ~ N(0, tau2)``; returns ``b0``, ``tau2``, ``loglik``.

    The likelihood of cluster j depends only on its size n_j and count s_j of ones; the integral over
    ``u_j`` uses Gauss-Hermite quadrature. ``tau2`` is optimised on the log-sd scale, and a boundary
    solution (no cluster variation) returns ``tau2 = 0``.
    """
    y = np.asarray(y, dtype=float)
    codes, J = _codes(groups)
    n = np.bincount(codes, minlength=J).astype(float)
    s = np.bincount(codes, weights=y, minlength=J)
    # collapse clusters with identical (n, s)
    pairs, counts = np.unique(np.column_stack([n, s]), axis=0, return_counts=True)
    n_u, s_u = pairs[:, 0][:, None], pairs[:, 1][:, None]
    logcomb = special.gammaln(n_u + 1) - special.gammaln(s_u + 1) - special.gammaln(n_u - s_u + 1)

    negll = functools.partial(_negll_logistic_ri, n=n_u, s=s_u, counts=counts, logcomb=logcomb)

    pbar = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    b_start = np.log(pbar / (1 - pbar))
    best = None
    for start_sd in (-1.5, 0.0):
        res = optimize.minimize(negll, x0=[b_start, start_sd], args=(True,), jac=True, method="L-BFGS-B",
                                bounds=[(-30, 30), (-8.0, 4.0)])
        if best is None or res.fun < best.fun:
            best = res
    b0, log_sd = best.x
    tau2 = float(np.exp(2 * log_sd))
    # the boundary: compare with the model without random intercept
    ll0 = -negll([b_start, -50.0])
    if -best.fun <= ll0 + 1e-9 or log_sd <= -7.9:
        tau2 = 0.0
    return dict(b0=float(b0), tau2=tau2, loglik=float(-best.fun))


def latent_icc(y, groups) -> dict:
    """Latent-scale ICC of a 0/1 variable: ``tau2 / (tau2 + pi^2/3)`` (see module docstring)."""
    fit = logistic_random_intercept(y, groups)
    tau2 = fit["tau2"]
    return dict(tau2=tau2, sigma2=LOGISTIC_VARIANCE, icc=tau2 / (tau2 + LOGISTIC_VARIANCE))


def reliability(tau2: float, sigma2: float, mean_size: float) -> float:
    """Average cluster-mean reliability ``tau2 / (tau2 + sigma2 / n_bar)`` (eq. 9)."""
    tau2 = max(float(tau2), 0.0)
    if tau2 == 0.0:
        return 0.0
    return tau2 / (tau2 + sigma2 / mean_size)


def column_icc(series: pd.Series, groups, kind: str) -> dict:
    """ICC, variance components and reliability of one column, by kind. ``tau2`` is truncated at 0.

    Returns a dict with ``icc``, ``tau2``, ``sigma2``, ``reliability``, ``method``, ``mean_size``.
    """
    codes, J = _codes(groups)
    mean_size = len(series) / J
    if kind == "numerical" or kind == "ordinal":
        y = series.cat.codes.to_numpy(float) if isinstance(series.dtype, pd.CategoricalDtype) else series.to_numpy(float)
        c = anova_components(y, codes)
        tau2 = max(c["tau2"], 0.0)
        icc = tau2 / (tau2 + c["sigma2"]) if tau2 + c["sigma2"] > 0 else 0.0
        return dict(icc=icc, tau2=tau2, sigma2=c["sigma2"], reliability=reliability(tau2, c["sigma2"], mean_size),
                    method="anova" if kind == "numerical" else "anova-codes", mean_size=mean_size)
    if kind == "binary":
        cats = series.cat.categories if isinstance(series.dtype, pd.CategoricalDtype) else np.unique(series)
        y = (series.to_numpy() == cats[-1]).astype(float)
        c = latent_icc(y, codes)
        return dict(icc=c["icc"], tau2=c["tau2"], sigma2=c["sigma2"],
                    reliability=reliability(c["tau2"], c["sigma2"], mean_size), method="latent-logit", mean_size=mean_size)
    if kind == "categorical":
        cats = series.cat.categories if isinstance(series.dtype, pd.CategoricalDtype) else np.unique(series)
        vals = series.to_numpy()
        iccs, rels, taus, weights = [], [], [], []
        for cat in cats:
            y = (vals == cat).astype(float)
            p = y.mean()
            if p in (0.0, 1.0):
                continue
            c = latent_icc(y, codes)
            iccs.append(c["icc"])
            taus.append(c["tau2"])
            rels.append(reliability(c["tau2"], c["sigma2"], mean_size))
            weights.append(p * (1 - p))
        if not weights:
            return dict(icc=0.0, tau2=0.0, sigma2=LOGISTIC_VARIANCE, reliability=0.0,
                        method="latent-logit-dummies", mean_size=mean_size)
        w = np.asarray(weights) / np.sum(weights)
        return dict(icc=float(w @ iccs), tau2=float(w @ taus), sigma2=LOGISTIC_VARIANCE,
                    reliability=float(w @ rels), method="latent-logit-dummies", mean_size=mean_size)
    raise MlsimkitError(f"column '{series.name}': no ICC for kind {kind!r}")


def icc_table(multilevel_data, table: str | None = None) -> pd.DataFrame:
    """One row per variable of the bottom table (or ``table``): its ICC relative to its parent cluster.

    Columns: ``variable``, ``kind``, ``method``, ``icc``, ``tau2``, ``sigma2``, ``reliability``,
    ``n_clusters``, ``mean_size``.
    """
    schema = multilevel_data.schema
    tname = table or schema.bottom
    t = schema.tables[tname]
    if t.parent is None:
        raise MlsimkitError(f"table '{tname}' has no parent table, so its variables have no ICC")
    df = multilevel_data[tname]
    groups = df[t.foreign_key].to_numpy()
    rows = []
    for col in t.data_columns:
        kind = t.columns[col].kind
        r = column_icc(df[col], groups, kind)
        rows.append(dict(variable=col, kind=kind, method=r["method"], icc=r["icc"], tau2=r["tau2"],
                         sigma2=r["sigma2"], reliability=r["reliability"],
                         n_clusters=int(df[t.foreign_key].nunique()), mean_size=r["mean_size"]))
    return pd.DataFrame(rows)
