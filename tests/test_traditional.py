"""The traditional data-generating processes: shapes, schemas, and their true values over large draws."""

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.icc import anova_components
from mlsimkit.methods import ols
from mlsimkit.traditional import AfshartousDeLeeuw, HuangOmittedVariable


def _validated(data: MultilevelData) -> MultilevelData:
    return MultilevelData(data.schema, data.tables)  # full validation against the schema


# ----------------------------------------------------------------- Afshartous & de Leeuw
def test_afshartous_shapes_schema_and_determinism():
    dgp = AfshartousDeLeeuw()
    d = dgp.sample(10, seed=3)
    _validated(d)
    assert d.n_clusters == 10 and len(d.child) == 250
    assert (d.cluster_sizes() == 25).all()
    assert list(d.parent.columns) == ["School", "W"] and list(d.child.columns) == ["Student", "School", "X", "Y"]
    assert d.child["Y"].dtype == np.float64 and d.child["School"].dtype == object
    assert d.equals(dgp.sample(10, seed=3)) and not d.equals(dgp.sample(10, seed=4))
    assert dgp.tau00 == pytest.approx(0.125)  # ICC 0.2, sigma2 0.5
    assert AfshartousDeLeeuw(sigma2=0.25).tau00 == pytest.approx(0.0625)
    with pytest.raises(MlsimkitError, match="icc"):
        AfshartousDeLeeuw(icc=1.2)
    with pytest.raises(MlsimkitError, match="n_clusters"):
        dgp.sample(0, seed=1)


def test_afshartous_outcome_equation_is_exact():
    dgp = AfshartousDeLeeuw(r=0.5)
    d, eff = dgp.sample(7, seed=11, return_effects=True)
    j = d.join_as_one()
    g = pd.Index(d.parent.School).get_indexer(j.School)
    u = eff["u"]
    expect = 1 + j.W + u[g, 0] + (1 + j.W + u[g, 1]) * j.X + eff["e"]
    np.testing.assert_allclose(j.Y, expect, atol=1e-12)


@pytest.mark.parametrize("sigma2", [0.5, 0.25])
def test_afshartous_design_icc_and_variances(sigma2):
    J, n = 4000, 25
    dgp = AfshartousDeLeeuw(icc=0.2, sigma2=sigma2, r=0.25)
    d, eff = dgp.sample(J, seed=2024, return_effects=True)
    j = d.join_as_one()
    g = pd.Index(d.parent.School).get_indexer(j.School)
    # intercept-only ICC: residual outcome without the fixed part and without the slope effect
    resid = eff["u"][g, 0] + eff["e"]
    comp = anova_components(resid, g)
    rho = 0.2
    mcse = np.sqrt(2 * (1 - rho) ** 2 * (1 + (n - 1) * rho) ** 2 / (n * (n - 1) * (J - 1)))
    assert abs(comp["icc"] - rho) < 3.5 * mcse
    u = eff["u"]
    tau = dgp.tau00
    se_var = tau * np.sqrt(2 / J)
    assert abs(u[:, 0].var() - tau) < 4 * se_var and abs(u[:, 1].var() - tau) < 4 * se_var
    assert abs(np.corrcoef(u.T)[0, 1] - 0.25) < 4 * (1 - 0.25**2) / np.sqrt(J)
    assert abs(eff["e"].var() - sigma2) < 4 * sigma2 * np.sqrt(2 / (J * n))


def test_afshartous_fixed_effects_recovered_by_ols():
    d = AfshartousDeLeeuw().sample(3000, seed=5)
    j = d.join_as_one()
    X = np.column_stack([np.ones(len(j)), j.W, j.X, j.W * j.X])
    f = ols(j.Y.to_numpy(), X, ["g00", "g01", "g10", "g11"])
    # effects are mean zero and independent of X and W: OLS is unbiased; tolerance ~ 5 cluster-level SEs
    np.testing.assert_allclose(f.params.to_numpy(), 1.0, atol=0.05)


# ----------------------------------------------------------------- Huang omitted-variable design
def test_huang_shapes_sizes_and_schema():
    dgp = HuangOmittedVariable()
    d = dgp.sample(500, seed=1)
    _validated(d)
    sizes = d.cluster_sizes()
    assert sizes.min() >= 10 and sizes.max() <= 30
    assert abs(sizes.mean() - 20) < 4 * np.sqrt((21**2 - 1) / 12 / 500)
    assert list(d.parent.columns) == ["School", "W1", "W2"] and list(d.child.columns) == ["Student", "School", "X", "Y"]
    assert d.equals(dgp.sample(500, seed=1))
    with pytest.raises(MlsimkitError, match="icc_x"):
        HuangOmittedVariable(rho_xw=0.5, icc_x=0.1)


def test_huang_correlations_and_coefficients():
    J = 20000
    dgp = HuangOmittedVariable(rho_w=0.4, rho_xw=0.3)
    d = dgp.sample(J, seed=7)
    j = d.join_as_one()
    r_w = np.corrcoef(d.parent.W1, d.parent.W2)[0, 1]
    assert abs(r_w - 0.4) < 4 * (1 - 0.4**2) / np.sqrt(J)
    r_xw = np.corrcoef(j.X, j.W2)[0, 1]
    assert abs(r_xw - 0.3) < 0.015  # clustered: effective n is about J
    assert abs(anova_components(j.X, j.School)["icc"] - 0.09) < 0.01
    X = np.column_stack([np.ones(len(j)), j.X, j.W1, j.W2])
    f = ols(j.Y.to_numpy(), X, ["g0", "X", "W1", "W2"])
    np.testing.assert_allclose(f.params.to_numpy(), [0, 5, 2, 2], atol=0.06)
    # omitting W2 biases both coefficients: the confounding the design is about
    f2 = ols(j.Y.to_numpy(), X[:, :3], ["g0", "X", "W1"])
    assert f2.params["X"] > 5.2 and f2.params["W1"] > 2.4


def test_huang_adjusted_variant_takes_real_values():
    hsb = ds.load("hsb")
    coefs = {"SES": 1.98, "PRACAD": 4.26, "DISCLIM": -0.35}
    dgp = HuangOmittedVariable.from_real(hsb, coefs, tau00=1.66, sigma2=35.9, outcome="MathAch", student="SES",
                                       observed="PRACAD", omitted="DISCLIM")
    assert dgp.label == "adjusted"
    assert dgp.gamma[1:] == pytest.approx((1.98, 4.26, -0.35))
    assert dgp.rho_w == pytest.approx(np.corrcoef(hsb.parent.PRACAD, hsb.parent.DISCLIM)[0, 1])
    assert dgp.rho_w == pytest.approx(-0.61, abs=0.01)
    assert dgp.rho_xw == pytest.approx(-0.19, abs=0.01)
    assert 0.2 < dgp.icc_x < 0.35
    d = dgp.sample(8000, seed=3)
    j = d.join_as_one()
    assert np.corrcoef(d.parent.W1, d.parent.W2)[0, 1] == pytest.approx(dgp.rho_w, abs=0.04)
    assert np.corrcoef(j.X, j.W2)[0, 1] == pytest.approx(dgp.rho_xw, abs=0.03)
    assert j.X.std() == pytest.approx(hsb.child.SES.std(), rel=0.03)
    assert j.Y.mean() == pytest.approx(hsb.child.MathAch.mean(), abs=0.2)
    with pytest.raises(MlsimkitError, match="coefficient"):
        HuangOmittedVariable.from_real(hsb, {"SES": 1.0}, tau00=1, sigma2=1, outcome="MathAch", student="SES",
                                          observed="PRACAD", omitted="DISCLIM")


def test_afshartous_every_published_parameter_can_be_set():
    from mlsimkit.traditional import AfshartousDeLeeuw

    base = AfshartousDeLeeuw()
    same = AfshartousDeLeeuw(tau00=0.125, tau11=0.125)  # ICC 0.2 with sigma2 0.5 is tau00 = 0.125
    assert base.tau00 == same.tau00 == 0.125 and same.icc == pytest.approx(0.2)
    np.testing.assert_array_equal(base.tau, same.tau)
    assert base.sample(5, seed=1).equals(same.sample(5, seed=1))
    d = AfshartousDeLeeuw(tau00=0.1, tau11=0.4, r=0.5)
    assert d.tau[0, 1] == pytest.approx(0.5 * np.sqrt(0.04)) and d.tau[1, 1] == 0.4
    companion = AfshartousDeLeeuw(sigma2=0.25)  # the companion paper's reading: one parameter
    assert companion.tau00 == pytest.approx(0.0625)
    with pytest.raises(Exception, match="tau11"):
        AfshartousDeLeeuw(tau11=-1.0)


def test_afshartous_extra_holdout_generates_n_plus_one_and_fits_on_n():
    from mlsimkit import demonstrations as D

    task = D.generate_traditional_prediction({"n_schools": 6}, np.random.default_rng(0), n_per_school=25,
                                             extra_holdout=True)
    sizes = task.data.child.groupby("School").size()
    assert (sizes == 26).all() and len(task.holdout) == 6
    plain = D.generate_traditional_prediction({"n_schools": 6}, np.random.default_rng(0), n_per_school=25)
    assert (plain.data.child.groupby("School").size() == 25).all()  # negative control


def test_icc_or_tau00_never_both():
    assert AfshartousDeLeeuw(tau00=0.125, sigma2=0.5).tau00 == 0.125
    assert AfshartousDeLeeuw(sigma2=0.5).tau00 == pytest.approx(0.125)  # icc 0.2 by default
    with pytest.raises(MlsimkitError, match=r"'icc' \(0.2\) and 'tau00' \(0.125\): give one of them, not both"):
        AfshartousDeLeeuw(icc=0.2, tau00=0.125)
