"""Stage 3: quality evaluation of synthetic multilevel data (Suk et al., section 3.4), with a real-vs-real reference.

Main entry point::

    from mlsimkit import quality
    rep = quality.evaluate(real, {"ClavaDDPM": [syn1, syn2, ...]}, reference_splits=5, bootstrap=20, efficacy="fast")
    rep.table          # tidy long table: dataset, domain, subdomain, metric, level, variables, value, sd, lo, hi,
                       # reference, ref_lo, ref_hi
    rep.summary()      # domain averages as in Table S2, with Table 1 labels and the reference
    rep.figure_icc(); rep.to_html("quality.html")

Privacy and the out-of-distribution score need real schools the generator never saw: pass ``holdout`` (those
schools) and ``holdout_synthetic`` (data sets from the same generators trained without them); see
:func:`evaluate`. Metrics that a generator makes 1 by construction are declared with ``by_construction`` and
left out of the domain averages. A score above the real-vs-real band is not better (:mod:`.reference`).

Modules: :mod:`.within` (within-table fidelity), :mod:`.between` (between-table fidelity, ICC and reliability
similarity), :mod:`.efficacy` (ML efficacy, TSTR vs TRTR), :mod:`.privacy` (generalization, DCR),
:mod:`.seed001` (Wasserstein, Jensen-Shannon, alpha-precision, beta-recall, authenticity, detection, SDIS),
:mod:`.reference` (real-vs-real halves, hold-out split, bootstrap, the shuffled-schools data set), :mod:`.report`;
validity (the share of values outside the real range) is in :mod:`.within`.
"""

from .reference import shuffled_schools
from .reference import holdout_split
from .report import PROFILE_SETTINGS, QualityReport, default_settings, evaluate, evaluate_settings, label, summarise_rows

__all__ = ["evaluate", "QualityReport", "label", "shuffled_schools", "holdout_split", "summarise_rows", "default_settings",
           "evaluate_settings", "PROFILE_SETTINGS"]
