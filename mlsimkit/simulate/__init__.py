"""Stage 4: simulation studies — design grid, scheduling-independent seeds, backends, store, resume.

    from mlsimkit.simulate import Design, run
    design = Design({"n": [20, 50], "sigma": [1.0, 2.0]})
    results = run(design, generate, {"mean": mean_fn, "median": median_fn}, reps=500, store="runs/x/sim")

See :func:`run` for the contract of ``generate`` and the methods, and :mod:`mlsimkit.performance` for
the measures computed from the long results table.
"""

from .design import Condition, Design, DesignError, condition_key
from .engine import STATUSES, SimulationError, load, replay, run
from .seeds import data_rng, data_seedseq, method_rng, method_seedseq
from .store import StoreError

__all__ = ["Condition", "Design", "DesignError", "condition_key", "run", "load", "replay", "STATUSES",
           "SimulationError", "StoreError", "data_rng", "data_seedseq", "method_rng", "method_seedseq"]
