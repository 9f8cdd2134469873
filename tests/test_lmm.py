"""Tests of the linear mixed model engine (mlsimkit.lmm).

Reference values from lme4/lmerTest are committed fixtures (scripts/lme4_fixtures.R); R is not
needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.errors import MlsimkitError
from mlsimkit.lmm import (
    LMMDesign,
    LMMResult,
    SuffStats,
    evaluate,
    fit_lmm,
    fit_many,
    gradient,
    lmm,
    parse_formula,
)

FIX = Path(__file__).parent / "fixtures" / "lmm"
CASES = sorted(p.stem for p in FIX.glob("*.json"))


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb").join_as_one()


def _data(name, hsb_df):
    if name == "hsb":
        return hsb_df
    d = pd.read_csv(FIX / "data" / f"{name}.csv", dtype={"School": str})
    if "Sector" in d:
        d["Sector"] = pd.Categorical(d["Sector"], categories=["Public", "Catholic"])
    return d


_FITS = {}


def _fit_case(name, hsb_df):
    if name not in _FITS:
        fx = json.loads((FIX / f"{name}.json").read_text())
        _FITS[name] = (fx, lmm(fx["formula"], _data(fx["data"], hsb_df), reml=fx["reml"]))
    return _FITS[name]


def _close(a, b, rtol, floor):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) <= rtol * np.maximum(np.abs(b), floor)


# ------------------------------------------------------------------------------------------
# agreement with lme4
# ------------------------------------------------------------------------------------------
def test_fixture_set_covers_the_issue():
    assert len(CASES) >= 8
    fx = [json.loads((FIX / f"{c}.json").read_text()) for c in CASES]
    assert any(f["singular"] for f in fx)
    assert any(not f["reml"] for f in fx) and any(f["reml"] for f in fx)
    assert any(f["data"] == "hsb10" for f in fx)
    assert any("SES |" in f["formula"] and f["data"] == "hsb" for f in fx)


@pytest.mark.parametrize("case", CASES)
def test_criterion_no_worse_than_lme4(case, hsb):
    fx, r = _fit_case(case, hsb)
    assert r.converged, r.message
    assert r.criterion <= fx["criterion_default"][0] + 1e-6
    assert r.criterion <= fx["criterion"][0] + 1e-6
    assert r.loglik == pytest.approx(fx["loglik"][0], abs=1e-6)
    assert r.singular == fx["singular"]


@pytest.mark.parametrize("case", CASES)
def test_parameters_agree_with_lme4(case, hsb):
    """Every parameter within 1e-4 relative of lme4 (tight fit).

    "Relative" uses a floor where the reference is near zero: the coefficient's SE for beta, the
    column's largest |BLUP| for BLUPs, sqrt(G_aa G_bb) for covariances, max|theta| for theta.
    Singular fits: theta components on the boundary must be ~0 in both (|diff| < 1e-6) and are
    not compared relatively; everything else is.
    """
    fx, r = _fit_case(case, hsb)
    tol = 1e-4
    se_ref = np.asarray(fx["se"])
    assert len(r.fe_params) == len(fx["beta"])
    assert _close(r.fe_params, fx["beta"], tol, se_ref).all(), (r.fe_params.values, fx["beta"])
    assert _close(r.bse, se_ref, tol, 0).all()
    assert _close(r.sigma2, fx["sigma2"][0], tol, 0).all()
    G = np.asarray(fx["cov_re"])
    d = np.sqrt(np.outer(np.diag(G), np.diag(G)))
    assert (np.abs(r.cov_re.to_numpy() - G) <= tol * np.maximum(np.abs(G), np.maximum(d, 1e-12))).all()
    th_ref = np.asarray(fx["theta"])
    if fx["singular"]:
        on_bound = np.abs(th_ref) < 1e-4
        assert np.all(np.abs(r.theta[on_bound] - th_ref[on_bound]) < 1e-6)
        assert _close(r.theta[~on_bound], th_ref[~on_bound], tol, np.abs(th_ref).max()).all()
    else:
        assert _close(r.theta, th_ref, tol, np.abs(th_ref).max()).all(), (r.theta, th_ref)
    re_ref = np.asarray(fx["ranef"])
    ours = r.ranef.loc[[str(g) for g in fx["ranef_groups"]]].to_numpy()
    colmax = np.abs(re_ref).max(axis=0)
    assert (np.abs(ours - re_ref) <= tol * np.maximum(np.abs(re_ref), colmax[None, :] + 1e-300)).all()
    df_ref = np.asarray(fx["df"], dtype=float)
    ok = np.isfinite(df_ref)
    assert _close(r.df.to_numpy()[ok], df_ref[ok], tol, 0).all(), (r.df.values, df_ref)


# ------------------------------------------------------------------------------------------
# exact special cases
# ------------------------------------------------------------------------------------------
def test_zero_variance_component_is_ols():
    d = pd.read_csv(FIX / "data" / "singular_ri.csv")
    X = np.column_stack([np.ones(len(d)), d["x"]])
    y = d["y"].to_numpy()
    beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    n, p = X.shape
    for reml, denom in ((True, n - p), (False, n)):
        r = lmm("y ~ x + (1 | g)", d, reml=reml)
        assert r.singular and r.theta[0] == 0.0
        s2 = rss[0] / denom
        np.testing.assert_allclose(r.fe_params.to_numpy(), beta, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r.sigma2, s2, rtol=1e-12)
        np.testing.assert_allclose(r.cov_fe.to_numpy(), s2 * np.linalg.inv(X.T @ X), rtol=1e-10)
        np.testing.assert_allclose(r.ranef.to_numpy(), 0.0, atol=0)
        ll = -0.5 * n * (np.log(2 * np.pi * rss[0] / n) + 1)
        if not reml:
            assert r.loglik == pytest.approx(ll, rel=1e-12)
    # the criterion at theta = 0 is the OLS likelihood whatever the data
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(6), 4)
    y = rng.normal(size=24) + rng.normal(size=6)[g] * 3
    ss = SuffStats(y, X[:24], np.ones((24, 1)), g, 6)
    e = evaluate(np.array([0.0]), ss, reml=False)
    b_ols, rss_ = np.linalg.lstsq(X[:24], y, rcond=None)[:2]
    np.testing.assert_allclose(e.beta, b_ols, rtol=1e-12)
    assert e.dev == pytest.approx(24 * (1 + np.log(2 * np.pi * rss_[0] / 24)), rel=1e-13)


def test_blup_two_group_hand_computed():
    """Balanced one-way random effects, two groups of three: REML = ANOVA estimates (positive),
    mu = grand mean, BLUP_j = tau^2 / (tau^2 + sigma^2/k) * (ybar_j - mu)."""
    y1, y2 = np.array([1.0, 2.0, 3.0]), np.array([6.0, 7.0, 11.0])
    k = 3
    msw = (((y1 - y1.mean()) ** 2).sum() + ((y2 - y2.mean()) ** 2).sum()) / (2 * (k - 1))  # (2 + 14)/4
    assert msw == pytest.approx(4.0)
    ybar = np.array([y1.mean(), y2.mean()])  # 2, 8
    mu = ybar.mean()  # 5
    msb = k * ((ybar - mu) ** 2).sum() / (2 - 1)  # 3 * 18 = 54
    tau2 = (msb - msw) / k  # 50/3
    shrink = tau2 / (tau2 + msw / k)  # (50/3) / (50/3 + 4/3) = 50/54
    blup = shrink * (ybar - mu)  # -/+ 3 * 50/54
    assert blup[1] == pytest.approx(3 * 50 / 54)
    d = pd.DataFrame({"y": np.r_[y1, y2], "g": ["a"] * 3 + ["b"] * 3})
    r = lmm("y ~ 1 + (1 | g)", d)
    assert r.fe_params["Intercept"] == pytest.approx(mu, rel=1e-10)
    assert r.sigma2 == pytest.approx(msw, rel=1e-8)
    assert r.cov_re.iloc[0, 0] == pytest.approx(tau2, rel=1e-8)
    np.testing.assert_allclose(r.ranef["Intercept"].to_numpy(), blup, rtol=1e-8)
    # predictions: existing group = fixed + BLUP, new group = fixed part
    new = pd.DataFrame({"g": ["a", "zzz"]})
    np.testing.assert_allclose(r.predict(new), [mu + blup[0], mu], rtol=1e-10)
    np.testing.assert_allclose(r.predict(new, include_re=False), [mu, mu], rtol=1e-12)


@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("reml", [True, False])
def test_analytic_gradient_matches_finite_differences(q, reml, hsb):
    d = hsb.iloc[:1500]
    codes, lev = pd.factorize(d["School"], sort=True)
    X = np.column_stack([np.ones(len(d)), d["SES"], d["MEANSES"]])
    Z = np.column_stack([np.ones(len(d)), d["SES"], d["SES"] ** 2])[:, :q]
    ss = SuffStats(d["MathAch"].to_numpy(), X, Z, codes, len(lev))
    k = q * (q + 1) // 2
    th = np.linspace(0.3, 0.05, k) * np.where(np.arange(k) % 2, -1, 1)
    g = gradient(evaluate(th, ss, reml), ss, reml)
    h = 1e-6
    fd = [(evaluate(th + h * e, ss, reml).dev - evaluate(th - h * e, ss, reml).dev) / (2 * h) for e in np.eye(k)]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-4)


def test_scale_free_convergence(hsb):
    """theta, df and flags do not depend on the units of y (relative tolerances)."""
    d = hsb.iloc[:2000].copy()
    r1 = lmm("MathAch ~ SES + (1 + SES | School)", d)
    d["MathAch"] = d["MathAch"] * 1e5
    r2 = lmm("MathAch ~ SES + (1 + SES | School)", d)
    assert r1.converged and r2.converged and r1.singular == r2.singular
    np.testing.assert_allclose(r2.theta, r1.theta, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r2.fe_params / 1e5, r1.fe_params, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# inference: coverage of a correctly specified model
# ------------------------------------------------------------------------------------------
def test_ci_coverage_correct_model():
    """95% CIs (t-Satterthwaite for level-2 coefficients incl. the intercept, z for level-1)
    cover the truth within 0.95 +/- 3 MCSE over a fixed-seed batch of 300 data sets."""
    R, m, k = 300, 30, 8
    beta = np.array([1.0, 0.5, 0.7])  # intercept, x (level 1), w (level 2)
    tau, sigma = 0.6, 1.0
    rng = np.random.default_rng(20240601)
    frames = []
    for rep in range(R):
        g = np.repeat(np.arange(m), k)
        x = rng.normal(size=m * k)
        w = np.repeat(rng.normal(size=m), k)
        y = beta[0] + beta[1] * x + beta[2] * w + tau * rng.normal(size=m)[g] + sigma * rng.normal(size=m * k)
        frames.append(pd.DataFrame({"rep": rep, "g": g, "x": x, "w": w, "y": y}))
    res = fit_many("y ~ x + w + (1 | g)", pd.concat(frames), by="rep")
    assert len(res) == R and all(r.converged for r in res)
    assert res[0].level2.to_dict() == {"Intercept": True, "x": False, "w": True}
    cover = np.array([((r.conf_int()["lower"] <= beta) & (beta <= r.conf_int()["upper"])).to_numpy() for r in res])
    mcse = np.sqrt(0.95 * 0.05 / R)
    rates = cover.mean(axis=0)
    assert np.all(np.abs(rates - 0.95) <= 3 * mcse), rates


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_error_single_group():
    d = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 1], "school": ["a"] * 4})
    with pytest.raises(MlsimkitError, match="'school'.*at least two groups"):
        lmm("y ~ x + (1 | school)", d)


def test_error_singleton_groups_only():
    d = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 1], "school": list("abcd")})
    with pytest.raises(MlsimkitError, match="'school'.*single observation"):
        lmm("y ~ x + (1 | school)", d)


def test_error_collinear():
    d = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 7], "x": [0.0, 1, 2, 0, 1, 3], "g": list("aabbcc")})
    d["x2"] = 2 * d["x"] + 1
    with pytest.raises(MlsimkitError, match="x2.*collinear"):
        lmm("y ~ x + x2 + (1 | g)", d)


@pytest.mark.parametrize("col", ["y", "x", "g"])
def test_error_missing_values(col):
    d = pd.DataFrame({"y": [1.0, 2, 3, 4, 5, 7], "x": [0.0, 1, 2, 0, 1, 3], "g": list("aabbcc")})
    d.loc[2, col] = np.nan
    with pytest.raises(MlsimkitError, match=f"column '{col}'.*missing"):
        lmm("y ~ x + (1 | g)", d)
    with pytest.raises(MlsimkitError, match="missing"):
        fit_lmm(d["y"], np.column_stack([np.ones(6), d["x"]]), np.ones(6), d["g"], fe_names=["Intercept", "x"])


def test_error_formula_and_columns():
    d = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.0, 1, 0, 1], "g": list("aabb")})
    with pytest.raises(MlsimkitError, match="'nope'"):
        lmm("y ~ nope + (1 | g)", d)
    with pytest.raises(MlsimkitError, match="random-effects term"):
        lmm("y ~ x", d)
    with pytest.raises(MlsimkitError, match="'\\|\\|'"):
        lmm("y ~ x + (1 + x || g)", d)


# ------------------------------------------------------------------------------------------
# formula, categorical coding, API
# ------------------------------------------------------------------------------------------
def test_formula_parsing():
    p = parse_formula("y ~ a*b + c + (1 + a | g)")
    assert p.fixed_terms == (("a",), ("b",), ("c",), ("a", "b"))
    assert p.fixed_intercept and p.re_intercept and p.re_terms == (("a",),) and p.group == "g"
    p = parse_formula("y ~ 0 + a + (0 + a | g)")
    assert not p.fixed_intercept and not p.re_intercept
    p = parse_formula("y ~ a - 1 + (a | g)")
    assert not p.fixed_intercept and p.re_intercept


def test_categorical_treatment_coding_first_declared_level(hsb):
    r = lmm("MathAch ~ SES + Sector + Minority + (1 | School)", hsb)
    assert list(r.fe_params.index) == ["Intercept", "SES", "Sector[T.Catholic]", "Minority[T.Yes]"]
    d = hsb.copy()
    d["Sector"] = d["Sector"].cat.reorder_categories(["Catholic", "Public"])
    r2 = lmm("MathAch ~ SES + Sector + Minority + (1 | School)", d)
    assert "Sector[T.Public]" in r2.fe_params.index
    assert r2.fe_params["Sector[T.Public]"] == pytest.approx(-r.fe_params["Sector[T.Catholic]"], rel=1e-7)
    assert r2.criterion == pytest.approx(r.criterion, rel=1e-12)
    assert r.level2["Sector[T.Catholic]"] and not r.level2["SES"] and not r.level2["Minority[T.Yes]"]


def test_result_api_and_predict(hsb):
    d = _data("hsb10", hsb)
    r = lmm("MathAch ~ SES + Sector + (1 + SES | School)", d)
    assert isinstance(r, LMMResult)
    for a in ("fe_params", "bse", "cov_fe", "sigma2", "cov_re", "theta", "loglik", "criterion", "ranef", "df",
              "converged", "singular", "message", "nobs", "ngroups", "fit_time"):
        assert hasattr(r, a), a
    assert r.nobs == len(d) and r.ngroups == 10 and r.ranef.shape == (10, 2)
    ci = r.conf_int()
    assert list(ci.columns) == ["lower", "upper"] and (ci["lower"] < r.fe_params).all()
    # fitted values = fixed + Z b; new groups get the fixed part only
    fitted = r.predict()
    X = np.column_stack([np.ones(len(d)), d["SES"], (d["Sector"] == "Catholic").astype(float)])
    b = r.ranef.loc[d["School"]].to_numpy()
    np.testing.assert_allclose(fitted, X @ r.fe_params.to_numpy() + b[:, 0] + b[:, 1] * d["SES"].to_numpy())
    np.testing.assert_allclose(r.predict(d), fitted)
    new = d.assign(School="not-a-school")
    np.testing.assert_allclose(r.predict(new), X @ r.fe_params.to_numpy())


def test_array_entry_point_matches_formula(hsb):
    d = _data("hsb10", hsb)
    r = lmm("MathAch ~ SES + (1 + SES | School)", d, reml=False)
    X = np.column_stack([np.ones(len(d)), d["SES"]])
    a = fit_lmm(d["MathAch"], X, X, d["School"], reml=False, fe_names=["Intercept", "SES"], re_names=["Intercept", "SES"])
    np.testing.assert_allclose(a.theta, r.theta, rtol=1e-10)
    np.testing.assert_allclose(a.fe_params, r.fe_params, rtol=1e-10)
    # shuffled rows give the same fit
    idx = np.random.default_rng(0).permutation(len(d))
    s = fit_lmm(d["MathAch"].to_numpy()[idx], X[idx], X[idx], d["School"].to_numpy()[idx], reml=False)
    assert s.criterion == pytest.approx(r.criterion, abs=1e-8)
    np.testing.assert_allclose(s.predict(), a.predict()[idx], rtol=1e-8)


def test_design_refit_and_fit_many(hsb):
    d = _data("hsb10", hsb)
    des = LMMDesign("MathAch ~ SES + (1 | School)", d)
    r0 = lmm("MathAch ~ SES + (1 | School)", d)
    r1 = des.fit()
    assert r1.criterion == pytest.approx(r0.criterion, abs=1e-9)
    y2 = d["MathAch"].to_numpy() * 2 + 1
    r2 = des.fit(y2)
    r3 = lmm("MathAch ~ SES + (1 | School)", d.assign(MathAch=y2))
    np.testing.assert_allclose(r2.fe_params, r3.fe_params, rtol=1e-10)
    np.testing.assert_allclose(r2.theta, r3.theta, rtol=1e-7)
    many = fit_many("MathAch ~ SES + (1 | School)", [d, d.assign(MathAch=y2)])
    np.testing.assert_allclose(many[1].fe_params, r3.fe_params, rtol=1e-10)
    bad = d.assign(School="one")
    out = fit_many("MathAch ~ SES + (1 | School)", [bad, d], errors="none")
    assert out[0] is None and out[1] is not None


def test_statsmodels_backend_same_type(hsb):
    d = _data("hsb10", hsb)
    s = lmm("MathAch ~ SES + (1 | School)", d, backend="statsmodels")
    r = lmm("MathAch ~ SES + (1 | School)", d)
    assert isinstance(s, LMMResult) and s.backend == "statsmodels"
    assert list(s.fe_params.index) == list(r.fe_params.index)
    assert s.ranef.shape == r.ranef.shape and s.cov_re.shape == r.cov_re.shape
    np.testing.assert_allclose(s.fe_params, r.fe_params, rtol=1e-3)
    assert s.criterion_profiled >= r.criterion - 1e-6
    assert np.isfinite(s.df).all()
    with pytest.raises(MlsimkitError, match="backend"):
        lmm("MathAch ~ SES + (1 | School)", d, backend="nope")


# ------------------------------------------------------------------------------------------
# batched fits (fit_many) agree with single fits
# ------------------------------------------------------------------------------------------
def _sim_sets(k, m=12, nper=8, seed=5):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        mi = m + i % 2  # two numbers of groups: batches of several, and padded statistics (RI)
        g = np.repeat(np.arange(mi), nper)
        x = rng.normal(size=g.size)
        tau = [0.0, 0.3, 1.0, 2.0][i % 4]  # includes a boundary (theta = 0) case
        y = 1 + 0.5 * x + tau * rng.normal(size=mi)[g] + 0.4 * rng.normal(size=mi)[g] * x + rng.normal(size=g.size)
        out.append(pd.DataFrame({"g": [f"s{j}" for j in g], "x": x, "y": y}))
    return out


def _same_fit(a, b, tol=1e-8):
    for u, v in ((a.fe_params, b.fe_params), (a.bse, b.bse), (a.theta, b.theta),
                 (a.cov_re.to_numpy(), b.cov_re.to_numpy()), (a.sigma2, b.sigma2)):
        np.testing.assert_allclose(np.asarray(u, float), np.asarray(v, float), rtol=tol, atol=tol)
    assert a.criterion == pytest.approx(b.criterion, abs=tol)
    assert a.converged == b.converged and a.singular == b.singular


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + (1 + x | g)"])
@pytest.mark.parametrize("reml", [True, False])
def test_fit_many_batched_equals_single(formula, reml):
    sets = _sim_sets(8)
    bad = sets[2].assign(g="one")  # a single group: not identified
    sets = sets[:3] + [bad] + sets[3:]
    many = fit_many(formula, sets, reml=reml, errors="none")
    loop = fit_many(formula, sets, reml=reml, errors="none", batch=False)
    assert len(many) == len(sets) and many[3] is None and loop[3] is None
    for k, d in enumerate(sets):
        if k == 3:
            continue
        single = lmm(formula, d, reml=reml)
        _same_fit(many[k], single)  # order preserved, others undisturbed by the failure
        _same_fit(loop[k], single)
        assert many[k].nobs == len(d)
    assert any(r is not None and r.singular for r in many) or "x |" in formula
    one = fit_many(formula, [sets[1]], reml=reml)
    _same_fit(one[0], lmm(formula, sets[1], reml=reml), tol=1e-12)
    with pytest.raises(MlsimkitError, match="at least two groups"):
        fit_many(formula, sets, reml=reml)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("exc", ["NotPositiveDefinite", "LMMIdentificationError"])
def test_fit_many_final_fit_failure_gives_none(monkeypatch, batch, exc):
    """errors="none": a data set whose *final* fit fails (after its design was prepared) gives
    None on the single path as on the batched one, and the others are fitted; errors="raise"
    raises."""
    from mlsimkit.lmm import _core, errors

    formula = "y ~ x + (1 + x | g)"
    sets = _sim_sets(4)
    sets[1] = sets[1].iloc[:-1]  # the only data set with this many rows: the one that fails
    bad_n = len(sets[1])
    err = getattr(_core, exc, None) or getattr(errors, exc)
    real = _core.optimize_q2_batch

    def q2_batch(sss, *a, **kw):  # single fits (optimize_general) are batches of one
        out = real(sss, *a, **kw)
        return [err("not positive definite at the optimum") if ss.n == bad_n else o for ss, o in zip(sss, out)]

    monkeypatch.setattr(_core, "optimize_q2_batch", q2_batch)
    res = fit_many(formula, sets, errors="none", batch=batch)
    assert res[1] is None and all(r is not None for k, r in enumerate(res) if k != 1)
    with pytest.raises((MlsimkitError, ArithmeticError), match="positive definite"):
        fit_many(formula, sets, batch=batch)


def _design_sets():
    """Data sets of one formula for the stacked preparation of fit_many: categorical predictors
    (object and Categorical), a level-2 predictor, rows not sorted by group, string groups
    whose sorted order is not their numeric order ('s10' < 's2'), integer groups, and
    different numbers of groups and of students."""
    rng = np.random.default_rng(11)
    out = []
    for i in range(9):
        m, nper = [6, 11, 12][i % 3], [5, 7][i % 2]
        g = np.repeat(np.arange(m), nper)
        x = rng.normal(size=g.size)
        c = rng.choice(["a", "b", "c"], size=g.size)
        s = pd.Categorical(rng.choice(["Public", "Catholic"], size=m)[g], categories=["Public", "Catholic"])
        w = np.repeat(rng.normal(size=m), nper)
        y = (1 + 0.5 * x + 0.3 * (c == "b") + 0.8 * w + (s == "Catholic") + [0.0, 0.7][i % 2] * rng.normal(size=m)[g]
             + 0.4 * rng.normal(size=m)[g] * x + rng.normal(size=g.size))
        groups = g + 100 if i % 4 == 3 else np.array([f"s{j}" for j in g], dtype=object)
        d = pd.DataFrame({"g": groups, "x": x, "c": c, "s": s, "w": w, "y": y})
        out.append(d.sample(frac=1.0, random_state=i).reset_index(drop=True))
    out[4] = out[4].assign(c=np.where(out[4]["c"] == "c", "a", out[4]["c"]))  # level 'c' missing here
    return out


def _failing_sets(d):
    """Variants of the data set d that a single fit refuses, each for another reason."""
    one_obs = d.drop_duplicates("g")
    nan_x = d.copy()
    nan_x.loc[3, "x"] = np.nan
    return {
        "one group": d.assign(g=d["g"].iloc[0]),
        "singleton groups": one_obs,
        "collinear": d.assign(w=2 * d["x"] + 1),
        "unused category": d.assign(s=pd.Categorical(["Public"] * len(d), categories=["Public", "Catholic"])),
        "missing value": nan_x,
        "infinite value": d.assign(w=np.where(np.arange(len(d)) == 2, np.inf, d["w"])),
        "text response": d.assign(y=d["y"].astype(str)),
        "missing column": d.drop(columns="w"),
        "n <= p": d.iloc[:6],
    }


DESIGN_FORMULAS = ["y ~ x + c + s + w + x:c + (1 | g)", "y ~ x + c + s + w + (1 + x | g)",
                   "y ~ x + c + s + w + (1 + x + w | g)"]  # q = 1, 2 (batched optimiser) and 3


@pytest.mark.parametrize("formula", DESIGN_FORMULAS)
def test_fit_many_stacked_designs_equal_single(formula, monkeypatch):
    """The stacked preparation gives each data set the single fit's results (categorical
    predictors, a level missing in one data set, unsorted and integer groups, mixed sizes), and
    every data set it cannot vouch for goes through the single path (and gives None)."""
    from mlsimkit.lmm import _model

    sets = _design_sets()
    bad = _failing_sets(sets[1])
    mixed = sets[:2] + list(bad.values()) + sets[2:]
    alone = []
    real = _model._prepare_single
    monkeypatch.setattr(_model, "_prepare_single", lambda parsed, d: alone.append(len(d)) or real(parsed, d))
    res = fit_many(formula, mixed, errors="none")
    assert sorted(alone) == sorted(len(d) for d in bad.values())  # the good ones were stacked
    good = sets[:2] + [None] * len(bad) + sets[2:]
    for d, r in zip(good, res):
        if d is None:
            assert r is None
            continue
        single = lmm(formula, d)
        _same_fit(r, single)
        assert list(r.fe_params.index) == list(single.fe_params.index)
        assert r.level2.equals(single.level2)
        pd.testing.assert_frame_equal(r.ranef, single.ranef, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(r.predict(), single.predict(), rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(r.predict(d.iloc[::-1]), single.predict(d.iloc[::-1]), rtol=1e-8, atol=1e-8)
    assert "c[T.c]" not in res[6 + len(bad) - 2].fe_params.index  # sets[4], its level 'c' missing


@pytest.mark.parametrize("why", list(_failing_sets(_design_sets()[1])))
def test_fit_many_stacked_errors_are_the_single_errors(why):
    """errors="raise": a data set that a single fit refuses raises the same error (class and
    message) from a batch of data sets of the same design."""
    formula = DESIGN_FORMULAS[0]
    sets = _design_sets()
    bad = _failing_sets(sets[1])[why]
    with pytest.raises(MlsimkitError) as single:
        lmm(formula, bad)
    with pytest.raises(MlsimkitError) as many:
        fit_many(formula, [sets[0], bad, sets[2]])
    assert type(many.value) is type(single.value) and str(many.value) == str(single.value)


def test_full_rank_screen_vouches_only_for_what_prepare_accepts():
    """The Gram-matrix screen of fit_many never passes a design that prepare's QR check calls
    collinear (exactly, nearly, at the screen's edge, or with a zero column)."""
    from mlsimkit.lmm._model import _collinear_columns, _surely_full_rank

    rng = np.random.default_rng(3)
    Xs, verdicts = [], []
    for eps in [0.0, 1e-14, 1e-10, 1e-7, 1e-5, 1e-3, 1.0]:
        X = rng.normal(size=(40, 3))
        X[:, 2] = X[:, 0] - 2 * X[:, 1] + eps * rng.normal(size=40)
        Xs.append(X)
    Xs.append(np.column_stack([np.ones(40), np.zeros(40), rng.normal(size=40)]))
    XtX = np.stack([X.T @ X for X in Xs])
    screen = _surely_full_rank(XtX, np.full(len(Xs), 40))
    for X, ok in zip(Xs, screen):
        verdicts.append((ok, _collinear_columns(X, ["a", "b", "c"])))
    assert all(not cols for ok, cols in verdicts if ok)
    assert [ok for ok, _ in verdicts] == [False, False, False, False, False, True, True, False]


def test_ri_batch_kernel_matches_scalar_criterion():
    from mlsimkit.lmm import _core

    sss = []
    for d in _sim_sets(5):
        codes, lev = pd.factorize(d["g"], sort=True)
        X = np.column_stack([np.ones(len(d)), d["x"]])
        sss.append(SuffStats(d["y"].to_numpy(), X, np.ones((len(d), 1)), codes, len(lev)))
    st = _core.RIStack(sss)
    th = np.array([[0.0, 0.2, 1.5], [0.1, 0.7, 3.0], [0.05, 0.5, 9.0], [0.3, 0.4, 0.5], [2.0, 1.0, 0.0]])
    for reml in (True, False):
        dev, g = _core.ri_criterion_stack(th, st, reml)
        for k, ss in enumerate(sss):
            d1, g1 = _core.ri_criterion(th[k], ss, reml)
            np.testing.assert_allclose(dev[k], d1, rtol=1e-12)
            np.testing.assert_allclose(g[k], g1, rtol=1e-9, atol=1e-9)
