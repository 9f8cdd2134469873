"""The demonstrations' generate / analyse / truth callables, alone and through simulate.run."""

import pickle

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit import demonstrations as D
from mlsimkit import methods as M
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.generators.base import Generator, as_rng, make_ids
from mlsimkit.traditional import HuangOmittedVariable
from mlsimkit import objectives
import mlsimkit.study as st
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The HSB studies' analysis models, as their params files declare them
HSB_PREDICTION = objectives.get("prediction").spec(st.load("hsb-prediction", "quick", ROOT))
HSB_RECOVERY = objectives.get("recovery").spec(st.load("hsb-recovery", "quick", ROOT))


def test_hsb_params_declare_the_models_of_the_paper_demonstrations():
    """What the package's HSB constants said before the models moved to params/ (same fits, same numbers)."""
    assert HSB_PREDICTION == M.PredictionSpec(outcome="MathAch", student=("SES", "Minority", "Sex"),
                                              school=("Sector", "MEANSES"), random_slope="SES", reml=True)
    assert HSB_RECOVERY == M.RecoverySpec(outcome="MathAch", student=("SES", "Minority", "Sex"),
                                          school=("Sector", "PRACAD", "DISCLIM", "HIMINTY"), omitted=("DISCLIM",),
                                          report=("SES", "PRACAD"), reml=True)


class SchoolBootstrap(Generator):
    """Test stand-in generator: schools drawn with replacement from the real data, fresh keys."""

    name = "school-bootstrap"

    def fit(self, data):
        self.schema_ = data.schema
        self.data_ = data
        return self

    def sample(self, n_clusters, *, seed):
        rng = as_rng(seed)
        d = self.data_
        pick = rng.integers(0, d.n_clusters, n_clusters)
        parent = d.parent.iloc[pick].reset_index(drop=True)
        old = parent.School.to_numpy()
        parent["School"] = make_ids("B", n_clusters)
        kids = []
        for new, o in zip(parent.School, old):
            k = d.child[d.child.School == o].copy()
            k["School"] = new
            kids.append(k)
        child = pd.concat(kids, ignore_index=True)
        child["Student"] = make_ids("Q", len(child))
        return MultilevelData(d.schema, {"schools": parent, "students": child}, validate=False)


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


@pytest.fixture(scope="module")
def truth(hsb):
    return D.fit_truth(hsb, HSB_RECOVERY)


@pytest.fixture(scope="module")
def boot(hsb):
    return SchoolBootstrap().fit(hsb)


# ----------------------------------------------------------------- truth model
def test_fit_truth_reproduces_the_lmm_fit(hsb, truth):
    from mlsimkit.lmm import lmm

    ref = lmm(D.truth_formula(HSB_RECOVERY, "School"), hsb.join_as_one(), reml=True)
    assert truth.formula == "MathAch ~ SES + Minority + Sex + Sector + PRACAD + DISCLIM + HIMINTY + (1 | School)"
    np.testing.assert_allclose(truth.coefficients.to_numpy(), ref.fe_params.to_numpy(), rtol=1e-10)
    assert truth.sigma2 == pytest.approx(float(ref.sigma2))
    assert truth.tau00 == pytest.approx(float(np.asarray(ref.cov_re).reshape(-1)[0]))
    # and agrees with an independent engine (statsmodels REML): SES 1.979, PRACAD 4.256, tau00 1.66, sigma2 35.9
    assert truth.coefficients["SES"] == pytest.approx(1.979, abs=2e-3)
    assert truth.coefficients["PRACAD"] == pytest.approx(4.256, abs=5e-3)
    assert truth.coefficients["Sector[T.Catholic]"] == pytest.approx(0.390, abs=5e-3)
    assert truth.tau00 == pytest.approx(1.66, abs=0.02) and truth.sigma2 == pytest.approx(35.90, abs=0.05)
    tt = D.recovery_truth(truth)
    assert list(tt.parameter) == ["SES", "PRACAD"] and tt.truth.iloc[0] == truth.coefficients["SES"]


def test_draw_outcome_follows_the_true_model(hsb, truth):
    rng = np.random.default_rng(11)
    d = truth.draw_outcome(hsb, rng)
    assert not np.allclose(d.child.MathAch, hsb.child.MathAch)
    assert hsb.child.MathAch.iloc[0] == ds.load("hsb").child.MathAch.iloc[0]  # input untouched
    fit = M.fit_recovery_model(d, HSB_RECOVERY, "Oracle")
    z = (fit.params - truth.coefficients.reindex(fit.params.index)) / fit.bse
    assert fit.status == "ok" and np.all(np.abs(z) < 4), z
    eta, g, _ = truth.linear_predictor(hsb)
    resid = d.child.MathAch.to_numpy() - eta
    assert resid.var() == pytest.approx(truth.tau00 + truth.sigma2, rel=0.06)


def test_recovery_generate_replaces_the_generator_outcome(boot, truth):
    cond = {"n_schools": 12}
    d1 = D.recovery_generate(cond, np.random.default_rng(5), truth=truth, generator=boot)
    d2 = D.recovery_generate(cond, np.random.default_rng(5), truth=truth, generator=boot)
    assert d1.n_clusters == 12 and d1.equals(d2)
    raw = boot.sample(12, seed=np.random.default_rng(5))
    assert raw.child.SES.equals(d1.child.SES) and not np.allclose(raw.child.MathAch, d1.child.MathAch)


def test_generate_synthetic_from_a_saved_generator(hsb, tmp_path):
    from mlsimkit.generators import SchoolBootstrap as Bootstrap  # only the package's classes can be saved

    boot = Bootstrap().fit(hsb)
    path = boot.save(tmp_path / "gen.zip")
    gen = D.generate_synthetic
    t1 = gen({"n_schools": 8}, np.random.default_rng(1), generator_path=str(path))
    t2 = gen({"n_schools": 8}, np.random.default_rng(1), generator=boot)
    assert isinstance(t1, M.PredictionTask) and t1.data.n_clusters == 8 and len(t1.holdout) == 8
    np.testing.assert_array_equal(t1.holdout, t2.holdout)
    assert t1.data.equals(t2.data)
    t3 = pickle.loads(pickle.dumps(t1))
    assert t3.data.equals(t1.data) and t3._cache == {}
    with pytest.raises(MlsimkitError, match="generator"):
        gen({"n_schools": 8}, np.random.default_rng(1))
    with pytest.raises(MlsimkitError, match="n_schools"):
        gen({}, np.random.default_rng(1), generator=boot)


# ----------------------------------------------------------------- analyse callables
def test_prediction_methods_on_synthetic_hsb(boot):
    task = D.generate_synthetic({"n_schools": 30}, np.random.default_rng(2), generator=boot)
    methods = D.analyse_prediction_methods(HSB_PREDICTION)
    assert list(methods) == ["OLSFE", "Prior", "Multilevel"]
    rows = {m: f({"n_schools": 30}, task, np.random.default_rng(0)) for m, f in methods.items()}
    for m, r in rows.items():
        assert len(r) == 1 and r[0]["parameter"] == "PMSE" and r[0]["status"] in ("ok", "warning", "singular"), r
        assert 10 < r[0]["estimate"] < 120
    for f in methods.values():
        pickle.dumps(f)


def test_recovery_methods_on_both_designs(truth, boot):
    d = D.recovery_generate({"n_schools": 40}, np.random.default_rng(3), truth=truth, generator=boot)
    methods = D.recovery_methods(HSB_RECOVERY)
    assert list(methods) == ["OLS", "OLS+IGM", "HLM", "HLM+IGM", "Oracle"]
    for m, f in methods.items():
        rows = f({"n_schools": 40}, d, None)
        assert [r["parameter"] for r in rows] == ["SES", "PRACAD"]
        assert all(r["status"] in ("ok", "singular") and r["ci_lower"] < r["estimate"] < r["ci_upper"] for r in rows)
        pickle.dumps(f)
    dt = D.generate_traditional_recovery({"n_schools": 40}, np.random.default_rng(3))
    for f in D.recovery_methods("traditional").values():
        assert [r["parameter"] for r in f({}, dt, None)] == ["X", "W1"]
    tt = D.recovery_truth(HuangOmittedVariable())
    assert tt.set_index("parameter").truth.to_dict() == {"X": 5.0, "W1": 2.0}


def test_adjusted_recovery_design_from_the_truth(hsb, truth):
    dgp = D.adjusted_recovery_dgp(truth, hsb, student="SES", observed="PRACAD", omitted="DISCLIM")
    assert dgp.gamma[1:] == pytest.approx(tuple(truth.coefficients[["SES", "PRACAD", "DISCLIM"]]))
    assert dgp.tau00 == truth.tau00 and dgp.sigma2 == truth.sigma2
    d = D.generate_traditional_recovery({"n_schools": 20}, np.random.default_rng(0), dgp=dgp)
    assert d.n_clusters == 20


def test_igm_removes_student_level_bias_in_the_huang_design():
    """Statistical check (OLS only, fast): omitting W2 biases OLS's X coefficient; with school means of X
    the within-school slope is unbiased (Huang 2018; Suk et al. figure 8)."""
    reps, cond = 150, {"n_schools": 60}
    est = {"OLS": [], "OLS+IGM": []}
    for r in range(reps):
        d = D.generate_traditional_recovery(cond, np.random.default_rng([9, r]))
        for m in est:
            est[m].append(M.recovery_rows(d, D.TRADITIONAL_RECOVERY, m)[0]["estimate"])
    igm = np.array(est["OLS+IGM"])
    mcse = igm.std(ddof=1) / np.sqrt(reps)
    assert abs(igm.mean() - 5.0) < 3.5 * mcse
    ols = np.array(est["OLS"])
    assert ols.mean() - 5.0 > 10 * ols.std(ddof=1) / np.sqrt(reps)


def test_multilevel_rule_beats_the_prior_rule_in_the_afshartous_design():
    """Statistical check: with ICC 0.2 and 25 per school the prior rule ignores the school effects and
    loses; the multilevel rule is at least as good as OLSFE (Afshartous & de Leeuw 2005, table 3)."""
    methods = D.analyse_prediction_methods("traditional")
    diff_prior, diff_ols = [], []
    for r in range(20):
        task = D.generate_traditional_prediction({"n_schools": 50}, np.random.default_rng([4, r]))
        p = {m: f({}, task, None)[0]["estimate"] for m, f in methods.items()}
        diff_prior.append(p["Prior"] - p["Multilevel"])
        diff_ols.append(p["OLSFE"] - p["Multilevel"])
    d = np.array(diff_prior)
    assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(d.size)
    o = np.array(diff_ols)
    assert o.mean() > -3 * o.std(ddof=1) / np.sqrt(o.size)


# ----------------------------------------------------------------- through the simulation engine
def test_simulate_run_with_the_traditional_designs():
    from mlsimkit import simulate

    res = simulate.run(simulate.Design({"n_schools": [10, 25]}), D.generate_traditional_prediction,
                       D.analyse_prediction_methods("traditional"), reps=3, seed=1, progress=False)
    assert set(res.method) == {"OLSFE", "Prior", "Multilevel"} and len(res) == 2 * 3 * 3
    assert res.status.isin(["ok", "warning"]).all() and (res.pred_error > 0).all()
    assert (res.estimate == res.pred_error).all()
    res2 = simulate.run({"n_schools": [20]}, D.generate_traditional_recovery, D.recovery_methods("traditional"),
                        reps=2, seed=1, progress=False)
    assert set(res2.parameter) == {"X", "W1"} and len(res2) == 5 * 2 * 2
    assert res2.status.isin(["ok", "singular", "warning"]).all()


def test_afshartous_pmse_scales_exactly_with_sigma2():
    """The two sigma2 conventions (0.5 JEBS text, 0.25 companion paper) differ only by scale: with the same
    random stream every rule's PMSE halves (the rules are equivariant under y -> a y + X b)."""
    methods = D.analyse_prediction_methods("traditional")
    out = {}
    for s2 in (0.5, 0.25):
        task = D.generate_traditional_prediction({"n_schools": 30, "sigma2": s2}, np.random.default_rng(3))
        out[s2] = np.array([f({}, task, None)[0]["estimate"] for f in methods.values()])
    np.testing.assert_allclose(out[0.25], out[0.5] / 2, rtol=1e-4)
