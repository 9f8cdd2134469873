"""Errors of the mixed-model engine (all :class:`mlsimkit.errors.MlsimkitError`)."""

from __future__ import annotations

from ..errors import MlsimkitError


class LMMError(MlsimkitError):
    """Base class: a mixed model cannot be fitted to these inputs."""


class LMMFormulaError(LMMError):
    """The model formula is malformed or uses an unsupported construct."""


class LMMDataError(LMMError):
    """The data cannot enter the model (missing column, missing values, bad dtype, unseen level)."""


class LMMIdentificationError(LMMError):
    """The model is not identified on these data (one group, singletons only, collinear predictors)."""
