"""The causal estimator engine and the hybrid generator (mlsimkit.causal, issue 13).

Statistical tests use fixed seeds and bounds from Monte Carlo error: an estimator is unbiased when
|mean error| < 3 MCSE, biased when it is > 3 MCSE, and a 95% interval covers when its coverage is within
0.95 +- 3 sqrt(0.95 * 0.05 / R). The data-generating process is :mod:`mlsimkit.causal.examples` (a constant
effect of 2 of a school-level treatment; Z2sq confounds, and leaving it out of a nuisance model misspecifies
that model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from mlsimkit import datasets
from mlsimkit.causal import CausalSpec, estimate_ate, prepare, school_folds
from mlsimkit.causal._design import Logistic, treatment_codes
from mlsimkit.causal.estimators import _aipw, _crossfit, _tmle
from mlsimkit.causal.examples import COLUMNS, simulate
from mlsimkit.causal.hybrid import HybridGenerator
from mlsimkit.data import MultilevelData
from mlsimkit.errors import DataValidationError, MlsimkitError, ParamsError
from mlsimkit.generators import SchoolBootstrap

ATE = 2.0
J_SCHOOLS, STUDENTS = 200, 8


def _mc(spec_kwargs: dict, reps: int, seed: int, estimators=("OR", "IPW", "AIPW", "TMLE")) -> pd.DataFrame:
    spec = CausalSpec(**COLUMNS, **spec_kwargs)
    out = []
    for r in range(reps):
        df = simulate(J_SCHOOLS, STUDENTS, np.random.SeedSequence(seed, spawn_key=(r,)))
        res = estimate_ate(df, spec, estimators=estimators, versions=("multilevel",), seed=r)
        res["rep"] = r
        out.append(res)
    res = pd.concat(out, ignore_index=True)
    res["err"] = res["estimate"] - ATE
    res["cover"] = (res["ci_low"] < ATE) & (ATE < res["ci_high"])
    res["cover_naive"] = (res["ci_low_naive"] < ATE) & (ATE < res["ci_high_naive"])
    return res


def _summary(res: pd.DataFrame) -> pd.DataFrame:
    g = res.groupby("estimator")
    s = pd.DataFrame({"bias": g["err"].mean(), "mcse": g["err"].std() / np.sqrt(g.size()),
                      "coverage": g["cover"].mean(), "coverage_naive": g["cover_naive"].mean(), "R": g.size()})
    s["z"] = s["bias"] / s["mcse"]
    s["cov_mcse"] = np.sqrt(0.95 * 0.05 / s["R"])
    return s


@pytest.fixture(scope="module")
def correct():
    return _summary(_mc({}, reps=150, seed=11))


# ============================================================================ statistical
def test_or_aipw_tmle_unbiased_and_cluster_robust_coverage(correct):
    s = correct
    for est in ("OR", "AIPW", "TMLE"):
        assert abs(s.loc[est, "z"]) < 3, s
        assert abs(s.loc[est, "coverage"] - 0.95) < 3 * s.loc[est, "cov_mcse"], s


def test_naive_se_undercovers_with_a_school_level_treatment(correct):
    s = correct
    for est in ("OR", "AIPW", "TMLE"):
        assert s.loc[est, "coverage_naive"] < 0.95 - 3 * s.loc[est, "cov_mcse"], s
        assert s.loc[est, "coverage_naive"] < s.loc[est, "coverage"], s


def _small_j_draw(n_schools: int, seed: int, r: int) -> pd.DataFrame:
    """A draw of :func:`simulate` with at least two schools in each arm (the first of up to 100 tries)."""
    for k in range(100):
        df = simulate(n_schools, STUDENTS, np.random.SeedSequence(seed, spawn_key=(r, k)))
        a = df.groupby("school")["A"].first()
        if a.sum() >= 2 and (1 - a).sum() >= 2:
            return df
    raise AssertionError("no draw with two schools per arm")


def test_t_intervals_on_j_minus_1_df_cover_better_with_few_schools():
    """16 schools, 300 replications: the cluster-robust intervals on the normal quantile under-cover (by more
    than 3 MCSE); the default ones, on Student's t with J - 1 = 15 df (Cameron & Miller 2015), are closer to
    the nominal 0.95 without over-covering. On the first 20 data sets ``df="normal"`` gives the same estimate,
    SE and naive interval, and an interval narrower by exactly z / t_{15}; the normal coverage below is
    computed from those same quantities (estimate +- z se)."""
    from scipy.stats import norm, t

    spec, J, R = CausalSpec(**COLUMNS), 16, 300
    z, tq = norm.ppf(0.975), t.ppf(0.975, J - 1)
    rows = []
    for r in range(R):
        df = _small_j_draw(J, 23, r)
        kw = dict(estimators=("OR", "AIPW"), versions=("multilevel",), seed=r, check_overlap=False)
        res = estimate_ate(df, spec, **kw)
        if r < 20:
            nrm = estimate_ate(df, spec, df="normal", **kw)
            for col in ("estimate", "se", "ci_low_naive", "ci_high_naive"):
                assert np.array_equal(res[col], nrm[col]), col
            np.testing.assert_allclose((res["ci_high"] - res["ci_low"]) / (nrm["ci_high"] - nrm["ci_low"]),
                                       tq / z, rtol=1e-12)
            np.testing.assert_allclose(nrm["ci_high"], nrm["estimate"] + z * nrm["se"], rtol=1e-12)
        rows.append(res)
    res = pd.concat(rows, ignore_index=True)
    res["cover_t"] = (res["ci_low"] < ATE) & (ATE < res["ci_high"])
    res["cover_z"] = (res["estimate"] - z * res["se"] < ATE) & (ATE < res["estimate"] + z * res["se"])
    cov = res.groupby("estimator")[["cover_t", "cover_z"]].mean()
    mcse = np.sqrt(0.95 * 0.05 / R)
    assert (res["cover_t"] >= res["cover_z"]).all()          # the t interval contains the normal one
    for est in ("OR", "AIPW"):
        assert cov.loc[est, "cover_z"] < 0.95 - 3 * mcse, cov
        assert cov.loc[est, "cover_t"] < 0.95 + 3 * mcse, cov
        assert abs(cov.loc[est, "cover_t"] - 0.95) < abs(cov.loc[est, "cover_z"] - 0.95), cov


def test_df_is_validated_and_not_ignored():
    spec = CausalSpec(**COLUMNS)
    df = simulate(30, STUDENTS, 3)
    a = estimate_ate(df, spec, estimators=("DiM", "AIPW"), versions=("single",))
    b = estimate_ate(df, spec, estimators=("DiM", "AIPW"), versions=("single",), df="normal")
    assert (a["ci_high"] > b["ci_high"]).all() and (a["ci_low"] < b["ci_low"]).all()
    assert np.array_equal(a["ci_high_naive"], b["ci_high_naive"])
    with pytest.raises(ParamsError, match="parameter 'df'"):
        estimate_ate(df, spec, estimators=("DiM",), df="t")


def test_double_robustness_outcome_model_misspecified():
    s = _summary(_mc({"outcome_school": ("Z1", "Z2")}, reps=80, seed=12))
    assert s.loc["OR", "z"] > 5, s                      # OR leaves the confounder Z2sq out: biased
    for est in ("AIPW", "TMLE"):
        assert abs(s.loc[est, "z"]) < 3, s


def test_double_robustness_propensity_misspecified():
    s = _summary(_mc({"propensity_school": ("Z1", "Z2")}, reps=80, seed=13))
    assert s.loc["IPW", "z"] > 5, s                     # IPW leaves the confounder Z2sq out: biased
    for est in ("AIPW", "TMLE", "OR"):
        assert abs(s.loc[est, "z"]) < 3, s


# ============================================================================ exact values
def test_dim_estimate_and_cluster_se_by_hand():
    df = pd.DataFrame({"s": list("aabbccdd"), "A": [1, 1, 1, 1, 0, 0, 0, 0],
                       "Y": [3.0, 5.0, 4.0, 8.0, 1.0, 2.0, 0.0, 2.0]})
    res = estimate_ate(df, CausalSpec("A", "Y", "s"), estimators=("DiM",), small_sample=False)
    row = res.iloc[0]
    assert row["estimate"] == pytest.approx(5.0 - 1.25)
    IF = np.where(df.A == 1, (df.Y - 5.0) / 0.5, -(df.Y - 1.25) / 0.5)
    sums = pd.Series(IF).groupby(df.s).sum()
    assert row["se"] == pytest.approx(np.sqrt((sums**2).sum()) / 8)
    assert row["se_naive"] == pytest.approx(np.sqrt((IF**2).sum()) / 8)
    res2 = estimate_ate(df, CausalSpec("A", "Y", "s"), estimators=("DiM",))  # J/(J-1) correction
    assert res2.iloc[0]["se"] == pytest.approx(row["se"] * np.sqrt(4 / 3))


def test_single_level_or_se_is_statsmodels_cluster_robust_ols():
    df = simulate(40, 6, 3)
    spec = CausalSpec(**COLUMNS)
    res = estimate_ate(df, spec, estimators=("OR",), versions=("single",), small_sample=False).iloc[0]
    X = sm.add_constant(df[["A", "X", "Z1", "Z2", "Z2sq"]])
    fit = sm.OLS(df["Y"], X).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(df["school"])[0],
                                                                   "use_correction": False})
    assert res["estimate"] == pytest.approx(fit.params["A"], rel=1e-9)
    assert res["se"] == pytest.approx(fit.bse["A"], rel=1e-6)
    hc0 = sm.OLS(df["Y"], X).fit(cov_type="HC0")
    assert res["se_naive"] == pytest.approx(hc0.bse["A"], rel=1e-6)


def test_multilevel_or_is_the_lmm_treatment_coefficient():
    from mlsimkit.lmm import lmm

    df = simulate(40, 6, 4)
    df["Xbar"] = df.groupby("school")["X"].transform("mean")
    res = estimate_ate(df.drop(columns="Xbar"), CausalSpec(**COLUMNS), estimators=("OR",),
                       versions=("multilevel",)).iloc[0]
    fit = lmm("Y ~ A + X + Xbar + Z1 + Z2 + Z2sq + (1 | school)", df)
    assert res["estimate"] == pytest.approx(fit.fe_params["A"], rel=1e-6)
    # the GLS sandwich is close to the model-based SE when the model is right (a loose check)
    assert 0.6 < res["se"] / fit.bse["A"] < 1.5


def test_logistic_matches_sklearn_unpenalised():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.3 + X @ [1.0, -1.0, 0.5])))).astype(float)
    ours = Logistic(ridge=0.0).fit(X, y).predict_proba1(X)
    ref = LogisticRegression(C=1e10, max_iter=1000, tol=1e-10).fit(X, y).predict_proba(X)[:, 1]
    assert np.abs(ours - ref).max() < 1e-5


def test_tmle_fluctuation_solves_the_efficient_score():
    df = simulate(60, 6, 5)
    prep = prepare(df, CausalSpec(**COLUMNS))
    folds = school_folds(prep.a_school, 5, np.random.default_rng(0))
    nu = _crossfit(prep, "multilevel", folds, propensity=True)
    g = np.clip(nu["g"], 0.01, 0.99)
    psi_a, IF_a = _aipw(prep, nu["Q1"], nu["Q0"], g)
    assert abs(IF_a.mean()) < 1e-10
    for fluct in ("weighted", "clever"):
        psi, IF = _tmle(prep, nu["Q1"], nu["Q0"], g, fluct)
        assert abs(IF.mean()) < 1e-8 * np.abs(IF).max()  # the targeted fit solves mean(IF) = 0
        assert abs(psi - psi_a) < 0.5                    # both target the same ATE
    assert _tmle(prep, nu["Q1"], nu["Q0"], g, "weighted")[0] != _tmle(prep, nu["Q1"], nu["Q0"], g, "clever")[0]
    with pytest.raises(ParamsError, match="fluctuation"):
        estimate_ate(df, CausalSpec(**COLUMNS), fluctuation="linear")


def test_aipw_matches_doubleml_fixture():
    """AIPW against DoubleML's ``DoubleMLIRM`` (score ATE; fixture written by benchmarks/fixture_doubleml.py,
    DoubleML not needed here), on the same data and the same school folds, single-level version,
    ``crossfit="all"``, unpenalised propensity (``ridge=0``), propensities truncated at 0.01 / 0.99 (DoubleML's
    clipping), no IPW normalisation.

    - ``external`` (DoubleML's score on our pooled outcome predictions, its own logistic propensity): our
      :func:`estimate_ate` gives the same ATE and the same naive SE (DoubleML's SE is the i.i.d. one).
    - ``cluster`` (the same on DoubleML's clustered data, the school as cluster): DoubleML's cluster-robust SE
      is ours without the small-sample factor J/(J-1) (every fold holds 8 of the 40 schools, where the two
      formulas coincide).
    - ``own`` (DoubleML's own outcome learner: a linear regression per arm, not our pooled one with the
      treatment as a column, so a different estimate): its truncated propensities are ours, and our AIPW score
      on per-arm least-squares predictions fitted on our folds gives its ATE and SE.
    """
    import json
    from pathlib import Path

    fx = json.loads((Path(__file__).parent / "fixtures" / "doubleml_aipw.json").read_text())
    d = fx["data"]
    df = simulate(d["n_schools"], d["students"], d["seed"])
    assert len(df) == d["n"]
    spec = CausalSpec(**COLUMNS)
    prep = prepare(df, spec)
    folds = school_folds(prep.a_school, fx["folds"]["k"], np.random.default_rng(fx["folds"]["seed"]))
    assert folds.tolist() == fx["folds"]["school_fold"]
    lo, hi = 0.01, 0.99
    assert fx["clipping_threshold"] == lo and fx["normalize_ipw"] is False
    res = estimate_ate(df, spec, estimators=("AIPW",), versions=("single",), folds=fx["folds"]["k"],
                       seed=np.random.default_rng(fx["folds"]["seed"]), crossfit="all", ridge=0.0,
                       bounds=(lo, hi)).iloc[0]
    assert res["estimate"] == pytest.approx(fx["external"]["ate"], abs=1e-6)
    assert res["se_naive"] == pytest.approx(fx["external"]["se"], rel=1e-6)
    assert fx["cluster"]["ate"] == pytest.approx(fx["external"]["ate"], abs=1e-9)
    J = prep.J
    assert res["se"] / np.sqrt(J / (J - 1)) == pytest.approx(fx["cluster"]["se"], rel=1e-6)
    # own learners: the same truncated propensities (to the logistic fits' tolerance), per-arm OLS for Q
    nu = _crossfit(prep, "single", folds, propensity=True, ridge=0.0)
    g = np.clip(nu["g"], lo, hi)
    np.testing.assert_allclose(g, fx["own"]["m_hat"], atol=1e-6)
    X = np.column_stack([np.ones(len(df)), df[list(COLUMNS["student"]) + list(COLUMNS["school"])]])
    row_fold = folds[prep.codes]
    Q = {0.0: np.empty(len(df)), 1.0: np.empty(len(df))}
    for k in range(fx["folds"]["k"]):
        te = row_fold == k
        for arm in (0.0, 1.0):
            tr = ~te & (prep.a == arm)
            Q[arm][te] = X[te] @ np.linalg.lstsq(X[tr], prep.y[tr], rcond=None)[0]
    psi, IF = _aipw(prep, Q[1.0], Q[0.0], g)
    assert psi == pytest.approx(fx["own"]["ate"], abs=1e-6)
    assert np.sqrt(np.sum(IF**2)) / len(IF) == pytest.approx(fx["own"]["se"], rel=1e-6)
    # negative controls: without truncation, or with our pooled outcome model, the estimate misses DoubleML's
    # by far more than the tolerance above (1.3e-4 and 1.2 on this data set)
    assert abs(_aipw(prep, Q[1.0], Q[0.0], nu["g"])[0] - fx["own"]["ate"]) > 100 * 1e-6
    assert abs(res["estimate"] - fx["own"]["ate"]) > 0.1


def test_school_folds_stratified_and_grouped():
    a = np.array([1.0] * 7 + [0.0] * 13)
    f = school_folds(a, 5, np.random.default_rng(1))
    assert sorted(np.unique(f)) == [0, 1, 2, 3, 4]
    for k in range(5):                    # every training set has both arms
        assert a[f != k].min() == 0 and a[f != k].max() == 1
    assert np.bincount(f[a == 1]).max() - np.bincount(f[a == 1], minlength=5).min() <= 1
    with pytest.raises(ParamsError, match="folds"):
        school_folds(a, 1, np.random.default_rng(1))


def test_trimming_reports_the_share_bounded():
    df = simulate(80, 5, 6, overlap=4.0)                 # weak overlap: extreme propensities
    res = estimate_ate(df, CausalSpec(**COLUMNS), estimators=("IPW",), versions=("multilevel",),
                       bounds=(0.1, 0.9))
    wide = estimate_ate(df, CausalSpec(**COLUMNS), estimators=("IPW",), versions=("multilevel",),
                        bounds=(0.0, 1.0))
    assert 0 < res.iloc[0]["share_trimmed"] < 1
    assert wide.iloc[0]["share_trimmed"] == 0
    assert res.iloc[0]["estimate"] != wide.iloc[0]["estimate"]


def test_table_shape_and_reproducibility():
    df = simulate(50, 6, 7)
    a = estimate_ate(df, CausalSpec(**COLUMNS), seed=3)
    b = estimate_ate(df, CausalSpec(**COLUMNS), seed=3)
    assert list(a["estimator"]) == ["DiM", "OR", "IPW", "AIPW", "TMLE", "OR", "IPW", "AIPW", "TMLE"]
    assert set(a["version"]) == {"unadjusted", "single", "multilevel"}
    cols = ["estimate", "se", "ci_low", "ci_high", "se_naive"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert (a["ci_low"] < a["estimate"]).all() and (a["estimate"] < a["ci_high"]).all()


# ============================================================================ bad input
def _frame():
    return simulate(30, 4, 8)


def test_non_binary_treatment_names_the_column():
    df = _frame()
    df["A"] = df["Z1"].round(1)
    with pytest.raises(DataValidationError, match="treatment column 'A'.*binary"):
        estimate_ate(df, CausalSpec(**COLUMNS))


def test_no_treated_schools_names_the_column():
    df = _frame()
    df["A"] = 0.0
    with pytest.raises(DataValidationError, match="treatment column 'A': 0 treated"):
        estimate_ate(df, CausalSpec(**COLUMNS))


def test_treatment_varying_within_school_names_the_column():
    df = _frame()
    df.loc[df.index[0], "A"] = 1 - df.loc[df.index[0], "A"]
    with pytest.raises(DataValidationError, match="treatment column 'A' varies within 1 cluster"):
        estimate_ate(df, CausalSpec(**COLUMNS))


def test_propensity_zero_or_one_everywhere_names_the_column():
    df = _frame()
    df["A"] = (df["Z1"] > 0).astype(float)               # perfectly predicted by a school covariate
    with pytest.raises(DataValidationError, match="treatment column 'A' is perfectly predicted"):
        estimate_ate(df, CausalSpec(**COLUMNS))


def test_treatment_coding_of_two_level_values():
    codes, values = treatment_codes(pd.Series(pd.Categorical(["P", "C", "C"], categories=["P", "C"])), "T")
    assert codes.tolist() == [0, 1, 1] and values == ("P", "C")
    codes, values = treatment_codes(pd.Series(["x", "y", "x"]), "T", treated="x")
    assert codes.tolist() == [1, 0, 1]
    with pytest.raises(DataValidationError, match="'T'.*not 0/1"):
        treatment_codes(pd.Series(["x", "y"]), "T")


# ============================================================================ hybrid generator
@pytest.fixture(scope="module")
def hsb():
    return datasets.load("hsb")


def _roles(hsb):
    """HSB's school-level treatment (Catholic sector) and outcome (mathematics achievement)."""
    return "Sector", "MathAch"


def test_hybrid_truth_is_the_outcome_models_coefficient(hsb):
    from mlsimkit.lmm import lmm

    treatment, outcome = _roles(hsb)
    key = hsb.cluster_key
    student = ["SES", "Sex"]
    school = ["PRACAD", "DISCLIM"]
    h = HybridGenerator(treatment, outcome, student=student, school=school,
                        covariates=SchoolBootstrap().fit(hsb)).fit(hsb)
    df = hsb.join_as_one()
    df["mSES"] = df.groupby(key)["SES"].transform("mean")
    df["mFemale"] = df.groupby(key)["Sex"].transform(lambda s: (s.astype(str) == "Female").mean())
    fit = lmm(f"{outcome} ~ {treatment} + SES + Sex + mSES + mFemale + PRACAD + DISCLIM + (1 | {key})", df)
    coef = fit.fe_params[[i for i in fit.fe_params.index if i.startswith(treatment)][0]]
    data, truth = h.sample_with_truth(120, seed=5)
    assert truth["ATE"] == pytest.approx(coef, rel=1e-6)
    assert truth["ATT"] == pytest.approx(coef, rel=1e-6)
    assert h.tau2_ == pytest.approx(float(np.asarray(fit.cov_re).reshape(-1)[0]), rel=1e-4)
    assert h.sigma2_ == pytest.approx(fit.sigma2, rel=1e-4)
    # the draw is valid data of the same schema, reproducible from its seed
    MultilevelData(hsb.schema, data.tables)               # validates
    again, truth2 = h.sample_with_truth(120, seed=5)
    assert again.equals(data) and truth2 == truth
    assert data.n_clusters == 120


def test_hybrid_correct_or_recovers_the_exact_truth(hsb):
    """End to end: a correctly specified multilevel OR on hybrid draws is unbiased for the exact ATE."""
    treatment, outcome = _roles(hsb)
    student, school = ["SES", "Sex"], ["PRACAD", "DISCLIM"]
    h = HybridGenerator(treatment, outcome, student=student, school=school, overlap=0.5,
                        covariates=SchoolBootstrap().fit(hsb)).fit(hsb)
    spec = CausalSpec(treatment, outcome, hsb.cluster_key, student=tuple(student), school=tuple(school))
    err, cover = [], []
    for r in range(40):
        data, truth = h.sample_with_truth(80, seed=np.random.SeedSequence(21, spawn_key=(r,)))
        row = estimate_ate(data.join_as_one(), spec, estimators=("OR",), versions=("multilevel",)).iloc[0]
        err.append(row["estimate"] - truth["ATE"])
        cover.append(row["ci_low"] < truth["ATE"] < row["ci_high"])
    err = np.array(err)
    assert abs(err.mean()) < 3 * err.std(ddof=1) / np.sqrt(len(err))
    assert np.mean(cover) > 0.95 - 3 * np.sqrt(0.95 * 0.05 / 40)


def test_hybrid_boosting_truth_is_the_mean_predicted_difference(hsb):
    treatment, outcome = _roles(hsb)
    small = hsb.subset(hsb.parent[hsb.cluster_key].iloc[::2])     # 80 schools: keeps the test quick
    h = HybridGenerator(treatment, outcome, learner="boosting", boosting={"max_iter": 30},
                        covariates=SchoolBootstrap().fit(small)).fit(small)
    assert 0 < h.tau2_ < 20 and 20 < h.sigma2_ < 60        # HSB: about 2 and 36 from the linear model
    (d1, t1), (d2, t2) = h.sample_with_truth(60, seed=1), h.sample_with_truth(60, seed=2)
    assert t1["ATE"] != t2["ATE"]                          # depends on the W drawn: not a coefficient
    assert abs(t1["ATE"]) < 10


def test_hybrid_overlap_knob(hsb):
    treatment, outcome = _roles(hsb)
    gs = {s: HybridGenerator(treatment, outcome, overlap=s).fit(hsb).propensity(hsb) for s in (0.0, 0.5, 1.0, 2.0)}
    assert np.ptp(gs[0.0]) < 1e-12                         # randomised
    spread = [np.std(np.log(gs[s] / (1 - gs[s]))) for s in (0.5, 1.0, 2.0)]
    assert spread[0] < spread[1] < spread[2]
    assert spread[2] == pytest.approx(4 * spread[0], rel=1e-9)


def test_hybrid_bad_input_names_the_column(hsb):
    treatment, outcome = _roles(hsb)
    student_col = "SES"
    with pytest.raises(DataValidationError, match=f"treatment column '{student_col}' is in table"):
        HybridGenerator(student_col, outcome).fit(hsb)
    parent = hsb.parent.copy()
    parent[treatment] = pd.Categorical([parent[treatment].cat.categories[0]] * len(parent),
                                       categories=parent[treatment].cat.categories)
    none_treated = MultilevelData(hsb.schema, {hsb.levels[-2]: parent, hsb.levels[-1]: hsb.child}, validate=False)
    with pytest.raises(DataValidationError, match=f"treatment column '{treatment}': 0 treated"):
        HybridGenerator(treatment, outcome).fit(none_treated)
    with pytest.raises(DataValidationError, match="treatment column 'MEANSES'.*binary"):
        HybridGenerator("MEANSES", outcome).fit(hsb)
    with pytest.raises(ParamsError, match="learner"):
        HybridGenerator(treatment, outcome, learner="forest")
    with pytest.raises(MlsimkitError, match="overlap"):
        HybridGenerator(treatment, outcome, overlap=-1)


def test_no_covariates_gives_unadjusted_estimates():
    df = simulate(40, 5, 9)
    res = estimate_ate(df, CausalSpec("A", "Y", "school"), crossfit="none")
    dim = res.set_index(["estimator", "version"])["estimate"]
    for est in ("OR", "IPW", "AIPW", "TMLE"):          # nothing to adjust for, in-sample fits: all are DiM
        assert dim[(est, "single")] == pytest.approx(dim[("DiM", "unadjusted")], abs=1e-6)


def test_hybrid_accepts_covariates_without_treatment_and_outcome(hsb):
    treatment, outcome = _roles(hsb)
    h = HybridGenerator(treatment, outcome, student=["SES"], school=["PRACAD"]).fit(hsb)
    w = SchoolBootstrap().fit(hsb).sample(30, seed=3)
    tables = {hsb.levels[-2]: w.parent.drop(columns=treatment), hsb.levels[-1]: w.child.drop(columns=outcome)}
    data, truth = h.draw(MultilevelData(hsb.schema, tables, validate=False), seed=4)
    checked = MultilevelData(hsb.schema, data.tables)      # valid data of the schema again
    assert set(checked.parent[treatment].astype(str)) <= set(hsb.parent[treatment].astype(str))
    assert np.isfinite(checked.child[outcome]).all() and truth["ATE"] == pytest.approx(h.beta_[1])


def test_overlap_table_weak_and_strong_overlap():
    from mlsimkit.causal import overlap_table

    spec = CausalSpec(**COLUMNS)
    weak, strong = simulate(120, 6, 10, overlap=4.0), simulate(120, 6, 10, overlap=0.0)
    tw, ts = overlap_table(weak, spec), overlap_table(strong, spec)
    assert list(tw["arm"]) == ["treated", "control"]
    assert (tw["ess_share"] < ts["ess_share"]).all()
    assert (ts["ess_share"] > 0.9).all()                 # randomised: weights nearly constant
    assert tw["n_students"].sum() == len(weak) and tw["n_schools"].sum() == 120
    # the per-arm shares bounded add up to the estimators' share_trimmed (same propensity fit)
    res = estimate_ate(weak, spec, estimators=("IPW",), versions=("multilevel",), bounds=(0.05, 0.95))
    tb = overlap_table(weak, spec, bounds=(0.05, 0.95))
    total = (tb["share_trimmed"] * tb["n_students"]).sum() / tb["n_students"].sum()
    assert res.iloc[0]["share_trimmed"] == pytest.approx(total)
    assert total > 0


# ============================================================================ small designs (issue 13, Stage 4 failures)
def test_fold_with_a_collinear_school_column_fits_and_reports_the_drop():
    """A school column that is zero outside one fold is constant zero in the other folds' training rows: the
    multilevel outcome model drops it there (LMMIdentificationError before) and says so in ``dropped``."""
    df = simulate(30, 6, 21)
    spec = CausalSpec(**dict(COLUMNS, school=("Z1", "Z2", "Z2sq", "Zc")))
    prep0 = prepare(df.assign(Zc=0.0), CausalSpec(**COLUMNS))
    fold = school_folds(prep0.a_school, 5, np.random.default_rng(4))   # estimate_ate's folds with seed=4
    school = df["school"].astype(int).to_numpy()
    df["Zc"] = np.where(fold[school] == 0, df["Z1"] ** 3 + 1.0, 0.0)
    prep = prepare(df, spec)
    assert prep.dropped_multi == 0 and prep.out_multi.shape[1] == prep0.out_multi.shape[1] + 1
    res = estimate_ate(df, spec, versions=("single", "multilevel"), folds=5, seed=4)
    assert (res["status"] == "ok").all() and np.isfinite(res["estimate"]).all()
    r = res.set_index(["estimator", "version"])
    for name in ("AIPW", "TMLE"):
        assert r.loc[(name, "multilevel"), "dropped"] >= 1
        assert r.loc[(name, "single"), "dropped"] >= 1
    assert r.loc[("OR", "multilevel"), "dropped"] == 0              # all the data: nothing to drop
    # a column collinear on all the data is dropped there too, and reported
    both = estimate_ate(df.assign(Z1b=2 * df["Z1"] - 1), CausalSpec(**dict(COLUMNS, school=("Z1", "Z2", "Z2sq", "Z1b"))),
                        estimators=("OR",), versions=("multilevel",))
    assert both.iloc[0]["dropped"] == 1


def test_separated_simulated_data_give_finite_estimates_and_dim_is_unaffected():
    df = simulate(40, 6, 22)
    df["A"] = (df["Z1"] > 0).astype(float)                # deterministic: complete separation
    spec = CausalSpec(**COLUMNS)
    with pytest.raises(DataValidationError, match="perfectly predicted"):
        prepare(df, spec)                                 # the up-front check of real data still raises
    res = estimate_ate(df, spec, check_overlap=False, seed=1)
    assert len(res) == 9 and (res["status"] == "ok").all()
    assert np.isfinite(res[["estimate", "se", "ci_low", "ci_high"]].to_numpy()).all()
    adj = res[res["estimator"].isin(["IPW", "AIPW", "TMLE"])]
    assert (adj["share_trimmed"] > 0).all()
    dim = res[res["estimator"] == "DiM"].iloc[0]
    a = df["A"].to_numpy() == 1
    assert dim["estimate"] == pytest.approx(df["Y"][a].mean() - df["Y"][~a].mean())
    alone = estimate_ate(df, spec, estimators=("DiM",), versions=(), check_overlap=False)
    assert alone.iloc[0]["estimate"] == dim["estimate"] and alone.iloc[0]["se"] == dim["se"]


def test_propensity_ridge_shrinks_towards_the_base_rate_and_is_validated():
    df = simulate(40, 6, 22)
    df["A"] = (df["Z1"] > 0).astype(float)
    spec = CausalSpec(**COLUMNS)
    kw = dict(estimators=("IPW",), versions=("multilevel",), check_overlap=False, bounds=(0.0, 1.0))
    soft = estimate_ate(df, spec, ridge=1.0, **kw).iloc[0]
    hard = estimate_ate(df, spec, ridge=1e-6, **kw).iloc[0]
    assert soft["estimate"] != hard["estimate"]
    with pytest.raises(ParamsError, match="ridge"):
        estimate_ate(df, spec, ridge=-1.0, **kw)
