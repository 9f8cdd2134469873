"""Shared helpers of the CTGAN, parametric, bootstrap and pool generators: two-level layout, typing of
generated columns by the schema, and assembly of a :class:`~mlsimkit.data.MultilevelData` with fresh keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from ..data import MultilevelData
from ..errors import MlsimkitError
from ..schema import Column, Schema


@dataclass(frozen=True)
class TwoLevel:
    """Names of a two-level schema: cluster (parent) table, unit (child) table, the cluster key."""

    parent: str
    child: str
    key: str
    parent_vars: tuple[str, ...]
    child_vars: tuple[str, ...]


def two_level(schema: Schema, who: str) -> TwoLevel:
    """The layout of a two-level schema; an actionable error for deeper hierarchies."""
    levels = schema.levels
    if len(levels) != 2:
        raise MlsimkitError(
            f"generator '{who}': schema '{schema.name}' has {len(levels)} levels ({' > '.join(levels)}); this "
            "generator handles two-level data (clusters and units). Use 'bootstrap', or drop the top level "
            "(e.g. join its variables into the middle table) first"
        )
    parent, child = levels
    return TwoLevel(
        parent,
        child,
        schema.tables[child].foreign_key,
        tuple(schema.tables[parent].data_columns),
        tuple(schema.tables[child].data_columns),
    )


def finish_numeric(values: np.ndarray, col: Column) -> np.ndarray:
    """Clip generated numbers to the declared range and round declared integers."""
    v = np.asarray(values, dtype=float)
    if col.min is not None or col.max is not None:
        v = np.clip(v, -np.inf if col.min is None else col.min, np.inf if col.max is None else col.max)
    if col.integer:
        v = np.round(v)
        if col.min is not None and v.size and v.min() < col.min:  # a non-integer min such as 0.5
            v = np.where(v < col.min, np.ceil(col.min), v)
        if col.max is not None and v.size and v.max() > col.max:
            v = np.where(v > col.max, np.floor(col.max), v)
    return v


def as_categorical(codes: np.ndarray, col: Column) -> pd.Categorical:
    """Category codes 0..K-1 as a pandas Categorical with the declared levels."""
    return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64), categories=list(col.levels),
                                     ordered=col.kind == "ordinal")


def codes_of(values, col: Column) -> np.ndarray:
    """Category codes of text or Categorical values under the declared levels (-1 for unknown)."""
    return pd.Categorical(np.asarray(values, dtype=object).astype(str), categories=list(col.levels)).codes.astype(np.int64)


def typed_column(values, col: Column):
    if col.kind == "numerical":
        return finish_numeric(values, col)
    if isinstance(values, pd.Categorical):
        return values
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return as_categorical(values, col)
    return pd.Categorical(values.astype(str), categories=list(col.levels), ordered=col.kind == "ordinal")


def fresh_keys(table: str, n: int) -> np.ndarray:
    width = max(4, len(str(n)))
    return np.array([f"{table}-{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def assemble(
    schema: Schema,
    layout: TwoLevel,
    parent_values: Mapping[str, object],
    child_values: Mapping[str, object],
    sizes: np.ndarray,
) -> MultilevelData:
    """A two-level :class:`MultilevelData` with fresh keys from per-cluster and per-unit column values.

    ``sizes[j]`` child rows belong to cluster ``j``; child values are in cluster order. Every id column
    gets fresh keys (the foreign key repeats its cluster's key).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    J, n = sizes.size, int(sizes.sum())
    pkeys = fresh_keys(layout.parent, J)
    ptab = schema.tables[layout.parent]
    parent = {}
    for name, col in ptab.columns.items():
        parent[name] = pkeys if col.kind == "id" else typed_column(parent_values[name], col)
    ctab = schema.tables[layout.child]
    child = {}
    ckeys = fresh_keys(layout.child, n)
    for name, col in ctab.columns.items():
        if name == layout.key:
            child[name] = np.repeat(pkeys, sizes)
        elif col.kind == "id":
            child[name] = ckeys if name in ctab.primary_key else np.array(
                [f"{name}-{i}" for i in range(1, n + 1)], dtype=object)
        else:
            child[name] = typed_column(child_values[name], col)
    return MultilevelData(schema, {layout.parent: pd.DataFrame(parent), layout.child: pd.DataFrame(child)},
                          validate=False)
