"""CLCA: quantile matching and the eq. (4) assignment on hand-made cases with known optima."""

import itertools

import numpy as np
import pytest

from mlsimkit import clca
from mlsimkit.errors import MlsimkitError


# ---------------------------------------------------------------------------- numerical (Algorithm 1)
def test_quantile_matching_by_hand():
    # cluster means: a=1.5, b=5.5, c=0  -> ranks b=3, a=2, c=1 ; J=3 -> p = 1/6, 1/2, 5/6
    cluster = np.array(["a", "a", "b", "b", "c"])
    values = np.array([1.0, 2.0, 5.0, 6.0, 0.0])
    out = clca.align_numerical(cluster, values, real=np.array([30.0, 10.0, 20.0]))
    # clusters in order of first appearance: a, b, c
    assert out.tolist() == [20.0, 30.0, 10.0]


def test_quantile_matching_fewer_synthetic_clusters():
    # J=2 synthetic, real {1,2,3,4}: inverted-CDF quantiles at 0.25 and 0.75 are 1 and 3
    out = clca.align_numerical(np.array([0, 1]), np.array([9.0, -9.0]), np.array([4.0, 3.0, 2.0, 1.0]))
    assert out.tolist() == [3.0, 1.0]


def test_quantile_matching_is_monotone_and_a_permutation_when_sizes_agree():
    rng = np.random.default_rng(0)
    cluster = np.repeat(np.arange(50), 7)
    values = rng.normal(size=cluster.size)
    real = rng.gamma(2.0, size=50)
    out = clca.align_numerical(cluster, values, real)
    assert sorted(out) == sorted(real)
    means = clca.cluster_means(cluster, values)
    assert np.all(np.diff(out[np.argsort(means)]) >= 0)


def test_naive_numerical_is_the_mean():
    assert clca.naive_numerical(np.array([1, 1, 0]), np.array([1.0, 3.0, 5.0])).tolist() == [5.0, 2.0]


# ---------------------------------------------------------------------------- categorical (Algorithm 2)
def _brute_force(q, n, p, m, weights=(1, 1, 1)):
    J, K = q.shape
    m_t = m * J / m.sum()
    best, arg = np.inf, None
    for cats in itertools.product(range(K), repeat=J):
        t = clca.objective_terms(np.array(cats), q, n, p, m_t)
        v = weights[0] * t["student_marginal"] + weights[1] * t["school_counts"] + weights[2] * t["confidence"]
        if v < best - 1e-12:
            best, arg = v, np.array(cats)
    return arg, best


def test_assignment_known_optimum():
    # four schools of 10, all leaning to category 0; real data: half the schools (and students) in each.
    # The naive mode puts all four in category 0 (count term 4). The optimum moves the two least
    # confident schools: the extra cost of category 1 for school j is log((10 q0 + 1) / (10 q1 + 1)),
    # i.e. log(10/2), log(9/3), log(8/4), log(7/5): schools 3 and 4 are cheapest.
    q = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    n = np.full(4, 10)
    res = clca.align_categorical(q, n, p_real=np.array([0.5, 0.5]), m_real=np.array([80, 80]))
    assert res.status == "OPTIMAL" and not res.fallback
    assert res.categories.tolist() == [0, 0, 1, 1]
    assert res.terms["school_counts"] == pytest.approx(0.0)
    assert res.terms["student_marginal"] == pytest.approx(0.0)
    expected_conf = -np.log(np.array([10, 9, 4, 5]) / 12.0).sum()
    assert res.objective == pytest.approx(expected_conf, abs=1e-6)
    assert res.bound == pytest.approx(res.objective, abs=1e-5)
    assert clca.naive_categorical(q).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    J, K = 7, 3
    n = rng.integers(1, 30, J)
    q = rng.dirichlet(np.ones(K) * 0.7, J)
    q = np.round(q * n[:, None]) / n[:, None]  # proportions of whole rows
    q[:, -1] = 1 - q[:, :-1].sum(axis=1)
    q = np.clip(q, 0, 1)
    p = rng.dirichlet(np.ones(K))
    m = rng.integers(1, 20, K).astype(float)
    arg, best = _brute_force(q, n, p, m)
    res = clca.align_categorical(q, n, p, m)
    assert res.status == "OPTIMAL"
    assert res.objective == pytest.approx(best, abs=1e-5)  # optimum value (ties between optima allowed)


def test_weights_switch_terms_off():
    q = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    n = np.full(4, 10)
    res = clca.align_categorical(q, n, np.array([0.5, 0.5]), np.array([1, 1]), weights=(0, 0, 1))
    assert res.categories.tolist() == [0, 0, 0, 0]  # confidence alone = the mode


def test_fallback_when_solver_finds_nothing(monkeypatch):
    from ortools.sat.python import cp_model

    monkeypatch.setattr(cp_model.CpSolver, "Solve", lambda self, model, *a, **k: cp_model.UNKNOWN)
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    res = clca.align_categorical(q, np.array([5, 5]), np.array([0.5, 0.5]), np.array([1, 1]))
    assert res.fallback and res.status == "UNKNOWN"
    assert res.categories.tolist() == [0, 1]


def test_within_cluster_proportions():
    q, n = clca.within_cluster_proportions(np.array([0, 0, 0, 1]), np.array([0, 1, 1, 2]), 3)
    assert n.tolist() == [3, 1]
    assert q.tolist() == [[1 / 3, 2 / 3, 0], [0, 0, 1]]


def test_bad_input_is_named():
    with pytest.raises(MlsimkitError, match="cluster sizes"):
        clca.align_categorical(np.array([[1.0, 0.0]]), np.array([0]), np.array([1.0, 0]), np.array([1.0, 0]))
    with pytest.raises(MlsimkitError, match="weights"):
        clca.align_categorical(np.array([[1.0, 0.0]]), np.array([2]), np.array([1.0, 0]), np.array([1.0, 0]),
                               weights=(1, 1))
    with pytest.raises(MlsimkitError, match="real"):
        clca.align_numerical(np.array([0]), np.array([1.0]), np.array([]))
