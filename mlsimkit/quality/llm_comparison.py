"""The second paper's findings (Khalil et al., *artificial students*: CTGAN against LLM-based generators)
as checks on this build's Stage 3 report.

The paper reports, on five student data sets and with synthcity's metrics: CTGAN had the highest Quality
(the mean of α-precision, β-recall and authenticity); an LLM (DialoGPT through GReaT) was the hardest to
detect; every generator reached about the same SDIS; the synthetic data kept the statistical distributions
(Wasserstein and Jensen-Shannon distances) and trained classifiers that did well on real data. It gives
no uncertainty and no real-vs-real reference, so "highest" and "kept" cannot be judged from the paper itself.
Here each finding becomes a rule on the Stage 3 summary (:meth:`mlsimkit.quality.QualityReport.summary`),
with the standard error of a generator's mean over its ``n_synthetic`` candidate data sets and the band of
two halves of the real schools:

- *highest*: the difference to the best other generator, beyond two standard errors of the difference
  (``inconclusive`` within them, or with one candidate data set per generator, where there is no SE);
- *about the same SDIS*: the generators' SDIS range is narrower than the real-vs-real band;
- *kept the distributions*: each distance at or below the band's upper end (no worse than real vs real);
- *predictively useful*: TSTR AUROC on the hold-out schools at or above the band's lower end.

Which generator is CTGAN and which is LLM-style is read from the trained models' classes, so a study
names its generators as it likes; a finding about a kind of generator the study did not train says so.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

CTGAN, LLM = "CTGANGenerator", "TabularTransformerGenerator"


def _item(summary: pd.DataFrame, item: str, names) -> pd.DataFrame:
    rows = summary[(summary["domain"] == "seed-001") & (summary["item"] == item)].set_index("dataset")
    return rows.reindex([n for n in names if n in rows.index])


def _highest(rows: pd.DataFrame, who: str, n: int) -> tuple[str, str]:
    """(measured, verdict) for "``who`` has the highest value"."""
    others = rows.drop(index=who)
    if others.empty:
        return f"{who} {rows.loc[who, 'value']:.3f}; no other generator", "not applicable"
    rival = others["value"].idxmax()
    diff = rows.loc[who, "value"] - rows.loc[rival, "value"]
    se = float(np.hypot(rows.loc[who, "sd"], rows.loc[rival, "sd"]) / np.sqrt(n)) if n > 1 else np.nan
    text = (f"{who} {rows.loc[who, 'value']:.3f}, best other ({rival}) {rows.loc[rival, 'value']:.3f}; "
            f"difference {diff:+.3f}" + (f" (SE {se:.3f})" if np.isfinite(se) else " (no SE: one data set each)"))
    if not np.isfinite(se) or abs(diff) <= 2 * se:
        return text, "inconclusive"
    return text, "holds" if diff > 0 else "does not hold"


def _band(rows: pd.DataFrame, upper: bool) -> tuple[str, str]:
    """(measured, verdict) for "every generator is no worse than real vs real" (``upper``: a distance)."""
    edge = rows["ref_hi" if upper else "ref_lo"].iloc[0]
    ok = rows["value"] <= edge if upper else rows["value"] >= edge
    text = ", ".join(f"{n} {v:.3f}" for n, v in rows["value"].items()) + \
        f"; real vs real {rows['reference'].iloc[0]:.3f} ({rows['ref_lo'].iloc[0]:.3f}-{rows['ref_hi'].iloc[0]:.3f})"
    if ok.all():
        return text, "holds"
    return text, "does not hold: " + ", ".join(ok.index[~ok.to_numpy()])


def claims(summary: pd.DataFrame, generators: Mapping, n_synthetic: int) -> pd.DataFrame:
    """One row per finding of the paper: what it says, what this build measured, and the verdict
    (``holds``, ``does not hold``, ``inconclusive`` or ``not applicable``). ``generators``: the trained
    models by name (Stage 2), ``n_synthetic``: candidate data sets per generator (Stage 3)."""
    names = list(generators)
    if not names:
        raise ValueError("claims(): no generators to compare")
    kinds = {name: type(g).__name__ for name, g in generators.items()}
    by_kind = {k: [n for n in names if kinds[n] == k] for k in (CTGAN, LLM)}
    rows = []

    def add(finding, measured_verdict):
        rows.append({"the paper's finding": finding, "measured here": measured_verdict[0],
                     "verdict": measured_verdict[1]})

    quality = _item(summary, "quality (seed-001)", names)
    detect = _item(summary, "detection score", names)
    for kind, item, frame, finding in (
            (CTGAN, "quality", quality, "CTGAN has the highest Quality (mean of α-precision, β-recall, authenticity)"),
            (LLM, "detection", detect, "the LLM-style generator is the hardest to detect (highest detection score)")):
        who = by_kind[kind]
        add(finding, _highest(frame, who[0], n_synthetic) if who else
            (f"no {kind} among the generators ({', '.join(names)})", "not applicable"))
    sdis = _item(summary, "SDIS", names)
    spread = sdis["value"].max() - sdis["value"].min()
    width = sdis["ref_hi"].iloc[0] - sdis["ref_lo"].iloc[0]
    add("every generator reaches about the same SDIS",
        (f"SDIS range {spread:.3f} ({', '.join(f'{n} {v:.3f}' for n, v in sdis['value'].items())}); "
         f"real-vs-real band width {width:.3f}", "holds" if spread < width else "does not hold"))
    for item in ("Wasserstein distance", "Jensen-Shannon distance"):
        add(f"the synthetic data keep the distributions ({item}, no worse than real vs real)",
            _band(_item(summary, item, names), upper=True))
    add("a classifier trained on synthetic data does well on real data (TSTR AUROC on unseen schools)",
        _band(_item(summary, "TSTR AUROC (OOD)", names), upper=False))
    return pd.DataFrame(rows)


def sentence(table: pd.DataFrame) -> str:
    """How many of the paper's findings this build reproduced, as one Markdown sentence."""
    v = table["verdict"].str.split(":").str[0]
    applicable = v[v != "not applicable"]
    k = {v: int((applicable == v).sum()) for v in ("holds", "does not hold", "inconclusive")}
    return (f"Of the second paper's {len(table)} findings, {len(applicable)} apply to this study's generators: "
            f"{k['holds']} hold{'s' if k['holds'] == 1 else ''}, {k['does not hold']} "
            f"{'does' if k['does not hold'] == 1 else 'do'} not, {k['inconclusive']} "
            f"{'is' if k['inconclusive'] == 1 else 'are'} inconclusive.")
