"""The papers' findings (Suk et al., sections 4.5, 5.5, 6.2, S5.1 and S5.2; for the causal objective the
synthetic-data causal inference paper's estimator benchmark) decided by Monte Carlo error.

Each finding is a declared test, :class:`Claim`: the paper's sentence, the data source it is about, the
quantity measured (a paired difference between two methods, a level, or a difference between ablation
scenarios), the kind of comparison, the conditions it covers and, for "≈" claims, the equivalence margin.
A test gives one of three verdicts, never a bare "agrees":

* **yes** — the data support the claim beyond Monte Carlo error (|z| ≥ 2 in the claimed direction);
* **no** — the data contradict it beyond Monte Carlo error;
* **inconclusive** — the difference is within 2 MCSE of the decision's boundary; more replications would
  decide it (:func:`mlsimkit.performance.reps_to_decide` says how many).

The comparisons, with d the estimate and z its distance from the decision's boundary in MCSEs, positive
where it supports the claim:

============  ======================================================================================
test          verdict
============  ======================================================================================
positive      the quantity is > 0 at every condition: yes if z ≥ 2 at all, no if z ≤ −2 at any
differs       the quantity is outside ±margin: yes if (|d| − margin)/MCSE ≥ 2, no if ≤ −2
equivalent    the quantity is inside ±margin (two one-sided tests, TOST): z = (margin − |d|)/MCSE,
              yes if z ≥ 2 at every condition, no if z ≤ −2 at any
increases /   a trend over *all* numbers of schools: the least-squares slope of the measure on log J
decreases     (MCSE from the conditions' MCSEs, conditions being independent data sets); yes if the
              slope's z ≥ 2 in the claimed direction and no step between neighbouring sizes goes
              against it by 2 MCSE; no if the slope or any step goes against it by 2 MCSE
============  ======================================================================================

A claim made of several parts (several conditions, methods or scenarios) is *yes* when every part is
yes, *no* when any part is no, *inconclusive* otherwise.  Differences between methods are paired: the
methods were run on the same data sets, so the MCSE is that of the per-replication differences
(:func:`mlsimkit.performance.paired_difference`).  Differences between numbers of schools or between
ablation scenarios are between independent simulations: their MCSE is the root sum of squares.

The claims: Demonstration 1 (:func:`prediction_claims`) — the multilevel rule has the lowest PMSE
(AI-based, traditional), PMSE decreases with the number of schools (AI-based), the prior rule gets worse
(traditional), the three rules are almost identical on CTGAN data (S5.1); Demonstration 2
(:func:`recovery_claims`) — HLM less biased than OLS, IGM removes the bias, OLS ≈ HLM at school level (AI-based,
traditional), coverage increases (AI-based) / decreases (traditional) / increases with the adjusted design
(S5.2); Stage 6 (:func:`ablation_claims`) — Tables 5 and 6; Demonstration 3 (:func:`causal_claims`) — the
causal paper's "IPW estimators suffer high variance, while AIPW and TMLE benefit from doubly-robust
correction" as a larger MSE of IPW than of AIPW and TMLE, and AIPW and TMLE unbiased within a margin.  The margins (:data:`MARGINS`) are ours: the
paper states none.

Sources are named as in the study's params: the simulation generator (AI-based), ``ctgan`` (the CTGAN
contrast of appendix S5.1), ``traditional`` and ``traditional-adjusted`` (appendix S5.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import MlsimkitError
from .performance import paired_difference, reps_to_decide

YES, NO, INCONCLUSIVE = "yes", "no", "inconclusive"
#: The objectives the papers' findings speak about (Suk et al.'s two demonstrations; the causal paper's benchmark).
PAPER_OBJECTIVES = ("prediction", "recovery", "causal")
#: |z| at which a difference counts as beyond Monte Carlo error.
Z = 2.0
TESTS = ("positive", "differs", "equivalent", "increases", "decreases")
#: Default equivalence margins, stated in every row that uses one.
MARGINS = {
    "pmse_rel": 0.02,       # "almost identical" PMSEs: within 2% of the condition's mean PMSE
    "ablation_pmse_rel": 0.03,  # "remain robust" (Table 5): within 3% of the original's PMSE
    "rel_bias": 1.0,        # relative bias (%), percentage points
    "relerror": 1.0,        # relative SE bias (%), percentage points (Table 6: "less than 1%")
    "coverage": 0.025,      # coverage, 2.5 percentage points
    "ate_rel_bias": 10.0,   # "unbiased" ATE estimators: relative bias within 10% of the true ATE
}


class PaperError(MlsimkitError):
    """A claim was declared or evaluated on inputs that cannot decide it."""


@dataclass(frozen=True)
class Claim:
    """One finding of the paper as a declared test.

    ``text`` is the paper's sentence, ``source`` the data source it is tested on, ``quantity`` what is
    measured (in words, as the row shows it), ``test`` one of :data:`TESTS`, ``margin`` the equivalence
    margin (``equivalent`` / ``differs``; in the quantity's units, or the relative share a ``margin`` column
    of the evidence was computed with, as the quantity's text then says) and ``where`` the paper's section.
    """

    text: str
    source: str
    quantity: str
    test: str
    margin: float | None = None
    where: str = ""

    def __post_init__(self):
        if self.test not in TESTS:
            raise PaperError(f"claim '{self.text}': test must be one of {list(TESTS)}, got '{self.test}'")
        if self.test in ("equivalent", "differs") and not (self.margin and self.margin > 0):
            raise PaperError(f"claim '{self.text}': a '{self.test}' test needs a positive margin")


# ------------------------------------------------------------------------------------------ decisions
def _verdict(z: float) -> str:
    if not np.isfinite(z):
        return INCONCLUSIVE
    return YES if z >= Z else NO if z <= -Z else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """yes when every part is yes, no when any part is no, inconclusive otherwise (and for no parts)."""
    verdicts = list(verdicts)
    if not verdicts:
        return INCONCLUSIVE
    if NO in verdicts:
        return NO
    return YES if all(v == YES for v in verdicts) else INCONCLUSIVE


def decide_parts(parts: pd.DataFrame, test: str, margin: float | None = None) -> pd.DataFrame:
    """Each part's z (signed so that positive supports the claim), verdict and distance to its boundary.

    ``parts`` has columns ``part`` (a label), ``estimate``, ``mcse`` and ``n`` (replications); for
    ``equivalent`` / ``differs`` the margin may also be a ``margin`` column (one per part)."""
    p = parts.copy()
    est, se = p["estimate"].to_numpy(float), p["mcse"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if test == "positive":
            dist = est
        elif test in ("equivalent", "differs"):
            m = p["margin"].to_numpy(float) if "margin" in p else np.full(len(p), float(margin))
            dist = m - np.abs(est) if test == "equivalent" else np.abs(est) - m
        else:
            raise PaperError(f"decide_parts handles positive / equivalent / differs, not '{test}'")
        z = np.where(se > 0, dist / se, np.sign(dist) * np.inf)
    p["z"] = z
    p["verdict"] = [_verdict(v) for v in z]
    p["distance"] = dist
    return p


def trend(levels: pd.DataFrame, direction: str) -> tuple[str, dict, pd.DataFrame]:
    """Decide ``increases`` / ``decreases`` over every number of schools.

    ``levels`` has ``n_schools``, ``estimate`` (the measure), ``mcse`` and ``n``.  The slope is the
    least-squares slope of the measure on log(n_schools), reported per doubling of the number of schools;
    its MCSE is sqrt(sum c_k^2 MCSE_k^2) with c_k the least-squares weights (conditions are independent
    simulations).  Each step between neighbouring sizes gets z = difference / sqrt(MCSE_k^2 + MCSE_k+1^2).
    Returns (verdict, slope facts, step table)."""
    if direction not in ("increases", "decreases"):
        raise PaperError(f"trend direction must be 'increases' or 'decreases', got '{direction}'")
    lv = levels.sort_values("n_schools").reset_index(drop=True)
    if len(lv) < 2:
        raise PaperError("a trend over the number of schools needs at least two numbers of schools")
    sign = 1.0 if direction == "increases" else -1.0
    x = np.log2(lv["n_schools"].to_numpy(float))
    v, s = lv["estimate"].to_numpy(float), lv["mcse"].to_numpy(float)
    c = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    slope, slope_se = float(c @ v), float(np.sqrt(np.sum(c**2 * s**2)))
    z_slope = sign * slope / slope_se if slope_se > 0 else sign * np.sign(slope) * np.inf
    steps = pd.DataFrame({"from": lv["n_schools"].iloc[:-1].to_numpy(), "to": lv["n_schools"].iloc[1:].to_numpy(),
                          "estimate": np.diff(v), "mcse": np.hypot(s[:-1], s[1:])})
    with np.errstate(divide="ignore", invalid="ignore"):
        steps["z"] = sign * steps["estimate"] / steps["mcse"]
    against = bool((steps["z"] <= -Z).any())
    verdict = NO if (z_slope <= -Z or against) else YES if z_slope >= Z else INCONCLUSIVE
    facts = {"slope": slope, "mcse": slope_se, "z": float(z_slope), "n": int(lv["n"].min()),
             "steps_against": int((steps["z"] <= -Z).sum())}
    return verdict, facts, steps


# ------------------------------------------------------------------------------------ the evidence
def _cells(reps: pd.DataFrame, source: str, measure: str, methods, parameters=None) -> pd.DataFrame:
    d = reps[(reps["source"] == source) & (reps["measure"] == measure) & reps["method"].isin(list(methods))]
    if parameters is not None:
        d = d[d["parameter"].isin(list(parameters))]
    return d


def paired(reps: pd.DataFrame, source: str, measure: str, a: str, b: str, parameter=None,
           absolute: bool = False) -> pd.DataFrame:
    """Per number of schools, the paired difference a − b of a per-replication measure (or, with
    ``absolute``, |mean a| − |mean b|: each replication's values signed by its method's mean)."""
    d = _cells(reps, source, measure, (a, b), None if parameter is None else [parameter])
    rows = []
    for n, g in d.groupby("n_schools", sort=True):
        w = g.pivot_table(index="rep", columns="method", values="value", aggfunc="first")
        if a not in w or b not in w:
            continue
        wa, wb = w[a], w[b]
        if absolute:
            wa, wb = wa * np.sign(wa.mean()), wb * np.sign(wb.mean())
        est, se, k = paired_difference(wa, wb)
        rows.append({"n_schools": int(n), "estimate": est, "mcse": se, "n": k})
    return pd.DataFrame(rows, columns=["n_schools", "estimate", "mcse", "n"])


def level(reps: pd.DataFrame, source: str, measure: str, methods, parameters=None) -> pd.DataFrame:
    """Per number of schools, the mean over replications of the per-replication average over the given
    methods (and parameters), with MCSE sd / sqrt(n) (one value per replication, so the cells' shared
    data set is accounted for)."""
    d = _cells(reps, source, measure, methods, parameters)
    rows = []
    for n, g in d.groupby("n_schools", sort=True):
        per = g.groupby("rep")["value"].mean()
        k = int(per.size)
        rows.append({"n_schools": int(n), "estimate": float(per.mean()),
                     "mcse": float(per.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan, "n": k})
    return pd.DataFrame(rows, columns=["n_schools", "estimate", "mcse", "n"])


def _num(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    a = abs(v)
    return f"{v:.3f}" if a < 1 else f"{v:.2f}" if a < 100 else f"{v:.1f}"


def _z(z: float) -> str:
    return "∞" if np.isposinf(z) else "−∞" if np.isneginf(z) else f"{z:+.1f}".replace("-", "−")


def _reps_needed(parts: pd.DataFrame) -> int | None:
    """Largest number of replications that would take each undecided part 2 MCSE from its boundary."""
    und = parts[parts["verdict"] == INCONCLUSIVE]
    needs = [reps_to_decide(r.distance, r.mcse, int(r.n)) for r in und.itertuples()]
    needs = [n for n in needs if n is not None]
    return max(needs) if needs else None


def _row(claim: Claim, verdict: str, measured: str, zs: str, need: int | None, n: int | None,
         parts: pd.DataFrame) -> dict:
    if verdict != INCONCLUSIVE:
        decide = f"decided with {n}" if n else "decided"
    else:
        decide = f"about {need}" if need else "not by replications (the estimate sits on the boundary)"
    return {"paper says": claim.text, "where": claim.where, "source": claim.source, "quantity": claim.quantity,
            "test": claim.test, "this build": measured, "z": zs, "verdict": verdict, "replications to decide": decide,
            "_parts": parts}


def evaluate(claim: Claim, evidence) -> dict:
    """One claim's row: ``evidence`` is a parts table (``part, estimate, mcse, n`` and optionally
    ``margin``) for positive / equivalent / differs, or for a trend a ``levels`` table per number of
    schools (``n_schools, estimate, mcse, n``), or a dict ``{label: levels}`` when each label (a method)
    must show the trend."""
    if claim.test in ("increases", "decreases"):
        series = evidence if isinstance(evidence, dict) else {"": evidence}
        if any(lv is None or len(lv) < 2 for lv in series.values()):
            return _untestable(claim, "a trend needs at least two numbers of schools")
        verdicts, measured, zs, parts = [], [], [], []
        for label, lv in series.items():
            v, facts, steps = trend(lv, claim.test)
            verdicts.append(v)
            lead = f"{label}: " if label else ""
            measured.append(lead + ", ".join(f"{int(r.n_schools)}: {_num(r.estimate)} ({_num(r.mcse)})"
                                             for r in lv.sort_values("n_schools").itertuples())
                            + f"; slope per doubling {_num(facts['slope'])} ({_num(facts['mcse'])})")
            zs.append(lead + f"slope {_z(facts['z'])}; steps " + ", ".join(_z(z) for z in steps["z"]))
            parts.append({"part": label or claim.source, "estimate": facts["slope"], "mcse": facts["mcse"],
                          "n": facts["n"], "z": facts["z"], "verdict": v,
                          "distance": facts["slope"] * (1 if claim.test == "increases" else -1)})
        parts = pd.DataFrame(parts)
        n = int(parts["n"].min())
        return _row(claim, combine(verdicts), "; ".join(measured), "; ".join(zs), _reps_needed(parts), n, parts)
    if not isinstance(evidence, pd.DataFrame) or evidence.empty:
        return _untestable(claim, "no replications hold the quantity (a method or parameter is missing)")
    parts = decide_parts(evidence, claim.test, claim.margin)
    measured = "; ".join(f"{r.part}: {_num(r.estimate)} ({_num(r.mcse)})" for r in parts.itertuples())
    zs = ", ".join(_z(z) for z in parts["z"])
    return _row(claim, combine(parts["verdict"]), measured, zs, _reps_needed(parts), int(parts["n"].min()), parts)


def _untestable(claim: Claim, why: str) -> dict:
    parts = pd.DataFrame(columns=["part", "estimate", "mcse", "n", "z", "verdict", "distance"])
    row = _row(claim, INCONCLUSIVE, "—", "", None, None, parts)
    row["replications to decide"] = f"not testable here: {why}"
    return row


def _stack(frames: dict, margin_of=None) -> pd.DataFrame:
    """``{label: per-n_schools table}`` -> one parts table, parts labelled ``"<n> schools, <label>"``."""
    rows = []
    for label, f in frames.items():
        for r in f.itertuples():
            part = f"{r.n_schools} schools, {label}" if label else f"{r.n_schools} schools"
            row = {"part": part, "estimate": r.estimate, "mcse": r.mcse, "n": r.n}
            if margin_of is not None:
                row["margin"] = margin_of(r.n_schools)
            rows.append(row)
    return pd.DataFrame(rows, columns=["part", "estimate", "mcse", "n"] + (["margin"] if margin_of else []))


def table(rows: list[dict], detail: bool = False) -> pd.DataFrame:
    """The claims' rows as a table (``detail``: one row per part with its estimate, MCSE and z)."""
    if detail:
        out = []
        for r in rows:
            p = r["_parts"].copy()
            p.insert(0, "paper says", r["paper says"])
            p.insert(1, "source", r["source"])
            out.append(p)
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    return pd.DataFrame([{k: v for k, v in r.items() if k != "_parts"} for r in rows])


# ------------------------------------------------------------------------------- Demonstration 1
def prediction_claims(reps: pd.DataFrame, ai: str, ctgan: str | None = "ctgan",
                      margins: dict | None = None, detail: bool = False) -> pd.DataFrame:
    """Sections 4.5 and S5.1 on per-replication PMSEs (:func:`mlsimkit.performance.per_replication`
    with a ``source`` and ``n_schools`` column and ``measure == "pmse"``)."""
    mg = {**MARGINS, **(margins or {})}
    pm = reps[reps["measure"] == "pmse"]
    have = set(pm["source"])
    rows = []
    for src, label in ((ai, "AI-based"), ("traditional", "traditional")):
        if src not in have:
            continue
        ev = _stack({f"{m} − Multilevel": paired(pm, src, "pmse", m, "Multilevel") for m in ("OLSFE", "Prior")})
        rows.append(evaluate(Claim(f"{label}: the multilevel rule has the lowest PMSE", src,
                                   "paired PMSE difference, other rule − Multilevel, at every number of schools",
                                   "positive", where="4.5, Figure 5"), ev))
    if ai in have:
        lv = {m: level(pm, ai, "pmse", [m]) for m in ("OLSFE", "Prior", "Multilevel")}
        rows.append(evaluate(Claim("AI-based: PMSE decreases as the number of schools grows, for all three rules",
                                   ai, "PMSE of each rule over all numbers of schools", "decreases",
                                   where="4.5, Figure 5"), lv))
    if "traditional" in have:
        rows.append(evaluate(Claim("traditional: the prior rule gets worse as the number of schools grows",
                                   "traditional", "PMSE of the prior rule over all numbers of schools", "increases",
                                   where="4.5, Figure 5"), level(pm, "traditional", "pmse", ["Prior"])))
    if ctgan and ctgan in have and ctgan != ai:
        mean = level(pm, ctgan, "pmse", ["OLSFE", "Prior", "Multilevel"]).set_index("n_schools")["estimate"]
        rel = mg["pmse_rel"]
        pairs = {"OLSFE − Multilevel": ("OLSFE", "Multilevel"), "Prior − Multilevel": ("Prior", "Multilevel"),
                 "OLSFE − Prior": ("OLSFE", "Prior")}
        ev = _stack({k: paired(pm, ctgan, "pmse", a, b) for k, (a, b) in pairs.items()},
                    margin_of=lambda n: rel * mean.loc[n])
        c = Claim("CTGAN data (S5.1): the three rules behave almost identically", ctgan,
                  f"paired PMSE differences between the rules, margin ±{rel:.0%} of the condition's mean PMSE",
                  "equivalent", margin=rel, where="S5.1")
        rows.append(evaluate(c, ev))
    return table(rows, detail)


# ------------------------------------------------------------------------------- Demonstration 3
CAUSAL_WHERE = "causal paper, ACTG175 benchmark"


def causal_claims(reps: pd.DataFrame, ai: str, margins: dict | None = None, detail: bool = False) -> pd.DataFrame:
    """The causal paper's finite-sample benchmark ("IPW estimators suffer high variance, while AIPW and TMLE
    benefit from doubly-robust correction") on per-replication squared errors and relative biases of the
    ATE (``measure`` ``sq_error`` / ``rel_bias``), for every version of the estimators the study ran
    (``IPW (single)`` against ``AIPW (single)``, ...)."""
    mg = {**MARGINS, **(margins or {})}
    d = reps[reps["source"] == ai]
    methods = set(d["method"])
    versions = sorted({m[len("IPW "):] for m in methods if m.startswith("IPW (")})
    rows = []
    for dr in ("AIPW", "TMLE"):
        pairs = {f"IPW {v} − {dr} {v}": (f"IPW {v}", f"{dr} {v}") for v in versions if f"{dr} {v}" in methods}
        ev = _stack({k: paired(d, ai, "sq_error", a, b) for k, (a, b) in pairs.items()})
        rows.append(evaluate(Claim(f"IPW has a larger MSE than {dr} (high variance against a doubly-robust correction)",
                                   ai, f"paired squared-error difference of the ATE, IPW − {dr}, per version of the "
                                   "estimators, at every number of schools", "positive", where=CAUSAL_WHERE), ev))
    dr = sorted(m for m in methods if m.startswith(("AIPW (", "TMLE (")))
    m = mg["ate_rel_bias"]
    rows.append(evaluate(Claim("AIPW and TMLE are unbiased for the ATE", ai,
                               f"relative bias (%) of each, equivalence margin ±{m:g}", "equivalent", margin=m,
                               where=CAUSAL_WHERE),
                         _stack({k: level(d, ai, "rel_bias", [k]) for k in dr})))
    return table(rows, detail)


# ------------------------------------------------------------------------------- Demonstration 2
FOUR = ("OLS", "OLS+IGM", "HLM", "HLM+IGM")


def recovery_claims(reps: pd.DataFrame, ai: str, level_of: dict, margins: dict | None = None,
                    detail: bool = False) -> pd.DataFrame:
    """Sections 5.5 and S5.2 on per-replication relative biases and coverage indicators
    (:func:`mlsimkit.performance.per_replication`, stacked with ``measure`` = ``rel_bias`` / ``coverage``)."""
    mg = {**MARGINS, **(margins or {})}
    rows = []
    rb = reps[reps["measure"] == "rel_bias"]
    have = set(rb["source"])
    for src in [s for s in (ai, "traditional") if s in have]:
        params = rb[rb["source"] == src]["parameter"].unique()
        student = [p for p in params if level_of.get(p) == "student"]
        school = [p for p in params if level_of.get(p) == "school"]
        label = "AI-based" if src == ai else "traditional"
        if student:
            p = student[0]
            rows.append(evaluate(Claim(
                f"{label}, student-level coefficient: HLM is less biased than OLS", src,
                f"|relative bias| of OLS − |relative bias| of HLM ({p}, %), paired", "positive", where="5.5, Figure 8"),
                _stack({"": paired(rb, src, "rel_bias", "OLS", "HLM", p, absolute=True)})))
            m = mg["rel_bias"]
            ev = pd.concat([
                _stack({"OLS − Oracle": paired(rb, src, "rel_bias", "OLS", "Oracle", p)}).assign(test="differs"),
                *[_stack({f"{k} − Oracle": paired(rb, src, "rel_bias", k, "Oracle", p)}).assign(test="equivalent")
                  for k in ("OLS+IGM", "HLM+IGM")]], ignore_index=True)
            rows.append(_mixed(Claim(
                f"{label}, student-level coefficient: adding group means (IGM) removes the bias, close to the oracle",
                src, f"paired relative-bias difference from the oracle ({p}, %): OLS outside ±{_num(m)} points "
                "(there is a bias to remove), OLS+IGM and HLM+IGM inside", "equivalent", margin=m,
                where="5.5, Figure 8"), ev))
        if school:
            p = school[0]
            m = mg["rel_bias"]
            ev = _stack({"OLS − HLM": paired(rb, src, "rel_bias", "OLS", "HLM", p),
                         "OLS+IGM − HLM+IGM": paired(rb, src, "rel_bias", "OLS+IGM", "HLM+IGM", p)})
            rows.append(evaluate(Claim(
                f"{label}, school-level coefficient: OLS and HLM are similarly biased", src,
                f"paired relative-bias difference ({p}, %)", "equivalent", margin=m, where="5.5, Figure 8"), ev))
    cov = reps[reps["measure"] == "coverage"]
    for src, direction, text, where in (
            (ai, "increases", "AI-based: coverage increases with the number of schools", "5.5, Figure 8"),
            ("traditional", "decreases", "traditional: coverage decreases with the number of schools", "5.5, Figure 8"),
            ("traditional-adjusted", "increases", "adjusted traditional design: coverage increases with the number "
             "of schools, as in the AI-based simulation", "S5.2, Figure S5")):
        if src not in set(cov["source"]):
            continue
        lv = level(cov, src, "coverage", FOUR)
        rows.append(evaluate(Claim(text, src, "coverage, mean over OLS, OLS+IGM, HLM, HLM+IGM and both coefficients",
                                   direction, where=where), lv))
    return table(rows, detail)


def _mixed(claim: Claim, ev: pd.DataFrame) -> dict:
    """A claim whose parts use different tests (a ``test`` column: differs / equivalent, same margin)."""
    parts = pd.concat([decide_parts(g.drop(columns="test"), t, claim.margin).assign(test=t)
                       for t, g in ev.groupby("test", sort=False)], ignore_index=True)
    measured = "; ".join(f"{r.part}: {_num(r.estimate)} ({_num(r.mcse)})" for r in parts.itertuples())
    zs = ", ".join(_z(z) for z in parts["z"])
    return _row(claim, combine(parts["verdict"]), measured, zs, _reps_needed(parts), int(parts["n"].min()), parts)


# ------------------------------------------------------------------------------- Stage 6 (section 6.2)
def scenario_roles(scenarios: dict) -> dict:
    """``{paper scenario: our scenario name}`` from the settings each scenario changes: Scenario 1 turns
    the decomposition off, Scenario 2 trains on part of the schools, Scenario 3 changes the latent groups."""
    roles = {}
    for name, change in scenarios.items():
        change = change or {}
        if change.get("decompose") is False:
            roles["Scenario 1 (no decomposition)"] = name
        elif "train_fraction" in change:
            roles["Scenario 2 (half of the schools)"] = name
        elif "n_groups" in change:
            roles["Scenario 3 (fewer latent groups)"] = name
    return roles


def _indep(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    return float(a["value"] - b["value"]), float(math.hypot(a["mcse"], b["mcse"]))


def ablation_claims(perf: pd.DataFrame, reps: pd.DataFrame | None, roles: dict, objective: str,
                    level_of: dict | None = None, margins: dict | None = None, detail: bool = False) -> pd.DataFrame:
    """Section 6.2 (Tables 5 and 6) on Stage 6's summary ``perf`` (a ``scenario`` column, ``original``
    the unchanged generator).  ``reps``: per-replication PMSEs with a ``scenario`` column (prediction: the
    multilevel rule's advantage is a paired difference within each scenario).  Scenarios are independent
    simulations: differences between them take the root sum of squares of their MCSEs."""
    mg = {**MARGINS, **(margins or {})}
    rows = []
    if "original" not in set(perf["scenario"]):
        raise PaperError("the ablation summary has no 'original' scenario to compare with")

    def cell(scen, measure, method, parameter=None):
        d = perf[(perf["scenario"] == scen) & (perf["measure"] == measure) & (perf["method"] == method)]
        if parameter is not None:
            d = d[d["parameter"] == parameter]
        return d.iloc[0] if len(d) else None

    robust = [r for r in roles if not r.startswith("Scenario 1")]
    if objective == "prediction":
        s1 = next((roles[r] for r in roles if r.startswith("Scenario 1")), None)
        if s1 is not None and reps is not None:
            adv = {}
            for scen in ("original", s1):
                d = reps[(reps["scenario"] == scen) & (reps["measure"] == "pmse")].assign(source="s")
                adv[scen] = paired(d, "s", "pmse", "Prior", "Multilevel").iloc[0]
                adv[scen]["level"] = level(d, "s", "pmse", ["Prior", "Multilevel"])["estimate"].iloc[0]
            rel = mg["pmse_rel"]
            a = adv[s1]
            ev = pd.DataFrame([{"part": f"{s1} (original: {_num(adv['original']['estimate'])} "
                                        f"({_num(adv['original']['mcse'])}))", "estimate": a["estimate"],
                                "mcse": a["mcse"], "n": int(a["n"]), "margin": rel * a["level"]}])
            rows.append(evaluate(Claim(
                "Table 5, Scenario 1: without the decomposition the multilevel rule loses its advantage, its "
                "predictions are similar to the other rules'", s1,
                f"the multilevel rule's advantage (paired PMSE Prior − Multilevel) in the scenario, margin ±{rel:.0%} "
                "of the scenario's PMSE", "equivalent", margin=rel, where="6.2, Table 5"), ev))
        rel = mg["ablation_pmse_rel"]
        for role in robust:
            scen = roles[role]
            ps = []
            for m in ("OLSFE", "Prior", "Multilevel"):
                a, b = cell(scen, "pmse", m), cell("original", "pmse", m)
                if a is None or b is None:
                    continue
                est, se = _indep(a, b)
                ps.append({"part": m, "estimate": est, "mcse": se, "n": int(min(a["n_used"], b["n_used"])),
                           "margin": rel * b["value"]})
            if ps:
                rows.append(evaluate(Claim(
                    f"Table 5, {role}: PMSE remains close to the original for every rule", scen,
                    f"PMSE scenario − original, margin ±{rel:.0%} of the original's PMSE", "equivalent",
                    margin=rel, where="6.2, Table 5"), pd.DataFrame(ps)))
        return table(rows, detail)
    level_of = level_of or {}
    method = "OLS+IGM"
    params = perf[perf["method"] == method]["parameter"].unique()
    student = [p for p in params if level_of.get(p) == "student"]
    school = [p for p in params if level_of.get(p) == "school"]
    for role in roles:
        scen = roles[role]
        ps = []
        for p in student:
            for meas in ("rel_bias", "relerror"):
                a, b = cell(scen, meas, method, p), cell("original", meas, method, p)
                if a is None or b is None:
                    continue
                est, se = _indep(a, b)
                ps.append({"part": f"{meas} {p}", "estimate": est, "mcse": se, "n": int(min(a["n_used"], b["n_used"])),
                           "margin": mg[meas]})
        if ps:
            rows.append(evaluate(Claim(
                f"Table 6, {role}: student-level coefficient bias and SE bias within 1% of the original (OLS+IGM)",
                scen, "relative bias and relative SE bias (%), scenario − original", "equivalent",
                margin=mg["rel_bias"], where="6.2, Table 6"), pd.DataFrame(ps)))
        ps = []
        for p in list(student) + list(school):
            a, b = cell(scen, "coverage", method, p), cell("original", "coverage", method, p)
            if a is None or b is None:
                continue
            est, se = _indep(a, b)
            ps.append({"part": p, "estimate": est, "mcse": se, "n": int(min(a["n_used"], b["n_used"]))})
        if ps:
            rows.append(evaluate(Claim(
                f"Table 6, {role}: coverage similar to the original (OLS+IGM)", scen,
                f"coverage, scenario − original, margin ±{mg['coverage']}", "equivalent", margin=mg["coverage"],
                where="6.2, Table 6"), pd.DataFrame(ps)))
    s2 = next((roles[r] for r in roles if r.startswith("Scenario 2")), None)
    if s2 is not None and school:
        a, b = cell(s2, "rel_bias", method, school[0]), cell("original", "rel_bias", method, school[0])
        if a is not None and b is not None:
            est = abs(a["value"]) - abs(b["value"])
            ev = pd.DataFrame([{"part": school[0], "estimate": est, "mcse": math.hypot(a["mcse"], b["mcse"]),
                                "n": int(min(a["n_used"], b["n_used"]))}])
            rows.append(evaluate(Claim(
                "Table 6, Scenario 2: half of the schools gives a larger school-level coefficient bias (OLS+IGM)",
                s2, "|relative bias| scenario − original (%)", "positive", where="6.2, Table 6"), ev))
    return table(rows, detail)


# ------------------------------------------------------------------------------------- entry points
def replication_table(results: pd.DataFrame, truth, measures: Sequence[str], usable: Sequence[str],
                      by: Sequence[str] = ("source", "n_schools")) -> pd.DataFrame:
    """Per-replication values of ``measures`` stacked with a ``measure`` column (the claims' input)."""
    from .performance import per_replication

    return pd.concat([per_replication(results, truth, by=list(by), measure=m, usable=usable).assign(measure=m)
                      for m in measures], ignore_index=True)


def compare(study, summary: pd.DataFrame, ai: str, detail: bool = False) -> pd.DataFrame:
    """The paper's findings for this study's objective, decided on Stage 4's replications (yes / no /
    inconclusive with z and the replications that would decide an inconclusive row).  ``summary`` is
    Stage 5's table; the decisions are computed from the per-replication results it summarises.  An
    objective the paper did not study (:data:`PAPER_OBJECTIVES`) has no claims: an empty table."""
    from . import workflow as wf

    if study.objective not in PAPER_OBJECTIVES:
        return pd.DataFrame()
    res, truth = wf.simulation_results(study)
    if study.objective == "prediction":
        reps = replication_table(res, truth, ["pmse"], wf.USABLE)
        return prediction_claims(reps, ai, detail=detail)
    if study.objective == "causal":
        return causal_claims(replication_table(res, truth, ["sq_error", "rel_bias"], wf.USABLE), ai, detail=detail)
    reps = replication_table(res, truth, ["rel_bias", "coverage"], wf.USABLE)
    return recovery_claims(reps, ai, _level_of(study), detail=detail)


def compare_ablation(study, perf: pd.DataFrame, detail: bool = False) -> pd.DataFrame:
    """Section 6.2's findings (Tables 5 and 6) decided on Stage 6's simulations (none for an objective the
    paper did not study)."""
    from . import workflow as wf

    if study.objective not in ("prediction", "recovery"):
        return pd.DataFrame()
    scenarios = wf.ablation_scenarios(study)
    roles = scenario_roles({k: v for k, v in study["ablation"]["scenarios"].items()})
    reps = None
    if study.objective == "prediction":
        frames = []
        for scen in scenarios:
            res, truth = wf.simulation_results(study, f"6-robustness/{scen}")
            frames.append(replication_table(res, truth, ["pmse"], wf.USABLE).assign(scenario=scen))
        reps = pd.concat(frames, ignore_index=True)
    return ablation_claims(perf, reps, roles, study.objective, _level_of(study), detail=detail)


def _level_of(study) -> dict:
    """``{parameter: "student" | "school"}`` of the study's recovery model."""
    from . import workflow as wf

    return wf.level_of_parameters(study)


def profile_reps(study, profile: str = "paper", key: str = "simulation") -> int | None:
    """The replications per condition of another profile of ``study`` (``simulation.reps``, or
    ``ablation.reps`` with ``key="ablation"``); None when the params file does not define that profile."""
    from .study import load

    if profile not in (study.spec.get("profiles") or {}):
        return None
    other = load(study.name, profile, study.root)
    reps = (other.get(key) or {}).get("reps") or other["simulation"].get("reps")
    return int(reps) if reps else None


def verdict_sentence(claims: pd.DataFrame, study=None, key: str = "simulation",
                     planned: tuple[str, int] | None = None) -> str:
    """One Markdown sentence: how many claims came out yes / no / inconclusive, and the replications that
    would decide the inconclusive ones (:func:`mlsimkit.performance.reps_to_decide`). With ``study`` (run
    under a profile other than ``paper``), or ``planned = (profile, replications)``, the sentence also says
    how many of the inconclusive claims the paper profile's replications (``<key>.reps``,
    :func:`profile_reps`) would decide."""
    if planned is None and study is not None and study.profile != "paper":
        reps = profile_reps(study, "paper", key)
        planned = ("paper", reps) if reps else None
    if claims.empty:
        return "No claim of the paper applies to this study's sources."
    counts = claims["verdict"].value_counts()
    n = {v: int(counts.get(v, 0)) for v in (YES, NO, INCONCLUSIVE)}
    text = (f"Verdicts of the {len(claims)} claims: {n[YES]} *yes* (the claim holds beyond Monte Carlo error), "
            f"{n[NO]} *no* (contradicted beyond it), {n[INCONCLUSIVE]} *inconclusive* at this build's replications.")
    und = claims[claims["verdict"] == INCONCLUSIVE]
    if len(und):
        need = [int(x.split()[-1]) for x in und["replications to decide"] if x.startswith("about ")]
        if need:
            text += (f" Deciding them would take about {min(need):,} to {max(need):,} replications per condition "
                     "(the MCSE shrinks as 1/√n, the differences being as estimated here).")
        if planned is not None:
            name, reps = planned
            k = sum(n <= reps for n in need)
            text += (f" The *{name}* profile's {reps:,} replications would decide {k} of the {len(und)}"
                     + ("" if k == len(und) else "; the others need more, or sit on their boundary (no number of "
                        "replications decides an estimate equal to it)") + ".")
    return text


def verdict_list(claims: pd.DataFrame) -> str:
    """The claims as a numbered Markdown list, one item per claim: verdict and z first, then what the paper says,
    where, the test on which quantity, this build's numbers and the replications to decide. A table with
    nine columns of sentences does not fit a page; the same content reads as a list."""
    if claims.empty:
        return "No claim of the paper applies to this study's sources."
    items = []
    for i, r in enumerate(claims.to_dict("records"), 1):
        decide = r["replications to decide"]
        items.append(f"{i}. **{r['verdict']}** (z {r['z']}) — {r['paper says']} *({r['where']}; source "
                     f"`{r['source']}`)*. Test: *{r['test']}* on {r['quantity']}. This build: {r['this build']}. "
                     f"Replications: {decide}.")
    return "\n".join(items)


def detail_table(detail: pd.DataFrame, claims: pd.DataFrame):
    """The parts of every claim (``compare(..., detail=True)``) as a compact table: the claim's number in
    :func:`verdict_list`, its source, the part, ``estimate (MCSE)``, z and the part's verdict (and the
    equivalence margin where the claim has one)."""
    from .tables import value_mcse

    if detail.empty:
        return pd.DataFrame({"parts": ["no claim of the paper applies to this study's sources"]}).style.hide(axis="index")
    number = {text: i for i, text in enumerate(claims["paper says"], 1)}
    out = pd.DataFrame({"claim": detail["paper says"].map(number), "source": detail["source"],
                        "part": detail["part"], "estimate (MCSE)": value_mcse(detail, 3, "estimate", "mcse"),
                        "z": detail["z"].map(lambda z: f"{z:+.1f}"), "verdict": detail["verdict"]})
    if "margin" in detail and detail["margin"].notna().any():
        out["margin"] = detail["margin"].map(lambda m: "" if pd.isna(m) else f"±{m:.3g}")
    return out.style.hide(axis="index")


# ------------------------------------------------------------------------------- Demonstration 3, Stage 6
POSITIVITY_WHERE = "causal paper, Synthetic Data for Practical Positivity"


def positivity_claims(summary: pd.DataFrame, detail: bool = False) -> pd.DataFrame:
    """The causal paper's "augmentation with hybrid synthetic data robustly lowers estimator MSE (e.g. IPW
    MSE reduces ...)" on Stage 6's summary (:func:`mlsimkit.objectives.causal.positivity_summary`: its
    ``mse_change`` rows, paired per-replication squared-error changes with MCSE), per ``average`` mode: one
    claim for IPW (the paper's example) and one for every augmented estimator, each *positive* on the fall in
    MSE (none − augmented) at every weak-overlap design."""
    ch = summary[summary["measure"] == "mse_change"]
    rows = []
    for arm in dict.fromkeys(ch["arm"]):
        a = ch[ch["arm"] == arm]
        label = ("the paper's estimator on the augmented data (augmented average)" if arm == "augmented"
                 else "nuisances fitted on the augmented data, averages over the real units (real average)")
        for who, sub in (("IPW", a[a["estimator"] == "IPW"]), ("every augmented estimator", a)):
            parts = pd.DataFrame([{"part": f"overlap {r.overlap:g}, {r.n_schools} schools"
                                           + ("" if who == "IPW" else f", {r.estimator}"),
                                   "estimate": -r.value, "mcse": r.mcse, "n": int(r.n_used)}
                                  for r in sub.itertuples()], columns=["part", "estimate", "mcse", "n"])
            rows.append(evaluate(Claim(f"targeted augmentation repairs positivity violations: {who}'s MSE falls "
                                       f"({label})", "positivity",
                                       "paired fall in squared error of the ATE, none − augmented, at every design",
                                       "positive", where=POSITIVITY_WHERE), parts))
    return table(rows, detail)
