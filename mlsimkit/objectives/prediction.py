"""Objective ``prediction`` (Demonstration 1 of Suk et al.): which prediction rule predicts a new student best.

The params file declares the analysis model under ``model:``::

    model:
      outcome: y               # numerical student-level column
      student: [x1, x2]        # student-level predictors
      school: [w1]             # school-level predictors
      random_slope: x1         # a numerical student predictor, or null (random intercept only)
      interactions: [[x1, w1]] # cross-level products (student, school); default none
      reml: true               # REML (lmer's default) or false for maximum likelihood
      min_cluster_size: 2      # schools smaller than this hold nobody out (default 2)

Sources: every trained generator, and ``traditional``, the Afshartous & de Leeuw design (its settings under
``traditional:``, every published parameter: ``n_per_school``, ``icc`` or ``tau00``, ``tau11``, ``sigma2``,
``r``, ``gamma``, ``extra_holdout``, and ``reml`` of its analysis, default false = ML as they fit; see
:class:`~mlsimkit.traditional.AfshartousDeLeeuw`), analysed with
:data:`~mlsimkit.demonstrations.TRADITIONAL_PREDICTION`. Methods: the OLSFE, prior and multilevel rules;
measure: PMSE (with the failure rate).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd

from ..schema import Schema
from ..tables import value_mcse
from . import _columns as C

MODEL_KEYS = ("outcome", "student", "school", "random_slope", "interactions", "reml", "min_cluster_size")
TRADITIONAL = "traditional"
SOURCES = (TRADITIONAL,)
TRADITIONAL_KEYS = ("n_per_school", "icc", "sigma2", "r", "gamma", "tau00", "tau11", "extra_holdout", "reml")
MEASURES = ("pmse", "fail_rate")
ABLATION_MEASURES = ("pmse",)


# ============================================================================ params
def check_model(model, schema: Schema) -> list[tuple[str, str]]:
    """Problems of the ``model:`` mapping against ``schema`` (see the module docstring)."""
    if not isinstance(model, dict):
        return [("model", "expected a mapping with keys " + ", ".join(MODEL_KEYS))]
    out = C.unknown_keys("model", model, MODEL_KEYS)
    if "outcome" not in model:
        out.append(("model.outcome", "required: the numerical student-level outcome column"))
    else:
        out += C.column(schema, "model.outcome", model["outcome"], "student", numeric=True)
    student, school = model.get("student") or [], model.get("school") or []
    out += C.column_list(schema, "model.student", model.get("student"), "student", allow_empty=False)
    out += C.column_list(schema, "model.school", model.get("school"), "school")
    if isinstance(student, list) and model.get("outcome") in student:
        out.append(("model.student", f"the outcome {model['outcome']!r} cannot also be a predictor"))
    slope = model.get("random_slope")
    if slope is not None:
        out += C.column(schema, "model.random_slope", slope, "student", numeric=True)
        if isinstance(student, list) and slope not in student:
            out.append(("model.random_slope", f"{slope!r} must be one of the student predictors {student}"))
    inter = model.get("interactions") or []
    if not isinstance(inter, list):
        out.append(("model.interactions", f"expected a list of [student, school] pairs, got {inter!r}"))
    else:
        for i, pair in enumerate(inter):
            if not (isinstance(pair, list) and len(pair) == 2) or pair[0] not in student or pair[1] not in school:
                out.append((f"model.interactions[{i}]", f"expected [student predictor, school predictor] from "
                                                        f"{student} and {school}, got {pair!r}"))
    if "reml" in model:
        out += C.boolean("model.reml", model["reml"])
    mcs = model.get("min_cluster_size", 2)
    if not isinstance(mcs, int) or isinstance(mcs, bool) or mcs < 2:
        out.append(("model.min_cluster_size", f"expected an integer >= 2, got {mcs!r}"))
    return out


def check_traditional(settings) -> list[tuple[str, str]]:
    """Problems of the ``traditional:`` mapping (the Afshartous & de Leeuw design)."""
    from ..traditional import AfshartousDeLeeuw

    out = C.check_design(settings, TRADITIONAL_KEYS,
                         lambda kw: AfshartousDeLeeuw(**{k: v for k, v in kw.items() if k != "reml"}))
    if isinstance(settings, dict) and "reml" in settings:
        out += C.boolean("traditional.reml", settings["reml"])
    return out
    try:
        from ..traditional import AfshartousDeLeeuw

        AfshartousDeLeeuw(**{k: v for k, v in settings.items() if k in TRADITIONAL_KEYS and k != "reml"})
        if "reml" in settings:
            out += C.boolean("traditional.reml", settings["reml"])
    except (ValueError, TypeError) as exc:
        out.append(("traditional", str(exc)))
    return out


def spec(study):
    """The analysis model of ``study`` (its ``model:`` mapping) as a :class:`~mlsimkit.methods.PredictionSpec`."""
    from ..methods import PredictionSpec

    m = study.spec["model"]
    return PredictionSpec(outcome=m["outcome"], student=tuple(m["student"]), school=tuple(m.get("school") or ()),
                          random_slope=m.get("random_slope"),
                          interactions=tuple(tuple(p) for p in (m.get("interactions") or ())),
                          reml=bool(m.get("reml", True)), min_cluster_size=int(m.get("min_cluster_size", 2)))


# ============================================================================ Stage 4
def prepare(study, data) -> dict:
    """Nothing to fit once: the truth of PMSE is the held-out students themselves."""
    return {}


def source(study, data, name: str, path=None, fixed=None) -> tuple:
    """``(generate, methods, truth)`` of a source: ``traditional`` or a saved generator at ``path``."""
    from .. import demonstrations as demo

    if name == TRADITIONAL:
        trad = dict(study.get("traditional", {}) or {})
        analysis = dataclasses.replace(demo.TRADITIONAL_PREDICTION, reml=bool(trad.pop("reml", False)))
        return (functools.partial(demo.generate_traditional_prediction, **trad),
                demo.analyse_prediction_methods(analysis), demo.prediction_truth())
    s = spec(study)
    return (functools.partial(demo.generate_synthetic, generator_path=str(path), min_cluster_size=s.min_cluster_size),
            demo.analyse_prediction_methods(s), demo.prediction_truth())


# ============================================================================ Stage 5
def level_of_parameters(study) -> dict:
    """PMSE is not a coefficient: no levels."""
    return {}


def tables(study, summary: pd.DataFrame) -> dict:
    """PMSE (MCSE) by rule (rows) and number of schools (columns), one table per source."""
    out = {}
    d = summary[summary["measure"] == "pmse"].copy()
    d["cell"] = value_mcse(d, 3)
    for src, sub in d.groupby("source", sort=False):
        out[f"PMSE (MCSE), {src}"] = sub.pivot_table(index="method", columns="n_schools", values="cell",
                                                      aggfunc="first", sort=False)
    return out


def figures(study, summary: pd.DataFrame) -> dict:
    """Figure 5 of the paper: PMSE by number of schools, one panel per source."""
    from .. import figures as F

    return {"PMSE by number of schools": F.pmse_by_schools(summary)}


def findings(study, summary: pd.DataFrame) -> str:
    """Per source: the rule with the lowest PMSE in most conditions, and by how much (paired MCSE)."""
    from ..workflow import USABLE, simulation_results

    lines = []
    res, _ = simulation_results(study)
    res = res[res["status"].isin(USABLE) & (res["parameter"] == "PMSE")]
    d = summary[summary["measure"] == "pmse"]
    for src, sub in d.groupby("source", sort=False):
        wins, n_cond = [], 0
        for n, cond in sub.groupby("n_schools"):
            n_cond += 1
            cond = cond.sort_values("value")
            best, second = cond.iloc[0]["method"], cond.iloc[1]["method"]
            # methods see the same data sets: the MCSE of the difference is that of the paired differences
            r = res[(res["source"] == src) & (res["n_schools"] == n)].pivot_table(
                index="rep", columns="method", values="pred_error")
            diff = (r[second] - r[best]).dropna()
            wins.append((n, best, diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))))
        counts = pd.Series([w[1] for w in wins]).value_counts()
        top = counts.index[0]
        clear = sum(1 for w in wins if w[1] == top and w[2] > 2 * w[3])
        lines.append(f"- **{src}**: the {top} rule has the lowest PMSE in {counts.iloc[0]} of {n_cond} conditions, "
                     f"ahead of the runner-up by more than 2 MCSE of the paired difference in {clear}.")
        for m, ms in sub.groupby("method", sort=False):
            ms = ms.sort_values("n_schools")
            lo, hi = ms.iloc[0], ms.iloc[-1]
            lines.append(f"  - {m}: PMSE {lo['value']:.2f} ({lo['mcse']:.2f}) with {lo['n_schools']} schools, "
                         f"{hi['value']:.2f} ({hi['mcse']:.2f}) with {hi['n_schools']} schools.")
    return "\n".join(lines)
