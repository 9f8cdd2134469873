"""Figures of the two demonstrations (Stage 5 and 6), drawn from :func:`mlsimkit.performance.summarise`
output. Error bars are ±1 Monte Carlo standard error."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PALETTE = {"OLSFE": "#DD8452", "Prior": "#55A868", "Multilevel": "#4C72B0", "OLS": "#DD8452",
           "OLS+IGM": "#C44E52", "HLM": "#55A868", "HLM+IGM": "#4C72B0", "Oracle": "#333333"}
MEASURE_LABELS = {"pmse": "PMSE", "rel_bias": "coefficient bias (%)", "relerror": "SE bias (%)",
                  "coverage": "95% coverage", "bias": "bias", "becoverage": "bias-eliminated coverage"}


def _panel(ax, sub: pd.DataFrame, methods: Sequence[str], jitter: float = 0.025):
    xs = sorted(sub["n_schools"].unique())
    for i, m in enumerate(methods):
        d = sub[sub["method"] == m].sort_values("n_schools")
        if d.empty:
            continue
        shift = np.exp((i - (len(methods) - 1) / 2) * jitter)  # multiplicative jitter on the log axis
        ax.errorbar(d["n_schools"] * shift, d["value"], yerr=d["mcse"], marker="o", ms=4, lw=1.3, capsize=2,
                    label=m, color=PALETTE.get(m))
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("number of schools")


def pmse_by_schools(summary: pd.DataFrame, sources: Sequence[str] | None = None, titles: Mapping[str, str] | None = None):
    """Demonstration 1 (Figure 5): PMSE by number of schools per prediction rule, one panel per data source
    (AI-based next to traditional), ±1 MCSE."""
    d = summary[summary["measure"] == "pmse"]
    sources = list(sources or d["source"].unique())
    methods = [m for m in ("OLSFE", "Prior", "Multilevel") if m in set(d["method"])]
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), squeeze=False)
    for ax, src in zip(axes[0], sources):
        _panel(ax, d[d["source"] == src], methods)
        ax.set_title((titles or {}).get(src, src))
        ax.set_ylabel("PMSE")
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    return fig


def recovery_panels(summary: pd.DataFrame, level_of: Mapping[str, str], level: str,
                    sources: Sequence[str] | None = None, titles: Mapping[str, str] | None = None,
                    measures: Sequence[str] = ("rel_bias", "relerror", "coverage")):
    """Demonstration 2 (Figure 8): relative bias, relative SE bias and coverage by number of schools per
    model, for the coefficient at ``level`` (``level_of`` maps parameter names, e.g. ``SES`` and ``X``, to
    ``student`` / ``school``); one column per data source, ±1 MCSE."""
    d = summary[summary["parameter"].map(level_of) == level]
    sources = list(sources or d["source"].unique())
    methods = [m for m in ("OLS", "OLS+IGM", "HLM", "HLM+IGM", "Oracle") if m in set(d["method"])]
    fig, axes = plt.subplots(len(measures), len(sources), figsize=(4.0 * len(sources), 2.7 * len(measures)),
                             squeeze=False)
    for r, meas in enumerate(measures):
        for c, src in enumerate(sources):
            ax = axes[r][c]
            sub = d[(d["measure"] == meas) & (d["source"] == src)]
            _panel(ax, sub, methods)
            ref = {"rel_bias": 0.0, "relerror": 0.0, "coverage": 0.95}.get(meas)
            if ref is not None:
                ax.axhline(ref, color="grey", lw=0.8, ls="--")
            if r == 0:
                params = ", ".join(sorted(sub["parameter"].unique()))
                ax.set_title(f"{(titles or {}).get(src, src)}\n({params})")
            if c == 0:
                ax.set_ylabel(MEASURE_LABELS.get(meas, meas))
            if r < len(measures) - 1:
                ax.set_xlabel("")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{level}-level coefficient", y=1.0)
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame):
    """Loss per training step for every generator and sub-model (log-scale loss where positive)."""
    gens = list(history["generator"].unique())
    fig, axes = plt.subplots(1, max(1, len(gens)), figsize=(4.6 * max(1, len(gens)), 3.3), squeeze=False)
    for ax, g in zip(axes[0], gens):
        h = history[history["generator"] == g]
        for model, sub in h.groupby("model", sort=False):
            y = sub["loss"].rolling(max(1, len(sub) // 50), min_periods=1).mean()
            ax.plot(sub["step"], y, label=model, lw=1.2)
        ax.set_title(g)
        ax.set_xlabel("step / epoch")
        ax.set_ylabel("loss (running mean)")
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
