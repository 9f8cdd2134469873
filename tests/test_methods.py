"""Prediction rules and recovery models on hand-checkable cases."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

import mlsimkit.datasets as ds
from mlsimkit import methods as M
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.methods import PredictionSpec, PredictionTask, RecoverySpec
from mlsimkit.schema import Schema
from mlsimkit.traditional import AfshartousDeLeeuw, HuangOmittedVariable

TRAD = PredictionSpec(outcome="Y", student=("X",), school=("W",), random_slope="X", interactions=(("X", "W"),), reml=False)


def _tiny(y, groups, x=None, w=None) -> MultilevelData:
    """A two-level data set with outcome Y, optional student X and school W."""
    groups = np.asarray(groups)
    sch = list(dict.fromkeys(groups))
    spec = {"name": "tiny", "tables": {
        "schools": {"file": "s.csv", "primary_key": "School", "columns": {"School": "id", "W": "numerical"}},
        "students": {"file": "p.csv", "primary_key": "Student", "parent": "schools", "foreign_key": "School",
                     "columns": {"Student": "id", "School": "id", "X": "numerical", "Y": "numerical"}}}}
    schools = pd.DataFrame({"School": sch, "W": np.arange(len(sch), dtype=float) if w is None else w})
    students = pd.DataFrame({"Student": [f"p{i}" for i in range(len(y))], "School": groups,
                             "X": np.arange(len(y), dtype=float) % 3 if x is None else x, "Y": np.asarray(y, float)})
    return MultilevelData(Schema.from_dict(spec), {"schools": schools, "students": students})


# ----------------------------------------------------------------- design matrices and OLS
def test_build_design_encodes_like_the_formula_interface():
    hsb = ds.load("hsb")
    d = M.build_design(hsb, "MathAch", ("SES", "Minority", "Sex"), ("Sector", "MEANSES", "HIMINTY"), (("SES", "Sector"),))
    j = hsb.join_as_one()
    assert d.names(["Minority", "Sector", "HIMINTY"]) == ["Minority[T.Yes]", "Sector[T.Catholic]", "HIMINTY[T.1]"]
    np.testing.assert_array_equal(d.columns["Sector[T.Catholic]"], (j.Sector == "Catholic").astype(float))
    np.testing.assert_array_equal(d.columns["MEANSES"], j.MEANSES)
    np.testing.assert_array_equal(d.columns["SES:Sector[T.Catholic]"], j.SES * (j.Sector == "Catholic"))
    assert d.level["SES"] == 1 and d.level["MEANSES"] == 2
    gm = d.add_group_means(["SES"])[0]
    np.testing.assert_allclose(d.columns[gm], j.groupby("School").SES.transform("mean"))
    with pytest.raises(MlsimkitError, match="not found"):
        M.build_design(hsb, "MathAch", ("Nope",))


def test_ols_matches_statsmodels():
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(50), rng.normal(size=(50, 2))])
    y = X @ [1, 2, -1] + rng.normal(size=50)
    f = M.ols(y, X, ["a", "b", "c"])
    ref = sm.OLS(y, X).fit()
    np.testing.assert_allclose(f.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(f.bse, ref.bse, rtol=1e-10)
    assert f.df_resid == 47
    with pytest.raises(MlsimkitError, match="rank deficient"):
        M.ols(y, np.column_stack([X, X[:, 1]]), ["a", "b", "c", "d"])


# ----------------------------------------------------------------- holdout and PMSE
def test_choose_holdout_one_per_school():
    d = _tiny(np.arange(9.0), ["a", "a", "a", "b", "b", "b", "b", "c", "d"], w=np.zeros(4) + [0, 1, 2, 3])
    h = M.choose_holdout(d, np.random.default_rng(1), min_cluster_size=2)
    schools = d.child.School.to_numpy()[h]
    assert sorted(schools) == ["a", "b"]  # c and d have one student each
    np.testing.assert_array_equal(h, M.choose_holdout(d, np.random.default_rng(1), min_cluster_size=2))
    picks = {tuple(M.choose_holdout(d, np.random.default_rng(s))) for s in range(30)}
    assert len(picks) > 3  # random within school


def test_pmse_leave_one_out_per_school_by_hand():
    # schools a: [1, 2, 3], b: [4, 6, 8], c: [10, 14]; no predictors: OLSFE = the school's training mean
    d = _tiny([1, 2, 3, 4, 6, 8, 10, 14], list("aaabbbcc"))
    task = PredictionTask(d, np.array([2, 3, 7]))
    spec = PredictionSpec(outcome="Y", student=())
    res = M.olsfe_rule(task, spec)
    np.testing.assert_allclose(res.pred, [1.5, 7.0, 10.0])
    assert res.pmse == pytest.approx((1.5**2 + 3**2 + 4**2) / 3)
    row = M.prediction_rows(res)[0]
    assert row["parameter"] == "PMSE" and row["estimate"] == row["pred_error"] == pytest.approx(9.0833333333)
    assert row["status"] == "ok"


def test_olsfe_equals_per_school_regressions():
    d = AfshartousDeLeeuw().sample(12, seed=4)
    task = PredictionTask(d, M.choose_holdout(d, np.random.default_rng(0)))
    res = M.olsfe_rule(task, TRAD)
    child = d.child
    test = np.zeros(len(child), bool)
    test[task.holdout] = True
    expect = []
    for pos in task.holdout:
        s = child.School[pos]
        tr = child[(child.School == s) & ~test]
        b, a = np.polyfit(tr.X, tr.Y, 1)
        expect.append(a + b * child.X[pos])
    np.testing.assert_allclose(res.pred, expect, rtol=1e-9)


def test_olsfe_with_common_slopes_equals_dummy_regression():
    hsb = ds.load("hsb").subset([f"{s}" for s in ds.load("hsb").parent.School[:15]])
    spec = PredictionSpec(outcome="MathAch", student=("SES", "Minority", "Sex"), school=("Sector",), random_slope="SES")
    task = PredictionTask(hsb, M.choose_holdout(hsb, np.random.default_rng(2)))
    res = M.olsfe_rule(task, spec)
    d = M.build_design(hsb, "MathAch", spec.student)
    test = np.zeros(d.n, bool)
    test[task.holdout] = True
    D = np.eye(d.n_groups)[d.groups]
    full = np.column_stack([D, D * d.columns["SES"][:, None], d.columns["Minority[T.Yes]"], d.columns["Sex[T.Female]"]])
    beta = np.linalg.lstsq(full[~test], d.y[~test], rcond=None)[0]
    np.testing.assert_allclose(res.pred, full[test] @ beta, rtol=1e-8)


def test_olsfe_school_without_estimable_slope_gets_intercept_only():
    # school b has two students: one trains, so its slope is not estimable
    d = _tiny([1, 2, 3, 4, 5, 7], list("aaaabb"), x=[0.0, 1, 2, 3, 1, 5])
    task = PredictionTask(d, np.array([0, 5]))
    spec = PredictionSpec(outcome="Y", student=("X",), random_slope="X")
    res = M.olsfe_rule(task, spec)
    np.testing.assert_allclose(res.pred, [1.0, 5.0])  # a: exact line y = 1 + x; b: its one training value
    assert "1 school(s) with intercept only" in res.message


# ----------------------------------------------------------------- prior and multilevel rules
def _train_test(task):
    child = task.data.child
    test = np.zeros(len(child), bool)
    test[task.holdout] = True
    tables = dict(task.data.tables)
    tables["students"] = child[~test].reset_index(drop=True)
    train = MultilevelData(task.data.schema, tables, validate=False)
    joined = task.data.join_as_one()
    return train, joined[test].reset_index(drop=True)


def test_prior_and_multilevel_rules_match_lmm_predict():
    from mlsimkit.lmm import lmm

    d = AfshartousDeLeeuw(icc=0.3).sample(40, seed=8)
    task = PredictionTask(d, M.choose_holdout(d, np.random.default_rng(3)))
    prior, multi = M.prior_rule(task, TRAD), M.multilevel_rule(task, TRAD)
    assert prior.status == "ok" == multi.status
    train, test = _train_test(task)
    fit = lmm("Y ~ X + W + X:W + (1 + X | School)", train.join_as_one(), reml=False)
    np.testing.assert_allclose(prior.pred, fit.predict(test, include_re=False), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(multi.pred, fit.predict(test, include_re=True), rtol=1e-5, atol=1e-6)
    # the two rules share one fit
    assert M.fit_prediction_lmm(task, TRAD) is M.fit_prediction_lmm(task, TRAD)


def test_random_slope_singular_falls_back_to_random_intercept(monkeypatch):
    import mlsimkit.lmm as lmm_mod

    real = lmm_mod.fit_lmm
    calls = []

    def singular_slope(y, X, Z, groups, **kw):
        res = real(y, X, Z, groups, **kw)
        calls.append(Z.shape[1])
        if Z.shape[1] == 2:
            res.singular = True
        return res

    monkeypatch.setattr(lmm_mod, "fit_lmm", singular_slope)
    d = AfshartousDeLeeuw().sample(15, seed=2)
    task = PredictionTask(d, M.choose_holdout(d, np.random.default_rng(0)))
    res = M.multilevel_rule(task, TRAD)
    assert calls == [2, 1]
    assert res.status == "warning" and "fell back to random intercept" in res.message and "singular" in res.message
    # the fallback predictions are those of the random-intercept model
    train, test = _train_test(task)
    fit = lmm_mod.lmm("Y ~ X + W + X:W + (1 | School)", train.join_as_one(), reml=False)
    np.testing.assert_allclose(res.pred, fit.predict(test, include_re=True), rtol=1e-5, atol=1e-6)
    row = M.prediction_rows(M.prior_rule(task, TRAD))[0]
    assert row["status"] == "warning"


def test_random_slope_error_falls_back_and_double_failure_is_error(monkeypatch):
    import mlsimkit.lmm as lmm_mod

    real = lmm_mod.fit_lmm

    def fail_slope(y, X, Z, groups, **kw):
        if Z.shape[1] == 2:
            raise np.linalg.LinAlgError("boom")
        return real(y, X, Z, groups, **kw)

    monkeypatch.setattr(lmm_mod, "fit_lmm", fail_slope)
    d = AfshartousDeLeeuw().sample(15, seed=2)
    task = PredictionTask(d, M.choose_holdout(d, np.random.default_rng(0)))
    res = M.prior_rule(task, TRAD)
    assert res.status == "warning" and "boom" in res.message

    def fail_all(*a, **k):
        raise np.linalg.LinAlgError("boom")

    monkeypatch.setattr(lmm_mod, "fit_lmm", fail_all)
    task = PredictionTask(d, task.holdout)
    row = M.prediction_rows(M.multilevel_rule(task, TRAD))[0]
    assert row["status"] == "error" and np.isnan(row["estimate"])


# ----------------------------------------------------------------- recovery models
REC = RecoverySpec(outcome="Y", student=("X",), school=("W1", "W2"), omitted=("W2",), report=("X", "W1"))


def test_ols_recovery_rows_match_statsmodels_t_interval():
    d = HuangOmittedVariable().sample(30, seed=1)
    j = d.join_as_one()
    for model, cols in (("OLS", ["X", "W1"]), ("OLS+IGM", ["X", "W1", "mX"])):
        j["mX"] = j.groupby("School").X.transform("mean")
        ref = sm.OLS(j.Y, sm.add_constant(j[cols])).fit()
        rows = M.recovery_rows(d, REC, model)
        assert [r["parameter"] for r in rows] == ["X", "W1"]
        ci = ref.conf_int(0.05)
        for r in rows:
            p = r["parameter"]
            assert r["estimate"] == pytest.approx(ref.params[p], rel=1e-9)
            assert r["se"] == pytest.approx(ref.bse[p], rel=1e-9)
            assert (r["ci_lower"], r["ci_upper"]) == pytest.approx(tuple(ci.loc[p]), rel=1e-9)
            assert r["status"] == "ok"


def test_hlm_recovery_uses_z_for_level1_and_satterthwaite_t_for_level2():
    from mlsimkit.lmm import fit_lmm

    d = HuangOmittedVariable().sample(25, seed=3)
    fit = M.fit_recovery_model(d, REC, "HLM+IGM")
    des = M.build_design(d, "Y", ("X",), ("W1", "W2"))
    names = ["X", "W1"] + des.add_group_means(["X"])
    X, fe = des.matrix(names)
    ref = fit_lmm(des.y, X, np.ones((des.n, 1)), des.groups, reml=True, fe_names=fe, re_names=["Intercept"])
    np.testing.assert_allclose(fit.params[fe], ref.fe_params[fe], rtol=1e-8)
    z = stats.norm.ppf(0.975)
    assert fit.upper["X"] - fit.params["X"] == pytest.approx(z * ref.bse["X"], rel=1e-8)
    df = float(ref.df["W1"])
    assert fit.upper["W1"] - fit.params["W1"] == pytest.approx(stats.t.ppf(0.975, df) * ref.bse["W1"], rel=1e-8)
    assert list(fit.params.index) == ["Intercept", "X", "W1", "mean(X)"]
    oracle = M.fit_recovery_model(d, REC, "Oracle")
    assert list(oracle.params.index) == ["Intercept", "X", "W1", "W2"]


def test_recovery_model_names_and_failures():
    d = HuangOmittedVariable().sample(5, seed=3)
    with pytest.raises(MlsimkitError, match="unknown"):
        M.recovery_rows(d, REC, "GEE")
    bad = RecoverySpec(outcome="Y", student=("X",), school=("W1", "W2"), omitted=("W2",), report=("W2",))
    with pytest.raises(MlsimkitError, match="not in the model"):
        M.recovery_rows(d, bad, "OLS")
    # more coefficients than rows: an error row, not an exception
    tiny = _tiny([1.0, 2.0, 3.0], ["a", "a", "b"])
    spec = RecoverySpec(outcome="Y", student=("X",), school=("W",), report=("X",))
    row = M.recovery_rows(tiny, spec, "OLS+IGM")[0]
    assert row["status"] == "error" and np.isnan(row["estimate"])
