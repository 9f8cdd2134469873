"""Figures of Stage 5: nested-loop plot, estimates with MCSE bars, zipper plot.

* Nested-loop plot: Rücker & Schwarzer (2014), "Presenting simulation results in a nested loop plot",
  BMC Medical Research Methodology 14:129 — every condition on one axis, ordered lexicographically by
  the factors, with the factor levels drawn as step lines underneath.
* Zip (zipper) plot: Morris, White & Crowther (2019), section 6 — every confidence interval as a
  horizontal line, ranked by the fractional centile of |z| = |estimate - truth| / SE, so the intervals
  that miss the truth sit at the top; the Monte Carlo interval of coverage is drawn across.
* Verdict plot: every part of every claim of :mod:`mlsimkit.paper` as its z (distance from the decision's
  boundary in MCSEs), one row per claim, with the inconclusive band |z| < 2 shaded.

Each function returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .performance import PerformanceError, _attach_truth, _OUT

_REFERENCE = {"bias": 0.0, "rel_bias": 0.0, "relerror": 0.0, "coverage": 0.95, "becoverage": 0.95}


def _factors(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if c not in ("condition", "method", "parameter", *_OUT)]


def _select(summary: pd.DataFrame, measure: str, parameter: str | None) -> pd.DataFrame:
    if "measure" not in summary:
        raise PerformanceError("expected a summary table from performance.summarise (no 'measure' column)")
    s = summary[summary["measure"] == measure]
    if s.empty:
        raise PerformanceError(f"the summary has no measure '{measure}'; it has {sorted(summary['measure'].unique())}")
    params = list(s["parameter"].unique())
    if parameter is None:
        if len(params) > 1:
            raise PerformanceError(f"the summary holds parameters {params}; choose one with parameter=")
        parameter = params[0]
    s = s[s["parameter"] == parameter]
    if s.empty:
        raise PerformanceError(f"no parameter '{parameter}' for measure '{measure}'; parameters: {params}")
    return s


def _label(row: pd.Series, factors: Sequence[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in factors) if factors else str(row.get("condition", ""))


def nested_loop_plot(summary: pd.DataFrame, measure: str = "bias", factors: Sequence[str] | None = None,
                     parameter: str | None = None, reference: float | None = None, mcse: bool = True,
                     ax: Any = None) -> plt.Figure:
    """All conditions on the x axis (first factor varies slowest), one step line per method, the factor
    levels as step lines below; ``mcse`` adds ±1 MCSE bands."""
    s = _select(summary, measure, parameter)
    factors = list(factors) if factors is not None else _factors(s)
    if not factors:
        raise PerformanceError("a nested-loop plot needs factor columns in the summary (summarise with by=factors)")
    levels = {f: sorted(s[f].dropna().unique(), key=lambda v: (isinstance(v, str), v)) for f in factors}
    grid = s[factors].drop_duplicates()
    grid = grid.assign(**{f"_{f}": grid[f].map({v: i for i, v in enumerate(levels[f])}) for f in factors})
    grid = grid.sort_values([f"_{f}" for f in factors]).reset_index(drop=True)
    grid["_x"] = np.arange(len(grid))
    s = s.merge(grid[factors + ["_x"]], on=factors)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(grid) + 3), 4.8))
    else:
        fig = ax.figure
    methods = list(dict.fromkeys(s["method"]))
    colours = sns.color_palette("colorblind", len(methods))
    for m, c in zip(methods, colours):
        d = s[s["method"] == m].sort_values("_x")
        x = np.append(d["_x"].to_numpy(), d["_x"].max() + 1) - 0.5
        y = np.append(d["value"].to_numpy(), d["value"].iloc[-1])
        ax.step(x, y, where="post", color=c, label=m, lw=1.8)
        if mcse and d["mcse"].notna().any():
            e = np.append(d["mcse"].to_numpy(), d["mcse"].iloc[-1])
            ax.fill_between(x, y - e, y + e, step="post", color=c, alpha=0.2, lw=0)
    if reference is None:
        reference = _REFERENCE.get(measure)
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1)
    lo, hi = np.nanmin(s["value"] - s["mcse"].fillna(0)), np.nanmax(s["value"] + s["mcse"].fillna(0))
    span = (hi - lo) or 1.0
    band = 0.12 * span
    top = lo - 0.15 * span
    for i, f in enumerate(factors):
        base = top - (i + 1) * band * 1.3
        n_lev = max(len(levels[f]) - 1, 1)
        y = base + grid[f"_{f}"].to_numpy() / n_lev * band
        ax.step(np.append(grid["_x"], len(grid)) - 0.5, np.append(y, y[-1]), where="post", color="0.4", lw=1)
        ax.text(-0.6, base + band, f"{f}: " + ", ".join(map(str, levels[f])), fontsize=8, va="bottom", ha="left",
                color="0.25")
    ax.set_ylim(top - (len(factors) + 0.2) * band * 1.3, hi + 0.1 * span)
    ax.set_xlim(-0.6, len(grid) - 0.4)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(grid)} conditions, ordered by " + " > ".join(factors))
    ax.set_ylabel(measure)
    ax.legend(title="method", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{measure} of {s['parameter'].iloc[0]} (nested-loop plot)")
    fig.tight_layout()
    return fig


def estimates_plot(summary: pd.DataFrame, measure: str = "bias", parameter: str | None = None,
                   factors: Sequence[str] | None = None, reference: float | None = None, width: float = 1.0,
                   ax: Any = None) -> plt.Figure:
    """Each condition a row, each method a point with a ±``width`` MCSE bar (width=1.96 for a 95% Monte
    Carlo interval)."""
    s = _select(summary, measure, parameter)
    factors = list(factors) if factors is not None else _factors(s)
    conds = s.drop_duplicates(factors or ["condition"]).reset_index(drop=True)
    labels = [_label(r, factors) for _, r in conds.iterrows()]
    pos = {tuple(r[f] for f in (factors or ["condition"])): i for i, (_, r) in enumerate(conds.iterrows())}
    methods = list(dict.fromkeys(s["method"]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(conds) * max(1, len(methods)) ** 0.5 + 1.5))
    else:
        fig = ax.figure
    colours = sns.color_palette("colorblind", len(methods))
    step = 0.7 / max(len(methods), 1)
    for j, (m, c) in enumerate(zip(methods, colours)):
        d = s[s["method"] == m]
        y = np.array([pos[tuple(r[f] for f in (factors or ["condition"]))] for _, r in d.iterrows()], float)
        y = y - 0.35 + step * (j + 0.5)
        ax.errorbar(d["value"], y, xerr=width * d["mcse"].fillna(0), fmt="o", color=c, label=m, ms=4, capsize=2)
    if reference is None:
        reference = _REFERENCE.get(measure)
    if reference is not None:
        ax.axvline(reference, color="0.3", ls="--", lw=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{measure} (bars: ±{width:g} MCSE)")
    ax.legend(title="method", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{measure} of {s['parameter'].iloc[0]}")
    fig.tight_layout()
    return fig


def zipper_plot(results: pd.DataFrame, truth: Any = None, parameter: str | None = None,
                condition: str | None = None, usable: Sequence[str] = ("ok", "warning"), level: float = 0.95,
                max_intervals: int | None = None) -> plt.Figure:
    """Zip plot of the confidence intervals of one condition and parameter, one panel per method."""
    r = results
    if "condition" in r and r["condition"].nunique() > 1:
        if condition is None:
            raise PerformanceError(f"the results hold {r['condition'].nunique()} conditions; choose one with "
                                   "condition=<key> (see Design.to_frame())")
        r = r[r["condition"] == condition]
        if r.empty:
            raise PerformanceError(f"no results for condition '{condition}'")
    params = list(r["parameter"].dropna().unique())
    if parameter is None:
        if len(params) != 1:
            raise PerformanceError(f"the results hold parameters {params}; choose one with parameter=")
        parameter = params[0]
    r = r[r["parameter"] == parameter]
    if "status" in r:
        r = r[r["status"].isin(usable)]
    r = r[np.isfinite(r["estimate"]) & np.isfinite(r["ci_lower"]) & np.isfinite(r["ci_upper"])]
    th = _attach_truth(r, truth).to_numpy(float)
    if not np.isfinite(th).all():
        raise PerformanceError(f"a zip plot needs the true value of '{parameter}' (truth=)")
    r = r.assign(_truth=th)
    methods = list(dict.fromkeys(r["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods) + 0.5, 4.5), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        d = r[r["method"] == m]
        if max_intervals and len(d) > max_intervals:
            d = d.iloc[:max_intervals]
        se = d["se"].to_numpy(float) if "se" in d else (d["ci_upper"] - d["ci_lower"]).to_numpy(float) / 3.92
        z = np.abs(d["estimate"].to_numpy(float) - d["_truth"].to_numpy(float)) / se
        order = np.argsort(z, kind="stable")
        centile = np.empty(len(z))
        centile[order] = 100 * (np.arange(len(z)) + 0.5) / len(z)
        covers = (d["ci_lower"].to_numpy() <= d["_truth"].to_numpy()) & (d["_truth"].to_numpy() <= d["ci_upper"].to_numpy())
        theta = float(np.mean(d["_truth"]))
        lo = d["ci_lower"].to_numpy() - d["_truth"].to_numpy() + theta
        hi = d["ci_upper"].to_numpy() - d["_truth"].to_numpy() + theta
        for flag, colour, name in ((True, "#4477AA", "covers"), (False, "#CC6677", "misses")):
            k = covers == flag
            ax.hlines(centile[k], lo[k], hi[k], color=colour, lw=0.6, label=f"{name} ({k.sum()})")
        n = len(z)
        cov = covers.mean() if n else np.nan
        mc = np.sqrt(cov * (1 - cov) / n) if n else np.nan
        ax.axvline(theta, color="0.2", lw=1)
        ax.axhline(100 * level, color="0.2", ls="--", lw=1)
        ax.axhspan(100 * (cov - 1.96 * mc), 100 * (cov + 1.96 * mc), color="#DDCC77", alpha=0.5, lw=0)
        ax.set_title(f"{m}: coverage {cov:.3f} ({mc:.3f})", fontsize=9)
        ax.set_xlabel(f"{level:.0%} interval for {parameter}")
        ax.legend(frameon=False, fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("centile of |z|")
    axes[0][0].set_ylim(0, 100)
    fig.tight_layout()
    return fig


def verdict_plot(detail: pd.DataFrame, ax: Any = None, clip: float = 10.0) -> plt.Figure:
    """The z of every part of every claim (:func:`mlsimkit.paper.compare` with ``detail=True``): one row per
    claim, a dot per part coloured by its verdict, the band |z| < 2 (inconclusive) shaded; |z| beyond
    ``clip`` is drawn at ``clip`` with an open marker."""
    if detail.empty and not len(detail.columns):  # compare() found no claim that applies to the study
        fig, ax = (plt.subplots(figsize=(9.0, 1.0)) if ax is None else (ax.figure, ax))
        ax.axis("off")
        ax.text(0.5, 0.5, "no claim of the paper applies to this study's sources", ha="center", va="center")
        return fig
    missing = [c for c in ("paper says", "source", "z", "verdict") if c not in detail]
    if missing:
        raise PerformanceError(f"a verdict plot needs the claims' parts (compare(..., detail=True)); missing {missing}")
    d = detail.assign(claim=detail["paper says"])
    claims = list(dict.fromkeys(d["claim"]))
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.0, 0.45 * len(claims) + 1.5))
    else:
        fig = ax.figure
    ax.axvspan(-2, 2, color="0.85", lw=0, label="|z| < 2: inconclusive")
    colours = {"yes": sns.color_palette("colorblind")[2], "no": sns.color_palette("colorblind")[3],
               "inconclusive": "0.35"}
    y = d["claim"].map({c: i for i, c in enumerate(claims)}).to_numpy(float)
    z = d["z"].to_numpy(float)
    zc = np.clip(np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip), -clip, clip)
    for verdict, colour in colours.items():
        m = d["verdict"].to_numpy() == verdict
        inside = m & (np.abs(zc) < clip)
        ax.scatter(zc[inside], y[inside], color=colour, s=28, label=f"part: {verdict}", zorder=3)
        ax.scatter(zc[m & ~inside], y[m & ~inside], facecolors="none", edgecolors=colour, s=28, zorder=3)
    ax.set_yticks(range(len(claims)), [c if len(c) < 90 else c[:87] + "..." for c in claims], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-clip - 0.5, clip + 0.5)
    ax.set_xlabel("z: distance from the decision's boundary in MCSEs (positive supports the claim)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / (len(claims) + 2)), ncol=4, fontsize=7,
              frameon=False)
    fig.tight_layout()
    return fig
