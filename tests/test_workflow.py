"""The study-level glue: the generator choice, the ablation tables and the paper's claims on tiny tables."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import mlsimkit.paper as paper
import mlsimkit.study as st
import mlsimkit.workflow as wf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return st.load("hsb-prediction", "quick", tmp_path)


def _summary(rows):
    return pd.DataFrame(rows, columns=["dataset", "domain", "level", "item", "value"])


def test_choose_generator_uses_headline_averages_only(study):
    s = _summary([
        ("clavaddpm", "within-table", "students", "students-table fidelity", 0.95),
        ("clavaddpm", "between-table", "all", "between-table fidelity", 0.93),
        ("clavaddpm", "between-table", "all", "ICC similarity", 0.10),  # not a headline item
        ("ctgan", "within-table", "students", "students-table fidelity", 0.97),
        ("ctgan", "between-table", "all", "between-table fidelity", 0.80),
        ("shuffled schools", "within-table", "students", "students-table fidelity", 1.0),
    ])
    choice = wf.choose_generator(s, study)
    assert choice["best"] == "clavaddpm" and choice["mean_scores"] == {"clavaddpm": 0.94, "ctgan": 0.885}
    assert json.loads((study.run_dir / "3-quality" / "choice.json").read_text())["best"] == "clavaddpm"


def test_simulation_generator_needs_stage3(study):
    with pytest.raises(Exception, match="run notebook '3-quality'"):
        wf.simulation_generator(study)


def test_ablation_scenarios_override_the_base_settings(study):
    sc = wf.ablation_scenarios(study)
    assert list(sc) == ["original", "no-decomposition", "half-schools", "fewer-groups"]
    assert sc["no-decomposition"]["decompose"] is False and sc["original"]["decompose"] is True
    assert sc["fewer-groups"]["n_groups"] == 4 and sc["half-schools"]["train_fraction"] == 0.5
    assert all(v["generator"] == "clavaddpm" for v in sc.values())


def test_half_of_schools_is_a_seeded_half():
    import mlsimkit.datasets as ds

    hsb = ds.load("hsb")
    a, b = wf.half_of_schools(hsb, 1), wf.half_of_schools(hsb, 1)
    assert a.n_clusters == 80 and a.equals(b)
    assert not wf.half_of_schools(hsb, 2).equals(a)


def _pmse(source, values):
    rows = []
    for n, per in values.items():
        for m, v in per.items():
            rows.append({"source": source, "n_schools": n, "method": m, "parameter": "PMSE", "measure": "pmse",
                         "value": v, "mcse": 0.1})
    return rows


def test_prediction_claims_on_a_hand_made_summary():
    summary = pd.DataFrame(
        _pmse("clavaddpm", {10: {"OLSFE": 5.0, "Prior": 5.2, "Multilevel": 4.5},
                            50: {"OLSFE": 4.0, "Prior": 4.1, "Multilevel": 3.9}})
        + _pmse("traditional", {10: {"OLSFE": 0.5, "Prior": 0.7, "Multilevel": 0.52},
                                50: {"OLSFE": 0.5, "Prior": 0.75, "Multilevel": 0.49}})
        + _pmse("ctgan", {10: {"OLSFE": 3.0, "Prior": 3.01, "Multilevel": 3.02},
                          50: {"OLSFE": 3.0, "Prior": 3.0, "Multilevel": 3.0}}))
    out = paper.prediction_claims(summary, "clavaddpm").set_index("paper says")["agrees"]
    assert out["AI-based: the multilevel rule has the lowest PMSE"] == "yes"
    assert out["traditional: the multilevel rule has the lowest PMSE"] == "no"  # OLSFE wins at 10
    assert out["AI-based: PMSE decreases as the number of schools grows, for all three rules"] == "yes"
    assert out["traditional: the prior rule gets worse as the number of schools grows"] == "yes"
    assert out["CTGAN data (S5.1): the three rules behave almost identically"] == "yes"


def test_ablation_performance_table_formats_value_and_mcse():
    perf = pd.DataFrame({"scenario": ["original", "no-decomposition"], "method": ["Multilevel"] * 2,
                         "parameter": ["PMSE"] * 2, "measure": ["pmse"] * 2, "value": [40.4834, 41.457],
                         "mcse": [0.854, 0.823]})
    t = wf.ablation_performance_table(perf, ("pmse",))
    assert t.loc[("Multilevel", "PMSE", "pmse"), "original"] == "40.483 (0.854)"


def test_ablation_icc_table_shows_real_and_synthetic_icc_per_scenario():
    qual = pd.DataFrame({
        "scenario": ["original", "original", "no-decomposition", "no-decomposition", "original"],
        "domain": ["ICC", "ICC", "ICC", "ICC", "between-table"],
        "level": ["schools→students"] * 4 + ["schools→students"],
        "item": ["MathAch", "SES", "MathAch", "SES", "between-table fidelity"],
        "value": [0.974, 0.991, 0.899, 0.843, 0.93],
        "icc_real": [0.1736, 0.2666, 0.1736, 0.2666, None],
        "icc_syn": [0.199, 0.278, 0.095, 0.115, None]})
    t = wf.ablation_icc_table(qual)
    assert list(t.columns) == ["real", "original", "no-decomposition"]
    assert t.loc[("schools→students", "MathAch"), "real"] == "0.174"
    assert t.loc[("schools→students", "SES"), "no-decomposition"] == "0.115 (0.843)"
    assert len(t) == 2  # other domains are not ICC rows


def test_holdout_split_is_seeded_and_disjoint(study):
    import mlsimkit.datasets as ds

    hsb = ds.load("hsb")
    assert wf.holdout_settings(study) == {"holdout_share": 0.2, "holdout_training": "same"}
    train, hold = wf.split_holdout(study, hsb)
    assert hold.n_clusters == 32 and train.n_clusters == 128
    assert not set(train.parent.School) & set(hold.parent.School)
    assert len(train.child) + len(hold.child) == len(hsb.child)
    assert wf.split_holdout(study, hsb)[1].equals(hold)
    study.params["seed"] = study.params["seed"] + 1  # the split follows the data, not the study's seed
    assert wf.split_holdout(study, hsb)[1].equals(hold)
    study.params["quality"] = {"holdout_share": 0}
    assert wf.split_holdout(study, hsb)[1] is None and wf.train_holdout(study, hsb) == {}
    study.params["quality"] = {"holdout_share": 1.5}
    with pytest.raises(Exception, match="quality.holdout_share"):
        wf.holdout_settings(study)
    study.params["quality"] = {"holdout_training": "fast"}
    with pytest.raises(Exception, match="quality.holdout_training"):
        wf.holdout_settings(study)
