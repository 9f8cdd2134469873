"""What the simulations evaluate (Stage 1 of Suk et al.): prediction rules and recovery models.

Nothing here knows which generator made the data: every function takes a
:class:`~mlsimkit.data.MultilevelData` (or a :class:`PredictionTask` wrapping one) and a *spec* naming
the variables. Design matrices are built with numpy from the tables directly (no formula parsing per
fit); mixed models go through :func:`mlsimkit.lmm.fit_lmm` (the array path), OLS through a QR
decomposition. Categorical predictors are treatment-coded with the first declared level as reference and
named like the formula interface of :mod:`mlsimkit.lmm` (``Sector[T.Catholic]``), numerical predictors keep
their name, products are ``a:b`` and school means of student variables are ``mean(a)``.

Demonstration 1 — prediction rules (Afshartous & de Leeuw 2005)
    One student per school is held out (:func:`choose_holdout`); each rule is fitted on the others and
    predicts the held-out students:

    ``OLSFE``       OLS with school-specific fixed intercepts and school-specific slopes of the
                    random-slope variable, plus common slopes for the other student predictors (school
                    predictors are absorbed by the school intercepts/slopes). Fitted by Frisch-Waugh-Lovell:
                    within each school the common predictors and the outcome are residualised on
                    ``[1, x_slope]``, the common slopes come from one pooled regression of the residuals,
                    then each school's intercept and slope from its own 2x2 normal equations. A school whose
                    slope is not estimable (fewer than 2 training students or a constant slope variable)
                    gets an intercept only (slope 0); this is counted in the row's message.
    ``Prior``       the fixed part ``x' gamma`` of the random-intercept-and-slope model.
    ``Multilevel``  the fixed part plus the school's BLUP ``z' u_j``.

    The mixed model has a random intercept and a random slope for ``spec.random_slope``. When that fit
    does not converge, is singular, or fails, it is refitted with a random intercept only and the rows
    carry ``status="warning"`` and a message saying so (Suk et al., appendix S3: "we reduce the model to a
    random-intercept-only model"). Prior and multilevel rules share one fit per data set (cached on the
    task), so the second of the two costs nothing.

    The criterion is the predictive mean squared error over schools,
    ``PMSE = mean_j (y_*j - yhat_*j)^2``, one value per replication (row ``parameter="PMSE"``).

Demonstration 2 — recovery models (Huang 2017; Suk et al. section 5 and appendix S3)
    ``OLS``       OLS on the student and school predictors, omitting ``spec.omitted``.
    ``OLS+IGM``   the same plus school means of the (expanded) student predictors.
    ``HLM``       random-intercept model with the OLS fixed part (REML by default, as ``lmer``).
    ``HLM+IGM``   random-intercept model with the OLS+IGM fixed part.
    ``Oracle``    random-intercept model with every predictor of the true model (nothing omitted).

    Confidence intervals (95% by default): OLS uses the classical ``t`` interval with ``n - p`` degrees of
    freedom and the model-based (homoskedastic) SE; mixed models use ``z`` for level-1 (student)
    coefficients and ``t`` with the Satterthwaite degrees of freedom reported by :mod:`mlsimkit.lmm` for
    level-2 (school) coefficients, including the school means. No cluster-robust SEs: the paper evaluates
    the models' own SEs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .data import MultilevelData
from .errors import MlsimkitError

INTERCEPT = "Intercept"
PREDICTION_METHODS = ("OLSFE", "Prior", "Multilevel")
RECOVERY_MODELS = ("OLS", "OLS+IGM", "HLM", "HLM+IGM", "Oracle")
STATUSES = ("ok", "warning", "non-converged", "singular", "error")


# ===================================================================== specs
@dataclass(frozen=True)
class PredictionSpec:
    """Variables of the prediction model (Demonstration 1).

    Parameters
    ----------
    outcome : str
        Student-level outcome.
    student, school : tuple of str
        Student-level and school-level predictors (numerical or categorical).
    random_slope : str or None
        Numerical student predictor with a random slope in the mixed model and a school-specific fixed
        slope in OLSFE; ``None`` gives random-intercept models and intercept-only OLSFE.
    interactions : tuple of (student, school) pairs
        Cross-level products in the fixed part (the school variable predicting the slope, as in
        Afshartous & de Leeuw's ``beta_1j = gamma_10 + gamma_11 W_j + u_1j``).
    reml : bool
        REML (``lmer``'s default, used by Suk et al.) or maximum likelihood (Afshartous & de Leeuw).
    min_cluster_size : int
        Schools with fewer students hold nobody out (they still contribute training data).
    """

    outcome: str
    student: tuple[str, ...]
    school: tuple[str, ...] = ()
    random_slope: str | None = None
    interactions: tuple[tuple[str, str], ...] = ()
    reml: bool = True
    min_cluster_size: int = 2

    def __post_init__(self):
        if self.random_slope is not None and self.random_slope not in self.student:
            raise MlsimkitError(
                f"PredictionSpec: random_slope {self.random_slope!r} must be one of the student predictors "
                f"{list(self.student)}"
            )
        for a, b in self.interactions:
            if a not in self.student or b not in self.school:
                raise MlsimkitError(
                    f"PredictionSpec: interaction ({a!r}, {b!r}) must pair a student predictor with a school predictor"
                )


@dataclass(frozen=True)
class RecoverySpec:
    """Variables of the recovery models (Demonstration 2).

    ``student`` and ``school`` list every predictor of the true model; ``omitted`` the school predictors
    that OLS, OLS+IGM, HLM and HLM+IGM leave out (the oracle keeps them); ``report`` the coefficient names
    (expanded, e.g. ``SES`` or ``Sector[T.Catholic]``) that get result rows.
    """

    outcome: str
    student: tuple[str, ...]
    school: tuple[str, ...]
    omitted: tuple[str, ...] = ()
    report: tuple[str, ...] = ()
    reml: bool = True
    alpha: float = 0.05

    def __post_init__(self):
        bad = [v for v in self.omitted if v not in self.school]
        if bad:
            raise MlsimkitError(f"RecoverySpec: omitted variable(s) {bad} are not school predictors {list(self.school)}")


# ===================================================================== design matrices
@dataclass
class Design:
    """Student-level arrays of one data set: outcome, school codes and named predictor columns.

    ``groups`` holds integer school codes ``0..n_groups-1`` in the order of the school table;
    ``columns`` maps expanded column names to float arrays; ``level`` maps them to 1 (student) or 2
    (school, school means and cross-level products' school part excluded: products are level 1).
    """

    y: np.ndarray
    groups: np.ndarray
    n_groups: int
    group_ids: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    level: dict[str, int] = field(default_factory=dict)
    expanded: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.y.size

    def names(self, variables: Iterable[str]) -> list[str]:
        """Expanded column names of some variables (a categorical gives one dummy per non-reference level)."""
        out = []
        for v in variables:
            if v not in self.expanded:
                raise MlsimkitError(f"variable {v!r} is not in the design (have {list(self.expanded)})")
            out.extend(self.expanded[v])
        return out

    def matrix(self, names: Sequence[str], *, intercept: bool = True) -> tuple[np.ndarray, list[str]]:
        cols = ([np.ones(self.n)] if intercept else []) + [self.columns[c] for c in names]
        return np.column_stack(cols) if cols else np.empty((self.n, 0)), ([INTERCEPT] if intercept else []) + list(names)

    def add_group_means(self, names: Sequence[str]) -> list[str]:
        """Add ``mean(c)``, the school mean of each column, and return the new names."""
        counts = np.bincount(self.groups, minlength=self.n_groups).astype(float)
        out = []
        for c in names:
            m = f"mean({c})"
            if m not in self.columns:
                sums = np.bincount(self.groups, weights=self.columns[c], minlength=self.n_groups)
                with np.errstate(invalid="ignore", divide="ignore"):
                    self.columns[m] = (sums / counts)[self.groups]
                self.level[m] = 2
            out.append(m)
        return out

    def subset(self, rows: np.ndarray) -> "Design":
        """Rows of the design (school codes kept, so schools keep their identity)."""
        return Design(
            y=self.y[rows], groups=self.groups[rows], n_groups=self.n_groups, group_ids=self.group_ids,
            columns={k: v[rows] for k, v in self.columns.items()}, level=dict(self.level),
            expanded=dict(self.expanded),
        )


def _expand(values, name: str) -> list[tuple[str, np.ndarray]]:
    """A column as float arrays: numerical as is, categorical as treatment dummies (first level reference)."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        if (codes < 0).any():
            raise MlsimkitError(f"column {name!r}: missing or undeclared categories; expected complete data")
        return [(f"{name}[T.{lev}]", (codes == i).astype(float)) for i, lev in enumerate(s.cat.categories) if i > 0]
    if not pd.api.types.is_numeric_dtype(s.dtype):
        raise MlsimkitError(f"column {name!r}: expected a numerical or categorical (pandas Categorical) column, got {s.dtype}")
    arr = s.to_numpy(dtype=float)
    if not np.all(np.isfinite(arr)):
        raise MlsimkitError(f"column {name!r}: missing or non-finite values; expected complete data")
    return [(name, arr)]


def build_design(
    data: MultilevelData,
    outcome: str | None,
    student: Sequence[str] = (),
    school: Sequence[str] = (),
    interactions: Sequence[tuple[str, str]] = (),
) -> Design:
    """The :class:`Design` of a two-level data set (school variables broadcast to students by key)."""
    child, parent = data.child, data.parent
    key = data.cluster_key
    pk = data.schema.tables[data.levels[-2]].primary_key[0]
    for v in student:
        if v not in child.columns:
            raise MlsimkitError(f"table '{data.levels[-1]}': student predictor {v!r} not found (columns {list(child.columns)})")
    for v in school:
        if v not in parent.columns:
            raise MlsimkitError(f"table '{data.levels[-2]}': school predictor {v!r} not found (columns {list(parent.columns)})")
    group_ids = parent[pk].to_numpy()
    codes = pd.Index(group_ids).get_indexer(child[key].to_numpy())
    if (codes < 0).any():
        raise MlsimkitError(f"table '{data.levels[-1]}', column '{key}': rows point to schools missing from '{data.levels[-2]}'")
    if outcome is None:
        y = np.full(len(child), np.nan)
    else:
        if outcome not in child.columns:
            raise MlsimkitError(f"table '{data.levels[-1]}': outcome {outcome!r} not found")
        y = _expand(child[outcome], outcome)
        if len(y) != 1:
            raise MlsimkitError(f"outcome {outcome!r} must be numerical")
        y = y[0][1]
    d = Design(y=y, groups=codes.astype(np.int64), n_groups=len(parent), group_ids=group_ids)
    for v in student:
        d.expanded[v] = []
        for name, arr in _expand(child[v], v):
            d.columns[name], d.level[name] = arr, 1
            d.expanded[v].append(name)
    for v in school:
        d.expanded[v] = []
        for name, arr in _expand(parent[v], v):
            d.columns[name], d.level[name] = arr[codes], 2
            d.expanded[v].append(name)
    for a, b in interactions:
        label = f"{a}:{b}"
        d.expanded[label] = []
        for ca in d.expanded[a]:
            for cb in d.expanded[b]:
                name = f"{ca}:{cb}"
                d.columns[name], d.level[name] = d.columns[ca] * d.columns[cb], 1
                d.expanded[label].append(name)
    return d


# ===================================================================== OLS
@dataclass
class OLSFit:
    params: pd.Series
    bse: pd.Series
    df_resid: int
    sigma2: float


def ols(y: np.ndarray, X: np.ndarray, names: Sequence[str]) -> OLSFit:
    """Ordinary least squares with classical SEs ``sigma2 (X'X)^-1``, ``sigma2 = RSS / (n - p)``.

    Raises :class:`MlsimkitError` when ``X`` is rank deficient (a coefficient is not identified).
    """
    n, p = X.shape
    if n <= p:
        raise MlsimkitError(f"OLS: {n} rows for {p} coefficients; need more rows than coefficients")
    # normal equations on the column-scaled Gram matrix (p is small; a QR of the tall X costs ~20x more),
    # one step of iterative refinement for accuracy
    G = X.T @ X
    scale = np.sqrt(np.diag(G))
    if np.any(scale == 0):
        raise MlsimkitError(f"OLS: design matrix is rank deficient (all-zero column(s) {[names[i] for i in np.flatnonzero(scale == 0)]})")
    Gs = G / np.outer(scale, scale)
    ev, vec = np.linalg.eigh(Gs)
    if ev[0] <= 1e-11 * ev[-1]:
        bad = [names[i] for i in np.flatnonzero(np.abs(vec[:, 0]) > 0.1)]
        raise MlsimkitError(f"OLS: design matrix is rank deficient (column(s) {bad} collinear with others)")
    Gs_inv = (vec / ev) @ vec.T
    G_inv = Gs_inv / np.outer(scale, scale)
    beta = G_inv @ (X.T @ y)
    resid = y - X @ beta
    beta = beta + G_inv @ (X.T @ resid)
    resid = y - X @ beta
    df = n - p
    sigma2 = float(resid @ resid / df)
    cov = sigma2 * G_inv
    return OLSFit(pd.Series(beta, index=list(names)), pd.Series(np.sqrt(np.diag(cov)), index=list(names)), df, sigma2)


# ===================================================================== Demonstration 1: prediction
@dataclass
class PredictionTask:
    """A data set and the held-out students (row positions in ``data.child``, one per school).

    ``generate`` builds it with the data-generation random stream so that every method sees the same
    split. The cache (shared mixed-model fit of the prior and multilevel rules) is not pickled.
    """

    data: MultilevelData
    holdout: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        return {"data": self.data, "holdout": self.holdout, "_cache": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def n_clusters(self) -> int:
        return self.data.n_clusters


def choose_holdout(data: MultilevelData, rng: np.random.Generator, *, min_cluster_size: int = 2) -> np.ndarray:
    """One random student (row position in ``data.child``) per school with at least ``min_cluster_size``
    students, in school-table order."""
    key = data.cluster_key
    pk = data.schema.tables[data.levels[-2]].primary_key[0]
    codes = pd.Index(data.parent[pk].to_numpy()).get_indexer(data.child[key].to_numpy())
    sizes = np.bincount(codes, minlength=data.n_clusters)
    u = rng.random(codes.size)
    order = np.lexsort((u, codes))  # by school, then random
    first = np.r_[0, np.flatnonzero(np.diff(codes[order])) + 1]
    picks = order[first]
    picks = picks[sizes[codes[picks]] >= min_cluster_size]
    return np.sort(picks)


def as_task(data, *, seed: int = 0, min_cluster_size: int = 2) -> PredictionTask:
    """A :class:`PredictionTask` as is; a bare MultilevelData gets a holdout drawn with ``seed``."""
    if isinstance(data, PredictionTask):
        return data
    if isinstance(data, MultilevelData):
        return PredictionTask(data, choose_holdout(data, np.random.default_rng(seed), min_cluster_size=min_cluster_size))
    raise MlsimkitError(f"expected a PredictionTask or MultilevelData, got {type(data).__name__}")


@dataclass
class RuleResult:
    """Predictions of one rule for the held-out students, with the fit's status."""

    y_true: np.ndarray
    pred: np.ndarray
    status: str = "ok"
    message: str = ""
    fit_time: float = 0.0

    @property
    def pmse(self) -> float:
        return pmse(self.y_true, self.pred)


def pmse(y_true, y_pred) -> float:
    """Predictive mean squared error ``mean (y - yhat)^2`` (over the held-out students, one per school)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise MlsimkitError(f"PMSE: need equally long non-empty arrays, got {y_true.shape} and {y_pred.shape}")
    return float(np.mean((y_true - y_pred) ** 2))


def _split(task: PredictionTask, spec: PredictionSpec) -> tuple[Design, Design]:
    key = ("design", spec)
    if key not in task._cache:
        d = build_design(task.data, spec.outcome, spec.student, spec.school, spec.interactions)
        test = np.zeros(d.n, dtype=bool)
        test[task.holdout] = True
        if test.sum() == 0:
            raise MlsimkitError("prediction: no held-out student (every school is smaller than min_cluster_size)")
        task._cache[key] = (d.subset(~test), d.subset(test))
    return task._cache[key]


def olsfe_rule(task, spec: PredictionSpec) -> RuleResult:
    """OLSFE predictions for the held-out students (see the module docstring)."""
    task = as_task(task, min_cluster_size=spec.min_cluster_size)
    t0 = time.perf_counter()
    train, test = _split(task, spec)
    g, J = train.groups, train.n_groups
    n = np.bincount(g, minlength=J).astype(float)
    if spec.random_slope is not None:
        (s_name,) = train.expanded[spec.random_slope]
        s = train.columns[s_name]
    else:
        s = np.zeros(train.n)
    S1 = np.bincount(g, weights=s, minlength=J)
    S2 = np.bincount(g, weights=s * s, minlength=J)
    det = n * S2 - S1 * S1
    scale = np.maximum(n * S2, 1e-300)
    full = (n >= 2) & (det > 1e-10 * scale) if spec.random_slope is not None else np.zeros(J, bool)
    safe_det = np.where(full, det, 1.0)
    safe_n = np.maximum(n, 1.0)

    def school_fit(v):
        """Per-school intercept and slope of ``v`` on ``[1, s]`` (intercept only where not estimable)."""
        Sv = np.bincount(g, weights=v, minlength=J)
        Ssv = np.bincount(g, weights=s * v, minlength=J)
        a = np.where(full, (S2 * Sv - S1 * Ssv) / safe_det, Sv / safe_n)
        b = np.where(full, (n * Ssv - S1 * Sv) / safe_det, 0.0)
        return a, b

    common = [c for c in train.names(spec.student) if c != (s_name if spec.random_slope else None)]
    beta = np.zeros(len(common))
    if common:
        Xc = np.column_stack([train.columns[c] for c in common])
        Xr = np.empty_like(Xc)
        for k in range(Xc.shape[1]):
            a, b = school_fit(Xc[:, k])
            Xr[:, k] = Xc[:, k] - a[g] - b[g] * s
        a, b = school_fit(train.y)
        yr = train.y - a[g] - b[g] * s
        beta = np.linalg.lstsq(Xr, yr, rcond=None)[0]
        resid_y = train.y - Xc @ beta
    else:
        resid_y = train.y
    a, b = school_fit(resid_y)
    gt = test.groups
    s_test = test.columns[s_name] if spec.random_slope is not None else np.zeros(test.n)
    pred = a[gt] + b[gt] * s_test
    if common:
        pred = pred + np.column_stack([test.columns[c] for c in common]) @ beta
    n_int = int((~full[np.unique(gt)]).sum()) if spec.random_slope is not None else 0
    msg = f"{n_int} school(s) with intercept only (slope not estimable)" if n_int else ""
    return RuleResult(test.y, pred, "ok", msg, time.perf_counter() - t0)


@dataclass
class _LMMPrediction:
    prior: np.ndarray
    multilevel: np.ndarray
    y_true: np.ndarray
    status: str
    message: str
    fit_time: float
    result: object = None


def _status_of(res) -> tuple[str, str]:
    if not getattr(res, "converged", True):
        return "non-converged", str(getattr(res, "message", "") or "the mixed model did not converge")
    if getattr(res, "singular", False):
        return "singular", str(getattr(res, "message", "") or "singular fit (a variance component at its boundary)")
    return "ok", str(getattr(res, "message", "") or "")


def _ranef_matrix(res, group_codes: np.ndarray, n_re: int) -> np.ndarray:
    """BLUPs of the given school codes as an array (rows aligned to ``group_codes``); 0 for unknown schools."""
    re = res.ranef
    out = re.reindex(group_codes)
    if out.isna().all().all() and len(re):
        out = re.reindex([str(c) for c in group_codes])
    return out.fillna(0.0).to_numpy(dtype=float).reshape(len(group_codes), n_re)


def fit_prediction_lmm(task, spec: PredictionSpec) -> _LMMPrediction:
    """Fit the mixed model on the training students (random slope, falling back to random intercept)
    and return prior and multilevel predictions of the held-out students. Cached on the task."""
    from .lmm import fit_lmm

    task = as_task(task, min_cluster_size=spec.min_cluster_size)
    key = ("lmm", spec)
    if key in task._cache:
        return task._cache[key]
    t0 = time.perf_counter()
    train, test = _split(task, spec)
    names = train.names(spec.student) + train.names(spec.school)
    names += [c for a, b in spec.interactions for c in train.expanded[f"{a}:{b}"]]
    X, fe_names = train.matrix(names)
    Xt, _ = test.matrix(names)
    ones = np.ones((train.n, 1))
    attempts = []
    if spec.random_slope is not None:
        (s_name,) = train.expanded[spec.random_slope]
        attempts.append((np.column_stack([ones, train.columns[s_name]]),
                         np.column_stack([np.ones(test.n), test.columns[s_name]]), [INTERCEPT, s_name]))
    attempts.append((ones, np.ones((test.n, 1)), [INTERCEPT]))
    notes = []
    chosen = None
    for i, (Z, Zt, re_names) in enumerate(attempts):
        try:
            res = fit_lmm(train.y, X, Z, train.groups, reml=spec.reml, fe_names=fe_names, re_names=re_names)
            st, msg = _status_of(res)
        except Exception as exc:  # noqa: BLE001 - a failed fit is recorded, not raised
            res, st, msg = None, "error", f"{type(exc).__name__}: {exc}"
        if st == "ok" or i == len(attempts) - 1:
            chosen = (i, res, st, msg, Zt)
            break
        notes.append(f"random {spec.random_slope} slope: {st}" + (f" ({msg})" if msg else ""))
    i, res, status, msg, Zuse = chosen
    if status != "ok" and msg:
        notes.append(msg)
    if i > 0:
        notes.insert(0, "random-slope model fell back to random intercept")
        if status == "ok":
            status = "warning"
    fit_time = time.perf_counter() - t0
    if res is None:
        nan = np.full(test.n, np.nan)
        out = _LMMPrediction(nan, nan, test.y, "error", "; ".join(notes), fit_time)
    else:
        beta = np.asarray(res.fe_params.reindex(fe_names), dtype=float)
        prior = Xt @ beta
        U = _ranef_matrix(res, test.groups, Zuse.shape[1])
        multilevel = prior + np.sum(Zuse * U, axis=1)
        out = _LMMPrediction(prior, multilevel, test.y, status, "; ".join(notes), fit_time, res)
    task._cache[key] = out
    return out


def prior_rule(task, spec: PredictionSpec) -> RuleResult:
    """The prior rule: the fixed part of the mixed model."""
    f = fit_prediction_lmm(task, spec)
    return RuleResult(f.y_true, f.prior, f.status, f.message, f.fit_time)


def multilevel_rule(task, spec: PredictionSpec) -> RuleResult:
    """The multilevel rule: fixed part plus the school's BLUP."""
    f = fit_prediction_lmm(task, spec)
    return RuleResult(f.y_true, f.multilevel, f.status, f.message, f.fit_time)


PREDICTION_RULES = {"OLSFE": olsfe_rule, "Prior": prior_rule, "Multilevel": multilevel_rule}


def prediction_rows(result: RuleResult) -> list[dict]:
    """The result row of one rule: ``parameter="PMSE"``, ``estimate = pred_error = PMSE`` of this data set.

    ``se`` and the CI are missing (a PMSE is a performance value, its Monte Carlo error comes from the
    replications).
    """
    value = result.pmse if np.all(np.isfinite(result.pred)) else np.nan
    status = result.status if np.isfinite(value) else "error"
    return [{
        "parameter": "PMSE", "estimate": value, "se": np.nan, "ci_lower": np.nan, "ci_upper": np.nan,
        "pred_error": value, "status": status, "message": result.message,
    }]


# ===================================================================== Demonstration 2: recovery
@dataclass
class CoefficientFit:
    """Estimates of one recovery model: coefficients, SEs, CI bounds and status."""

    params: pd.Series
    bse: pd.Series
    lower: pd.Series
    upper: pd.Series
    status: str = "ok"
    message: str = ""
    fit_time: float = 0.0


def recovery_terms(design: Design, spec: RecoverySpec, model: str) -> tuple[list[str], bool]:
    """Fixed-effect column names of a recovery model and whether it is a mixed model."""
    if model not in RECOVERY_MODELS:
        raise MlsimkitError(f"recovery model {model!r} unknown; expected one of {list(RECOVERY_MODELS)}")
    school = list(spec.school) if model == "Oracle" else [v for v in spec.school if v not in spec.omitted]
    stud = design.names(spec.student)
    names = stud + design.names(school)
    if model.endswith("+IGM"):
        names += design.add_group_means(stud)
    return names, model in ("HLM", "HLM+IGM", "Oracle")


def fit_recovery_model(data, spec: RecoverySpec, model: str, *, design: Design | None = None) -> CoefficientFit:
    """Fit one of :data:`RECOVERY_MODELS` and return every fixed coefficient with SE and CI."""
    t0 = time.perf_counter()
    d = design if design is not None else build_design(data, spec.outcome, spec.student, spec.school)
    names, mixed = recovery_terms(d, spec, model)
    X, fe_names = d.matrix(names)
    q = 1 - spec.alpha / 2
    if not mixed:
        try:
            f = ols(d.y, X, fe_names)
        except MlsimkitError as exc:
            nan = pd.Series(np.nan, index=fe_names)
            return CoefficientFit(nan, nan, nan, nan, "error", str(exc), time.perf_counter() - t0)
        crit = stats.t.ppf(q, f.df_resid)
        return CoefficientFit(f.params, f.bse, f.params - crit * f.bse, f.params + crit * f.bse, "ok", "",
                              time.perf_counter() - t0)
    from .lmm import fit_lmm

    try:
        res = fit_lmm(d.y, X, np.ones((d.n, 1)), d.groups, reml=spec.reml, fe_names=fe_names, re_names=[INTERCEPT])
    except Exception as exc:  # noqa: BLE001
        nan = pd.Series(np.nan, index=fe_names)
        return CoefficientFit(nan, nan, nan, nan, "error", f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
    status, msg = _status_of(res)
    params = res.fe_params.reindex(fe_names).astype(float)
    bse = res.bse.reindex(fe_names).astype(float)
    df = _satterthwaite(res, fe_names)
    crit = pd.Series(
        [stats.norm.ppf(q) if (c == INTERCEPT or d.level.get(c, 1) == 1) else
         (stats.t.ppf(q, df[c]) if np.isfinite(df[c]) and df[c] > 0 else stats.norm.ppf(q)) for c in fe_names],
        index=fe_names,
    )
    return CoefficientFit(params, bse, params - crit * bse, params + crit * bse, status, msg, time.perf_counter() - t0)


def _satterthwaite(res, names) -> pd.Series:
    df = getattr(res, "df", None)
    if df is None:
        return pd.Series(np.inf, index=names)
    return pd.Series(df).reindex(names).astype(float).fillna(np.inf)


def coefficient_rows(fit: CoefficientFit, report: Sequence[str]) -> list[dict]:
    """Result rows for the reported coefficients (``pred_error`` missing)."""
    rows = []
    for p in report:
        if p not in fit.params.index:
            raise MlsimkitError(f"reported coefficient {p!r} is not in the model (have {list(fit.params.index)})")
        rows.append({
            "parameter": p, "estimate": float(fit.params[p]), "se": float(fit.bse[p]),
            "ci_lower": float(fit.lower[p]), "ci_upper": float(fit.upper[p]), "pred_error": np.nan,
            "status": fit.status, "message": fit.message,
        })
    return rows


def recovery_rows(data, spec: RecoverySpec, model: str) -> list[dict]:
    """Fit ``model`` to ``data`` and return the rows of the coefficients in ``spec.report``."""
    return coefficient_rows(fit_recovery_model(data, spec, model), spec.report)

