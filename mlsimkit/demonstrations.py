"""The two demonstrations wired for :func:`mlsimkit.simulate.run`: generate, analyse and truth.

Every callable here is a top-level function; bind settings with :func:`functools.partial` (or use the
helpers that do it) so the runner can pickle them for its workers. ``generate(condition, rng)`` reads the
factor ``n_schools`` from the condition; ``analyse`` callables have the signature
``(condition, data, rng) -> list of row dicts`` (rows: ``parameter, estimate, se, ci_lower, ci_upper,
pred_error, status, message``).

Demonstration 1 — predictive performance (objective ``prediction``)
    :func:`generate_synthetic` samples schools from a trained generator, :func:`generate_traditional_prediction`
    from the Afshartous & de Leeuw design; both hold one random student per school out (with the
    data-generation random stream, so every method predicts the same students) and return a
    :class:`~mlsimkit.methods.PredictionTask`. :func:`analyse_prediction_methods` gives
    ``{"OLSFE", "Prior", "Multilevel"}`` for a :class:`~mlsimkit.methods.PredictionSpec`; each returns one
    ``PMSE`` row. A study's spec is declared in its params file (``model:``, see
    :mod:`mlsimkit.objectives.prediction`); nothing here names a column of a data set.

    The traditional model (:data:`TRADITIONAL_PREDICTION`) is Afshartous & de Leeuw's, on their design's
    own variables: ``Y ~ X + W + X:W + (1 + X | School)`` by maximum likelihood.

Demonstration 2 — parameter recovery (objective ``recovery``)
    :func:`fit_truth` fits the true random-intercept model of a :class:`~mlsimkit.methods.RecoverySpec`
    on the real data (REML by default): the outcome on every student and school predictor, ``(1 | school)``.
    :func:`recovery_generate` samples covariates from a generator and replaces the outcome by one drawn from
    the true model (:meth:`TrueModel.draw_outcome`); the generator's own outcome is never used.
    :func:`recovery_methods` gives OLS, OLS+IGM, HLM, HLM+IGM (all omitting ``spec.omitted``) and the oracle
    (all predictors); rows for the coefficients in ``spec.report``.

    Traditional designs: :func:`generate_traditional_recovery` with a
    :class:`~mlsimkit.traditional.HuangOmittedVariable` (default: the Huang design; :func:`adjusted_recovery_dgp`
    gives the appendix S5.2 variant with values from the real fit); the analysis spec is
    :data:`TRADITIONAL_RECOVERY` (report ``X`` and ``W1``, omit ``W2``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import methods as M
from .data import MultilevelData
from .errors import MlsimkitError
from .methods import INTERCEPT, PredictionSpec, PredictionTask, RecoverySpec
from .traditional import AfshartousDeLeeuw, HuangOmittedVariable

TRADITIONAL_PREDICTION = PredictionSpec(
    outcome="Y", student=("X",), school=("W",), random_slope="X", interactions=(("X", "W"),), reml=False,
)
TRADITIONAL_RECOVERY = RecoverySpec(
    outcome="Y", student=("X",), school=("W1", "W2"), omitted=("W2",), report=("X", "W1"), reml=True,
)
_SPECS = {"traditional": (TRADITIONAL_PREDICTION, TRADITIONAL_RECOVERY)}


def _optional_factor(condition, name: str, default):
    """A factor of the condition, else ``default``, which (unlike :func:`condition_value`) may be None."""
    marker = object()
    value = condition_value(condition, name, marker)
    return default if value is marker else value


def condition_value(condition, name: str, default=None):
    """A factor of a condition, whether it is a mapping, a pandas Series or an object with attributes."""
    if isinstance(condition, (Mapping, pd.Series)):
        value = condition.get(name, default)
    else:
        value = getattr(condition, name, default)
    if value is None:
        raise MlsimkitError(f"condition {condition!r}: factor {name!r} is required")
    return value


def _n_schools(condition) -> int:
    n = condition_value(condition, "n_schools")
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise MlsimkitError(f"condition factor 'n_schools': expected a positive integer, got {n!r}") from None
    if n < 2:
        raise MlsimkitError(f"condition factor 'n_schools': expected at least 2 schools, got {n}")
    return n


def _spec(spec, which: int):
    if isinstance(spec, str):
        if spec not in _SPECS:
            raise MlsimkitError(f"spec {spec!r} unknown; expected one of {list(_SPECS)} or a spec object")
        return _SPECS[spec][which]
    return spec


# ===================================================================== generators from files
#: resolved path -> (file identity, generator): one loaded generator per file and process
_GENERATORS: dict[str, tuple] = {}


def _file_identity(path: str) -> tuple:
    """What tells a rewritten file from the one loaded: size, modification time (ns) and inode. Saving
    writes a new file and renames it over the old one (atomically), so a new model always gets a new
    inode; a stat costs microseconds, where hashing the file would cost milliseconds per replication."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def load_generator(path: str | Path):
    """A saved generator, loaded once per process: workers reuse it across replications (loading costs
    2-5 s: torch, the networks, CTGAN's transformer), and load it again when the file has changed since
    (e.g. Stage 2 or 6 retrained it under the same name)."""
    from .generators.base import load

    key = str(Path(path).resolve())
    try:
        ident = _file_identity(key)
    except OSError:
        ident = None  # load() below names the missing file
    hit = _GENERATORS.get(key)
    if hit is None or ident is None or hit[0] != ident:
        gen = load(key)
        _GENERATORS[key] = (ident, gen)
        return gen
    return hit[1]


def _resolve_generator(generator, generator_path):
    if generator is not None:
        return generator
    if generator_path is not None:
        return load_generator(generator_path)
    raise MlsimkitError("give 'generator' (a fitted generator) or 'generator_path' (a saved one)")


# ===================================================================== Demonstration 1
def generate_synthetic(condition, rng, *, generator=None, generator_path=None, min_cluster_size: int = 2) -> PredictionTask:
    """``n_schools`` synthetic schools from a trained generator, with one held-out student per school."""
    gen = _resolve_generator(generator, generator_path)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    data = gen.sample(_n_schools(condition), seed=rng)
    return PredictionTask(data, M.choose_holdout(data, rng, min_cluster_size=min_cluster_size))


def generate_traditional_prediction(condition, rng, *, n_per_school: int = 25, icc: float | None = None, sigma2: float = 0.5,
                                    r: float = 0.25, gamma=(1.0, 1.0, 1.0, 1.0), tau00=None, tau11=None,
                                    extra_holdout: bool = False) -> PredictionTask:
    """The Afshartous & de Leeuw design (:class:`~mlsimkit.traditional.AfshartousDeLeeuw`); ``icc``,
    ``n_per_school``, ``sigma2`` and ``r`` may also be factors of the condition (the condition wins)."""
    get = lambda k, d: condition_value(condition, k, d)  # noqa: E731
    icc = _optional_factor(condition, "icc", icc)  # None: the design gives tau00 instead
    dgp = AfshartousDeLeeuw(int(get("n_per_school", n_per_school)), None if icc is None else float(icc),
                            float(get("sigma2", sigma2)), float(get("r", r)), gamma, tau00=tau00, tau11=tau11,
                            extra_holdout=extra_holdout)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    data = dgp.sample(_n_schools(condition), seed=rng)
    return PredictionTask(data, M.choose_holdout(data, rng))


def analyse_prediction(condition, data, rng, *, rule: str, spec) -> list[dict]:
    """One prediction rule (``OLSFE``, ``Prior`` or ``Multilevel``) on one data set: a ``PMSE`` row."""
    spec = _spec(spec, 0)
    if rule not in M.PREDICTION_RULES:
        raise MlsimkitError(f"prediction rule {rule!r} unknown; expected one of {list(M.PREDICTION_RULES)}")
    task = M.as_task(data, min_cluster_size=spec.min_cluster_size)
    return M.prediction_rows(M.PREDICTION_RULES[rule](task, spec))


def analyse_prediction_methods(spec) -> dict:
    """``{"OLSFE": f, "Prior": f, "Multilevel": f}`` for :func:`mlsimkit.simulate.run` (picklable partials).

    ``spec``: a :class:`~mlsimkit.methods.PredictionSpec` (a study's: :func:`mlsimkit.objectives.prediction.spec`)
    or ``"traditional"`` (:data:`TRADITIONAL_PREDICTION`).
    """
    spec = _spec(spec, 0)
    return {rule: functools.partial(analyse_prediction, rule=rule, spec=spec) for rule in M.PREDICTION_METHODS}


def prediction_truth() -> pd.DataFrame:
    """Truth table for :func:`mlsimkit.performance.summarise`: PMSE has no true value (the measure is
    the mean of ``pred_error`` over replications), so ``truth`` is missing."""
    return pd.DataFrame({"parameter": ["PMSE"], "truth": [np.nan]})


# ===================================================================== Demonstration 2
@dataclass
class TrueModel:
    """The true random-intercept model of the recovery study (fitted on real data by :func:`fit_truth`).

    ``coefficients`` are named like the analysis models' columns (``Intercept``, ``x``,
    ``w[T.level]``, ...); ``tau00`` and ``sigma2`` are the school and student variances.
    """

    formula: str
    coefficients: pd.Series
    tau00: float
    sigma2: float
    spec: RecoverySpec

    def linear_predictor(self, data: MultilevelData) -> tuple[np.ndarray, np.ndarray, int]:
        d = M.build_design(data, None, self.spec.student, self.spec.school)
        names = d.names(self.spec.student) + d.names(self.spec.school)
        X, cols = d.matrix(names)
        missing = [c for c in cols if c not in self.coefficients.index]
        if missing:
            raise MlsimkitError(f"true model: no coefficient for column(s) {missing} (have {list(self.coefficients.index)})")
        return X @ self.coefficients.reindex(cols).to_numpy(float), d.groups, d.n_groups

    def draw_outcome(self, data: MultilevelData, rng) -> MultilevelData:
        """A copy of ``data`` whose outcome is drawn from the true model:
        ``y = X beta + u_j + e``, ``u_j ~ N(0, tau00)``, ``e ~ N(0, sigma2)``."""
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        eta, groups, J = self.linear_predictor(data)
        u = rng.normal(0.0, np.sqrt(self.tau00), J)
        e = rng.normal(0.0, np.sqrt(self.sigma2), eta.size)
        child = data.child.copy()
        child[self.spec.outcome] = eta + u[groups] + e
        tables = dict(data.tables)
        tables[data.levels[-1]] = child
        return MultilevelData(data.schema, tables, validate=False)

    def truth_table(self, report=None) -> pd.DataFrame:
        report = list(report or self.spec.report)
        return pd.DataFrame({"parameter": report, "truth": [float(self.coefficients[p]) for p in report]})


def truth_formula(spec: RecoverySpec, cluster_key: str) -> str:
    rhs = " + ".join(list(spec.student) + list(spec.school))
    return f"{spec.outcome} ~ {rhs} + (1 | {cluster_key})"


def fit_truth(real_data: MultilevelData, spec: RecoverySpec, *, backend: str = "mlsimkit") -> TrueModel:
    """Fit the true random-intercept model on the real data with :func:`mlsimkit.lmm.lmm` (REML)."""
    from .lmm import lmm

    formula = truth_formula(spec, real_data.cluster_key)
    res = lmm(formula, real_data.join_as_one(), reml=spec.reml, backend=backend)
    coefs = res.fe_params.copy().astype(float)
    coefs.index = [INTERCEPT if str(i) in ("(Intercept)", "Intercept", "const") else str(i) for i in coefs.index]
    cov = res.cov_re
    tau00 = float(np.asarray(cov, dtype=float).reshape(-1)[0])
    return TrueModel(formula, coefs, tau00, float(res.sigma2), spec)


def recovery_generate(condition, rng, *, truth: TrueModel, generator=None, generator_path=None) -> MultilevelData:
    """Synthetic covariates for ``n_schools`` schools, with a new outcome drawn from ``truth``."""
    gen = _resolve_generator(generator, generator_path)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    data = gen.sample(_n_schools(condition), seed=rng)
    return truth.draw_outcome(data, rng)


def generate_traditional_recovery(condition, rng, *, dgp: HuangOmittedVariable | None = None) -> MultilevelData:
    """``n_schools`` schools from the Huang design (default parameters) or the given one (e.g. the
    adjusted design of :func:`adjusted_recovery_dgp`)."""
    dgp = dgp or HuangOmittedVariable()
    return dgp.sample(_n_schools(condition), seed=rng)


def adjusted_recovery_dgp(truth: TrueModel, real: MultilevelData, *, student: str, observed: str,
                          omitted: str) -> HuangOmittedVariable:
    """Appendix S5.2: the traditional design with coefficients, variances and correlations of the real fit;
    ``student``, ``observed`` and ``omitted`` are the real columns that play ``X``, ``W1`` and ``W2``."""
    return HuangOmittedVariable.from_real(real, truth.coefficients, truth.tau00, truth.sigma2,
                                          outcome=truth.spec.outcome, student=student, observed=observed, omitted=omitted)


def analyse_recovery(condition, data, rng, *, model: str, spec) -> list[dict]:
    """One recovery model on one data set: rows for the coefficients in ``spec.report``."""
    return M.recovery_rows(data, _spec(spec, 1), model)


def recovery_methods(spec, models=M.RECOVERY_MODELS) -> dict:
    """``{"OLS", "OLS+IGM", "HLM", "HLM+IGM", "Oracle"}`` analyse callables (picklable partials) for a
    :class:`~mlsimkit.methods.RecoverySpec` or ``"traditional"`` (:data:`TRADITIONAL_RECOVERY`)."""
    spec = _spec(spec, 1)
    return {m: functools.partial(analyse_recovery, model=m, spec=spec) for m in models}


def recovery_truth(truth, spec=None) -> pd.DataFrame:
    """Truth table (``parameter``, ``truth``) of the reported coefficients, from a :class:`TrueModel`
    or a :class:`~mlsimkit.traditional.HuangOmittedVariable`."""
    if isinstance(truth, TrueModel):
        return truth.truth_table(None if spec is None else _spec(spec, 1).report)
    if isinstance(truth, HuangOmittedVariable):
        report = (_spec(spec, 1) if spec is not None else TRADITIONAL_RECOVERY).report
        coefs = truth.coefficients
        return pd.DataFrame({"parameter": list(report), "truth": [float(coefs[p]) for p in report]})
    raise MlsimkitError(f"recovery_truth: expected a TrueModel or HuangOmittedVariable, got {type(truth).__name__}")
