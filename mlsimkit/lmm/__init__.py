"""A fast one-factor linear mixed model engine (random intercepts and slopes, REML and ML).

>>> from mlsimkit.lmm import lmm
>>> res = lmm("MathAch ~ SES + Sector + (1 + SES | School)", data=df)     # doctest: +SKIP

Entry points
    :func:`lmm` (formula + DataFrame), :func:`fit_lmm` (numpy arrays), :func:`fit_many` (the same
    formula on many data sets), :class:`LMMDesign` (refit a prepared design with a new response).
    ``backend="statsmodels"`` fits with statsmodels MixedLM and returns the same result type.

Method
    Profiled REML/ML criterion from per-group sufficient statistics (Bates et al. 2015),
    analytic gradient, a safeguarded secant on the derivative (random intercept), BFGS (one
    random slope) or L-BFGS-B (more slopes) over the relative Cholesky factor theta, with an
    explicit boundary check.  Random-intercept and one-slope models are fitted for many data
    sets at once by :func:`fit_many` (designs built and checked for all data sets of one coding
    in one pass, stacked statistics, one vectorised criterion evaluation per step for all of
    them); a single fit is a batch of one.  Satterthwaite df as lmerTest.
    See ``_core`` and ``_model`` for the formulas and ``benchmarks/statsmodels_vs_lme4.md`` for
    validation against lme4.
"""

from ._core import SuffStats, evaluate, gradient
from ._formula import parse_formula
from ._model import LMMDesign, LMMResult, fit_lmm, fit_many, lmm, satterthwaite_df
from .errors import LMMDataError, LMMError, LMMFormulaError, LMMIdentificationError

__all__ = [
    "lmm", "fit_lmm", "fit_many", "LMMDesign", "LMMResult", "parse_formula", "satterthwaite_df",
    "SuffStats", "evaluate", "gradient",
    "LMMError", "LMMDataError", "LMMFormulaError", "LMMIdentificationError",
]
