"""mlsimkit: AI-based Monte Carlo simulation studies on synthetic multilevel data.

Stage 1 (schema and data) lives in :mod:`mlsimkit.schema`, :mod:`mlsimkit.data` and
:mod:`mlsimkit.datasets`; the runner that executes the stage notebooks into the book in
:mod:`mlsimkit.runner`.
"""

from .data import MultilevelData, read_csv
from .errors import MlsimkitError
from .schema import Schema

__version__ = "0.1.0"
__all__ = ["MultilevelData", "Schema", "read_csv", "MlsimkitError", "__version__"]
