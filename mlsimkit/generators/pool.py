"""Sampling from a large pre-generated pool of synthetic schools.

A simulation with thousands of replications can either ask the generator for fresh schools every
replication, or generate one large pool of synthetic schools once and draw each replication's schools
from it. :class:`SchoolPool` does the second and follows the generator protocol, so a simulation does
not know which it got.

Trade-off
---------
* **Fresh sampling** (``generator.sample(n, seed=...)`` per replication): replications are independent
  draws from the generator, so Monte Carlo variance reflects the generator's full variability; the cost
  is the generator's sampling time per replication (a neural network pass, CLCA's CP-SAT solve, ...).
* **Pooled sampling** (``SchoolPool(generator, pool_size, seed).build()`` once, then
  ``pool.sample(n, seed=...)``): replications are subsets of one finite population of ``pool_size``
  schools, drawn without replacement within a replication (a school appears at most once per data set)
  but shared across replications. Drawing is an index gather (fast, vectorised) and the generator's
  cost is paid once. The price: replications are correlated and the estimand becomes "the pool's
  population"; the between-replication variance understates that of fresh sampling by the finite
  population factor, roughly ``(pool_size - n) / (pool_size - 1)`` for a single replication's mean, and
  any quirk of the one pool (e.g. of its CLCA solution) is shared by every replication. Keep
  ``pool_size`` large relative to ``n_clusters`` (the two agree as ``pool_size / n_clusters`` grows; a
  rule of thumb is >= 20x) and report it; for ``n_clusters * reps <= pool_size`` one can instead draw
  disjoint sets (not done here). A pool also fixes the cluster-size distribution at build time.

The pool is built by one call ``generator.sample(pool_size, seed=seed)``, so its schools are aligned as a
whole (for CTGAN + CLCA the school-level marginals are matched over the pool, and a random subset
matches them in expectation). Two-level schemas only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from ..data import MultilevelData
from ..errors import MlsimkitError
from ._assemble import fresh_keys, two_level
from .base import Generator, as_rng


class SchoolPool(Generator):
    """A pool of synthetic schools drawn once from ``generator``; ``sample`` draws schools from the pool.

    Parameters
    ----------
    generator : Generator
        A generator (fitted, or fitted by :meth:`fit`).
    pool_size : int
        Number of synthetic schools in the pool.
    seed : int
        Seed of the pool's generation.
    """

    name = "pool"

    def __init__(self, generator: Generator, pool_size: int = 10_000, seed: Any = 0):
        self.generator = generator
        self.pool_size = pool_size
        self.seed = seed

    def fit(self, data: MultilevelData) -> "SchoolPool":
        """Fit the underlying generator on ``data`` and build the pool."""
        self.generator.fit(data)
        return self.build()

    def build(self) -> "SchoolPool":
        """Generate the pool (one call to the generator's ``sample``)."""
        if not self.generator.is_fitted:
            raise MlsimkitError(f"pool of generator '{self.generator.name}': fit the generator (or call "
                                "pool.fit(data)) before build()")
        self._check_n_clusters(self.pool_size)
        t0 = time.perf_counter()
        pool = self.generator.sample(int(self.pool_size), seed=self.seed)
        self.build_time_ = time.perf_counter() - t0
        schema = pool.schema
        lay = two_level(schema, self.name)
        parent = pool.parent.reset_index(drop=True)
        child = pool.child
        pos = pd.Index(parent[lay.key]).get_indexer(child[lay.key])
        order = np.argsort(pos, kind="stable")
        self.child_ = child.iloc[order].reset_index(drop=True)
        self.parent_ = parent
        counts = np.bincount(pos, minlength=len(parent))
        self.counts_ = counts
        self.starts_ = np.r_[0, np.cumsum(counts)[:-1]]
        self.layout_ = lay
        self.schema_ = schema
        return self

    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:
        """``n_clusters`` schools drawn without replacement from the pool, with fresh keys."""
        self._check_fitted()
        n_clusters = self._check_n_clusters(n_clusters)
        J = len(self.parent_)
        if n_clusters > J:
            raise MlsimkitError(f"pool of generator '{self.generator.name}', parameter 'n_clusters': {n_clusters} "
                                f"schools asked for, the pool holds {J}; build a larger pool (pool_size)")
        rng = as_rng(seed)
        pick = rng.choice(J, n_clusters, replace=False)
        c = self.counts_[pick]
        rows = np.repeat(self.starts_[pick] - np.r_[0, np.cumsum(c)[:-1]], c) + np.arange(c.sum())
        lay, schema = self.layout_, self.schema_
        parent = self.parent_.iloc[pick].reset_index(drop=True)
        child = self.child_.iloc[rows].reset_index(drop=True)
        pkeys = fresh_keys(lay.parent, n_clusters)
        ckeys = fresh_keys(lay.child, len(child))
        for col in schema.tables[lay.parent].key_columns:
            parent[col] = pkeys if col == lay.key else np.array(
                [f"{col}-{i}" for i in range(1, n_clusters + 1)], dtype=object)
        ctab = schema.tables[lay.child]
        for col in ctab.key_columns:
            if col == lay.key:
                child[col] = np.repeat(pkeys, c)
            else:
                child[col] = ckeys if col in ctab.primary_key else np.array(
                    [f"{col}-{i}" for i in range(1, len(child) + 1)], dtype=object)
        return MultilevelData(schema, {lay.parent: parent, lay.child: child}, validate=False)
