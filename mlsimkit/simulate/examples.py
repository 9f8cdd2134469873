"""Small, fast studies with known answers: for tests, benchmarks, and the book's worked examples.

All functions are top level so loky and Dask workers can import them.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import stats


def normal_sample(condition, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from N(mu, sigma^2); factors ``n`` (required), ``mu`` (0), ``sigma`` (1)."""
    return rng.normal(condition.get("mu", 0.0), condition.get("sigma", 1.0), int(condition["n"]))


def mean_t_interval(condition, data: np.ndarray, level: float = 0.95, sleep: float = 0.0) -> dict:
    """The sample mean with its t interval: a correctly specified model for :func:`normal_sample`."""
    if sleep:
        time.sleep(sleep)
    x = np.asarray(data, dtype=float)
    n = x.size
    est = float(x.mean())
    se = float(x.std(ddof=1) / np.sqrt(n))
    q = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return {"parameter": "mu", "estimate": est, "se": se, "ci_lower": est - q * se, "ci_upper": est + q * se}


def median_estimate(condition, data: np.ndarray) -> dict:
    """The sample median with the asymptotic normal-theory SE sqrt(pi/2) * s / sqrt(n)."""
    x = np.asarray(data, dtype=float)
    est = float(np.median(x))
    se = float(np.sqrt(np.pi / 2) * x.std(ddof=1) / np.sqrt(x.size))
    return {"parameter": "mu", "estimate": est, "se": se, "ci_lower": est - 1.959963984540054 * se,
            "ci_upper": est + 1.959963984540054 * se}


def trimmed_mean_bootstrap(condition, data: np.ndarray, rng: np.random.Generator, n_boot: int = 50) -> dict:
    """A 10% trimmed mean with a bootstrap SE: a method that uses its own random stream."""
    x = np.asarray(data, dtype=float)
    est = float(stats.trim_mean(x, 0.1))
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boot = stats.trim_mean(x[idx], 0.1, axis=1)
    se = float(boot.std(ddof=1))
    return {"parameter": "mu", "estimate": est, "se": se, "ci_lower": est - 1.959963984540054 * se,
            "ci_upper": est + 1.959963984540054 * se}


def clustered_sample(condition, rng: np.random.Generator) -> dict:
    """A random-intercept dataset: ``n_clusters`` clusters of ``cluster_size``, intra-class correlation
    ``icc`` (total variance 1, mean ``mu``), plus an independent test set of the same shape."""
    j, m, icc = int(condition["n_clusters"]), int(condition.get("cluster_size", 10)), float(condition.get("icc", 0.2))
    mu = float(condition.get("mu", 0.0))

    def draw():
        u = rng.normal(0.0, np.sqrt(icc), j)
        e = rng.normal(0.0, np.sqrt(1 - icc), (j, m))
        return mu + u[:, None] + e

    return {"train": draw(), "test": draw()}


def naive_mean(condition, data: dict) -> dict:
    """Grand mean with the SE that ignores clustering (undercovers when icc > 0); also its prediction error
    for new observations of new clusters."""
    y = data["train"].ravel()
    est = float(y.mean())
    se = float(y.std(ddof=1) / np.sqrt(y.size))
    pe = float(np.mean((data["test"].ravel() - est) ** 2))
    return {"parameter": "mu", "estimate": est, "se": se, "ci_lower": est - 1.959963984540054 * se,
            "ci_upper": est + 1.959963984540054 * se, "pred_error": pe}


def cluster_mean(condition, data: dict) -> dict:
    """Mean of cluster means with a between-cluster SE and t(J-1) interval (correct under clustering)."""
    means = data["train"].mean(axis=1)
    j = means.size
    est = float(means.mean())
    se = float(means.std(ddof=1) / np.sqrt(j))
    q = float(stats.t.ppf(0.975, j - 1))
    pe = float(np.mean((data["test"].ravel() - est) ** 2))
    return {"parameter": "mu", "estimate": est, "se": se, "ci_lower": est - q * se, "ci_upper": est + q * se,
            "pred_error": pe}


def trivial(condition, data) -> dict:
    """Does nothing: measures the engine's own cost per replication."""
    return {"parameter": "x", "estimate": 0.0}


def trivial_sample(condition, rng: np.random.Generator) -> float:
    return float(rng.random())


def busy(condition, data, seconds: float = 0.01) -> dict:
    """Burns ``seconds`` of CPU (for scaling measurements)."""
    end = time.process_time() + seconds
    x = 0.0
    while time.process_time() < end:
        x += 1.0
    return {"parameter": "x", "estimate": float(data)}
