"""The paper's findings (Suk et al., sections 4.5, 5.5 and S5.1) checked against this build's numbers.

Each claim is a sentence from the paper and a test computed on :func:`mlsimkit.performance.summarise`
output; :func:`compare` returns one row per claim with what this build measured and whether it agrees.
Sources are named as in the study's params: the simulation generator (AI-based), ``ctgan`` (the CTGAN
contrast of appendix S5.1), ``traditional`` and ``traditional-adjusted``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _series(summary, source, measure, method, parameter=None):
    d = summary[(summary["source"] == source) & (summary["measure"] == measure) & (summary["method"] == method)]
    if parameter is not None:
        d = d[d["parameter"] == parameter]
    return d.sort_values("n_schools").set_index("n_schools")[["value", "mcse"]]


def _fmt(s: pd.DataFrame, digits=2) -> str:
    return ", ".join(f"{n}: {v:.{digits}f}" for n, v in s["value"].items())


def _row(claim, source, measured, agrees):
    return {"paper says": claim, "source": source, "this build": measured,
            "agrees": "yes" if agrees else "no"}


def prediction_claims(summary: pd.DataFrame, ai: str, ctgan: str | None = "ctgan") -> pd.DataFrame:
    rows = []
    pm = summary[summary["measure"] == "pmse"]
    for src, label in ((ai, "AI-based"), ("traditional", "traditional")):
        if src not in set(pm["source"]):
            continue
        d = pm[pm["source"] == src]
        best = d.loc[d.groupby("n_schools")["value"].idxmin()].set_index("n_schools")["method"]
        rows.append(_row(f"{label}: the multilevel rule has the lowest PMSE", src,
                         "lowest by number of schools: " + ", ".join(f"{n}: {m}" for n, m in best.items()),
                         (best == "Multilevel").all()))
    if ai in set(pm["source"]):
        parts, ok = [], True
        for m in ("OLSFE", "Prior", "Multilevel"):
            s = _series(pm, ai, "pmse", m)
            parts.append(f"{m} {s['value'].iloc[0]:.2f} → {s['value'].iloc[-1]:.2f}")
            ok &= s["value"].iloc[-1] < s["value"].iloc[0]
        rows.append(_row("AI-based: PMSE decreases as the number of schools grows, for all three rules", ai,
                         "; ".join(parts), ok))
    if "traditional" in set(pm["source"]):
        s = _series(pm, "traditional", "pmse", "Prior")
        rows.append(_row("traditional: the prior rule gets worse as the number of schools grows", "traditional",
                         f"Prior: {_fmt(s, 3)}", s["value"].iloc[-1] > s["value"].iloc[0]))
    if ctgan and ctgan in set(pm["source"]) and ctgan != ai:
        d = pm[pm["source"] == ctgan]
        spread = d.groupby("n_schools")["value"].agg(lambda v: (v.max() - v.min()) / v.mean())
        rows.append(_row("CTGAN data (S5.1): the three rules behave almost identically", ctgan,
                         "largest relative spread between rules: " + f"{spread.max():.1%}", spread.max() < 0.05))
    return pd.DataFrame(rows)


def recovery_claims(summary: pd.DataFrame, ai: str, level_of: dict) -> pd.DataFrame:
    rows = []
    rb = summary[summary["measure"] == "rel_bias"]
    for src in [s for s in (ai, "traditional") if s in set(rb["source"])]:
        student = [p for p in rb[rb["source"] == src]["parameter"].unique() if level_of.get(p) == "student"]
        school = [p for p in rb[rb["source"] == src]["parameter"].unique() if level_of.get(p) == "school"]
        if student:
            p = student[0]
            ols, hlm = _series(rb, src, "rel_bias", "OLS", p), _series(rb, src, "rel_bias", "HLM", p)
            rows.append(_row("student-level coefficient: HLM is less biased than OLS", src,
                             f"|rel. bias| OLS {_fmt(ols.abs(), 1)}; HLM {_fmt(hlm.abs(), 1)}",
                             bool((hlm["value"].abs() <= ols["value"].abs()).all())))
            ok, parts = True, []
            oracle = _series(rb, src, "rel_bias", "Oracle", p)
            for m in ("OLS+IGM", "HLM+IGM"):
                s = _series(rb, src, "rel_bias", m, p)
                gap = (s["value"] - oracle["value"]).abs()
                tol = 2 * np.hypot(s["mcse"], oracle["mcse"]) + 1.0
                ok &= bool((gap <= tol).all())
                parts.append(f"{m} − Oracle: {_fmt(s - oracle, 1)}")
            rows.append(_row("student-level coefficient: adding group means (IGM) removes the bias (close to the "
                             "oracle)", src, "; ".join(parts) + " (agreement: within 2 MCSE + 1 point)", ok))
        if school:
            p = school[0]
            ols, hlm = _series(rb, src, "rel_bias", "OLS", p), _series(rb, src, "rel_bias", "HLM", p)
            gap = (ols["value"] - hlm["value"]).abs()
            rows.append(_row("school-level coefficient: OLS and HLM are similarly biased", src,
                             f"rel. bias OLS {_fmt(ols, 1)}; HLM {_fmt(hlm, 1)}",
                             bool((gap <= 0.2 * np.maximum(ols["value"].abs(), hlm["value"].abs()) + 2).all())))
    cov = summary[summary["measure"] == "coverage"]
    for src, direction in ((ai, "increases"), ("traditional", "decreases")):
        if src not in set(cov["source"]):
            continue
        d = cov[(cov["source"] == src) & (cov["method"].isin(["OLS", "OLS+IGM", "HLM", "HLM+IGM"]))]
        first = d[d["n_schools"] == d["n_schools"].min()]["value"].mean()
        last = d[d["n_schools"] == d["n_schools"].max()]["value"].mean()
        ok = last > first if direction == "increases" else last < first
        rows.append(_row(f"coverage {direction} with the number of schools (mean over the four models and both "
                         "coefficients)", src, f"{first:.3f} → {last:.3f}", ok))
    return pd.DataFrame(rows)


def compare(study, summary: pd.DataFrame, ai: str) -> pd.DataFrame:
    """The paper's findings for this study's objective, with this build's numbers and a verdict."""
    if study.objective == "prediction":
        return prediction_claims(summary, ai)
    from .workflow import level_of_parameters

    return recovery_claims(summary, ai, level_of_parameters(study))
