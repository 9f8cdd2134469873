"""Stage 5's context tables and Stage 6's findings, on hand-made run folders and summaries."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlsimkit.study as st
import mlsimkit.workflow as wf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return st.load("hsb-prediction", "quick", tmp_path)


def test_fit_rates_show_failures_fallbacks_and_singular_fits(study):
    rows = []
    for rep in range(4):
        for method, status, msg in (
                ("OLSFE", "ok", ""),
                ("Multilevel", "warning" if rep < 3 else "singular",
                 "random-slope model fell back to random intercept" if rep < 3 else ""),
                ("Prior", "error" if rep == 0 else "ok", "")):
            rows.append({"source": "clavaddpm", "condition": "k", "n_schools": 10, "rep": rep, "method": method,
                         "parameter": "PMSE", "estimate": np.nan, "pred_error": 1.0, "status": status,
                         "message": msg})
    path = study.path("4-simulate", "results.parquet")
    pd.DataFrame(rows).to_parquet(path, index=False)
    pd.DataFrame({"source": ["clavaddpm"], "parameter": ["PMSE"], "true_value": [np.nan]}).to_csv(
        study.path("4-simulate", "truth.csv"), index=False)
    t = wf.fit_rates(study)
    se = math.sqrt(0.75 * 0.25 / 4)
    assert t.loc[("clavaddpm", "Multilevel", "fell back to random intercept"), 10] == f"0.750 ({se:.3f})"
    assert t.loc[("clavaddpm", "Multilevel", "singular"), 10] == f"0.250 ({se:.3f})"
    assert t.loc[("clavaddpm", "Prior", "failed"), 10] == f"0.250 ({se:.3f})"
    # negative control: OLSFE never fell back or was singular, so only its failure row (0) is shown
    assert t.loc[("clavaddpm", "OLSFE", "failed"), 10] == "0.000 (0.000)"
    assert ("clavaddpm", "OLSFE", "singular") not in t.index


def test_se_bias_table_marks_cells_beyond_two_mcse():
    summary = pd.DataFrame({"source": "s", "n_schools": [50, 100, 200], "method": "Oracle", "parameter": "b",
                            "measure": "relerror", "value": [1.0, -19.9, 23.0], "mcse": [8.0, 10.0, 8.7]})
    t, text = wf.se_bias_table(summary)
    assert t.loc[("s", "b", "Oracle"), 200] == "+23.0 (8.7) *"
    assert t.loc[("s", "b", "Oracle"), 100] == "-19.9 (10.0)"      # z = -1.99: within Monte Carlo error
    assert t.loc[("s", "b", "Oracle"), 50] == "+1.0 (8.0)"
    assert text.startswith("1 of 3 SE-bias cells") and f"about {3 * math.erfc(2 / math.sqrt(2)):.1f}" in text


def _perf(scen_values):
    return pd.DataFrame([{"scenario": s, "method": m, "parameter": "PMSE", "measure": "pmse", "value": v, "mcse": 0.3,
                          "n_used": 100, "n_reps": 100} for s, per in scen_values.items() for m, v in per.items()])


def test_ablation_findings_give_each_change_with_its_mcse_and_z(study):
    perf = _perf({"original": {"OLSFE": 50.0, "Multilevel": 45.0}, "no-decomposition": {"OLSFE": 52.0, "Multilevel": 45.3}})
    text = wf.ablation_findings(study, perf)
    se = math.hypot(0.3, 0.3)
    assert text == (f"- **no-decomposition** minus original: OLSFE +2 ({se:.2g}, z {2 / se:+.1f}); Multilevel +0.3 "
                    f"({se:.2g}, z {0.3 / se:+.1f}). Beyond 2 MCSE: 1 of 2.")


def test_ablation_original_note_compares_with_stage5(study):
    perf = _perf({"original": {"OLSFE": 50.0, "Multilevel": 45.0}})
    (study.run_dir / "3-quality").mkdir(parents=True, exist_ok=True)
    (study.run_dir / "3-quality" / "choice.json").write_text(json.dumps({"best": "clavaddpm"}))
    n = int(study["ablation"]["n_schools"])
    s5 = perf.drop(columns="scenario").assign(source="clavaddpm", n_schools=n)
    s5.loc[s5["method"] == "OLSFE", "value"] = 50.5
    s5.to_csv(study.path("5-evaluate", "summary.csv"), index=False)
    note = wf.ablation_original_note(study, perf)
    assert f"Its 2 measures at {n} schools differ from Stage 5's by at most 0.5" in note
    s5["value"] = perf["value"].to_numpy()
    s5.to_csv(study.path("5-evaluate", "summary.csv"), index=False)
    assert "by at most 0 (the same replications)." in wf.ablation_original_note(study, perf)


def test_original_scenario_reuses_stage4_rows_only_when_they_are_the_same_computation(study):
    (study.run_dir / "3-quality").mkdir(parents=True, exist_ok=True)
    (study.run_dir / "3-quality" / "choice.json").write_text(json.dumps({"best": "clavaddpm"}))
    rows = [{"source": src, "condition": f"n_schools={n}", "n_schools": n, "rep": rep, "method": "OLSFE",
             "parameter": "PMSE", "estimate": np.nan, "pred_error": float(rep), "status": "ok", "message": ""}
            for src in ("clavaddpm", "traditional") for n in (25, 100) for rep in range(5)]
    pd.DataFrame(rows).to_parquet(study.path("4-simulate", "results.parquet"), index=False)
    pd.DataFrame({"source": ["clavaddpm", "traditional"], "parameter": "PMSE", "true_value": np.nan}).to_csv(
        study.path("4-simulate", "truth.csv"), index=False)
    res, truth = wf.stage4_rows(study, 100, 3, "clavaddpm")
    assert sorted(res["rep"]) == [0, 1, 2] and set(res["source"]) == {"synthetic"} and set(res["n_schools"]) == {100}
    assert list(truth["source"]) == ["synthetic"] and list(truth["parameter"]) == ["PMSE"]
    # negative controls: more replications than Stage 4 ran, a number of schools it did not run, another generator
    assert wf.stage4_rows(study, 100, 6, "clavaddpm") is None
    assert wf.stage4_rows(study, 50, 3, "clavaddpm") is None
    assert wf.stage4_rows(study, 100, 3, "ctgan") is None


def test_within_residual_variance_matches_a_fixed_effects_regression():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    school = np.repeat(np.arange(12), 15)
    x = rng.normal(size=school.size) + 0.3 * school
    sex = rng.choice(["F", "M"], size=school.size)
    y = 0.5 * school + 2.0 * x - 1.0 * (sex == "F") + rng.normal(scale=1.5, size=school.size)
    child = pd.DataFrame({"sch": school.astype(str), "x": x, "sex": sex, "y": y})
    fit = smf.ols("y ~ C(sch) + x + C(sex)", data=child).fit()
    assert wf.within_residual_variance(child, "y", ("x", "sex"), "sch") == pytest.approx(fit.mse_resid, rel=1e-10)
    # no predictors: the pooled within-school variance (ANOVA MSW)
    msw = child.groupby("sch")["y"].apply(lambda v: ((v - v.mean()) ** 2).sum()).sum() / (len(y) - 12)
    assert wf.within_residual_variance(child, "y", (), "sch") == pytest.approx(msw, rel=1e-12)
