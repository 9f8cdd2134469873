"""Objective ``recovery`` (Demonstration 2 of Suk et al.): recovering coefficients when a school variable is omitted.

The params file declares the true model and what the analysis models leave out under ``model:``::

    model:
      outcome: y                 # numerical student-level column (redrawn from the true model)
      student: [x1, x2]          # student-level predictors of the true model
      school: [w1, w2, w3]       # school-level predictors of the true model
      omitted: [w3]              # school predictors OLS, OLS+IGM, HLM and HLM+IGM leave out (the oracle keeps them)
      report:                    # the coefficients that get result rows, with their level
        x1: student
        w1: school               # a categorical column's dummy is named 'w[T.level]'
      reml: true                 # the true model and the mixed models: REML (default) or ML
      alpha: 0.05                # 1 - the confidence level of the intervals

The true random-intercept model is fitted on the real data (:func:`~mlsimkit.demonstrations.fit_truth`);
synthetic covariates get an outcome drawn from it. Sources: every trained generator; ``traditional``, the
Huang design (settings under ``traditional:``, :class:`~mlsimkit.traditional.HuangOmittedVariable`);
``traditional-adjusted``, the same design with every value from the real fit (appendix S5.2), which maps
the first reported student coefficient to ``X``, the first reported school coefficient to ``W1`` and the
first omitted variable to ``W2`` (all three must be numerical columns).
"""

from __future__ import annotations

import functools

import pandas as pd

from ..schema import Schema
from ..tables import value_mcse
from ..traditional import HuangOmittedVariable
from . import _columns as C

MODEL_KEYS = ("outcome", "student", "school", "omitted", "report", "reml", "alpha")
TRADITIONAL = "traditional"
TRADITIONAL_ADJUSTED = "traditional-adjusted"
SOURCES = (TRADITIONAL, TRADITIONAL_ADJUSTED)
TRADITIONAL_KEYS = ("gamma", "rho_w", "rho_xw", "tau00", "sigma2", "cluster_size", "means", "sds", "icc_x")
MEASURES = ("bias", "rel_bias", "empse", "modelse", "relerror", "coverage", "becoverage", "fail_rate")
ABLATION_MEASURES = ("rel_bias", "relerror", "coverage")
#: The traditional designs' own variables (X student level; W1, W2 school level).
TRADITIONAL_LEVELS = {"X": "student", "W1": "school"}


# ============================================================================ params
def _report(model) -> dict:
    rep = model.get("report") or {}
    return dict(rep) if isinstance(rep, dict) else {r: None for r in rep} if isinstance(rep, list) else {}


def check_model(model, schema: Schema) -> list[tuple[str, str]]:
    """Problems of the ``model:`` mapping against ``schema`` (see the module docstring)."""
    if not isinstance(model, dict):
        return [("model", "expected a mapping with keys " + ", ".join(MODEL_KEYS))]
    out = C.unknown_keys("model", model, MODEL_KEYS)
    if "outcome" not in model:
        out.append(("model.outcome", "required: the numerical student-level outcome column"))
    else:
        out += C.column(schema, "model.outcome", model["outcome"], "student", numeric=True)
    student = model.get("student") if isinstance(model.get("student"), list) else []
    school = model.get("school") if isinstance(model.get("school"), list) else []
    out += C.column_list(schema, "model.student", model.get("student"), "student", allow_empty=False)
    out += C.column_list(schema, "model.school", model.get("school"), "school", allow_empty=False)
    if model.get("outcome") in student:
        out.append(("model.student", f"the outcome {model['outcome']!r} cannot also be a predictor"))
    omitted = model.get("omitted") or []
    if not isinstance(omitted, list) or not omitted:
        out.append(("model.omitted", f"expected a non-empty list of school predictors to omit, got {omitted!r}"))
        omitted = []
    for i, v in enumerate(omitted):
        if v not in school:
            out.append((f"model.omitted[{i}]", f"{v!r} must be one of the school predictors {school}"))
    rep = model.get("report")
    if not isinstance(rep, (dict, list)) or not rep:
        out.append(("model.report", f"expected coefficient names mapped to their level (student or school), got {rep!r}"))
    for name, level in _report(model).items():
        key = f"model.report.{name}"
        base, probs = C.coefficient_base(schema, key, name)
        out += probs
        if base is None or probs:
            continue
        actual = C.level_of_column(schema, base)
        if level is not None and level not in C.LEVELS:
            out.append((key, f"expected the level 'student' or 'school', got {level!r}"))
        elif level is not None and level != actual:
            out.append((key, f"column {base!r} is a {actual}-level variable, not {level}-level"))
        if base in omitted:
            out.append((key, f"{base!r} is omitted by the analysis models; report a variable they keep"))
        elif base not in student + school:
            out.append((key, f"{base!r} is not a predictor of the true model (model.student / model.school)"))
    if "reml" in model:
        out += C.boolean("model.reml", model["reml"])
    alpha = model.get("alpha", 0.05)
    if not isinstance(alpha, float) or not 0 < alpha < 1:
        out.append(("model.alpha", f"expected a number in (0, 1), got {alpha!r}"))
    return out


def check_sources(sources, model, schema: Schema) -> list[tuple[str, str]]:
    """The ``traditional-adjusted`` source needs numerical columns for X, W1 and W2 (see the module docstring)."""
    out = []
    if TRADITIONAL_ADJUSTED not in sources:
        return out
    for key, name in _adjusted_roles(model, schema).items():
        if name is None:
            out.append(("simulation.sources", f"'traditional-adjusted' needs a reported {key} coefficient"
                        if key != "omitted" else "'traditional-adjusted' needs an omitted school variable"))
            continue
        base, probs = C.coefficient_base(schema, "", name)
        if base is None or C.level_of_column(schema, base) is None or (probs and "[T." not in name):
            continue  # a bad name: reported by check_model
        if "[T." in name or not schema.column(base).is_numerical:
            where = f"model.report.{name}" if key != "omitted" else "model.omitted"
            out.append((where, f"'traditional-adjusted' (in simulation.sources) needs a numerical column to play "
                               f"its {key} variable; {base!r} is {schema.column(base).kind}"))
    return out


def check_traditional(settings) -> list[tuple[str, str]]:
    """Problems of the ``traditional:`` mapping (the Huang design)."""
    return C.check_design(settings, TRADITIONAL_KEYS, lambda kw: HuangOmittedVariable(**kw))
    try:
        HuangOmittedVariable(**{k: v for k, v in settings.items() if k in TRADITIONAL_KEYS})
    except (ValueError, TypeError) as exc:
        out.append(("traditional", str(exc)))
    return out


def spec(study):
    """The analysis models of ``study`` (its ``model:`` mapping) as a :class:`~mlsimkit.methods.RecoverySpec`."""
    from ..methods import RecoverySpec

    m = study.spec["model"]
    return RecoverySpec(outcome=m["outcome"], student=tuple(m["student"]), school=tuple(m["school"]),
                        omitted=tuple(m.get("omitted") or ()), report=tuple(_report(m)),
                        reml=bool(m.get("reml", True)), alpha=float(m.get("alpha", 0.05)))


def _adjusted_roles(model, schema: Schema) -> dict:
    rep = _report(model)
    lv = {n: C.level_of_column(schema, C.coefficient_base(schema, "", n)[0] or n) for n in rep}
    first = lambda level: next((n for n, l in lv.items() if l == level), None)  # noqa: E731
    omitted = (model.get("omitted") or [None])[0]
    return {"student": first("student"), "school": first("school"), "omitted": omitted}


# ============================================================================ Stage 4
def prepare(study, data) -> dict:
    """The true model, fitted once on the real data."""
    from .. import demonstrations as demo

    return {"truth": demo.fit_truth(data, spec(study))}


def source(study, data, name: str, path=None, fixed=None) -> tuple:
    """``(generate, methods, truth)`` of a source: ``traditional``, ``traditional-adjusted`` or a saved generator."""
    from .. import demonstrations as demo

    truth_model = (fixed or {}).get("truth") or prepare(study, data)["truth"]
    if name in SOURCES:
        if name == TRADITIONAL:
            dgp = HuangOmittedVariable(**(study.get("traditional", {}) or {}))
        else:
            roles = _adjusted_roles(study.spec["model"], data.schema)
            dgp = demo.adjusted_recovery_dgp(truth_model, data, student=roles["student"], observed=roles["school"],
                                             omitted=roles["omitted"])
        return (functools.partial(demo.generate_traditional_recovery, dgp=dgp),
                demo.recovery_methods(demo.TRADITIONAL_RECOVERY), demo.recovery_truth(dgp, demo.TRADITIONAL_RECOVERY))
    return (functools.partial(demo.recovery_generate, truth=truth_model, generator_path=str(path)),
            demo.recovery_methods(truth_model.spec), demo.recovery_truth(truth_model))


# ============================================================================ Stage 5
def level_of_parameters(study) -> dict:
    """``{parameter: "student" | "school"}`` for the study's reported coefficients (as declared, or from the
    schema) and the traditional designs' ``X`` and ``W1``."""
    schema = study.schema()
    out = {}
    for name, level in _report(study.spec["model"]).items():
        base, _ = C.coefficient_base(schema, "", name)
        out[name] = level or C.level_of_column(schema, base)
    return {**out, **TRADITIONAL_LEVELS}


def tables(study, summary: pd.DataFrame) -> dict:
    """Relative bias, relative SE error and coverage (MCSE) by model and number of schools, per source and level."""
    out = {}
    lv = level_of_parameters(study)
    d = summary[summary["measure"].isin(["rel_bias", "relerror", "coverage"])].copy()
    d["cell"] = value_mcse(d, 3)
    d["level"] = d["parameter"].map(lv)
    for (src, level), sub in d.groupby(["source", "level"], sort=False):
        out[f"{level}-level coefficient ({', '.join(sub['parameter'].unique())}), {src}"] = sub.pivot_table(
            index=["measure", "method"], columns="n_schools", values="cell", aggfunc="first", sort=False)
    return out


def figures(study, summary: pd.DataFrame) -> dict:
    """Figure 8 of the paper: one figure per level."""
    from .. import figures as F

    lv = level_of_parameters(study)
    return {f"{lvl}-level coefficient": F.recovery_panels(summary, lv, lvl) for lvl in ("student", "school")}


def findings(study, summary: pd.DataFrame) -> str:
    """Per source: relative bias and coverage of the student-level coefficient at the largest design, and
    the trend of school-level coverage with the number of schools."""
    lines = []
    lv = level_of_parameters(study)
    for src, sub in summary.groupby("source", sort=False):
        nmax = sub["n_schools"].max()
        for meas, label in (("rel_bias", "relative bias (%)"), ("coverage", "coverage")):
            m = sub[(sub["measure"] == meas) & (sub["n_schools"] == nmax)]
            parts = [f"{r.method} {r.value:.1f} ({r.mcse:.1f})" if meas == "rel_bias" else
                     f"{r.method} {r.value:.3f} ({r.mcse:.3f})" for r in m.itertuples()
                     if lv.get(r.parameter) == "student"]
            lines.append(f"- **{src}**, {nmax} schools, student-level coefficient, {label}: " + "; ".join(parts) + ".")
        cov = sub[(sub["measure"] == "coverage") & (sub["parameter"].map(lv) == "school")]
        trend = []
        for meth, ms in cov.groupby("method", sort=False):
            ms = ms.sort_values("n_schools")
            trend.append(f"{meth} {ms['value'].iloc[0]:.3f} → {ms['value'].iloc[-1]:.3f}")
        lines.append(f"  - school-level coverage from {sub['n_schools'].min()} to {nmax} schools: " + "; ".join(trend) + ".")
    return "\n".join(lines)
