"""Cluster-level consistency alignment (CLCA; section 3.3.2 and appendix S1 of Suk et al.).

A single-table generator such as CTGAN writes school-level variables on every student row, so the
students of one synthetic school may disagree on their school's sector or size. CLCA gives every
synthetic school one value per school-level variable while keeping the real school-level distribution:

* **numerical** variables (Algorithm 1, :func:`align_numerical`): summarise each synthetic school by the
  mean of its rows, rank the schools, and give the school of rank ``r`` (of ``J``) the real empirical
  school-level quantile at ``(r - 0.5) / J`` (inverted-CDF quantile, so when ``J`` equals the number of
  real schools the synthetic values are exactly a permutation of the real ones). This is the monotone
  (one-dimensional optimal-transport) map from synthetic summaries to the real distribution.
* **categorical** variables (binary, categorical, ordinal; Algorithm 2, :func:`align_categorical`):
  choose ``x[j, k]`` in {0, 1} (school ``j`` gets category ``k``), ``sum_k x[j, k] = 1``, minimising eq. (4)::

      w1 * sum_k | sum_j n_j x[j,k] / N  -  p_k |                      student-level marginal
    + w2 * sum_k | sum_j x[j,k]  -  M_k * J / J_real |                school-level counts
    - w3 * sum_{j,k} x[j,k] * log((q[j,k] * n_j + 1) / (n_j + K))     CTGAN confidence

  with ``p_k`` the real student-level proportion of category ``k`` (students in schools of category k),
  ``M_k`` the real number of schools in category ``k`` (out of ``J_real``), ``q[j, k]`` the proportion of
  synthetic school ``j``'s rows that carry category ``k``, ``n_j`` its size, ``N = sum_j n_j``, and
  weights ``w1 = w2 = w3 = 1`` as in the paper. The confidence term is the appendix's smoothed log
  proportion (add-one smoothing, ``epsilon = 1``).

Where this implementation deviates from, or makes precise, the paper's statement:

* the real school counts ``M_k`` are rescaled to the synthetic number of schools ``J`` (the paper
  generates as many schools as the real data has, where the rescaling is the identity);
* CP-SAT needs integer coefficients: the objective is multiplied by ``1 / resolution`` (default
  ``1e-8``) and rounded; the target ``N p_k`` is rounded to whole students and ``M_k J / J_real`` to
  ``1 / 100`` school; absolute values are linearised with one auxiliary integer variable per term;
* the solver runs single-threaded with a *deterministic* time limit (CP-SAT's ``max_deterministic_time``,
  roughly seconds) so that the same input gives the same assignment on every machine; the naive
  assignment (the within-school mode) is passed as a hint. If CP-SAT returns no solution (status
  ``UNKNOWN`` / ``INFEASIBLE`` / ``MODEL_INVALID``) the naive assignment is used and the fallback is recorded
  in :class:`Assignment`; a time-limited non-optimal solution (status ``FEASIBLE``) is used and recorded.

With the weights all 1 the terms have different units: the student-level term is a sum of proportions
(at most 2), the count term is in schools, the confidence term in log-proportions per school; so the
count and confidence terms dominate. We keep the paper's weights as defaults; change ``weights`` to
rebalance.

The naive alternative the paper argues against (:func:`naive_numerical` / :func:`naive_categorical`):
replace each school's values by the within-school mean / mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import MlsimkitError

__all__ = [
    "Assignment",
    "align_numerical",
    "align_categorical",
    "naive_numerical",
    "naive_categorical",
    "within_cluster_proportions",
    "cluster_means",
]


# ============================================================================ helpers
def _codes(cluster: np.ndarray) -> tuple[np.ndarray, int]:
    """Cluster labels of the rows as 0..J-1 codes (clusters numbered in order of first appearance)."""
    cluster = np.asarray(cluster)
    if cluster.ndim != 1 or cluster.size == 0:
        raise MlsimkitError("parameter 'cluster': expected a non-empty one-dimensional array of cluster labels")
    if np.issubdtype(cluster.dtype, np.integer) and cluster.min() >= 0:
        uniq, inv = np.unique(cluster, return_inverse=True)
        if uniq.size == cluster.max() + 1:
            return cluster.astype(np.intp), int(uniq.size)
        return inv, int(uniq.size)
    _, first, inv = np.unique(cluster, return_index=True, return_inverse=True)
    # renumber by first appearance so that results do not depend on the labels' sort order
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv], int(order.size)


def cluster_means(cluster: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean of ``values`` within each cluster (clusters coded as in :func:`_codes`)."""
    codes, J = _codes(cluster)
    values = np.asarray(values, dtype=float)
    sums = np.bincount(codes, weights=values, minlength=J)
    return sums / np.bincount(codes, minlength=J)


def within_cluster_proportions(cluster: np.ndarray, labels: np.ndarray, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """``(q, n)``: the ``J x K`` matrix of within-cluster category proportions and the cluster sizes.

    ``labels`` are category codes 0..K-1.
    """
    codes, J = _codes(cluster)
    labels = np.asarray(labels, dtype=np.intp)
    if labels.shape != codes.shape:
        raise MlsimkitError("parameters 'cluster' and 'labels': expected arrays of the same length")
    if labels.size and (labels.min() < 0 or labels.max() >= n_categories):
        raise MlsimkitError(f"parameter 'labels': category codes must lie in 0..{n_categories - 1}")
    counts = np.zeros((J, n_categories))
    np.add.at(counts, (codes, labels), 1.0)
    n = counts.sum(axis=1)
    return counts / n[:, None], n


# ============================================================================ numerical
def align_numerical(cluster: np.ndarray, values: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Algorithm 1: rank-based quantile matching of synthetic cluster summaries to real cluster values.

    Parameters
    ----------
    cluster : array of length n_rows
        The synthetic cluster of each row.
    values : array of length n_rows
        The generator's value of the cluster-level variable on each row (may vary within a cluster).
    real : array
        The real cluster-level values (one per real cluster).

    Returns
    -------
    array of length J (clusters in order of first appearance): the aligned value of each cluster.
    Ties among synthetic summaries are broken by order of first appearance.
    """
    real = np.sort(np.asarray(real, dtype=float))
    if real.size == 0 or not np.all(np.isfinite(real)):
        raise MlsimkitError("parameter 'real': expected a non-empty array of finite real cluster-level values")
    summary = cluster_means(cluster, values)
    J = summary.size
    order = np.argsort(summary, kind="stable")
    probs = (np.arange(1, J + 1) - 0.5) / J
    quant = np.quantile(real, probs, method="inverted_cdf")
    out = np.empty(J)
    out[order] = quant
    return out


def naive_numerical(cluster: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The naive alternative: each cluster takes the mean of its rows."""
    return cluster_means(cluster, values)


# ============================================================================ categorical
@dataclass
class Assignment:
    """The result of :func:`align_categorical`.

    ``categories``: the chosen category code of each cluster; ``status``: CP-SAT's status name
    (``OPTIMAL``, ``FEASIBLE``, ...) or ``NAIVE`` when the naive assignment was asked for;
    ``fallback``: True when CP-SAT found no solution and the naive assignment was used;
    ``objective``: eq. (4) evaluated (in real units) at the returned assignment; ``bound``: CP-SAT's
    lower bound in real units (equal to ``objective`` at optimality, up to rounding); ``wall_time``:
    seconds spent; ``terms``: the three terms of the objective (unweighted) at the returned assignment.
    """

    categories: np.ndarray
    status: str
    fallback: bool
    objective: float
    bound: float
    wall_time: float
    terms: dict = field(default_factory=dict)


def objective_terms(
    categories: np.ndarray,
    q: np.ndarray,
    n: np.ndarray,
    p_real: np.ndarray,
    m_target: np.ndarray,
) -> dict:
    """The three (unweighted) terms of eq. (4) at a given assignment (``m_target`` already rescaled)."""
    J, K = q.shape
    x = np.zeros((J, K))
    x[np.arange(J), categories] = 1.0
    N = n.sum()
    student = float(np.abs((n[:, None] * x).sum(axis=0) / N - p_real).sum())
    school = float(np.abs(x.sum(axis=0) - m_target).sum())
    conf = float((x * _confidence_cost(q, n)).sum())
    return {"student_marginal": student, "school_counts": school, "confidence": conf}


def _confidence_cost(q: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``-log((q n + 1) / (n + K))``: the appendix's smoothed negative log confidence (non-negative)."""
    K = q.shape[1]
    return -np.log((q * n[:, None] + 1.0) / (n[:, None] + K))


def naive_categorical(q: np.ndarray) -> np.ndarray:
    """The naive alternative: each cluster takes its modal category (ties: the lowest code)."""
    return np.argmax(q, axis=1)


def align_categorical(
    q: np.ndarray,
    n: np.ndarray,
    p_real: np.ndarray,
    m_real: np.ndarray,
    *,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    time_limit: float = 10.0,
    resolution: float = 1e-8,
    seed: int = 0,
) -> Assignment:
    """Algorithm 2: assign one category per synthetic cluster by solving eq. (4) with CP-SAT.

    Parameters
    ----------
    q : (J, K) array
        Within-cluster proportions of each category among the generator's rows (rows sum to 1).
    n : (J,) array
        Cluster sizes.
    p_real : (K,) array
        Real student-level proportions of the categories (sum to 1).
    m_real : (K,) array
        Real numbers of clusters per category; rescaled to ``J`` clusters internally.
    weights : (w1, w2, w3)
        Weights of the student-marginal, school-count and confidence terms (paper: all 1).
    time_limit : float
        CP-SAT's deterministic time limit (about seconds); see the module docstring.
    resolution : float
        Objective units per integer step after scaling.
    seed : int
        CP-SAT's random seed.
    """
    from ortools.sat.python import cp_model

    q = np.asarray(q, dtype=float)
    n = np.asarray(n, dtype=float)
    p_real = np.asarray(p_real, dtype=float)
    m_real = np.asarray(m_real, dtype=float)
    if q.ndim != 2 or q.shape[0] != n.size or q.shape[1] != p_real.size or p_real.size != m_real.size:
        raise MlsimkitError(
            "align_categorical: expected q of shape (J, K), n of length J and p_real, m_real of length K; "
            f"got q {q.shape}, n {n.shape}, p_real {p_real.shape}, m_real {m_real.shape}"
        )
    if np.any(n <= 0) or np.any(np.round(n) != n):
        raise MlsimkitError("align_categorical: cluster sizes 'n' must be positive integers")
    if len(weights) != 3 or any(w < 0 for w in weights):
        raise MlsimkitError(f"parameter 'weights': expected three non-negative numbers, got {weights!r}")
    if time_limit <= 0:
        raise MlsimkitError(f"parameter 'time_limit': expected a positive number, got {time_limit!r}")
    J, K = q.shape
    w1, w2, w3 = map(float, weights)
    N = int(n.sum())
    n_int = n.astype(np.int64)
    m_target = m_real * J / m_real.sum()
    cost = _confidence_cost(q, n)
    hint = naive_categorical(q)
    t0 = time.perf_counter()

    R = 100  # school-count targets to 1/100 school
    inv = 1.0 / resolution
    model = cp_model.CpModel()
    x = [[model.NewBoolVar(f"x_{j}_{k}") for k in range(K)] for j in range(J)]
    for j in range(J):
        model.AddExactlyOne(x[j])
        for k in range(K):
            model.AddHint(x[j][k], int(hint[j] == k))
    LE = cp_model.LinearExpr
    obj_vars, obj_coefs = [], []
    for k in range(K):
        col = [x[j][k] for j in range(J)]
        if w1 > 0:
            students = LE.weighted_sum(col, [int(v) for v in n_int])
            target = int(round(N * p_real[k]))
            u = model.NewIntVar(0, N, f"u_{k}")
            model.Add(u >= students - target)
            model.Add(u >= target - students)
            obj_vars.append(u)
            obj_coefs.append(int(round(w1 / N * inv)))
        if w2 > 0:
            schools = R * LE.sum(col)
            target = int(round(R * m_target[k]))
            v = model.NewIntVar(0, R * J + abs(target), f"v_{k}")
            model.Add(v >= schools - target)
            model.Add(v >= target - schools)
            obj_vars.append(v)
            obj_coefs.append(int(round(w2 / R * inv)))
    if w3 > 0:
        coef = np.round(w3 * cost * inv).astype(np.int64)
        obj_vars.extend(x[j][k] for j in range(J) for k in range(K))
        obj_coefs.extend(int(c) for c in coef.ravel())
    model.Minimize(LE.weighted_sum(obj_vars, obj_coefs))

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = int(seed)
    solver.parameters.max_deterministic_time = float(time_limit)
    solver.parameters.max_time_in_seconds = float(time_limit) * 20  # safety cap on a loaded machine
    status = solver.Solve(model)
    status_name = solver.StatusName(status)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        cats = np.array([next(k for k in range(K) if solver.BooleanValue(x[j][k])) for j in range(J)])
        fallback = False
        bound = solver.BestObjectiveBound() * resolution
    else:
        cats = hint
        fallback = True
        bound = float("nan")
    terms = objective_terms(cats, q, n, p_real, m_target)
    objective = w1 * terms["student_marginal"] + w2 * terms["school_counts"] + w3 * terms["confidence"]
    return Assignment(cats, status_name, fallback, objective, bound, time.perf_counter() - t0, terms)
