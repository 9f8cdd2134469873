"""ICC(1), latent-scale ICC and reliability against hand computations and simulation."""

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

from mlsimkit import icc as I


def test_icc1_balanced_by_hand():
    df = pd.DataFrame({"y": [1, 2, 3, 4, 5, 6.0], "g": list("AAABBB")})
    # MSB = 13.5, MSW = 1, n0 = 3 -> (13.5 - 1) / (13.5 + 2)
    assert I.icc1(df, "y", "g") == pytest.approx(12.5 / 15.5)


def test_icc1_unbalanced_by_hand():
    df = pd.DataFrame({"y": [1, 3, 2, 4, 6.0], "g": list("AABBB")})
    msb, msw, n0 = 4.8, 10 / 3, 2.4
    c = I.anova_components(df.y, df.g)
    assert c["msb"] == pytest.approx(msb) and c["msw"] == pytest.approx(msw) and c["n0"] == pytest.approx(n0)
    assert I.icc1(df, "y", "g") == pytest.approx((msb - msw) / (msb + (n0 - 1) * msw))


def test_reliability_spearman_brown():
    tau2, sigma2, n = 0.2, 0.8, 10
    icc = tau2 / (tau2 + sigma2)
    assert I.reliability(tau2, sigma2, n) == pytest.approx(n * icc / (1 + (n - 1) * icc))


def test_logistic_random_intercept_likelihood_matches_quad():
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 8)
    u = rng.normal(0, 1.0, 30)[g]
    y = rng.random(g.size) < special.expit(-0.3 + u)
    fit = I.logistic_random_intercept(y, g)
    sd = np.sqrt(fit["tau2"])
    ll = 0.0
    for j in range(30):
        yj = y[g == j]
        n, s = yj.size, yj.sum()
        f = lambda z: stats.norm.pdf(z) * special.expit(fit["b0"] + sd * z) ** s * special.expit(-(fit["b0"] + sd * z)) ** (n - s)
        ll += np.log(integrate.quad(f, -12, 12)[0]) + np.log(special.comb(n, s))
    assert fit["loglik"] == pytest.approx(ll, rel=1e-6)


def test_logistic_random_intercept_gradient_is_the_likelihoods():
    """The analytic gradient the optimiser uses equals central finite differences of the criterion
    (a sign or a chain-rule factor wrong fails), and the fit is a stationary point of the criterion."""
    rng = np.random.default_rng(4)
    nj = rng.integers(3, 40, 50)
    g = np.repeat(np.arange(50), nj)
    y = (rng.random(g.size) < special.expit(0.5 + rng.normal(0, 1.2, 50)[g])).astype(float)
    n = np.bincount(g).astype(float)[:, None]
    s = np.bincount(g, weights=y)[:, None]
    kw = dict(n=n, s=s, counts=np.ones(50), logcomb=special.gammaln(n + 1) - special.gammaln(s + 1)
              - special.gammaln(n - s + 1))
    for theta in ([0.4, 0.1], [-1.0, -2.0], [2.0, 1.0]):
        f, grad = I._negll_logistic_ri(np.array(theta), True, **kw)
        assert f == I._negll_logistic_ri(theta, **kw)
        h = 1e-6
        num = [(I._negll_logistic_ri(np.add(theta, e), **kw) - I._negll_logistic_ri(np.subtract(theta, e), **kw))
               / (2 * h) for e in (np.array([h, 0.0]), np.array([0.0, h]))]
        assert grad == pytest.approx(num, rel=1e-5, abs=1e-5)
    fit = I.logistic_random_intercept(y, g)
    _, grad = I._negll_logistic_ri(np.array([fit["b0"], 0.5 * np.log(fit["tau2"])]), True, **kw)
    assert np.abs(grad).max() < 1e-3


def test_latent_icc_recovers_truth():
    rng = np.random.default_rng(7)
    J, n, tau2 = 400, 40, 1.0
    g = np.repeat(np.arange(J), n)
    y = rng.random(J * n) < special.expit(0.2 + rng.normal(0, np.sqrt(tau2), J)[g])
    r = I.latent_icc(y, g)
    truth = tau2 / (tau2 + np.pi**2 / 3)
    assert abs(r["icc"] - truth) < 0.04


def test_latent_icc_zero_without_clustering():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(100), 30)
    y = rng.random(3000) < 0.4
    assert I.latent_icc(y, g)["icc"] < 0.02


def test_icc_table_hsb():
    import mlsimkit.datasets as ds

    t = I.icc_table(ds.load("hsb")).set_index("variable")
    assert list(t.index) == ["Minority", "Sex", "SES", "MathAch"]
    assert t.loc["MathAch", "method"] == "anova" and t.loc["Sex", "method"] == "latent-logit"
    assert 0.15 < t.loc["MathAch", "icc"] < 0.20  # the textbook value is about 0.18
    assert t.loc["MathAch", "reliability"] == pytest.approx(0.90, abs=0.01)


def test_categorical_dummies_weighted():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(50), 20)
    s = pd.Series(pd.Categorical(rng.choice(list("abc"), 1000), categories=list("abc")))
    r = I.column_icc(s, g, "categorical")
    assert r["method"] == "latent-logit-dummies" and 0 <= r["icc"] < 0.05
