"""Stage 5 measures and their MCSE: hand-computed values, rsimsum formulas, a statistical check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlsimkit import performance as pf
from mlsimkit.performance import PerformanceError, plan_reps, summarise, to_wide
from mlsimkit.simulate import Design, run
from mlsimkit.simulate import examples as ex


def tiny() -> pd.DataFrame:
    """Four usable replications of method A, one error, one non-converged; method B fails at method level once."""
    a = pd.DataFrame({
        "condition": "c1", "rep": range(6), "method": "A", "parameter": "beta",
        "estimate": [1.0, 2.0, 4.0, 5.0, np.nan, 100.0],
        "se": [1.0, 1.0, 2.0, 2.0, np.nan, 9.0],
        "ci_lower": [0.5, 1.0, 1.5, 2.5, np.nan, 90.0],
        "ci_upper": [1.5, 3.0, 4.5, 7.5, np.nan, 110.0],
        "pred_error": [0.2, 0.4, 0.6, 0.8, np.nan, np.nan],
        "status": ["ok", "ok", "warning", "ok", "error", "non-converged"],
    })
    b = pd.DataFrame({
        "condition": "c1", "rep": [0, 1, 2], "method": "B", "parameter": ["beta", None, "beta"],
        "estimate": [2.0, np.nan, 2.5], "se": [0.5, np.nan, 0.5], "ci_lower": [1.0, np.nan, 1.5],
        "ci_upper": [3.0, np.nan, 3.5], "pred_error": np.nan, "status": ["ok", "error", "ok"],
    })
    return pd.concat([a, b], ignore_index=True)


def measures(summary, method="A") -> dict:
    s = summary[summary.method == method]
    return {m: (v, e) for m, v, e in zip(s.measure, s.value, s.mcse)}


def test_measures_equal_hand_computed_values():
    s = summarise(tiny(), truth=2.0, by=["condition"])
    m = measures(s)
    # usable: reps 0-3 (estimates 1, 2, 4, 5; truth 2; d = -1, 0, 2, 3; mean 3; SS about mean = 10)
    expected = {
        "bias": (1.0, math.sqrt(10 / 3) / 2),                      # sd(d)/sqrt(n)
        "rel_bias": (50.0, 100 * math.sqrt(10 / 3) / 2 / 2),        # 100 mean(d/2), 100 sd(d/2)/2
        "empse": (math.sqrt(10 / 3), math.sqrt(10 / 3) / math.sqrt(6)),
        "mse": (3.5, math.sqrt(49 / 12)),                            # d^2-3.5 = -2.5,-3.5,.5,5.5 -> 49
        "rmse": (math.sqrt(3.5), 0.5890058),                         # jackknife, computed by hand below
        "modelse": (math.sqrt(2.5), math.sqrt(3 / (4 * 4 * 2.5))),   # s^2 = 1,1,4,4: var 3
        "relerror": (100 * (math.sqrt(2.5 / (10 / 3)) - 1),
                     100 * math.sqrt(2.5 / (10 / 3)) * math.sqrt(3 / (4 * 4 * 2.5**2) + 1 / 6)),
        "coverage": (0.5, math.sqrt(0.25 / 4)),                      # covers 2: no, yes, yes, no
        "becoverage": (0.75, math.sqrt(0.75 * 0.25 / 4)),            # covers 3: no, yes, yes, yes
        "power": (1.0, 0.0),
        "pmse": (0.5, math.sqrt(0.2 / 3) / 2),
        "fail_rate": (2 / 6, math.sqrt(2 / 6 * 4 / 6 / 6)),
        "rate_warning": (1 / 6, math.sqrt(1 / 6 * 5 / 6 / 6)),
        "rate_non-converged": (1 / 6, math.sqrt(1 / 6 * 5 / 6 / 6)),
        "rate_error": (1 / 6, math.sqrt(1 / 6 * 5 / 6 / 6)),
    }
    assert set(m) == set(expected)
    for k, (v, e) in expected.items():
        assert m[k][0] == pytest.approx(v, rel=1e-12, abs=1e-12), k
        assert m[k][1] == pytest.approx(e, rel=1e-6, abs=1e-12), k
    a = s[s.method == "A"]
    assert set(a["n_usable"]) == {4} and set(a["n_reps"]) == {6}
    assert a.set_index("measure").loc["fail_rate", "n_used"] == 6 and a.set_index("measure").loc["bias", "n_used"] == 4
    # the jackknife by hand: leave-one-out MSEs (14 - d_i^2)/3
    loo = np.sqrt(np.array([13, 14, 10, 5]) / 3)
    assert math.sqrt(3 / 4 * np.sum((loo - loo.mean()) ** 2)) == pytest.approx(0.5890058, rel=1e-6)
    # method B: its parameter-less error row counts as a failure of beta in rep 1
    b = measures(s, "B")
    assert b["fail_rate"][0] == pytest.approx(1 / 3) and b["rate_error"][0] == pytest.approx(1 / 3)
    assert b["bias"][0] == pytest.approx(0.25) and s.loc[s.method == "B", "n_usable"].iloc[0] == 2


def rsimsum_reference(est, se, lo, hi, theta):
    """The formulas as rsimsum's simsum() writes them (Gasparini 2018; Morris et al. 2019 Table 6)."""
    n = len(est)
    tb = est.mean()
    empse = math.sqrt(np.sum((est - tb) ** 2) / (n - 1))
    modelse = math.sqrt(np.mean(se**2))
    mse = np.mean((est - theta) ** 2)
    cover = np.mean((theta >= lo) & (theta <= hi))
    becover = np.mean((tb >= lo) & (tb <= hi))
    return {
        "bias": (tb - theta, math.sqrt(np.sum((est - tb) ** 2) / (n * (n - 1)))),
        "empse": (empse, empse / math.sqrt(2 * (n - 1))),
        "mse": (mse, math.sqrt(np.sum(((est - theta) ** 2 - mse) ** 2) / (n * (n - 1)))),
        "modelse": (modelse, math.sqrt(np.var(se**2, ddof=1) / (4 * n * modelse**2))),
        "relerror": (100 * (modelse / empse - 1),
                     100 * (modelse / empse) * math.sqrt(np.var(se**2, ddof=1) / (4 * n * modelse**4) + 1 / (2 * (n - 1)))),
        "coverage": (cover, math.sqrt(cover * (1 - cover) / n)),
        "becoverage": (becover, math.sqrt(becover * (1 - becover) / n)),
    }


def test_matches_rsimsum_formulas_on_random_results():
    rng = np.random.default_rng(1)
    n = 137
    est = 0.3 + rng.normal(0.05, 0.2, n)
    se = np.abs(rng.normal(0.2, 0.03, n))
    lo, hi = est - 1.96 * se, est + 1.96 * se
    res = pd.DataFrame({"rep": range(n), "method": "m", "parameter": "b", "estimate": est, "se": se,
                        "ci_lower": lo, "ci_upper": hi})
    m = measures(summarise(res, truth={"b": 0.3}, by=[]), "m")
    for k, (v, e) in rsimsum_reference(est, se, lo, hi, 0.3).items():
        assert m[k][0] == pytest.approx(v, rel=1e-12), k
        assert m[k][1] == pytest.approx(e, rel=1e-12), k


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=40))
def test_jackknife_of_a_mean_is_the_closed_form(xs):
    x = np.array(xs)
    assert pf.jackknife_mcse(x, np.mean) == pytest.approx(np.std(x, ddof=1) / math.sqrt(len(x)), rel=1e-7, abs=1e-9)
    d2 = x**2
    jack = pf.jackknife_mcse(d2, lambda v: math.sqrt(v.mean()))
    assert pf.rmse(x, 0.0)[1] == pytest.approx(jack, rel=1e-7, abs=1e-9)


def test_truth_forms_and_grouping():
    res = run(Design({"n": [10, 30], "mu": [0.0, 2.0]}), ex.normal_sample, {"mean": ex.mean_t_interval}, reps=30, seed=2)
    by_scalar_mu = summarise(res[res.mu == 2.0], truth=2.0)
    table = pd.DataFrame({"parameter": "mu", "mu": [0.0, 2.0], "true_value": [0.0, 2.0]})
    by_table = summarise(res, truth=table)
    pd.testing.assert_frame_equal(by_table[by_table.mu == 2.0].reset_index(drop=True), by_scalar_mu.reset_index(drop=True))
    assert list(by_table.columns[:5]) == ["condition", "n", "mu", "method", "parameter"]
    assert "rel_bias" not in set(by_table.loc[by_table.mu == 0.0, "measure"])  # undefined at truth 0
    pooled = summarise(res, truth=table, by=["n"])
    assert set(pooled.loc[pooled.measure == "bias", "n_usable"]) == {60}
    no_truth = summarise(res)
    assert "bias" not in set(no_truth.measure) and {"empse", "modelse", "becoverage"} <= set(no_truth.measure)
    with_col = summarise(res.assign(true_value=res["mu"]))
    pd.testing.assert_frame_equal(with_col, by_table)
    with pytest.raises(PerformanceError, match="parameter\\(s\\) \\['sigma'\\]"):
        summarise(res, truth={"sigma": 1.0})
    with pytest.raises(PerformanceError, match="'parameter' and 'true_value'"):
        summarise(res, truth=pd.DataFrame({"mu": [0.0]}))
    with pytest.raises(PerformanceError, match="unknown measure"):
        summarise(res, truth=0.0, measures=["bias", "bogus"])
    with pytest.raises(PerformanceError, match="several rows"):
        summarise(pd.concat([res, res]), truth=0.0)
    wide = to_wide(summarise(res, truth=table, measures=["bias", "coverage"]), digits=3)
    assert {"bias", "coverage"} <= set(wide.columns) and wide["bias"].str.match(r"-?\d\.\d{3} \(\d\.\d{3}\)").all()


def test_correct_model_covers_at_nominal_rate():
    """A t interval for a normal mean: coverage within 95% +- 3 MCSE, bias and relerror within 3 MCSE of 0;
    and the naive SE under clustering is caught undercovering (the check has power)."""
    res = run(Design({"n": [15]}), ex.normal_sample, {"mean": ex.mean_t_interval}, reps=2000, seed=2026)
    m = measures(summarise(res, truth=0.0), "mean")
    assert abs(m["coverage"][0] - 0.95) <= 3 * m["coverage"][1]
    assert abs(m["bias"][0]) <= 3 * m["bias"][1]
    assert abs(m["relerror"][0]) <= 3 * m["relerror"][1]
    assert abs(m["power"][0] - 0.05) <= 3 * m["power"][1]  # type I error at the null
    cl = run(Design({"n_clusters": [20], "icc": [0.3]}), ex.clustered_sample,
             {"naive": ex.naive_mean, "cluster": ex.cluster_mean}, reps=400, seed=2026)
    s = summarise(cl, truth=0.0)
    naive, cluster = measures(s, "naive"), measures(s, "cluster")
    assert naive["coverage"][0] < 0.95 - 3 * naive["coverage"][1]
    assert abs(cluster["coverage"][0] - 0.95) <= 3 * cluster["coverage"][1]
    assert naive["pmse"][0] == pytest.approx(cluster["pmse"][0], rel=0.02)  # same point estimate here


def test_plan_reps():
    assert plan_reps(0.05, sd=1.0, measure="bias") == 400
    assert plan_reps(0.05, sd=1.0, measure="empse") == 201
    assert plan_reps(0.005, measure="coverage", coverage=0.95) == 1900
    assert plan_reps(0.01, measure="coverage", coverage=None) == 2500
    with pytest.raises(PerformanceError, match="needs sd"):
        plan_reps(0.05, measure="bias")
    res = run(Design({"n": [20]}), ex.normal_sample, {"mean": ex.mean_t_interval}, reps=100, seed=1)
    pilot = summarise(res, truth=0.0, measures=["bias", "coverage"])
    plan = plan_reps({"bias": 0.01, "coverage": 0.005}, pilot=pilot).set_index("measure")
    bias_mcse = plan.loc["bias", "mcse"]
    assert plan.loc["bias", "reps_needed"] == math.ceil(100 * (bias_mcse / 0.01) ** 2)
    # the plan is right: with that many replications the bias MCSE is near the target
    big = run(Design({"n": [20]}), ex.normal_sample, {"mean": ex.mean_t_interval},
              reps=int(plan.loc["bias", "reps_needed"]), seed=1)
    got = summarise(big, truth=0.0, measures=["bias"])["mcse"].iloc[0]
    assert got == pytest.approx(0.01, rel=0.15)
