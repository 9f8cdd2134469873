"""Exceptions a user can act on.

Every error raised for bad input is a :class:`MlsimkitError` (a ``ValueError``) whose message names the
file, table, column or parameter at fault and what was expected.
"""

from __future__ import annotations


class MlsimkitError(ValueError):
    """Base class of the package's user-facing errors."""


class SchemaError(MlsimkitError):
    """The YAML schema itself is malformed."""


class DataValidationError(MlsimkitError):
    """The data do not match their schema (missing column, bad key, value out of range, ...)."""


class ParamsError(MlsimkitError):
    """A study's params file or a parameter passed to a notebook is wrong."""


class MissingArtifactError(MlsimkitError):
    """A stage's input file is missing: an earlier notebook has to run first."""


class FormatVersionError(MlsimkitError):
    """A saved file was written by an incompatible version of the package."""


def where(file=None, table=None, column=None) -> str:
    """Format the location of a problem: ``file 'x.csv', table 'students', column 'SES'``."""
    parts = []
    if file is not None:
        parts.append(f"file '{file}'")
    if table is not None:
        parts.append(f"table '{table}'")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)
