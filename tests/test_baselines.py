"""Baselines: the school bootstrap and the parametric multilevel generator; the make() factory."""

import copy

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.generators import NAMES, ParametricGenerator, SchoolBootstrap, load, make


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


@pytest.fixture(scope="module")
def small(hsb):
    return hsb.subset(hsb.parent["School"].iloc[::4])  # 40 schools


def _valid(d):
    return MultilevelData(d.schema, d.tables)  # re-validates keys, foreign keys, types, ranges


# ---------------------------------------------------------------------------- factory
def test_make_by_name():
    assert set(NAMES) == {"clavaddpm", "ctgan", "tabular-transformer", "parametric", "bootstrap"}
    assert isinstance(make("bootstrap"), SchoolBootstrap)
    assert make("parametric", cluster_size=5).cluster_size == 5
    assert make("ctgan", epochs=2).epochs == 2
    with pytest.raises(MlsimkitError, match="not known"):
        make("gan")
    with pytest.raises(MlsimkitError, match="bad settings"):
        make("bootstrap", epochs=3)


# ---------------------------------------------------------------------------- bootstrap
def test_bootstrap_copies_real_schools_with_fresh_keys(hsb, tmp_path):
    gen = make("bootstrap").fit(hsb)
    d = _valid(gen.sample(300, seed=4))
    assert len(d.parent) == 300 and d.parent["School"].is_unique and d.child["Student"].is_unique
    assert not set(d.parent["School"]) & set(hsb.parent["School"])
    # every synthetic school is a real school: its variables and its students' values
    real_j = hsb.join_as_one().drop(columns=["Student"])
    syn_j = d.join_as_one()
    vars_ = [c for c in real_j.columns if c != "School"]
    for sid in d.parent["School"].iloc[:5]:
        rows = syn_j.loc[syn_j["School"] == sid, vars_].reset_index(drop=True)
        match = real_j.loc[real_j["MEANSES"] == rows["MEANSES"].iloc[0]]
        src = match.loc[match["School"] == match["School"].iloc[0], vars_].reset_index(drop=True)
        pd.testing.assert_frame_equal(rows, src)
    assert set(d.cluster_sizes()) <= set(hsb.cluster_sizes())
    assert d.equals(gen.sample(300, seed=4)) and not d.equals(gen.sample(300, seed=5))
    assert load(gen.save(tmp_path / "b.zip")).sample(10, seed=1).equals(gen.sample(10, seed=1))


def test_bootstrap_three_levels_and_without_replacement():
    chem = ds.load("chem97")
    gen = SchoolBootstrap().fit(chem)
    d = _valid(gen.sample(4, seed=0))
    assert len(d.tables["leas"]) == 4
    sub = SchoolBootstrap(replace=False).fit(chem).sample(len(chem.tables["leas"]), seed=1)
    assert len(sub.tables["students"]) == len(chem.tables["students"])
    with pytest.raises(MlsimkitError, match="without replacement"):
        SchoolBootstrap(replace=False).fit(chem).sample(len(chem.tables["leas"]) + 1, seed=1)


# ---------------------------------------------------------------------------- parametric
@pytest.fixture(scope="module")
def param(small):
    return ParametricGenerator(random_slopes={"MathAch": "SES"}).fit(small)


def test_parametric_protocol(param, small, tmp_path):
    d = _valid(param.sample(25, seed=1))
    assert len(d.parent) == 25
    assert d.equals(param.sample(25, seed=1)) and not d.equals(param.sample(25, seed=2))
    assert load(param.save(tmp_path / "p.zip")).sample(25, seed=1).equals(d)
    assert set(d.cluster_sizes()) <= set(small.cluster_sizes())
    # declared ranges and integers hold
    assert d.parent["PRACAD"].between(0, 1).all() and (d.parent["Size"] == d.parent["Size"].round()).all()
    names = {e["variable"]: e for e in param.params_["student"]}
    assert [e["variable"] for e in param.params_["student"]] == ["Minority", "Sex", "SES", "MathAch"]
    assert names["MathAch"]["cov_re"].shape == (2, 2) and names["MathAch"]["slope"] == "SES"


def test_parametric_recovers_given_parameters(param, small):
    """Data drawn from known parameters, re-estimated: fixed effects and variance components come back
    within Monte Carlo error (bounds of about 4 standard errors for 300 schools of 15 students)."""
    truth = copy.deepcopy(param.params_)
    ma = {e["variable"]: e for e in truth["student"]}["MathAch"]
    ma["coef"].update({"SES": 2.5, "Sex[Female]": -1.0})
    ma.update(cov_re=np.array([[9.0, 0.0], [0.0, 1.0]]), sigma2=36.0)
    gen = ParametricGenerator.from_params(param.schema_, truth, cluster_size=15)
    d = gen.sample(300, seed=7)
    refit = ParametricGenerator(random_slopes={"MathAch": "SES"}).fit(d)
    est = {e["variable"]: e for e in refit.params_["student"]}["MathAch"]
    assert est["coef"]["SES"] == pytest.approx(2.5, abs=0.35)
    assert est["coef"]["Sex[Female]"] == pytest.approx(-1.0, abs=0.5)
    assert est["sigma2"] == pytest.approx(36.0, rel=0.1)
    assert est["cov_re"][0, 0] == pytest.approx(9.0, rel=0.5)


def test_parametric_overrides_fixed_size_and_errors(param, small):
    gen = ParametricGenerator.from_params(param.schema_, param.params_, cluster_size=7,
                                          overrides={"MathAch": {"coef": {"SES": 2.5}, "sigma2": 36.0}})
    d = gen.sample(9, seed=0)
    assert (d.cluster_sizes() == 7).all()
    ma = {e["variable"]: e for e in gen.params_["student"]}["MathAch"]
    assert ma["coef"]["SES"] == 2.5 and ma["sigma2"] == 36.0
    assert {e["variable"]: e for e in param.params_["student"]}["MathAch"]["sigma2"] != 36.0  # a copy
    with pytest.raises(MlsimkitError, match="overrides"):
        ParametricGenerator(overrides={"Sex": {"sigma2": 1.0}}).fit(small)
    with pytest.raises(MlsimkitError, match="no coefficient"):
        ParametricGenerator.from_params(param.schema_, param.params_, overrides={"MathAch": {"coef": {"IQ": 1}}})
    with pytest.raises(MlsimkitError, match="cov_re"):
        ParametricGenerator.from_params(param.schema_, param.params_, overrides={"MathAch": {"cov_re": [[1.0]]}})
    with pytest.raises(MlsimkitError, match="random_slopes"):
        ParametricGenerator(random_slopes={"SES": "MathAch"}).fit(small)
    with pytest.raises(MlsimkitError, match="two-level"):
        ParametricGenerator().fit(ds.load("chem97"))


def test_parametric_drops_collinear_predictors():
    exam = ds.load("exam")  # school 'type' (single-sex) is implied by 'schgend'
    gen = ParametricGenerator().fit(exam)
    assert all("type[Sngl]" in e["dropped"] for e in gen.params_["student"])
    d = _valid(gen.sample(20, seed=0))
    single = d.parent["schgend"].astype(str) != "mixed"
    assert (d.parent.loc[single, "type"].astype(str) == "Sngl").all()  # joint school cells are kept


# ---------------------------------------------------------------------------- saved-file format
# (the format's own tests are in test_modelfile.py)
def test_load_refuses_pickles_of_earlier_builds(small, tmp_path):
    import pickle

    from mlsimkit.errors import FormatVersionError

    gen = SchoolBootstrap().fit(small)
    old = tmp_path / "old.pkl"  # what version 2 wrote: a pickled dict around the generator
    old.write_bytes(pickle.dumps({"magic": "mlsimkit-generator", "format_version": 2, "mlsimkit": "0.1.0",
                                  "class": "mlsimkit.generators.bootstrap.SchoolBootstrap", "generator": gen}))
    with pytest.raises(FormatVersionError, match=r"old\.pkl'.*pickled generator \(format version 2\).*retrain"):
        load(old)
