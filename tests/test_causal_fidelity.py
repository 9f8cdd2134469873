"""Causal fidelity of synthetic data (mlsimkit.causal.fidelity, issue 13 items 2 and 6): the fully generative
ATE against the hybrid one, and the DCR privacy of hybrid data against held-out schools, with negative controls:
a copy of the real schools preserves the ATE but the DCR share flags it; a generator that breaks the
treatment-outcome link distorts the fully generative ATE while the hybrid one stays close."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsimkit.causal import CausalSpec
from mlsimkit.causal import fidelity as F
from mlsimkit.causal.examples import simulate
from mlsimkit.causal.hybrid import HybridGenerator
from mlsimkit.data import MultilevelData
from mlsimkit.errors import ParamsError
from mlsimkit.generators import SchoolBootstrap
from mlsimkit.quality.privacy import dcr_holdout_share
from mlsimkit.schema import Schema

SCHEMA = Schema.from_dict({"name": "dgp", "tables": {
    "schools": {"file": "s.csv", "primary_key": "school",
                "columns": {"school": "id", "A": {"kind": "binary", "levels": ["0", "1"]}, "Z1": "numerical",
                            "Z2": "numerical", "Z2sq": "numerical"}},
    "students": {"file": "p.csv", "primary_key": "id", "parent": "schools", "foreign_key": "school",
                 "columns": {"id": "id", "school": "id", "X": "numerical", "Y": "numerical"}}}})
SPEC = CausalSpec("A", "Y", "school", student=("X",), school=("Z1", "Z2", "Z2sq"))
SETTINGS = {"folds": 3, "ridge": 0.0}


def _data(n_schools: int, seed: int, prefix: str = "s") -> MultilevelData:
    """mlsimkit.causal.examples' process (true ATE 2) as two tables."""
    f = simulate(n_schools, 8, np.random.default_rng(seed))
    f["school"] = prefix + f["school"]
    f["id"] = [f"{prefix}p{i}" for i in range(len(f))]
    f["A"] = f["A"].astype(int).astype(str)
    schools = f.drop_duplicates("school")[["school", "A", "Z1", "Z2", "Z2sq"]].reset_index(drop=True)
    return MultilevelData(SCHEMA, {"schools": schools, "students": f[["id", "school", "X", "Y"]]})


class ShuffledTreatment(SchoolBootstrap):
    """Real schools resampled, their treatment dealt out at random: the treatment-outcome link is broken."""

    def sample(self, n_clusters, *, seed):
        d = super().sample(n_clusters, seed=seed)
        rng = np.random.default_rng(np.random.SeedSequence(int(np.random.default_rng(seed).integers(2**32))))
        t = {k: v.copy() for k, v in d.tables.items()}
        a = t["schools"]["A"]
        t["schools"]["A"] = pd.Categorical(a.to_numpy()[rng.permutation(len(a))], dtype=a.dtype)
        return MultilevelData(d.schema, t, validate=False)


@pytest.fixture(scope="module")
def real():
    return _data(240, 1)


@pytest.fixture(scope="module")
def ate(real):
    h = HybridGenerator("A", "Y", student=["X"], school=["Z1", "Z2", "Z2sq"], ridge=0.0).fit(real)
    models = {"copy": SchoolBootstrap().fit(real), "shuffled": ShuffledTreatment().fit(real)}
    draws = F.generative_vs_hybrid(real, models, h, SPEC, draws=4, estimators=("OR", "AIPW"), settings=SETTINGS,
                                   seed=3)
    return draws, F.ate_errors(draws)


def _row(errors, gen, con, method="AIPW (multilevel)"):
    return errors[(errors.generator == gen) & (errors.construction == con) & (errors.method == method)].iloc[0]


def test_copy_keeps_the_ate_and_a_broken_link_loses_it_fully_generatively_but_not_hybrid(ate):
    draws, errors = ate
    assert (draws["status"] == "ok").all() and len(draws) == 2 * 2 * 4 * 2
    assert set(errors["draws"]) == {4}
    copy_full, shuf_full = _row(errors, "copy", "fully generative"), _row(errors, "shuffled", "fully generative")
    shuf_hyb = _row(errors, "shuffled", "hybrid")
    assert copy_full["reference"] == pytest.approx(2.0, abs=0.5)               # the process's ATE is 2
    # the copy: error within a few school-bootstrap SEs of 0 (SE of the AIPW estimate about 0.3 here)
    assert abs(copy_full["error"]) < 0.6 and copy_full["ATE MSE"] < 0.3
    # broken link: the fully generative ATE is near 0, an error of about -2 (negative control of the hybrid)
    assert shuf_full["error"] < -1.3 and shuf_full["ATE MSE"] > 2.0
    assert abs(shuf_hyb["error"]) < 0.6 and shuf_hyb["ATE MSE"] < shuf_full["ATE MSE"] / 4
    # the MCSE of an MSE is the sd of the squared errors over sqrt(draws)
    e2 = draws[(draws.generator == "copy") & (draws.construction == "hybrid")
               & (draws.method == "OR (multilevel)")]["error"].to_numpy() ** 2
    r = _row(errors, "copy", "hybrid", "OR (multilevel)")
    assert r["ATE MSE"] == pytest.approx(e2.mean()) and r["MSE MCSE"] == pytest.approx(e2.std(ddof=1) / 2)


def test_copy_is_flagged_by_the_dcr_share_although_its_ate_is_right(real):
    """The negative control the ATE cannot give: a bootstrap of the training schools copies them (DCR share
    closer to hold-out about 0), while independent draws from the same process score about 0.5."""
    train, hold = real.subset(real.parent["school"].iloc[:180]), real.subset(real.parent["school"].iloc[180:])
    copy = SchoolBootstrap().fit(train).sample(180, seed=1)
    assert dcr_holdout_share(train, copy, hold) < 0.05
    assert 0.35 < dcr_holdout_share(train, _data(180, 9, "f"), hold) < 0.65


def test_hybrid_privacy_of_copied_covariates_fails_and_of_fresh_ones_passes():
    """Hybrid data on covariates copied from the training schools sit closer to them than to held-out schools
    (treatment and outcome are redrawn, so the share is not 0: about 0.3 here), on covariates drawn afresh from
    the process they score about 0.5, as real schools do; at student and at school level."""
    real = _data(600, 5)
    train, hold = real.subset(real.parent["school"].iloc[:450]), real.subset(real.parent["school"].iloc[450:])
    h = HybridGenerator("A", "Y", student=["X"], school=["Z1", "Z2", "Z2sq"], ridge=0.0).fit(train)
    cov = {"copy": [SchoolBootstrap().fit(train).sample(450, seed=2)], "fresh": [_data(450, 11, "f")]}
    p = F.hybrid_privacy(train, hold, cov, h, seed=0).set_index(["generator", "metric"])["value"]
    for level in ("students", "schools"):
        assert p[("copy", f"{F.DCR} ({level})")] < 0.38, level          # copied covariates: flagged
        assert 0.4 < p[("fresh", f"{F.DCR} ({level})")] < 0.6, level     # fresh covariates: as new data
    assert p[("copy", "median DCR (schools)")] < p[("fresh", "median DCR (schools)")]
    assert 0.5 < p[("fresh", F.TSTR)] <= 1.0
    real_ref = F.real_privacy(train, hold, _data(450, 12, "g"))
    assert all(0.4 < v < 0.6 for v in real_ref.values())


def test_school_rows_by_hand():
    d = _data(3, 0)
    rows, kinds = F.school_rows(d)
    assert len(rows) == 3 and kinds["X (school mean)"] == "numerical" and kinds["A"] == "binary"
    j = d.join_as_one()
    assert rows["X (school mean)"].tolist() == pytest.approx(
        j.groupby("school", sort=False)["X"].mean().reindex(d.parent["school"]).tolist())


def test_bad_settings_name_the_parameter(real):
    h = HybridGenerator("A", "Y", student=["X"], school=["Z1"]).fit(real)
    m = {"copy": SchoolBootstrap().fit(real)}
    with pytest.raises(ParamsError, match="'draws'"):
        F.generative_vs_hybrid(real, m, h, SPEC, draws=0)
    with pytest.raises(ParamsError, match="'estimators'"):
        F.generative_vs_hybrid(real, m, h, SPEC, estimators=("DiM",))
    with pytest.raises(ParamsError, match="'version'"):
        F.generative_vs_hybrid(real, m, h, SPEC, version="flat")


def _table(tstr_a, tstr_b, dcr_a=0.5, dcr_b=0.5):
    return pd.DataFrame({
        "generator": ["a", "a", "b", "b"], "construction": list(F.CONSTRUCTIONS) * 2,
        F.DCR: [dcr_a, 0.5, dcr_b, 0.5], f"{F.DCR} MCSE": np.nan, F.TSTR: [tstr_a, 0.7, tstr_b, 0.7],
        f"{F.TSTR} MCSE": np.nan, "ATE MSE": [0.1, 0.05, 1.0, 0.05], "ATE MSE MCSE": [0.02, 0.01, 0.1, 0.01],
        "ATE error": 0.0})


def test_agreement_sentence_follows_the_numbers():
    same = F.agreement(_table(0.8, 0.6, 0.5, 0.3), "OR (multilevel)")
    assert "TSTR AUROC (OOD) (highest first) orders the generators a, b, the ATE MSE (smallest first) a, b: the " \
           "same order" in same
    assert "DCR share closer to hold-out (closest to 0.5 first) orders the generators a, b, the ATE MSE (smallest " \
           "first) a, b: the same order" in same
    diff = F.agreement(_table(0.6, 0.8, 0.3, 0.5), "OR (multilevel)")   # negative control: reversed metrics
    assert "TSTR AUROC (OOD) (highest first) orders the generators b, a, the ATE MSE (smallest first) a, b: a " \
           "different order" in diff
    assert "DCR share closer to hold-out (closest to 0.5 first) orders the generators b, a" in diff
    assert "the same order" not in diff
    assert "not resolved" not in diff                                     # MSE 0.1 (0.02) against 1 (0.1)
    tentative = _table(0.8, 0.6).assign(**{"ATE MSE MCSE": [0.5, 0.01, 0.5, 0.01]})
    assert "not resolved beyond 2 MCSE" in F.agreement(tentative, "OR (multilevel)")
    assert "b: ATE MSE of OR (multilevel) 1 fully generative against 0.05 hybrid, smaller for the hybrid" in diff
    fig = F.figure(_table(0.8, 0.6), reference={F.DCR: 0.5})
    assert len(fig.axes) == 3 and fig.axes[2].get_yscale() == "log"


def test_workflow_hook_is_empty_for_objectives_without_it():
    from mlsimkit import study as S, workflow as wf

    st = S.load("hsb-prediction", profile="quick")
    assert wf.quality_context(st, None, {}, pd.DataFrame(), {}, 0) == {}


def test_causal_objective_hook_on_hsb_with_a_bootstrap():
    """The objective's Stage 3 hook end to end on the real HSB schools (quick profile: one draw), with a school
    bootstrap as the generator: three sections; the bootstrap's hybrid data on copied covariates are flagged."""
    import matplotlib.pyplot as plt

    from mlsimkit import study as S, workflow as wf
    from mlsimkit.quality import holdout_split

    st = S.load("hsb-causal", profile="quick")
    data = st.data()
    train, hold = holdout_split(data, 0.2, np.random.default_rng(0))
    inputs = {"holdout": hold, "holdout_synthetic": {
        "bootstrap": [SchoolBootstrap().fit(train).sample(train.n_clusters, seed=1)], "shuffled schools": []}}
    summary = pd.DataFrame({"dataset": ["bootstrap"] * 2, "item": [F.DCR, F.TSTR], "value": [0.0, 0.9],
                            "sd": np.nan, "reference": [0.5, 0.8]})
    out = wf.quality_context(st, data, {"bootstrap": SchoolBootstrap().fit(data)}, summary, inputs, 7)
    assert len(out) == 3
    (fig, sentence), (ate_tab, note), (priv, pnote) = out.values()
    assert isinstance(fig, plt.Figure) and "AIPW (multilevel)" in sentence and "Real vs real" in sentence
    assert set(ate_tab.index.get_level_values("construction")) == set(F.CONSTRUCTIONS)
    assert "0 failed fit(s)" in note
    assert "bootstrap (hybrid)" in priv.index and "real vs real (Stage 3)" in priv.index
    assert float(priv.loc["bootstrap (hybrid)", f"{F.DCR} (schools)"]) < 0.4 and "below 0.4" in pnote
    plt.close(fig)
