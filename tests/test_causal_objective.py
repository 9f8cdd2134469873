"""The ``causal`` objective plug-in (mlsimkit.objectives.causal) on params/hsb-causal.yml: its pieces run
end to end on a saved school-bootstrap generator, and its params checks name the key at fault."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsimkit import objectives, study as S
from mlsimkit.generators import SchoolBootstrap
from mlsimkit.performance import summarise
from mlsimkit.simulate import run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    st = S.load("hsb-causal", profile="quick")
    data = st.data()
    path = tmp_path_factory.mktemp("gen") / "bootstrap.zip"
    SchoolBootstrap().fit(data).save(path)
    return st, data, path


def test_plugin_is_complete_and_truth_is_the_hybrid_coefficient(setup):
    st, data, path = setup
    obj = objectives.get("causal")
    fixed = obj.prepare(st, data)
    generate, methods, truth = obj.source(st, data, "bootstrap", path, fixed)
    assert truth["parameter"].tolist() == ["ATE"]
    assert truth["truth"].iloc[0] == pytest.approx(fixed["hybrid"].beta_[1])
    assert len(methods) == 1 + 4 * 2                     # DiM + 4 estimators x 2 versions
    res = run({"n_schools": [40]}, generate, methods, reps=3, seed=1, progress=False)
    assert (res["status"] == "ok").all(), res[["method", "status", "message"]]
    assert set(res["parameter"]) == {"ATE"}
    summ = summarise(res, truth.rename(columns={"truth": "true_value"}), by=["n_schools"], measures=obj.MEASURES)
    assert {"bias", "rmse", "coverage"} <= set(summ["measure"])
    summ["source"] = "bootstrap"
    assert obj.tables(st, summ) and "smallest RMSE" in obj.findings(st, summ)


def test_check_model_names_the_key(setup):
    st, data, _ = setup
    obj = objectives.get("causal")
    model = dict(st.spec["model"], treatment="SES", learner="forest", bounds=[0.6, 0.9], df="t")
    keys = [k for k, _ in obj.check_model(model, data.schema)]
    assert "model.treatment" in keys and "model.learner" in keys and "model.bounds" in keys
    assert "model.df" in keys
    settings = obj.methods(dict(st.spec["model"], df="normal"), data.cluster_key)["OR (single)"].keywords["settings"]
    assert settings["df"] == "normal"
    assert obj.check_model(st.spec["model"], data.schema) == []


def test_real_data_without_overlap_fails_up_front_and_replications_skip_the_check(setup):
    """A treatment that is a deterministic function of the school covariates fails in the objective's
    prepare (before any simulation); the per-replication methods skip that check and use the model's ridge."""
    from mlsimkit.data import MultilevelData
    from mlsimkit.errors import DataValidationError

    st, data, _ = setup
    obj = objectives.get("causal")
    tables = {k: v.copy() for k, v in data.tables.items()}
    parent = tables[data.schema.levels[0]]
    cat = parent["Sector"].cat.categories
    parent["Sector"] = pd.Categorical(np.where(parent["PRACAD"] > parent["PRACAD"].median(), cat[1], cat[0]),
                                      categories=cat)
    bad = MultilevelData(data.schema, tables)
    with pytest.raises(DataValidationError, match="'Sector' is perfectly predicted"):
        obj.prepare(st, bad)
    m = obj.spec(st)
    settings = obj.methods(m, data.cluster_key)["AIPW (multilevel)"].keywords["settings"]
    assert settings["check_overlap"] is False and settings["ridge"] == float(m["ridge"])


def test_design_context_shows_overlap_for_causal_only(setup):
    """Stage 4's hook: the causal objective returns the overlap figure and the overlap table of the real data
    and of one hybrid draw at the largest number of schools; the prediction objective returns nothing."""
    from matplotlib.figure import Figure

    from mlsimkit import workflow as wf

    st, data, path = setup
    obj = objectives.get("causal")
    srcs = {"bootstrap": obj.source(st, data, "bootstrap", path)}
    out = wf.design_context(st, data, srcs)
    assert list(out) == ["Overlap: the propensity of the real schools", "Overlap: ESS and share truncated, by arm"]
    fig, note = out["Overlap: the propensity of the real schools"]
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and "overlap` = 0.5" in note
    table, _ = out["Overlap: ESS and share truncated, by arm"]
    assert table.shape[0] < table.shape[1] * 3  # measures as rows: as many columns as data sets x arms
    table = table.T
    n_max = max(st["simulation"]["n_schools"])
    assert list(table.index.get_level_values("data").unique()) == ["real data",
                                                                     f"hybrid draw, {n_max} schools (bootstrap)"]
    real = table.loc["real data"]
    assert real["n_schools"].sum() == data.n_clusters and real.loc["treated", "n_schools"] == 70
    draw = table.xs(f"hybrid draw, {n_max} schools (bootstrap)")
    assert draw["n_schools"].sum() == n_max
    assert ((table["ess_share"] > 0) & (table["ess_share"] <= 1)).all()
    # the real data's weak overlap as learned (a quarter of the schools beyond the bounds) against the design's
    # overlap 0.5 (0.6% of the real schools beyond them): the share truncated tells them apart
    assert (real["share_trimmed"] > 0.1).all() and (draw["share_trimmed"] < real["share_trimmed"]).all()
    # without sources: no draw, the hybrid fitted here
    assert wf.design_context(st, data)["Overlap: ESS and share truncated, by arm"][0].shape[1] == 2
    assert wf.design_context(S.load("hsb-prediction", profile="quick"), data) == {}


def test_methods_share_nuisance_fits_per_data_set_and_match_estimate_ate(setup):
    """The methods of one replication fit the nuisances once (the first caller's folds) and give exactly
    estimate_ate's rows for that seed; a new data object is fitted afresh; the result is the same on loky."""
    from mlsimkit.causal import estimate_ate

    st, data, path = setup
    obj = objectives.get("causal")
    m = obj.spec(st)
    methods = obj.methods(m, data.cluster_key)
    first = [k for k in methods if k != "DiM (unadjusted)"][0]
    ref = estimate_ate(data.join_as_one(), obj._causal_spec(m, data.cluster_key),
                       estimators=tuple(e for e in m["estimators"] if e != "DiM"), versions=("multilevel",),
                       seed=np.random.default_rng(5), **{**obj.engine_settings(m), "check_overlap": False})
    got = {}
    for name, f in methods.items():
        if name.endswith("(multilevel)"):
            seed = 5 if name == first.replace("single", "multilevel") else 99  # later callers' rngs are unused
            got[name] = f({"n_schools": None}, data, np.random.default_rng(seed))[0]["estimate"]
    for _, r in ref.iterrows():
        assert got[f"{r['estimator']} (multilevel)"] == r["estimate"]
    copy = type(data)(data.schema, {k: v.copy() for k, v in data.tables.items()})  # another object: refitted
    again = methods["TMLE (multilevel)"]({"n_schools": None}, copy, np.random.default_rng(99))[0]["estimate"]
    assert again != got["TMLE (multilevel)"]
    generate, methods, truth = obj.source(st, data, "bootstrap", path)
    a = run({"n_schools": [20]}, generate, methods, reps=2, seed=3, progress=False)
    b = run({"n_schools": [20]}, generate, methods, reps=2, seed=3, backend="loky", n_jobs=2, progress=False)
    key = ["rep", "method"]
    pd.testing.assert_series_equal(a.sort_values(key)["estimate"].reset_index(drop=True),
                                   b.sort_values(key)["estimate"].reset_index(drop=True))


def test_a_failed_shared_fit_is_recorded_for_every_method_that_shares_it(setup):
    """One treated school: every adjusted method fails with the same message (none silently succeeds on a
    stale fit of an earlier data set); DiM, fitted on its own, is still computed."""
    st, data, path = setup
    obj = objectives.get("causal")
    generate, methods, _ = obj.source(st, data, "bootstrap", path)
    ok = generate({"n_schools": 20}, np.random.default_rng(1))
    for f in methods.values():
        f({"n_schools": 20}, ok, np.random.default_rng(2))  # fills the cache with a good fit
    school = ok.tables[ok.schema.levels[0]]
    cat = school["Sector"].cat.categories
    tables = {k: v.copy() for k, v in ok.tables.items()}
    tables[ok.schema.levels[0]]["Sector"] = pd.Categorical([cat[1]] + [cat[0]] * (len(school) - 1),
                                                            categories=cat)
    bad = type(ok)(ok.schema, tables)
    res = run({"n_schools": [20]}, lambda c, rng: bad, methods, reps=1, seed=1, progress=False)
    adjusted = res[res["method"] != "DiM (unadjusted)"]
    assert (adjusted["status"] == "error").all() and adjusted["message"].nunique() == 1


def test_boosting_learner_from_params_truth_over_the_source_population(setup):
    """``model.learner: boosting`` is accepted, bad settings name their key; the truth is the boosted outcome
    model's mean contrast over the covariate generator's population (Monte Carlo SE small, and it moves when
    the population does), and a replication runs every method."""
    from mlsimkit.generators import ParametricGenerator

    st, data, path = setup
    obj = objectives.get("causal")
    model = dict(st.spec["model"], learner="boosting", boosting={"max_iter": 50}, truth_schools=400)
    assert obj.check_model(model, data.schema) == []
    bad = dict(model, boosting=[1], truth_schools=10, learner="forest")
    keys = {k for k, _ in obj.check_model(bad, data.schema)}
    assert {"model.boosting", "model.truth_schools", "model.learner"} <= keys
    st.spec["model"] = model
    try:
        fixed = obj.prepare(st, data)
        h = fixed["hybrid"]
        assert h.learner == "boosting"
        ate, se = obj.true_ate(h, path, 400, 1)
        assert 0 < se < 0.05 and np.isfinite(ate)
        again, _ = obj.true_ate(h, path, 400, 1)
        assert again == ate                                  # seeded
        other = path.parent / "parametric.zip"
        ParametricGenerator().fit(data).save(other)
        moved, se2 = obj.true_ate(h, other, 400, 1)
        assert moved != ate
        generate, methods, truth = obj.source(st, data, "bootstrap", path, fixed)
        assert truth["truth"].iloc[0] == pytest.approx(obj.true_ate(h, path, 400, int(st["seed"]))[0])
        res = run({"n_schools": [30]}, generate, methods, reps=2, seed=1, progress=False)
        assert (res["status"] == "ok").all(), res[["method", "status", "message"]]
    finally:
        st.spec["model"] = S.load("hsb-causal", profile="quick").spec["model"]
    lmm = obj.prepare(S.load("hsb-causal", profile="quick"), data)["hybrid"]
    assert obj.true_ate(lmm, path) == (float(lmm.beta_[1]), 0.0)
