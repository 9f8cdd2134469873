"""The parametric multilevel normal generator: the generic "traditional" baseline.

A traditional simulation draws data from a parametric model with chosen parameters. This generator
estimates such a model from the real data (or takes some parameters from you) and samples from it:

1. **School level.** Categorical school variables: their joint empirical distribution (the observed
   combinations of categories with their frequencies). Numerical school variables: multivariate normal
   with a mean that depends linearly on the categorical school variables (main effects, least squares)
   and a common residual covariance. Values are clipped to the declared range and rounded if integer.
2. **Cluster sizes.** Drawn from the real sizes (with replacement), or all equal to ``cluster_size``.
3. **Student level**, one variable at a time in a fixed order (categorical variables first, then
   numerical, each in schema order; change with ``order``), each given the school variables and the
   student variables before it:

   * categorical (binary / categorical / ordinal): multinomial logistic regression (no random effect);
   * numerical: linear mixed model with a random intercept (and a random slope on one earlier variable
     via ``random_slopes={"MathAch": "SES"}``), estimated by REML with :func:`mlsimkit.lmm.fit_lmm`.
     ``y_ij = x_ij' beta + z_ij' u_j + e_ij``, ``u_j ~ N(0, T)``, ``e_ij ~ N(0, sigma2)``.

   The sequential factorisation gives a joint distribution of the student variables in which the
   school-level dependence of a later variable on an earlier one goes through the regression and the
   random effects of different variables are independent. Numerical predictors are used on their raw
   scale; categorical predictors as indicator columns ``"Var[level]"`` (first level the reference);
   a predictor that is a linear combination of earlier ones (e.g. exam's single-sex ``type``, implied by
   ``schgend``) is left out of that model and listed under ``"dropped"``.

Everything estimated lives in ``params_`` (plain numbers and arrays). ``overrides`` replaces parts of
it after estimation, e.g. ``{"MathAch": {"coef": {"SES": 2.5}, "cov_re": [[9.0]], "sigma2": 36.0}}``
(keys: ``coef``, a mapping predictor -> value with ``"Intercept"`` for the intercept; ``cov_re``;
``sigma2``), which is how a traditional design varies an effect size or an ICC.
:meth:`ParametricGenerator.from_params` builds a generator from a schema and a full ``params_`` without data.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..data import MultilevelData
from ..errors import MlsimkitError
from ..schema import Schema
from ._assemble import assemble, codes_of, finish_numeric, two_level
from .base import Generator, as_rng


def _dummies(codes: np.ndarray, name: str, levels) -> dict[str, np.ndarray]:
    return {f"{name}[{lev}]": (codes == k).astype(float) for k, lev in enumerate(levels) if k > 0}


class ParametricGenerator(Generator):
    """Multilevel normal / logistic generator (see the module docstring).

    Parameters
    ----------
    cluster_size : int or None
        None: sizes drawn from the real cluster sizes; an int: every cluster has that size.
    random_slopes : mapping of numerical student variable -> earlier numerical student variable
        Adds a random slope on that variable to the variable's model.
    order : list of student variables, optional
        The order in which student variables are generated (default: categorical, then numerical).
    overrides : mapping, optional
        Replacements applied to the estimated parameters (see the module docstring).
    """

    name = "parametric"

    def __init__(
        self,
        cluster_size: int | None = None,
        *,
        random_slopes: Mapping[str, str] | None = None,
        order: list[str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        self.cluster_size = cluster_size
        self.random_slopes = dict(random_slopes or {})
        self.order = None if order is None else list(order)
        self.overrides = copy.deepcopy(dict(overrides or {}))

    # ------------------------------------------------------------------ fit
    def _student_order(self, schema: Schema, lay) -> list[str]:
        if self.order is not None:
            if sorted(self.order) != sorted(lay.child_vars):
                raise MlsimkitError(f"generator 'parametric', parameter 'order': must list each student "
                                    f"variable once, {sorted(lay.child_vars)}; got {self.order}")
            return list(self.order)
        cats = [c for c in lay.child_vars if schema.column(c).is_category]
        return cats + [c for c in lay.child_vars if not schema.column(c).is_category]

    def fit(self, data: MultilevelData) -> "ParametricGenerator":
        from sklearn.linear_model import LogisticRegression

        from ..lmm import fit_lmm

        schema = data.schema
        lay = two_level(schema, self.name)
        if self.cluster_size is not None and (isinstance(self.cluster_size, bool) or not isinstance(
                self.cluster_size, (int, np.integer)) or self.cluster_size < 1):
            raise MlsimkitError(f"generator 'parametric', parameter 'cluster_size': expected None or a positive "
                                f"integer, got {self.cluster_size!r}")
        order = self._student_order(schema, lay)
        for var in self.overrides:
            if var not in order or schema.column(var).kind != "numerical":
                raise MlsimkitError(f"generator 'parametric', parameter 'overrides': {var!r} is not a numerical "
                                    f"student variable")
        for y, x in self.random_slopes.items():
            if y not in order or schema.column(y).kind != "numerical" or x not in order \
                    or schema.column(x).kind != "numerical" or order.index(x) >= order.index(y):
                raise MlsimkitError(f"generator 'parametric', parameter 'random_slopes': {y!r}: {x!r} must name "
                                    "numerical student variables, the slope variable generated before the outcome")
        parent = data.parent
        # ---- school level
        cat_vars = [c for c in lay.parent_vars if schema.column(c).is_category]
        num_vars = [c for c in lay.parent_vars if not schema.column(c).is_category]
        codes = np.column_stack([codes_of(parent[c], schema.column(c)) for c in cat_vars]) if cat_vars \
            else np.zeros((len(parent), 0), dtype=np.int64)
        cells, cell_idx, cell_n = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        school = {"cat_vars": cat_vars, "num_vars": num_vars, "cells": cells,
                  "cell_probs": cell_n / cell_n.sum()}
        if num_vars:
            D = self._school_design(codes, cat_vars, schema)
            Y = parent[num_vars].to_numpy(dtype=float)
            B, *_ = np.linalg.lstsq(D, Y, rcond=None)
            resid = Y - D @ B
            dof = max(len(Y) - D.shape[1], 1)
            school.update(B=B, cov=resid.T @ resid / dof)
        sizes = data.cluster_sizes().to_numpy(dtype=np.int64)
        # ---- student level
        key = lay.key
        pos = pd.Index(parent[key]).get_indexer(data.child[key])
        groups = pos
        frame = self._school_predictors(parent, codes, cat_vars, num_vars, schema)
        frame = {k: v[pos] for k, v in frame.items()}
        students = []
        for y in order:
            col = schema.column(y)
            preds, dropped = _independent(frame, len(pos))
            X = np.column_stack([np.ones(len(pos))] + [frame[p] for p in preds])
            entry = {"variable": y, "kind": col.kind, "predictors": preds, "dropped": dropped}
            if col.is_category:
                yc = codes_of(data.child[y], col)
                K = len(col.levels)
                present = np.unique(yc)
                lr = LogisticRegression(C=1e6, max_iter=2000)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lr.fit(X[:, 1:], yc)
                W = np.zeros((K, len(preds) + 1))
                fitted = lr.classes_
                if len(fitted) == 2:  # sklearn stores one row for binary problems
                    W[fitted[1], 0], W[fitted[1], 1:] = lr.intercept_[0], lr.coef_[0]
                    W[fitted[0]] = 0.0
                else:
                    W[fitted, 0], W[fitted, 1:] = lr.intercept_, lr.coef_
                W[np.setdiff1d(np.arange(K), present), 0] = -np.inf  # never-seen categories
                entry["W"] = W
                frame.update(_dummies(yc, y, col.levels))
            else:
                yv = data.child[y].to_numpy(dtype=float)
                slope = self.random_slopes.get(y)
                Z = np.ones((len(yv), 1)) if slope is None else np.column_stack([np.ones(len(yv)), frame[slope]])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = fit_lmm(yv, X, Z, groups, reml=True)
                beta = np.asarray(res.fe_params, dtype=float)
                entry.update(
                    coef=dict(zip(["Intercept", *preds], map(float, beta))),
                    cov_re=np.atleast_2d(np.asarray(res.cov_re, dtype=float)),
                    sigma2=float(res.scale),
                    slope=slope,
                    converged=bool(getattr(res, "converged", True)),
                )
                frame[y] = yv
            students.append(entry)
        self.params_ = {"school": school, "sizes": sizes, "student": students}
        self._apply_overrides()
        self.layout_ = lay
        self.schema_ = schema
        return self

    @classmethod
    def from_params(cls, schema: Schema, params: Mapping, cluster_size: int | None = None,
                    overrides: Mapping | None = None) -> "ParametricGenerator":
        """A generator that samples from given parameters (the layout of a fitted ``params_``), with
        optional ``overrides`` applied on top."""
        gen = cls(cluster_size=cluster_size, overrides=overrides)
        gen.layout_ = two_level(schema, cls.name)
        gen.params_ = copy.deepcopy(dict(params))
        gen._apply_overrides()
        gen.schema_ = schema
        return gen

    def _apply_overrides(self) -> None:
        by_var = {e["variable"]: e for e in self.params_["student"]}
        for var, spec in self.overrides.items():
            if var not in by_var or by_var[var]["kind"] != "numerical":
                raise MlsimkitError(f"generator 'parametric', parameter 'overrides': {var!r} is not a numerical "
                                    f"student variable ({[v for v, e in by_var.items() if e['kind'] == 'numerical']})")
            e = by_var[var]
            unknown = set(spec) - {"coef", "cov_re", "sigma2"}
            if unknown:
                raise MlsimkitError(f"generator 'parametric', parameter 'overrides', variable {var!r}: unknown "
                                    f"key(s) {sorted(unknown)}; expected coef, cov_re, sigma2")
            for name, value in dict(spec.get("coef", {})).items():
                if name not in e["coef"]:
                    raise MlsimkitError(f"generator 'parametric', parameter 'overrides', variable {var!r}: "
                                        f"no coefficient {name!r}; expected one of {list(e['coef'])}")
                e["coef"][name] = float(value)
            if "cov_re" in spec:
                cov = np.atleast_2d(np.asarray(spec["cov_re"], dtype=float))
                if cov.shape != e["cov_re"].shape:
                    raise MlsimkitError(f"generator 'parametric', parameter 'overrides', variable {var!r}: "
                                        f"cov_re must have shape {e['cov_re'].shape}")
                e["cov_re"] = cov
            if "sigma2" in spec:
                e["sigma2"] = float(spec["sigma2"])

    # ------------------------------------------------------------------ design helpers
    @staticmethod
    def _school_design(codes: np.ndarray, cat_vars: list[str], schema: Schema) -> np.ndarray:
        cols = [np.ones(len(codes))]
        for i, c in enumerate(cat_vars):
            cols.extend(_dummies(codes[:, i], c, schema.column(c).levels).values())
        return np.column_stack(cols)

    @staticmethod
    def _school_predictors(parent_num, codes, cat_vars, num_vars, schema) -> dict[str, np.ndarray]:
        frame = {c: np.asarray(parent_num[c], dtype=float) for c in num_vars}
        for i, c in enumerate(cat_vars):
            frame.update(_dummies(codes[:, i], c, schema.column(c).levels))
        return frame

    # ------------------------------------------------------------------ sampling
    def sample(self, n_clusters: int, *, seed: Any) -> MultilevelData:
        self._check_fitted()
        n_clusters = self._check_n_clusters(n_clusters)
        rng = as_rng(seed)
        schema, lay, P = self.schema_, self.layout_, self.params_
        S = P["school"]
        cat_vars, num_vars = S["cat_vars"], S["num_vars"]
        cell = rng.choice(len(S["cell_probs"]), n_clusters, p=S["cell_probs"])
        codes = np.asarray(S["cells"])[cell]
        school_vals: dict[str, Any] = {c: codes[:, i] for i, c in enumerate(cat_vars)}
        if num_vars:
            mean = self._school_design(codes, cat_vars, schema) @ S["B"]
            draws = mean + rng.multivariate_normal(np.zeros(len(num_vars)), S["cov"], n_clusters,
                                                   method="cholesky" if _is_pd(S["cov"]) else "eigh")
            for i, c in enumerate(num_vars):
                school_vals[c] = finish_numeric(draws[:, i], schema.column(c))
        if self.cluster_size is None:
            sizes = rng.choice(np.asarray(P["sizes"]), n_clusters, replace=True)
        else:
            sizes = np.full(n_clusters, int(self.cluster_size), dtype=np.int64)
        pos = np.repeat(np.arange(n_clusters), sizes)
        n = pos.size
        frame = self._school_predictors(school_vals, codes, cat_vars, num_vars, schema)
        frame = {k: v[pos] for k, v in frame.items()}
        student_vals = {}
        for e in P["student"]:
            y = e["variable"]
            col = schema.column(y)
            X = np.column_stack([np.ones(n)] + [frame[p] for p in e["predictors"]])
            if e["kind"] in ("binary", "categorical", "ordinal"):
                eta = X @ np.asarray(e["W"]).T
                eta -= eta.max(axis=1, keepdims=True)
                prob = np.exp(eta)
                cum = np.cumsum(prob, axis=1)
                u = rng.random(n) * cum[:, -1]
                yc = np.minimum((cum < u[:, None]).sum(axis=1), len(col.levels) - 1)
                student_vals[y] = yc
                frame.update(_dummies(yc, y, col.levels))
            else:
                beta = np.array([e["coef"][k] for k in ["Intercept", *e["predictors"]]])
                cov_re = np.asarray(e["cov_re"])
                u = rng.multivariate_normal(np.zeros(len(cov_re)), cov_re, n_clusters, method="eigh")[pos]
                Z = np.ones((n, 1)) if e.get("slope") is None else np.column_stack([np.ones(n), frame[e["slope"]]])
                yv = X @ beta + (Z * u).sum(axis=1) + rng.normal(0.0, np.sqrt(e["sigma2"]), n)
                yv = finish_numeric(yv, col)
                student_vals[y] = yv
                frame[y] = yv
        return assemble(schema, lay, school_vals, student_vals, sizes)


def _independent(frame: Mapping[str, np.ndarray], n: int) -> tuple[list[str], list[str]]:
    """Predictors in order, skipping any that is (numerically) a linear combination of the intercept and
    the predictors kept before it (e.g. a binary school variable determined by a categorical one)."""
    kept, dropped = [], []
    basis = np.ones((n, 1)) / np.sqrt(n)
    for name, v in frame.items():
        v = np.asarray(v, dtype=float)
        scale = np.linalg.norm(v - v.mean())
        if scale == 0:
            dropped.append(name)
            continue
        r = v - basis @ (basis.T @ v)
        norm = np.linalg.norm(r)
        if norm <= 1e-8 * max(np.linalg.norm(v), 1.0):
            dropped.append(name)
            continue
        kept.append(name)
        basis = np.column_stack([basis, r / norm])
    return kept, dropped


def _is_pd(cov) -> bool:
    try:
        np.linalg.cholesky(np.asarray(cov))
        return True
    except np.linalg.LinAlgError:
        return False
