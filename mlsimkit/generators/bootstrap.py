"""The school bootstrap: the semi-synthetic reference generator.

``sample(n_clusters, seed=s)`` draws ``n_clusters`` real top-level units (schools; local authorities in a
three-level schema) with replacement and copies each with everything below it, under fresh keys at
every level (a school drawn twice becomes two synthetic schools). No model is learned: the synthetic
data are real schools, so this is the reference against which generated data are judged, and the
resampling-based design of "semi-synthetic" simulations. Any number of levels is supported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..data import MultilevelData
from ._assemble import fresh_keys
from .base import Generator, as_rng


class SchoolBootstrap(Generator):
    """Resample real top-level units with replacement (see the module docstring).

    Parameters
    ----------
    replace : bool
        Draw with replacement (default). ``False`` draws without replacement (a subsample); then
        ``n_clusters`` may not exceed the number of real units.
    """

    name = "bootstrap"

    def __init__(self, replace: bool = True):
        self.replace = replace

    def fit(self, data: MultilevelData) -> "SchoolBootstrap":
        """Store the real data, ordered so that every unit's rows are contiguous at every level."""
        schema = data.schema
        self.tables_ = {}
        self.index_ = {}  # per level below the top: (start, count) of each parent's children
        order = None
        for i, name in enumerate(schema.levels):
            t = schema.tables[name]
            df = data.tables[name]
            if i == 0:
                df = df.reset_index(drop=True)
            else:
                parent = schema.tables[t.parent]
                pkeys = self.tables_[t.parent][parent.primary_key[0]]
                pos = pd.Index(pkeys).get_indexer(df[t.foreign_key])
                order = np.argsort(pos, kind="stable")
                df = df.iloc[order].reset_index(drop=True)
                counts = np.bincount(pos, minlength=len(pkeys))
                starts = np.r_[0, np.cumsum(counts)[:-1]]
                self.index_[name] = (starts, counts)
            self.tables_[name] = df
        self.schema_ = schema
        return self

    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:
        """``n_clusters`` real top-level units drawn at random, with fresh keys."""
        self._check_fitted()
        n_clusters = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        schema = self.schema_
        top = schema.levels[0]
        J = len(self.tables_[top])
        if not self.replace and n_clusters > J:
            from ..errors import MlsimkitError

            raise MlsimkitError(f"generator 'bootstrap', parameter 'n_clusters': {n_clusters} units without "
                                f"replacement, but the real data have only {J}")
        rows = rng.choice(J, n_clusters, replace=self.replace)
        out = {}
        parent_keys = None
        parent_counts = None
        for i, name in enumerate(schema.levels):
            t = schema.tables[name]
            if i > 0:
                starts, counts = self.index_[name]
                c = counts[rows]
                rows = np.repeat(starts[rows] - np.r_[0, np.cumsum(c)[:-1]], c) + np.arange(c.sum())
                parent_counts = c
            df = self.tables_[name].iloc[rows].reset_index(drop=True)
            keys = fresh_keys(name, len(df))
            for col in t.key_columns:
                if t.parent is not None and col == t.foreign_key:
                    df[col] = np.repeat(parent_keys, parent_counts)
                elif col in t.primary_key and len(t.primary_key) == 1:
                    df[col] = keys
                else:
                    df[col] = np.array([f"{col}-{k}" for k in range(1, len(df) + 1)], dtype=object)
            pk = t.primary_key[0] if len(t.primary_key) == 1 else None
            parent_keys = df[pk].to_numpy() if pk is not None else None
            out[name] = df
        return MultilevelData(schema, out, validate=False)
