"""The paper's claims decided by Monte Carlo error: every rule can say yes, no and inconclusive.

Per-replication values are built so that each paired difference has an exactly known mean and MCSE:
a difference d_i = offset + sd * e_i with e standardised (mean 0, sd 1), so z = offset sqrt(n) / sd.
With n = 100 and sd = 1 the MCSE is 0.1: an offset of 0.5 is z = 5 (decided), 0.05 is z = 0.5 (noise).
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlsimkit.paper as paper
from mlsimkit.performance import paired_difference, per_replication, reps_to_decide, status_rates, summarise

N = 100


def _e(seed, n=N):
    e = np.random.default_rng(seed).normal(size=n)
    return (e - e.mean()) / e.std(ddof=1)


def _rows(source, n_schools, method, values, measure="pmse", parameter="PMSE", **extra):
    return pd.DataFrame({"source": source, "n_schools": n_schools, "method": method, "parameter": parameter,
                         "rep": np.arange(len(values)), "value": values, "measure": measure, **extra})


# --------------------------------------------------------------------------------------- building blocks
def test_decide_parts_positive_equivalent_differs_exact_z():
    parts = pd.DataFrame({"part": ["a", "b", "c"], "estimate": [0.5, -0.5, 0.05], "mcse": [0.1] * 3, "n": [N] * 3})
    p = paper.decide_parts(parts, "positive")
    assert p["z"].round(10).tolist() == [5.0, -5.0, 0.5]
    assert p["verdict"].tolist() == ["yes", "no", "inconclusive"]
    e = paper.decide_parts(parts.assign(estimate=[0.1, 2.0, 0.95]), "equivalent", margin=1.0)
    assert e["z"].round(10).tolist() == [9.0, -10.0, 0.5]
    assert e["verdict"].tolist() == ["yes", "no", "inconclusive"]
    d = paper.decide_parts(parts.assign(estimate=[0.1, -2.0, 0.95]), "differs", margin=1.0)
    assert d["verdict"].tolist() == ["no", "yes", "inconclusive"]


def test_combine_needs_every_part_for_yes_and_one_part_for_no():
    assert paper.combine(["yes", "yes"]) == "yes"
    assert paper.combine(["yes", "inconclusive"]) == "inconclusive"
    assert paper.combine(["yes", "inconclusive", "no"]) == "no"
    assert paper.combine([]) == "inconclusive"


def test_trend_slope_per_doubling_and_its_mcse_exact():
    lv = pd.DataFrame({"n_schools": [10, 20, 40], "estimate": [3.0, 2.0, 1.0], "mcse": [0.1] * 3, "n": [N] * 3})
    v, facts, steps = paper.trend(lv, "decreases")
    assert facts["slope"] == pytest.approx(-1.0)
    assert facts["mcse"] == pytest.approx(math.sqrt(0.25 * 0.01 * 2))
    assert steps["z"].tolist() == pytest.approx([1 / math.hypot(0.1, 0.1)] * 2)
    assert v == "yes"
    assert paper.trend(lv, "increases")[0] == "no"


def test_trend_with_a_significant_reversal_is_no_even_if_the_slope_agrees():
    lv = pd.DataFrame({"n_schools": [10, 20, 40, 80], "estimate": [5.0, 2.0, 2.6, 0.0], "mcse": [0.1] * 4,
                       "n": [N] * 4})
    v, facts, steps = paper.trend(lv, "decreases")
    assert facts["z"] > 2 and facts["steps_against"] == 1 and v == "no"


def test_claim_declaration_is_checked():
    with pytest.raises(paper.PaperError, match="margin"):
        paper.Claim("x", "s", "q", "equivalent")
    with pytest.raises(paper.PaperError, match="test must be"):
        paper.Claim("x", "s", "q", "roughly")


def test_reps_to_decide_scales_with_the_squared_ratio():
    # difference 0.05 with MCSE 0.1 at 100 reps: MCSE must fall to 0.025, i.e. 100 * (0.1/0.025)^2 = 1600
    assert reps_to_decide(0.05, 0.1, 100) == 1600
    assert reps_to_decide(0.0, 0.1, 100) is None


# --------------------------------------------------------------------------------------- Demonstration 1
def _prediction(ai_offsets, trad_offsets=(0.5, 0.5), ai_levels=None, prior_levels=None, ctgan_offsets=(0.0, 0.0)):
    """AI source: OLSFE/Prior = Multilevel + offset + N(0,1) paired noise at 10, 25, 50 schools."""
    frames = []
    ai_levels = ai_levels or {10: 30.0, 25: 29.0, 50: 28.0}
    prior_levels = prior_levels or {10: 0.70, 25: 0.72, 50: 0.74}
    for k, n in enumerate((10, 25, 50)):
        base = ai_levels[n] + 0.1 * _e(100 + k)  # level MCSE 0.01
        frames += [_rows("ai", n, "Multilevel", base), _rows("ai", n, "OLSFE", base + ai_offsets[0] + _e(200 + k)),
                   _rows("ai", n, "Prior", base + ai_offsets[1] + _e(300 + k))]
        tb = 0.5 + 0.1 * _e(400 + k)
        frames += [_rows("traditional", n, "Multilevel", tb),
                   _rows("traditional", n, "OLSFE", tb + trad_offsets[0] + _e(500 + k)),
                   _rows("traditional", n, "Prior", prior_levels[n] + 0.1 * _e(600 + k))]
        cb = 57.0 + _e(700 + k)
        frames += [_rows("ctgan", n, "Multilevel", cb), _rows("ctgan", n, "Prior", cb + ctgan_offsets[1] + 0.1 * _e(800 + k)),
                   _rows("ctgan", n, "OLSFE", cb + ctgan_offsets[0] + 0.1 * _e(900 + k))]
    return pd.concat(frames, ignore_index=True)


def _verdicts(table):
    return table.set_index("paper says")["verdict"]


LOWEST_AI = "AI-based: the multilevel rule has the lowest PMSE"
LOWEST_TRAD = "traditional: the multilevel rule has the lowest PMSE"
DECREASES = "AI-based: PMSE decreases as the number of schools grows, for all three rules"
PRIOR_WORSE = "traditional: the prior rule gets worse as the number of schools grows"
CTGAN = "CTGAN data (S5.1): the three rules behave almost identically"


def test_multilevel_lowest_yes_no_inconclusive():
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5)), "ai"))[LOWEST_AI] == "yes"
    assert _verdicts(paper.prediction_claims(_prediction((-0.5, 0.5)), "ai"))[LOWEST_AI] == "no"
    out = paper.prediction_claims(_prediction((0.05, 0.5)), "ai")
    assert _verdicts(out)[LOWEST_AI] == "inconclusive"
    # the undecided parts are OLSFE − Multilevel at z = 0.5: 100 (1/0.5 * 2)^2 ... = 1600 replications
    assert out.set_index("paper says").loc[LOWEST_AI, "replications to decide"] == "about 1600"
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), trad_offsets=(-0.5, 0.5)), "ai"))[LOWEST_TRAD] == "no"


def test_pmse_decreases_uses_every_size():
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5)), "ai"))[DECREASES] == "yes"
    up = {10: 28.0, 25: 29.0, 50: 30.0}
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ai_levels=up), "ai"))[DECREASES] == "no"
    flat = {10: 30.0, 25: 30.005, 50: 29.998}
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ai_levels=flat), "ai"))[DECREASES] == "inconclusive"
    # the two ends agree with the claim but the middle rises beyond Monte Carlo error: not a decrease
    bump = {10: 30.0, 25: 31.0, 50: 29.0}
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ai_levels=bump), "ai"))[DECREASES] == "no"


def test_prior_rule_gets_worse_yes_no_inconclusive():
    for levels, want in (({10: 0.70, 25: 0.72, 50: 0.74}, "yes"), ({10: 0.74, 25: 0.72, 50: 0.70}, "no"),
                         ({10: 0.72, 25: 0.7205, 50: 0.7202}, "inconclusive")):
        assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), prior_levels=levels), "ai"))[PRIOR_WORSE] == want


def test_ctgan_almost_identical_is_an_equivalence_test():
    # margin 2% of ~57 = 1.14 PMSE points; paired MCSE of a difference about 0.01-0.014
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ctgan_offsets=(0.0, 0.0)), "ai"))[CTGAN] == "yes"
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ctgan_offsets=(2.5, 0.0)), "ai"))[CTGAN] == "no"
    assert _verdicts(paper.prediction_claims(_prediction((0.5, 0.5), ctgan_offsets=(1.14, 0.0)), "ai"))[CTGAN] == \
        "inconclusive"


def test_claim_rows_show_z_and_the_test():
    out = paper.prediction_claims(_prediction((0.5, 0.5)), "ai").set_index("paper says")
    assert out.loc[LOWEST_AI, "z"] == "+5.0, +5.0, +5.0, +5.0, +5.0, +5.0"
    assert out.loc[LOWEST_AI, "test"] == "positive"
    assert out.loc[LOWEST_AI, "replications to decide"] == "decided with 100"
    detail = paper.prediction_claims(_prediction((0.5, 0.5)), "ai", detail=True)
    assert set(detail.columns) >= {"paper says", "part", "estimate", "mcse", "z", "verdict"}


# --------------------------------------------------------------------------------------- Demonstration 2
LEVELS = {"x": "student", "w": "school"}


def _recovery(src="ai", ols_bias=20.0, hlm_bias=10.0, igm_gap=0.0, ols_oracle=None, school_gap=0.0,
              coverage=None, sizes=(25, 50, 100)):
    frames = []
    for k, n in enumerate(sizes):
        oracle = 0.5 * _e(10 + k)
        stud = {"Oracle": oracle, "OLS": (ols_bias if ols_oracle is None else ols_oracle) + oracle + _e(20 + k),
                "HLM": hlm_bias + oracle + _e(30 + k) if ols_oracle is None else ols_oracle + oracle + _e(30 + k),
                "OLS+IGM": oracle + igm_gap + 0.1 * _e(40 + k), "HLM+IGM": oracle + igm_gap + 0.1 * _e(50 + k)}
        sch = {m: -5.0 + _e(60 + k) for m in ("Oracle", "OLS", "OLS+IGM")}
        sch["HLM"] = sch["OLS"] - school_gap + 0.1 * _e(70 + k)
        sch["HLM+IGM"] = sch["OLS+IGM"] - school_gap + 0.1 * _e(80 + k)
        for m, v in stud.items():
            frames.append(_rows(src, n, m, v, measure="rel_bias", parameter="x"))
        for m, v in sch.items():
            frames.append(_rows(src, n, m, v, measure="rel_bias", parameter="w"))
        if coverage is not None:
            hits = np.zeros(N)
            hits[: int(round(coverage[n] * N))] = 1
            for m in paper.FOUR:
                for p in ("x", "w"):
                    frames.append(_rows(src, n, m, hits, measure="coverage", parameter=p))
    return pd.concat(frames, ignore_index=True)


def _rec(**kw):
    return _verdicts(paper.recovery_claims(_recovery(**kw), "ai", LEVELS))


def test_hlm_less_biased_than_ols_yes_no_inconclusive():
    text = "AI-based, student-level coefficient: HLM is less biased than OLS"
    assert _rec(ols_bias=20.0, hlm_bias=10.0)[text] == "yes"
    assert _rec(ols_bias=10.0, hlm_bias=20.0)[text] == "no"
    assert _rec(ols_bias=10.05, hlm_bias=10.0)[text] == "inconclusive"


def test_igm_removes_the_bias_needs_a_bias_to_remove():
    text = "AI-based, student-level coefficient: adding group means (IGM) removes the bias, close to the oracle"
    assert _rec(igm_gap=0.0)[text] == "yes"
    assert _rec(igm_gap=3.0)[text] == "no"       # IGM models stay biased
    assert _rec(ols_oracle=0.0)[text] == "no"     # plain OLS is as close to the oracle: nothing was removed
    assert _rec(igm_gap=0.99)[text] == "inconclusive"


def test_school_level_ols_like_hlm_is_an_equivalence_test():
    text = "AI-based, school-level coefficient: OLS and HLM are similarly biased"
    assert _rec(school_gap=0.0)[text] == "yes"
    assert _rec(school_gap=3.0)[text] == "no"    # the issue's case: HLM 2.8-3.6 points apart, tiny MCSE
    assert _rec(school_gap=1.01)[text] == "inconclusive"


@pytest.mark.parametrize("src, text, direction", [
    ("ai", "AI-based: coverage increases with the number of schools", +1),
    ("traditional", "traditional: coverage decreases with the number of schools", -1),
    ("traditional-adjusted", "adjusted traditional design: coverage increases with the number of schools, as in "
     "the AI-based simulation", +1)])
def test_coverage_trends_yes_no_inconclusive(src, text, direction):
    rising = {25: 0.80, 50: 0.88, 100: 0.95}
    falling = {25: 0.95, 50: 0.88, 100: 0.80}
    flat = {25: 0.90, 50: 0.91, 100: 0.90}
    for cov, want in ((rising, "yes" if direction > 0 else "no"), (falling, "no" if direction > 0 else "yes"),
                      (flat, "inconclusive")):
        reps = _recovery(src=src, coverage=cov)
        if src != "ai":
            reps = pd.concat([reps, _recovery(src="ai")], ignore_index=True)
        assert _verdicts(paper.recovery_claims(reps, "ai", LEVELS))[text] == want


# --------------------------------------------------------------------------------------- Stage 6
ROLES = {"Scenario 1 (no decomposition)": "nodec", "Scenario 2 (half of the schools)": "half",
         "Scenario 3 (fewer latent groups)": "groups"}


def test_scenario_roles_come_from_what_each_scenario_changes():
    assert paper.scenario_roles({"nodec": {"decompose": False}, "half": {"train_fraction": 0.5},
                                 "groups": {"n_groups": 4}}) == ROLES


def _perf(rows):
    return pd.DataFrame([{"scenario": s, "method": m, "parameter": p, "measure": me, "value": v, "mcse": se,
                          "n_used": N} for s, m, p, me, v, se in rows])


def _ablation_pred(shift_half=0.0, advantage_nodec=0.0):
    perf, reps = [], []
    for k, scen in enumerate(("original", "nodec", "half", "groups")):
        for m in ("OLSFE", "Prior", "Multilevel"):
            v = 50.0 + (shift_half if scen == "half" else 0.0)
            perf.append((scen, m, "PMSE", "pmse", v, 0.2))
        base = 50.0 + _e(900 + k)
        adv = advantage_nodec if scen == "nodec" else 5.0
        reps += [_rows("s", 50, "Multilevel", base).assign(scenario=scen),
                 _rows("s", 50, "Prior", base + adv + _e(950 + k)).assign(scenario=scen)]
    return _perf(perf), pd.concat(reps, ignore_index=True)


def test_table5_claims_yes_no_inconclusive():
    loses = "Table 5, Scenario 1: without the decomposition the multilevel rule loses its advantage, its " \
            "predictions are similar to the other rules'"
    robust = "Table 5, Scenario 2 (half of the schools): PMSE remains close to the original for every rule"
    perf, reps = _ablation_pred(advantage_nodec=0.0)
    v = _verdicts(paper.ablation_claims(perf, reps, ROLES, "prediction"))
    assert v[loses] == "yes" and v[robust] == "yes"   # margins 1 and 1.5 points; MCSEs 0.1 and 0.28
    perf, reps = _ablation_pred(advantage_nodec=5.0, shift_half=3.0)
    v = _verdicts(paper.ablation_claims(perf, reps, ROLES, "prediction"))
    assert v[loses] == "no" and v[robust] == "no"
    perf, reps = _ablation_pred(advantage_nodec=1.0, shift_half=1.5)
    v = _verdicts(paper.ablation_claims(perf, reps, ROLES, "prediction"))
    assert v[loses] == "inconclusive" and v[robust] == "inconclusive"


def _ablation_rec(student_shift=0.0, coverage_shift=0.0, school_half=60.0):
    rows = []
    for scen in ("original", "nodec", "half", "groups"):
        rows += [(scen, "OLS+IGM", "x", "rel_bias", 0.0 + (student_shift if scen == "nodec" else 0), 0.1),
                 (scen, "OLS+IGM", "x", "relerror", -0.3, 0.1),
                 (scen, "OLS+IGM", "x", "coverage", 0.95 + (coverage_shift if scen == "half" else 0), 0.005),
                 (scen, "OLS+IGM", "w", "coverage", 0.94, 0.005),
                 (scen, "OLS+IGM", "w", "rel_bias", school_half if scen == "half" else 47.0, 1.0)]
    return _perf(rows)


def test_table6_claims_yes_no_inconclusive():
    stud = "Table 6, Scenario 1 (no decomposition): student-level coefficient bias and SE bias within 1% of the " \
           "original (OLS+IGM)"
    cov = "Table 6, Scenario 2 (half of the schools): coverage similar to the original (OLS+IGM)"
    school = "Table 6, Scenario 2: half of the schools gives a larger school-level coefficient bias (OLS+IGM)"

    def run(**kw):
        return _verdicts(paper.ablation_claims(_ablation_rec(**kw), None, ROLES, "recovery", LEVELS))

    assert run()[stud] == "yes" and run()[cov] == "yes" and run()[school] == "yes"
    v = run(student_shift=3.0, coverage_shift=-0.1, school_half=30.0)
    assert v[stud] == "no" and v[cov] == "no" and v[school] == "no"
    v = run(student_shift=1.0, coverage_shift=-0.025, school_half=47.5)
    assert v[stud] == "inconclusive" and v[cov] == "inconclusive" and v[school] == "inconclusive"


# --------------------------------------------------------------------------------------- performance helpers
def _results():
    rows = []
    for rep in range(4):
        for m, pe, st, msg in (("A", 1.0 + rep, "ok", ""), ("B", 2.0 + 2 * rep, "warning" if rep < 2 else "ok",
                                                            "random-slope model fell back to random intercept" if rep < 2 else ""),
                               ("C", np.nan, "error" if rep == 0 else "singular", "")):
            rows.append({"condition": "c", "n_schools": 10, "rep": rep, "method": m, "parameter": "PMSE",
                         "estimate": np.nan, "pred_error": pe if m != "C" or rep else np.nan, "status": st,
                         "message": msg})
    return pd.DataFrame(rows)


def test_per_replication_means_equal_summarise_and_pair_exactly():
    res = _results()
    reps = per_replication(res, by=["n_schools"], measure="pmse", usable=("ok", "warning"))
    s = summarise(res, by=["n_schools"], measures=["pmse"], usable=("ok", "warning"))
    got = reps.groupby("method")["value"].mean()
    want = s.set_index("method")["value"]
    assert got["A"] == want["A"] == 2.5 and got["B"] == want["B"] == 5.0
    a = reps[reps["method"] == "A"].set_index("rep")["value"]
    b = reps[reps["method"] == "B"].set_index("rep")["value"]
    est, se, n = paired_difference(b, a)   # differences 1, 2, 3, 4
    assert (est, n) == (2.5, 4) and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_per_replication_coverage_and_relative_bias():
    res = pd.DataFrame({"n_schools": 10, "rep": [0, 1, 2], "method": "M", "parameter": "b",
                        "estimate": [1.0, 2.0, 4.0], "ci_lower": [0.0, 2.5, 1.0], "ci_upper": [3.0, 3.0, 5.0]})
    cov = per_replication(res, {"b": 2.0}, by=["n_schools"], measure="coverage")
    assert cov["value"].tolist() == [1.0, 0.0, 1.0]
    rb = per_replication(res, {"b": 2.0}, by=["n_schools"], measure="rel_bias")
    assert rb["value"].tolist() == [-50.0, 0.0, 100.0]


def test_status_rates_count_fallbacks_beside_failures():
    r = status_rates(_results(), by=["n_schools"], notes={"fallback": "fell back"}).set_index(["method", "rate"])
    assert r.loc[("B", "fallback"), "value"] == 0.5
    assert r.loc[("B", "fallback"), "mcse"] == pytest.approx(math.sqrt(0.25 / 4))
    assert r.loc[("B", "rate_warning"), "value"] == 0.5
    assert r.loc[("C", "rate_singular"), "value"] == 0.75 and r.loc[("C", "rate_error"), "value"] == 0.25
    assert r.loc[("A", "fallback"), "value"] == 0.0   # negative control


def test_verdict_sentence_counts_and_reps_to_decide():
    claims = pd.DataFrame({"verdict": ["yes", "no", "inconclusive", "inconclusive"],
                           "replications to decide": ["decided with 100", "decided with 100", "about 250",
                                                      "about 1600"]})
    assert paper.verdict_sentence(claims) == (
        "Verdicts of the 4 claims: 1 *yes* (the claim holds beyond Monte Carlo error), 1 *no* (contradicted beyond "
        "it), 2 *inconclusive* at this build's replications. Deciding them would take about 250 to 1,600 "
        "replications per condition (the MCSE shrinks as 1/√n, the differences being as estimated here).")
    planned = paper.verdict_sentence(claims, planned=("paper", 500))
    assert planned.endswith("The *paper* profile's 500 replications would decide 1 of the 2; the others need more, "
                            "or sit on their boundary (no number of replications decides an estimate equal to it).")
    assert paper.verdict_sentence(claims, planned=("paper", 2000)).endswith("would decide 2 of the 2.")


def test_profile_reps_reads_another_profile_of_the_study(tmp_path):
    import shutil

    from mlsimkit import study as st

    shutil.copytree(Path(__file__).resolve().parents[1] / "params", tmp_path / "params")
    s = st.load("hsb-prediction", "default", tmp_path)
    assert paper.profile_reps(s) == st.load("hsb-prediction", "paper", tmp_path)["simulation"]["reps"] == 500
    assert paper.profile_reps(s, key="ablation") == 500
    assert paper.profile_reps(s, "no-such-profile") is None
    claims = pd.DataFrame({"verdict": ["inconclusive"], "replications to decide": ["about 400"]})
    assert paper.verdict_sentence(claims, s).endswith("The *paper* profile's 500 replications would decide 1 of the 1.")
    assert "profile's" not in paper.verdict_sentence(claims, st.load("hsb-prediction", "paper", tmp_path))


def test_verdict_plot_draws_every_part_once_and_clips():
    import matplotlib

    matplotlib.use("Agg")
    from mlsimkit.plots_performance import verdict_plot

    detail = pd.DataFrame({"paper says": ["a", "a", "b"], "source": "s", "z": [0.5, 3.0, -40.0],
                           "verdict": ["inconclusive", "yes", "no"]})
    fig = verdict_plot(detail)
    ax = fig.axes[0]
    pts = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(map(tuple, pts.tolist())) == [(-10.0, 1.0), (0.5, 0.0), (3.0, 0.0)]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    with pytest.raises(Exception, match="detail=True"):
        verdict_plot(detail.drop(columns="z"))


def test_a_claim_the_design_cannot_test_is_inconclusive_and_says_why():
    reps = _prediction((0.5, 0.5))
    one_size = reps[reps["n_schools"] == 10]
    out = paper.prediction_claims(one_size, "ai").set_index("paper says")
    assert out.loc[DECREASES, "verdict"] == "inconclusive"
    assert out.loc[DECREASES, "replications to decide"] == \
        "not testable here: a trend needs at least two numbers of schools"
    no_prior = reps[reps["method"] != "Prior"]
    out = paper.prediction_claims(no_prior, "ai").set_index("paper says")
    assert out.loc[LOWEST_AI, "verdict"] == "yes"  # decided on the OLSFE parts alone
    assert out.loc[LOWEST_AI, "z"] == "+5.0, +5.0, +5.0"


def test_verdict_plot_of_no_claims_says_so():
    import pandas as pd

    from mlsimkit.plots_performance import verdict_plot

    fig = verdict_plot(pd.DataFrame())
    assert "no claim of the paper applies" in fig.axes[0].texts[0].get_text()


def test_verdict_list_has_one_item_per_claim_with_every_column():
    import pandas as pd

    from mlsimkit.paper import verdict_list

    claims = pd.DataFrame([{"paper says": "PMSE falls", "where": "4.5", "source": "clavaddpm", "quantity": "PMSE",
                            "test": "decreases", "this build": "33.8 → 31.3", "z": "−2.4", "verdict": "yes",
                            "replications to decide": "decided with 100"}])
    text = verdict_list(claims)
    assert text == ("1. **yes** (z −2.4) — PMSE falls *(4.5; source `clavaddpm`)*. Test: *decreases* on PMSE. "
                    "This build: 33.8 → 31.3. Replications: decided with 100.")
    assert verdict_list(pd.DataFrame()).startswith("No claim")


def test_detail_table_numbers_the_claims_and_pairs_estimate_with_mcse():
    import pandas as pd

    from mlsimkit.paper import detail_table

    claims = pd.DataFrame({"paper says": ["A", "B"]})
    detail = pd.DataFrame({"paper says": ["B", "A"], "source": ["s", "t"], "part": ["10 schools", "25 schools"],
                           "estimate": [0.5, -1.25], "mcse": [0.25, 0.5], "n": [3, 3], "z": [2.04, -0.5],
                           "verdict": ["yes", "inconclusive"], "margin": [float("nan"), 0.1]})
    t = detail_table(detail, claims).data
    assert t.to_dict("records") == [
        {"claim": 2, "source": "s", "part": "10 schools", "estimate (MCSE)": "0.500 (0.250)", "z": "+2.0",
         "verdict": "yes", "margin": ""},
        {"claim": 1, "source": "t", "part": "25 schools", "estimate (MCSE)": "-1.250 (0.500)", "z": "-0.5",
         "verdict": "inconclusive", "margin": "±0.1"}]


# --------------------------------------------------------------------------------------- Demonstration 3
def _causal(ipw_extra, bias=0.0):
    """Per-replication squared errors and relative biases: IPW's squared error is AIPW's / TMLE's plus
    ``ipw_extra`` (paired noise of sd 1), every doubly robust estimator's relative bias ``bias`` + N(0, 10)."""
    frames = []
    for n in (20, 80):
        for v in ("single", "multilevel"):
            base = 2.0 + _e(n)
            for m in ("AIPW", "TMLE"):
                frames.append(_rows("ai", n, f"{m} ({v})", base, measure="sq_error", parameter="ATE"))
                frames.append(_rows("ai", n, f"{m} ({v})", bias + 10 * _e(n + 1), measure="rel_bias", parameter="ATE"))
            frames.append(_rows("ai", n, f"IPW ({v})", base + ipw_extra + _e(n + 7), measure="sq_error",
                                parameter="ATE"))
    return pd.concat(frames, ignore_index=True)


def test_causal_claims_ipw_mse_and_doubly_robust_bias_can_go_either_way():
    larger = "IPW has a larger MSE than AIPW (high variance against a doubly-robust correction)"
    unbiased = "AIPW and TMLE are unbiased for the ATE"
    assert _verdicts(paper.causal_claims(_causal(0.5), "ai"))[larger] == "yes"
    assert _verdicts(paper.causal_claims(_causal(-0.5), "ai"))[larger] == "no"
    assert _verdicts(paper.causal_claims(_causal(0.05), "ai"))[larger] == "inconclusive"
    # relative bias N(0, 10) over 100 replications: MCSE 1, margin 10 -> equivalent; a bias of 20% is not
    assert _verdicts(paper.causal_claims(_causal(0.5), "ai"))[unbiased] == "yes"
    assert _verdicts(paper.causal_claims(_causal(0.5, bias=20.0), "ai"))[unbiased] == "no"
