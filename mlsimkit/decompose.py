"""The variable decomposition of Suk et al. (section 3.3.1): the paper's fix for the ICC of ClavaDDPM.

A numerical student-level variable ``x_ij`` (student ``i`` in school ``j``) is split into its school mean
``xbar_j`` and its school-demeaned deviation ``x_ij - xbar_j``::

    x_ij = (x_ij - xbar_j) + xbar_j
           └ student table ┘   └ school table (column "<x>_mean") ┘

:func:`decompose` turns a :class:`~mlsimkit.data.MultilevelData` into one with a transformed schema: the
child (bottom) table keeps the column's name but holds the deviations, and the parent table gains a
numerical column ``<x>_mean``. A generator then learns the between-school variance from the school table
and the within-school variance from the student table, which is what lets the diffusion generator
recover the ICC (without it, the ICC of a synthetic variable depends only on how much the latent group
carries, and is typically near zero).

:func:`recompose` is the inverse. On real data it is exact up to floating-point rounding. On synthetic
data the generated deviations of one school need not average to zero, so by default they are
**re-centred**: each synthetic school's mean deviation is subtracted before its generated school mean is
added, so that the school mean of the recomposed variable *is* the generated ``<x>_mean``. After that the
values are kept in range: clipped to the declared ``min`` / ``max`` of the original column where the
schema declares one, and otherwise to the range **observed** in the data given to :func:`decompose` (a
deviation and a school mean can each be in range while their sum is not: without this, 2.5-3.1% of a
diffusion model's recomposed MathAch values on HSB fell outside the real range, down to -8.6 and up to
32.2 against [-2.8, 25.0]). Clipping piles those values on the boundary and moves the affected school
means slightly; :func:`out_of_range_share` measures the share before clipping, and Stage 3 reports the
share of synthetic values outside the real range. Integer columns are rounded. All of this is a no-op
on real data.

Binary, categorical and ordinal student variables
-------------------------------------------------
They are **kept as they are** in the student table (no decomposition). Reasons:

* a category has no additive "deviation from the school mean" that recombines to a valid category;
  splitting it into a school proportion plus a within-school residual would leave the generator
  producing fractional residuals that must then be re-thresholded, and rounding destroys the
  re-centring argument that makes the numerical decomposition exact;
* the paper decomposes numerical variables only and reports that the decomposition does not help the
  categorical ones (section 6);
* the diffusion generator still carries their between-school variation through the latent group:
  the school's group enters the student model via classifier guidance, so schools of a group with many
  minority students get more minority students. How much of the binary ICC is recovered this way is
  measured in Stage 3 (ICC similarity on the latent scale) rather than assumed.

Ordinal variables are not decomposed either: their integer codes are not interval-scaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .data import MultilevelData
from .errors import MlsimkitError
from .schema import Column, Schema

MEAN_SUFFIX = "_mean"


@dataclass(frozen=True)
class DecompositionInfo:
    """What :func:`decompose` did, enough for :func:`recompose` to undo it.

    Attributes
    ----------
    columns : tuple of str
        The decomposed student (bottom-table) variables.
    mean_columns : dict
        Variable -> name of its school-mean column in the parent table.
    parent, child : str
        Table names (e.g. ``schools``, ``students``).
    schema : Schema
        The original schema (recomposed data get it back).
    decomposed_schema : Schema
        The transformed schema.
    observed_range : dict
        Variable -> (min, max) observed in the data given to :func:`decompose`; :func:`recompose` keeps
        values inside it where the schema declares no bound (empty when built by :func:`decomposed_schema`).
    """

    columns: tuple[str, ...]
    mean_columns: dict = field(default_factory=dict)
    parent: str = ""
    child: str = ""
    schema: Schema | None = None
    decomposed_schema: Schema | None = None
    observed_range: dict = field(default_factory=dict)


def default_columns(schema: Schema) -> list[str]:
    """The variables decomposed by default: every numerical column of the bottom table."""
    t = schema.tables[schema.bottom]
    return [c.name for c in t.columns.values() if c.kind == "numerical"]


def decomposed_schema(schema: Schema, columns=None) -> tuple[Schema, DecompositionInfo]:
    """The schema after decomposition and the information to undo it (no data needed)."""
    if len(schema.levels) < 2:
        raise MlsimkitError(f"schema '{schema.name}': decomposition needs a parent and a child table")
    child_name, parent_name = schema.levels[-1], schema.levels[-2]
    child, parent = schema.tables[child_name], schema.tables[parent_name]
    cols = default_columns(schema) if columns is None else list(columns)
    if isinstance(columns, str):
        cols = [columns]
    taken = {c.name for t in schema.tables.values() for c in t.columns.values()}
    means = {}
    for col in cols:
        if col not in child.columns or child.columns[col].kind == "id":
            raise MlsimkitError(
                f"parameter 'columns': '{col}' is not a variable of the bottom table '{child_name}' "
                f"(variables: {child.data_columns})"
            )
        if child.columns[col].kind != "numerical":
            raise MlsimkitError(
                f"parameter 'columns', table '{child_name}', column '{col}': only numerical variables can be "
                f"decomposed (kind is {child.columns[col].kind!r}); binary and categorical variables stay in "
                "the student table (see mlsimkit.decompose)"
            )
        name = col + MEAN_SUFFIX
        if name in taken:
            raise MlsimkitError(
                f"schema '{schema.name}', column '{col}': its school-mean column '{name}' would clash with a "
                "declared column; rename that column"
            )
        means[col] = name
    new_child_cols = dict(child.columns)
    new_parent_cols = dict(parent.columns)
    for col, mname in means.items():
        orig = child.columns[col]
        span = None if orig.min is None or orig.max is None else orig.max - orig.min
        new_child_cols[col] = Column(
            col, "numerical",
            min=None if span is None else -span, max=span,
            description=f"{orig.description} (deviation from the {parent_name} mean)".strip(),
        )
        new_parent_cols[mname] = Column(
            mname, "numerical", min=orig.min, max=orig.max,
            description=f"{parent_name} mean of {child_name} variable {col}",
        )
    new_schema = schema.with_tables({
        child_name: replace(child, columns=new_child_cols),
        parent_name: replace(parent, columns=new_parent_cols),
    })
    info = DecompositionInfo(tuple(means), means, parent_name, child_name, schema, new_schema)
    return new_schema, info


def decompose(data: MultilevelData, columns=None) -> tuple[MultilevelData, DecompositionInfo]:
    """Split numerical student variables into school-demeaned deviations and school means.

    Parameters
    ----------
    data : MultilevelData
        Real (or any) data with at least two levels; the two bottom tables are used.
    columns : list of str, optional
        Bottom-table numerical variables to decompose; default all of them.

    Returns
    -------
    (MultilevelData, DecompositionInfo)
        The transformed data (child columns replaced by deviations, parent table gaining ``<x>_mean``)
        and what :func:`recompose` needs.
    """
    schema, info = decomposed_schema(data.schema, columns)
    fk = data.schema.tables[info.child].foreign_key
    pk = data.schema.tables[info.parent].primary_key[0]
    child = data[info.child].copy()
    parent = data[info.parent].copy()
    if info.columns:
        codes, uniq = pd.factorize(child[fk], sort=False)
        n = np.bincount(codes).astype(float)
        pos = pd.Index(uniq).get_indexer(parent[pk])
        for col, mname in info.mean_columns.items():
            x = child[col].to_numpy(dtype=float)
            m = np.bincount(codes, weights=x, minlength=len(uniq)) / n
            child[col] = x - m[codes]
            parent[mname] = m[pos]
    observed = {col: (float(data[info.child][col].min()), float(data[info.child][col].max())) for col in info.columns}
    info = replace(info, observed_range=observed)
    tables = dict(data.tables)
    tables[info.child] = child[list(schema.tables[info.child].columns)]
    tables[info.parent] = parent[list(schema.tables[info.parent].columns)]
    return MultilevelData(schema, tables, validate=False), info


def range_bounds(info: DecompositionInfo, col: str) -> tuple[float, float]:
    """The bounds :func:`recompose` keeps ``col`` in: the schema's declared ``min`` / ``max`` where given,
    otherwise the observed ones (``-inf`` / ``inf`` when neither is known)."""
    c = info.schema.tables[info.child].columns[col]
    lo_obs, hi_obs = getattr(info, "observed_range", {}).get(col, (-np.inf, np.inf))
    return (lo_obs if c.min is None else c.min), (hi_obs if c.max is None else c.max)


def out_of_range_share(data: MultilevelData, info: DecompositionInfo, *, recenter: bool = True) -> dict:
    """Per decomposed variable: the share of recomposed values outside :func:`range_bounds` *before* clipping
    (values beyond a bound by less than 1e-9 of the range, floating-point rounding, count as inside)."""
    shares: dict = {}
    recompose(data, info, recenter=recenter, out_of_range=shares)
    return shares


def recompose(data: MultilevelData, info: DecompositionInfo, *, recenter: bool = True, clip: bool = True,
              out_of_range: dict | None = None) -> MultilevelData:
    """Undo :func:`decompose`: ``x = deviation + school mean``, back in the original schema.

    Parameters
    ----------
    data : MultilevelData
        Data in the decomposed schema (real, or sampled by a generator trained on decomposed data).
    info : DecompositionInfo
        From :func:`decompose` (or :func:`decomposed_schema`).
    recenter : bool
        Subtract each school's mean deviation first (default), so the school mean of the result equals
        the ``<x>_mean`` column. Real deviations already average to zero, so this changes real data only
        by rounding error.
    clip : bool
        Keep values inside :func:`range_bounds` (default).
    out_of_range : dict, optional
        Filled with each variable's share of values outside the bounds before clipping
        (:func:`out_of_range_share`), measured in the same pass.
    """
    schema = info.schema
    fk = schema.tables[info.child].foreign_key
    pk = schema.tables[info.parent].primary_key[0]
    child = data[info.child].copy()
    parent = data[info.parent]
    if info.columns:
        codes, uniq = pd.factorize(child[fk], sort=False)
        n = np.bincount(codes).astype(float)
        ppos = pd.Index(parent[pk]).get_indexer(uniq)
        if (ppos < 0).any():
            raise MlsimkitError(f"table '{info.child}': rows point to a {info.parent} row that does not exist")
        for col, mname in info.mean_columns.items():
            dev = child[col].to_numpy(dtype=float)
            if recenter:
                dev = dev - (np.bincount(codes, weights=dev, minlength=len(uniq)) / n)[codes]
            x = dev + parent[mname].to_numpy(dtype=float)[ppos][codes]
            c = schema.tables[info.child].columns[col]
            lo, hi = range_bounds(info, col)
            if out_of_range is not None:
                xr = np.round(x) if c.integer else x
                tol = 1e-9 * (hi - lo) if np.isfinite(hi - lo) else 0.0  # floating-point rounding of exact sums
                out_of_range[col] = float(np.mean((xr < lo - tol) | (xr > hi + tol))) if x.size else float("nan")
            if clip:
                x = np.clip(x, lo, hi)
            if c.integer:
                x = np.round(x)
            child[col] = x
    tables = dict(data.tables)
    tables[info.child] = child[list(schema.tables[info.child].columns)]
    tables[info.parent] = parent[list(schema.tables[info.parent].columns)]
    return MultilevelData(schema, tables, validate=False)
