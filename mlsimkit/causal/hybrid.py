"""The hybrid synthesizer of the causal paper, for a school-level treatment, with an exact truth.

*Generative Synthetic Data for Causal Inference: Pitfalls, Remedies, and Opportunities* (arXiv 2604.23904),
section "Hybrid Synthetic Data Generation": (1) covariates W from a flexible generator, (2) separately
learned nuisance models, the propensity g(A | W) and the outcome regression Q(Y | A, W), (3) treatment and
outcome drawn from them. Its ATE error splits into an error in the covariate law and an error in the
contrast Q(1, W) - Q(0, W); the hybrid controls the second by construction.

Here, for two-level data (students in schools) and a school-level binary treatment A:

- **W**: the school and student covariates of any fitted mlsimkit generator's sample (its treatment and
  outcome columns, if it has them, are replaced).
- **g**: a logistic regression fitted on the real schools, one row per school, on the school covariates and
  the school means of the student covariates. The ``overlap`` knob scales its linear predictor around its
  mean over the real schools, ``logit g' = m + overlap * (logit g - m)``: ``1`` as learned, ``> 1`` weaker
  overlap (more extreme propensities), ``< 1`` stronger, ``0`` a randomised design with the real share.
- **Q**: ``learner="lmm"``: a linear random-intercept model fitted on the real students by the project's
  engine (:func:`mlsimkit.lmm.fit_lmm`, REML): ``Y = X(A, W) beta + u_j + e_ij`` with the student covariates,
  their school means, the school covariates and A; ``u_j ~ N(0, tau2)``, ``e_ij ~ N(0, sigma2)`` with the
  variances learned from the real data (the paper drew outcomes without residual noise; we do not).
  ``learner="boosting"``: scikit-learn's ``HistGradientBoostingRegressor`` for the mean (settings in
  ``boosting``; fitted on one thread), with ``tau2`` and ``sigma2`` estimated by a random-intercept model of its out-of-fold
  residuals (five folds grouped by school, so the noise is not understated by in-sample residuals).

The **truth is computed exactly** over the population drawn, not estimated (the paper estimated it by TMLE
on a synthetic pool): ``ATE = mean_i [Q(1, W_i) - Q(0, W_i)]`` over the students drawn and ``ATT`` the same
mean over the students of treated schools. For the linear model both equal the treatment coefficient;
for boosting they are averages of predicted differences over the drawn W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..data import MultilevelData
from ..errors import DataValidationError, ParamsError
from ..generators.base import as_rng
from ..lmm._model import single_thread_blas
from ._design import Encoder, Logistic, expit, group_means, independent_columns, no_overlap, treatment_codes
from .estimators import _lmm

LEARNERS = ("lmm", "boosting")


@dataclass
class _Layout:
    parent: pd.DataFrame
    child: pd.DataFrame
    key: str
    rows: np.ndarray       # parent row of each child row


def _layout(data: MultilevelData) -> _Layout:
    if len(data.levels) != 2:
        raise DataValidationError(f"data set '{data.schema.name}': the hybrid generator needs two levels "
                                  f"(schools and students), got {data.levels}")
    parent, child, key = data.parent, data.child, data.cluster_key
    rows = pd.Index(parent[key].astype(str)).get_indexer(child[key].astype(str))
    if (rows < 0).any():
        raise DataValidationError(f"table '{data.levels[-1]}', column '{key}': {int((rows < 0).sum())} row(s) "
                                  "whose school is not in the school table")
    return _Layout(parent, child, key, rows)


class HybridGenerator:
    """Covariates from a generator, treatment and outcome from nuisance models learned on the real data.

    Parameters
    ----------
    treatment : school-level binary column (e.g. a sector); ``treated``: its treated value (not needed for
        0/1 or a two-level categorical whose last level is the treated one).
    outcome : numerical student-level column.
    student, school : covariate columns (default: every non-key column of each table but the treatment and
        the outcome).
    learner : ``"lmm"`` or ``"boosting"`` (see the module docstring); ``boosting``: its settings.
    overlap : the overlap knob (module docstring).
    covariates : a fitted generator (``sample(n_clusters, seed=...)``) that supplies W for :meth:`sample`.
    ridge : penalty ``ridge * ||b||^2 / 2`` on the standardised slopes of the propensity (scikit-learn's
        default ``C = 1``): with few schools and several school variables the unpenalised fit is near
        separation (on HSB, propensities from 1e-5 to 1 - 1e-5), which would make the design's positivity
        an artefact of overfitting.
    """

    def __init__(self, treatment: str, outcome: str, *, treated=None, student=None, school=None,
                 learner: str = "lmm", overlap: float = 1.0, boosting: dict | None = None, covariates=None,
                 ridge: float = 1.0):
        if learner not in LEARNERS:
            raise ParamsError(f"parameter 'learner': {learner!r} is not known; expected one of {list(LEARNERS)}")
        if not np.isfinite(overlap) or overlap < 0:
            raise ParamsError(f"parameter 'overlap': expected a number >= 0, got {overlap!r}")
        self.treatment, self.outcome, self.treated = treatment, outcome, treated
        self.student, self.school = student, school
        self.learner, self.overlap, self.boosting = learner, float(overlap), dict(boosting or {})
        self.covariates = covariates
        if not np.isfinite(ridge) or ridge < 0:
            raise ParamsError(f"parameter 'ridge': expected a number >= 0, got {ridge!r}")
        self.ridge = float(ridge)

    # ------------------------------------------------------------------ features
    def _school_features(self, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
        S = self.student_enc_.transform(lay.child)
        J = len(lay.parent)
        Sbar = group_means(S, lay.rows, J) if S.shape[1] else np.empty((J, 0))
        if S.shape[1] and np.bincount(lay.rows, minlength=J).min() == 0:
            raise DataValidationError("every school needs at least one student for the school means")
        C = self.school_enc_.transform(lay.parent)
        return S, np.column_stack([C, Sbar])

    def _outcome_features(self, lay: _Layout, S, Zs, a_school):
        """[A, student, school means of student, school] per student (no intercept)."""
        return np.column_stack([a_school[lay.rows], S, Zs[lay.rows]])

    # ------------------------------------------------------------------ fit
    def fit(self, real: MultilevelData) -> "HybridGenerator":
        """Learn g and Q (and the variances) on the real data."""
        with single_thread_blas():
            return self._fit(real)

    def _fit(self, real: MultilevelData) -> "HybridGenerator":
        lay = _layout(real)
        schema = real.schema
        parent_t, child_t = schema.tables[real.levels[-2]], schema.tables[real.levels[-1]]
        if self.treatment in child_t.columns and self.treatment not in parent_t.columns:
            raise DataValidationError(f"treatment column '{self.treatment}' is in table '{child_t.name}'; "
                                      f"expected a school-level column of table '{parent_t.name}'")
        if self.treatment not in lay.parent.columns:
            raise DataValidationError(f"treatment column '{self.treatment}' is not in table '{parent_t.name}'")
        if self.outcome not in lay.child.columns:
            raise DataValidationError(f"outcome column '{self.outcome}' is not in table '{child_t.name}'")
        a, self.values_ = treatment_codes(lay.parent[self.treatment], self.treatment, self.treated)
        n1 = int(a.sum())
        if n1 == 0 or n1 == len(a):
            raise DataValidationError(f"treatment column '{self.treatment}': {n1} treated of {len(a)} schools; "
                                      "expected both treated and control schools")
        self.dtype_ = lay.parent[self.treatment].dtype
        y = pd.to_numeric(lay.child[self.outcome], errors="coerce").to_numpy(float)
        if not np.isfinite(y).all():
            raise DataValidationError(f"outcome column '{self.outcome}': missing or non-numeric values")
        student = self.student if self.student is not None else [
            c for c in child_t.data_columns if c != self.outcome]
        school = self.school if self.school is not None else [
            c for c in parent_t.data_columns if c != self.treatment]
        self.student_enc_ = Encoder().fit(lay.child, student)
        self.school_enc_ = Encoder().fit(lay.parent, school)
        S, Zs = self._school_features(lay)
        # propensity, one row per school
        keep = independent_columns(np.column_stack([np.ones(len(a)), Zs]))
        self.ps_keep_ = keep[keep > 0] - 1
        self.propensity_ = Logistic(ridge=self.ridge).fit(Zs[:, self.ps_keep_], a)
        eta = self.propensity_.decision_function(Zs[:, self.ps_keep_])
        if no_overlap(Zs[:, self.ps_keep_], a):
            raise DataValidationError(f"treatment column '{self.treatment}' is perfectly predicted by the school "
                                      "covariates (propensity 0 or 1 in every real school): no overlap")
        self.logit_center_ = float(eta.mean())
        # outcome
        F = self._outcome_features(lay, S, Zs, a)
        codes = lay.rows
        if self.learner == "lmm":
            X = np.column_stack([np.ones(len(y)), F])
            keep = independent_columns(X)
            if len(keep) < 2 or keep[1] != 1:
                raise DataValidationError(f"treatment column '{self.treatment}' is collinear with the covariates")
            self.q_keep_ = keep
            beta, self.tau2_, self.sigma2_ = _lmm(X[:, keep], y, codes)
            self.beta_ = beta
        else:
            from sklearn.ensemble import HistGradientBoostingRegressor
            from sklearn.model_selection import GroupKFold

            settings = {"random_state": 0, **self.boosting}
            try:
                make = lambda: HistGradientBoostingRegressor(**settings)  # noqa: E731
                make()
            except TypeError as exc:
                raise ParamsError(f"parameter 'boosting': bad settings {sorted(self.boosting)} ({exc})") from None
            oof = np.empty(len(y))
            with threadpool_limits(1):  # OpenMP threads on a shared machine: 10x slower, not faster
                for tr, te in GroupKFold(n_splits=min(5, len(a))).split(F, y, codes):
                    oof[te] = make().fit(F[tr], y[tr]).predict(F[te])
                self.model_ = make().fit(F, y)
            _, self.tau2_, self.sigma2_ = _lmm(np.ones((len(y), 1)), y - oof, codes)
        return self

    # ------------------------------------------------------------------ pieces
    def propensity(self, data: MultilevelData, overlap: float | None = None) -> np.ndarray:
        """g of each school of ``data`` (school-table order), with the overlap knob applied."""
        lay = _layout(data)
        return self._propensity(self._school_features(lay)[1], overlap)

    def _propensity(self, Zs, overlap):
        s = self.overlap if overlap is None else float(overlap)
        eta = self.propensity_.decision_function(Zs[:, self.ps_keep_])
        return expit(self.logit_center_ + s * (eta - self.logit_center_))

    def _mean(self, F):
        if self.learner == "lmm":
            X = np.column_stack([np.ones(len(F)), F])[:, self.q_keep_]
            return X @ self.beta_
        with threadpool_limits(1):
            return self.model_.predict(F)

    # ------------------------------------------------------------------ draw
    def draw(self, covariates: MultilevelData, seed, *, overlap: float | None = None):
        """Treatment and outcome for the covariates of ``covariates``: ``(data, truth)``.

        ``truth``: ``ATE`` and ``ATT`` (exact, over the students drawn), ``share_treated`` (schools),
        ``propensity_min`` / ``propensity_max`` (schools).
        """
        rng = as_rng(seed)
        lay = _layout(covariates)
        S, Zs = self._school_features(lay)
        g = self._propensity(Zs, overlap)
        J = len(g)
        a = (rng.random(J) < g).astype(float)
        F1 = self._outcome_features(lay, S, Zs, np.ones(J))
        F0 = self._outcome_features(lay, S, Zs, np.zeros(J))
        q1, q0 = self._mean(F1), self._mean(F0)
        a_row = a[lay.rows]
        mean = np.where(a_row == 1, q1, q0)
        u = rng.normal(0.0, np.sqrt(self.tau2_), J)
        y = mean + u[lay.rows] + rng.normal(0.0, np.sqrt(self.sigma2_), len(mean))
        diff = q1 - q0
        truth = {"ATE": float(diff.mean()),
                 "ATT": float(diff[a_row == 1].mean()) if a_row.any() else float("nan"),
                 "share_treated": float(a.mean()), "propensity_min": float(g.min()),
                 "propensity_max": float(g.max())}
        parent = lay.parent.copy()
        control, treated = self.values_
        values = np.where(a == 1, treated, control).astype(object)
        if isinstance(self.dtype_, pd.CategoricalDtype):
            parent[self.treatment] = pd.Categorical(values, dtype=self.dtype_)
        else:
            parent[self.treatment] = pd.Series(values, index=parent.index).astype(self.dtype_)
        child = lay.child.copy()
        child[self.outcome] = y
        tables = dict(covariates.tables)
        tables[covariates.levels[-2]] = parent
        tables[covariates.levels[-1]] = child
        return MultilevelData(covariates.schema, tables, validate=False), truth

    def sample_with_truth(self, n_clusters: int, *, seed, overlap: float | None = None):
        """``n_clusters`` schools: covariates from ``covariates``, then :meth:`draw`."""
        if self.covariates is None:
            raise ParamsError("HybridGenerator: no covariate generator given (covariates=...)")
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(
            int(as_rng(seed).integers(2**63)))
        cov_ss, ay_ss = ss.spawn(2)
        w = self.covariates.sample(n_clusters, seed=np.random.default_rng(cov_ss))
        return self.draw(w, np.random.default_rng(ay_ss), overlap=overlap)

    def sample(self, n_clusters: int, *, seed) -> MultilevelData:
        """The generator protocol: :meth:`sample_with_truth` without the truth."""
        return self.sample_with_truth(n_clusters, seed=seed)[0]
