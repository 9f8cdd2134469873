"""Stage 6 of the causal objective (``6-positivity``): weak overlap with and without targeted augmentation on
the simulation engine (mlsimkit.objectives.causal, positivity hooks), its params checks and the paper's claim."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsimkit import paper, study as S, workflow as wf
from mlsimkit.errors import ParamsError
from mlsimkit.generators import SchoolBootstrap
from mlsimkit.objectives import causal as O
from mlsimkit.simulate import run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    st = S.load("hsb-causal", profile="quick")
    st.params["positivity"] = {"overlap": [2], "n_schools": 24, "reps": 2, "augmentation": {"c": 0.1, "k": 2}}
    data = st.data()
    d = tmp_path_factory.mktemp("gen")
    SchoolBootstrap().fit(data).save(d / "covariates.zip")
    SchoolBootstrap().fit(data.subset(data.parent[data.cluster_key].iloc[::2])).save(d / "pool.zip")
    design, generate, methods, truth = O.positivity_source(st, data, d / "covariates.zip", d / "pool.zip")
    res = run(design, generate, methods, reps=2, seed=5, progress=False)
    return st, data, design, generate, methods, truth, res


def test_every_method_runs_with_and_without_augmentation(setup):
    st, data, design, generate, methods, truth, res = setup
    assert design == {"n_schools": [24], "overlap": [2.0]}
    ests = ["OR", "IPW", "AIPW", "TMLE"]
    want = (["DiM (unadjusted)"] + [f"{e} (multilevel)" for e in ests]
            + [f"{e} (multilevel, augmented, {a} average)" for a in ("real", "augmented") for e in ests])
    assert list(methods) == want
    assert (res["status"] == "ok").all(), res[["method", "status", "message"]]
    assert set(res["method"]) == set(want) and len(res) == 2 * len(want)
    aug = res[res["arm"] != "plain"]
    assert (aug["synthetic_schools"] == 2 * aug["schools_augmented"]).all() and (aug["schools_augmented"] > 0).all()
    assert aug["max_abs_smd"].notna().all() and res.loc[res["arm"] == "plain", "max_abs_smd"].isna().all()
    # the paper's average and ours differ for IPW on the same augmented data
    ipw = res[res["estimator"] == "IPW"].pivot_table(index="rep", columns="arm", values="estimate")
    assert (ipw["real"] - ipw["augmented"]).abs().min() > 1e-6
    summ = O.positivity_summary(st, res, truth)
    ch = summ[summ["measure"] == "mse_change"]
    assert sorted(ch["method"]) == sorted(want[5:]) and (ch["n_used"] == 2).all()
    diag = O.positivity_diagnostics(res)
    assert {"max_abs_smd", "schools_augmented", "ess_share_treated", "true_share_beyond"} <= set(diag["diagnostic"])
    tabs = O.positivity_tables(st, summ, diag)
    t = tabs["overlap 2, 24 schools: bias, RMSE, coverage (MCSE) and the paired change in MSE"]
    assert set(t.index) == {("DiM", "none")} | {(e, a) for e in ests for a in
                                                ("none", "augmented, real average", "augmented, augmented average")}
    assert "covariate shift" in O.positivity_findings(st, summ, diag)
    assert O.positivity_figure(st, summ).axes


def test_augmentation_keeps_the_real_rows(setup):
    st, data, design, generate, methods, truth, res = setup
    d = generate({"n_schools": 24, "overlap": 2.0}, np.random.default_rng(3))
    frame = d.data.join_as_one()
    methods["IPW (multilevel, augmented, real average)"]({"n_schools": 24}, d)
    full = d.cache["aug"].frame
    real = full[~full["synthetic"]].drop(columns="synthetic")
    pd.testing.assert_frame_equal(real, frame)
    assert full["synthetic"].sum() > 0
    # cached once per replication: a second method of another arm reuses the same augmented frame
    methods["TMLE (multilevel, augmented, augmented average)"]({"n_schools": 24}, d)
    assert d.cache["aug"].frame is full


def test_serial_and_loky_give_the_same_rows(setup):
    st, data, design, generate, methods, truth, res = setup
    par = run(design, generate, methods, reps=2, seed=5, backend="loky", n_jobs=2, progress=False)
    cols = ["rep", "method", "estimate", "se", "max_abs_smd", "share_beyond"]
    pd.testing.assert_frame_equal(res[cols], par[cols])


def test_positivity_params_errors_name_the_key(setup):
    st = setup[0]
    keys = lambda p: [k for k, _ in O.check_positivity(p, ["clavaddpm", "ctgan"])]  # noqa: E731
    assert keys({"overlap": [1, 2], "n_schools": 40}) == []
    assert keys({"overlap": [], "n_schools": 40}) == ["positivity.overlap"]
    assert keys({"overlap": [2], "n_schools": [40, 2]}) == ["positivity.n_schools"]
    assert keys({"overlap": [2], "n_schools": 40, "augmentation": {"c": 0.7}}) == ["positivity.augmentation.c"]
    assert keys({"overlap": [2], "n_schools": 40, "average": ["paper"]}) == ["positivity.average"]
    assert keys({"overlap": [2], "n_schools": 40, "pool": "gpt"}) == ["positivity.pool"]
    assert keys({"overlap": [2], "n_schools": 40, "augmentation": {"k": 3}, "pool_ratio": 2}) == \
        ["positivity.pool_ratio"]
    assert keys({"overlap": [2], "n_schools": 40, "reps": 1, "avg": 1}) == ["positivity.avg", "positivity.reps"]
    assert keys(None) == ["positivity"]
    bad = S.load("hsb-causal", profile="quick")
    bad.params["positivity"] = {"overlap": [2], "n_schools": 40, "augmentation": {"k": 0}}
    with pytest.raises(ParamsError, match="positivity.augmentation.k"):
        O.positivity_settings(bad)
    p = O.positivity_settings(st)
    assert p["reps"] == 2 and p["average"] == ["real", "augmented"] and p["pool_ratio"] == 4


def test_pool_defaults_to_another_generator(setup):
    st = S.load("hsb-causal", profile="quick")
    assert O.positivity_pool(st, "clavaddpm")[0] == "ctgan" and O.positivity_pool(st, "ctgan")[0] == "clavaddpm"
    st.params["generators"] = {"ctgan": {}}
    name, why = O.positivity_pool(st, "ctgan")
    assert name == "ctgan" and "own distribution" in why


def test_stage_refused_for_an_objective_without_the_hook():
    st = S.load("hsb-prediction", profile="quick")
    with pytest.raises(ParamsError, match="'6-positivity'.*objective 'prediction'"):
        wf.positivity(st, None)


def _summary(changes):
    rows = [{"n_schools": 40, "overlap": ov, "method": f"{e} (multilevel, augmented, {arm} average)", "estimator": e,
             "arm": arm, "parameter": "ATE", "measure": "mse_change", "value": v, "mcse": se, "n_used": 50}
            for (ov, e, arm), (v, se) in changes.items()]
    return pd.DataFrame(rows)


def test_claim_verdicts_and_negative_controls():
    """A fall beyond 2 MCSE at every design is yes; augmentation that raises the MSE (negative control) is no, and
    one that changes nothing is never yes."""
    good = _summary({(1.0, "IPW", "augmented"): (-1.0, 0.2), (2.0, "IPW", "augmented"): (-2.0, 0.3),
                     (1.0, "AIPW", "augmented"): (-0.5, 0.1), (2.0, "AIPW", "augmented"): (-0.6, 0.1)})
    c = paper.positivity_claims(good)
    assert c["verdict"].tolist() == ["yes", "yes"] and "IPW's MSE falls" in c["paper says"].iloc[0]
    worse = _summary({(1.0, "IPW", "real"): (1.7, 0.3), (2.0, "IPW", "real"): (-2.0, 0.3)})
    assert paper.positivity_claims(worse)["verdict"].tolist() == ["no", "no"]
    null = _summary({(1.0, "IPW", "real"): (0.0, 0.1), (2.0, "IPW", "real"): (-0.3, 0.2)})
    assert paper.positivity_claims(null)["verdict"].tolist() == ["inconclusive", "inconclusive"]


def test_claim_is_not_yes_when_augmentation_changes_nothing(setup):
    """Negative control on a real run: the augmented arms' estimates replaced by the same estimator's
    estimate without augmentation; the summary's paired change is 0 and the claim must not be yes."""
    st, data, design, generate, methods, truth, res = setup
    fake = res.copy()
    plain = fake[fake["arm"] == "plain"].set_index(["rep", "estimator"])["estimate"]
    aug = fake["arm"] != "plain"
    fake.loc[aug, "estimate"] = [plain.loc[(r, e)] for r, e in zip(fake.loc[aug, "rep"], fake.loc[aug, "estimator"])]
    summ = O.positivity_summary(st, fake, truth)
    assert np.allclose(summ.loc[summ["measure"] == "mse_change", "value"], 0.0)
    assert "yes" not in paper.positivity_claims(summ)["verdict"].tolist()


def test_a_failed_augmentation_is_an_error_row_not_a_lost_replication(setup):
    """A pool without the schools the augmentation needs fails every augmented method of that replication
    with the augmentation's own message; the methods without augmentation still give their estimates."""
    from mlsimkit.errors import DataValidationError

    st, data, design, generate, methods, truth, res = setup
    d = generate({"n_schools": 24, "overlap": 2.0}, np.random.default_rng(4))
    d.pool = d.pool.iloc[:0]
    assert methods["IPW (multilevel)"]({"n_schools": 24}, d)[0]["estimate"] == pytest.approx(
        methods["IPW (multilevel)"]({"n_schools": 24}, d)[0]["estimate"])
    for name in ("IPW (multilevel, augmented, real average)", "OR (multilevel, augmented, real average)"):
        with pytest.raises(DataValidationError, match="pool: empty"):
            methods[name]({"n_schools": 24}, d)
    from mlsimkit.simulate.engine import _call_method, _methods

    m = [x for x in _methods(methods) if x.name == "AIPW (multilevel, augmented, augmented average)"][0]
    rows, _ = _call_method(m, {"n_schools": 24}, d, np.random.default_rng(0))
    assert rows[0]["status"] == "error" and "pool: empty" in rows[0]["message"]
