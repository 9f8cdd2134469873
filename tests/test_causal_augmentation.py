"""Targeted synthetic augmentation (mlsimkit.causal.augmentation): real rows untouched, partners where asked,
covariate shift reported, the effect on IPW under weak overlap, and the wrong-outcome-model caveat."""

import numpy as np
import pandas as pd
import pytest

from mlsimkit.causal import CausalSpec, estimate_ate
from mlsimkit.causal.augmentation import (FLAG, OutcomeModel, augmentation_experiment, estimate_ate_augmented,
                                          targeted_augmentation)
from mlsimkit.causal.examples import COLUMNS, simulate
from mlsimkit.errors import DataValidationError, ParamsError

SPEC = CausalSpec(**COLUMNS)


def _data(J=40, overlap=2.5, seed=1):
    frame = simulate(J, 10, seed, overlap=overlap)
    pool = simulate(5 * J, 10, seed + 1000).drop(columns=["A", "Y"])
    return frame, pool


def test_real_rows_unchanged_and_flagged():
    frame, pool = _data()
    before = frame.copy(deep=True)
    aug = targeted_augmentation(frame, SPEC, pool, c=0.1, k=2, seed=3)
    out = aug.frame
    n = len(frame)
    assert aug.report["synthetic_schools"] > 0
    pd.testing.assert_frame_equal(out.iloc[:n][frame.columns], frame, check_exact=True)
    pd.testing.assert_frame_equal(frame, before, check_exact=True)  # the input is not modified either
    assert not out[FLAG].iloc[:n].any() and out[FLAG].iloc[n:].all()
    assert len(out) == n + aug.report["synthetic_students"]
    assert set(out[SPEC.cluster].iloc[n:]).isdisjoint(set(frame[SPEC.cluster]))


def test_only_extreme_schools_get_partners_of_the_other_arm():
    frame, pool = _data()
    schools = pd.unique(frame["school"])
    a = frame.groupby("school", sort=False)["A"].first().to_numpy()
    g = np.linspace(0.01, 0.99, len(schools))          # given propensities: the extreme set is known
    c, k = 0.2, 3
    aug = targeted_augmentation(frame, SPEC, pool, c=c, k=k, propensity=g, seed=0)
    extreme = set(schools[(g < c) | (g > 1 - c)])
    p = aug.partners
    assert set(p["real_school"]) == extreme
    assert p.groupby("real_school").size().eq(k).all() and len(p) == k * len(extreme)
    arm_of = dict(zip(schools, a))
    assert (p["synthetic_arm"] == 1 - p["real_school"].map(arm_of)).all()
    syn = aug.frame[aug.frame[FLAG]]
    arm_syn = syn.groupby("school")["A"].agg(["min", "max"])
    assert (arm_syn["min"] == arm_syn["max"]).all()
    assert (arm_syn.loc[p["synthetic_school"], "min"].to_numpy() == p["synthetic_arm"].to_numpy()).all()
    assert p["pool_school"].is_unique                  # each pool school used once
    # the partners are the nearest: a pool school's distance is never above that of a later partner of
    # the most extreme school, and outcome noise makes the synthetic outcomes vary
    first = p[p["real_school"] == p["real_school"].iloc[0]]["distance"].to_numpy()
    assert np.all(np.diff(first) >= 0)
    assert syn["Y"].std() > 0


def test_covariate_shift_zero_without_partners_and_growing_with_k():
    frame, pool = _data()
    aug0 = targeted_augmentation(frame, SPEC, pool, c=0.1, k=0)
    assert aug0.report["synthetic_schools"] == 0 and aug0.report["max_abs_smd"] == 0.0
    assert (aug0.smd == 0).all()
    pd.testing.assert_frame_equal(aug0.frame.drop(columns=FLAG), frame, check_exact=True)
    # one-sided extremes: the propensity rises with Z1, the top schools are extreme, their partners have
    # large Z1, so the augmented schools' mean Z1 moves further from the real one with every partner added
    z1 = frame.groupby("school", sort=False)["Z1"].first().to_numpy()
    g = 0.5 + 0.49 * np.argsort(np.argsort(z1)) / (len(z1) - 1)
    augs = [targeted_augmentation(frame, SPEC, pool, c=0.1, k=k, propensity=g) for k in (1, 3, 6)]
    shifts = [a.report["max_abs_smd"] for a in augs]
    assert 0 < shifts[0] < shifts[1] < shifts[2]
    assert all(a.smd["Z1"] > 0 and abs(a.smd["Z1"]) == a.report["max_abs_smd"] for a in augs)


def test_k0_gives_the_plain_engine_and_real_average_counts_real_units():
    frame, pool = _data()
    plain = estimate_ate(frame, SPEC, seed=5, check_overlap=False)
    t0, _ = estimate_ate_augmented(frame, SPEC, pool, k=0, seed=5, check_overlap=False)
    np.testing.assert_allclose(t0["estimate"], plain["estimate"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(t0["se"], plain["se"], rtol=1e-10, atol=1e-10)
    t2, aug = estimate_ate_augmented(frame, SPEC, pool, k=2, seed=5, check_overlap=False)
    assert aug.report["synthetic_schools"] > 0
    assert (t2["n"] == len(frame)).all() and (t2["n_clusters"] == frame["school"].nunique()).all()
    dim = t2[t2["estimator"] == "DiM"]["estimate"].item()  # DiM uses the real rows alone
    assert dim == pytest.approx(plain[plain["estimator"] == "DiM"]["estimate"].item(), abs=1e-12)
    t3, _ = estimate_ate_augmented(frame, SPEC, pool, k=2, seed=5, check_overlap=False, average="augmented")
    assert (t3["n"] > len(frame)).all()


def _draw(J, overlap):
    def draw(rng):
        return simulate(J, 10, rng, overlap=overlap), simulate(4 * J, 10, rng).drop(columns=["A", "Y"]), 2.0
    return draw


class _Wrong:
    """A badly wrong synthetic outcome model: the fitted one with the treatment effect reversed and
    enlarged (it adds ``shift`` to control and subtracts it from treated predictions)."""

    def __init__(self, frame, spec, shift=6.0):
        self.model = OutcomeModel().fit(frame, spec)
        self.tau2_, self.sigma2_, self.shift, self.col = self.model.tau2_, self.model.sigma2_, shift, spec.treatment

    def predict(self, frame):
        return self.model.predict(frame) - self.shift * (2 * frame[self.col].to_numpy(float) - 1)


def test_ipw_mse_falls_with_augmentation_and_wrong_outcome_model_raises_bias():
    """Weak overlap (overlap 2.5, 40 schools): the paper's augmentation (estimators on the augmented data)
    cuts IPW's MSE, paired over the same 30 data sets, by more than 3 MCSE; with a badly wrong synthetic
    outcome model (the negative control) the MSE does not fall and the bias grows by more than 3 MCSE."""
    kw = dict(reps=30, c=0.1, k=2, seed=11, estimators=("IPW",), average="augmented")
    _, good = augmentation_experiment(_draw(40, 2.5), SPEC, **kw)
    aug = good[good["augmented"]].iloc[0]
    none = good[~good["augmented"]].iloc[0]
    assert aug["mse_change"] + 3 * aug["mse_change_mcse"] < 0
    assert aug["mse"] < none["mse"]
    _, bad = augmentation_experiment(_draw(40, 2.5), SPEC, outcome_model=_Wrong, **kw)
    baug = bad[bad["augmented"]].iloc[0]
    bnone = bad[~bad["augmented"]].iloc[0]
    assert not baug["mse_change"] + 3 * baug["mse_change_mcse"] < 0
    assert abs(baug["bias"]) - abs(bnone["bias"]) > 3 * np.hypot(baug["bias_mcse"], bnone["bias_mcse"])


@pytest.mark.parametrize("kw, match", [
    ({"k": -1}, "parameter 'k'"),
    ({"k": 1.5}, "parameter 'k'"),
    ({"c": 0.6}, "parameter 'c'"),
    ({"c": 0.0}, "parameter 'c'"),
])
def test_bad_parameters(kw, match):
    frame, pool = _data(J=20)
    with pytest.raises(ParamsError, match=match):
        targeted_augmentation(frame, SPEC, pool, **kw)


def test_bad_pool():
    frame, pool = _data(J=20)
    with pytest.raises(DataValidationError, match="pool: empty"):
        targeted_augmentation(frame, SPEC, pool.iloc[:0])
    with pytest.raises(DataValidationError, match="pool: covariate column 'Z2sq' is missing"):
        targeted_augmentation(frame, SPEC, pool.drop(columns="Z2sq"))
    with pytest.raises(DataValidationError, match="pool: 2 school"):
        targeted_augmentation(frame, SPEC, pool[pool["school"].isin(["0", "1"])], c=0.45, k=3)
    with pytest.raises(ParamsError, match="parameter 'average'"):
        estimate_ate_augmented(frame, SPEC, pool, average="all")


def test_evaluate_mask_must_keep_whole_schools():
    from mlsimkit.causal.estimators import _estimate_ate, prepare

    frame, _ = _data(J=20)
    prep = prepare(frame, SPEC, check_overlap=False)
    mask = np.ones(len(frame), dtype=bool)
    mask[0] = False                                  # one student of a school dropped
    with pytest.raises(ParamsError, match="whole schools"):
        _estimate_ate(prep, estimators=("DiM",), evaluate=mask)
