"""Causal inference on multilevel data with a school-level treatment (Demonstration 3, issue 13).

- :mod:`~mlsimkit.causal.estimators`: the estimator engine (DiM, OR, IPW, AIPW, TMLE; single-level and
  multilevel-aware nuisance models, cross-fitted by school, cluster-robust influence-function SEs) and
  the overlap diagnostics (:func:`~mlsimkit.causal.estimators.overlap_table`).
- :mod:`~mlsimkit.causal.hybrid`: the hybrid synthesizer of the causal paper (covariates from a generator,
  treatment and outcome from learned nuisance models) with the exact true ATE and ATT.
- :mod:`~mlsimkit.causal.fidelity`: causal fidelity of synthetic data, the paper's Figure 1 (the ATE a fully
  generative generator implies against its hybrid data, beside TSTR and DCR) and the DCR privacy of hybrid
  data against held-out schools.
- :mod:`~mlsimkit.causal.augmentation`: targeted synthetic augmentation for weak overlap (extreme-propensity
  schools paired with nearby synthetic schools of the other arm), the engine run on augmented data
  (:func:`~mlsimkit.causal.augmentation.estimate_ate_augmented`) and its with/without experiment.
- :mod:`~mlsimkit.causal.examples`: a known data-generating process for tests and benchmarks.

Paper: *Generative Synthetic Data for Causal Inference: Pitfalls, Remedies, and Opportunities*
(arXiv 2604.23904), ``../shared/papers/synthetic-data-causal-inference.txt``.
"""

from .estimators import (ESTIMATORS, VERSIONS, CausalSpec, Prepared, estimate_ate, overlap_table, prepare,
                         school_folds)

__all__ = ["ESTIMATORS", "VERSIONS", "CausalSpec", "Prepared", "estimate_ate", "overlap_table", "prepare",
           "school_folds"]
