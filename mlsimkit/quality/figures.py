"""Figures of the quality report (matplotlib / seaborn); each returns a Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import all_kinds, category_codes


def _plt():
    import matplotlib

    matplotlib.use(matplotlib.get_backend())
    import matplotlib.pyplot as plt

    return plt


def marginals(real, syn, name: str = "synthetic"):
    """One panel per variable (both tables): histogram overlays for numerical, bar pairs for category columns."""
    plt = _plt()
    panels = [(t, c, k) for t in real.levels for c, k in all_kinds(real).items() if c in real.schema.tables[t].data_columns]
    ncol = 4
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.5 * nrow), squeeze=False)
    for ax, (t, c, k) in zip(axes.flat, panels):
        r, s = real[t][c], syn[t][c]
        if k == "numerical":
            edges = np.histogram_bin_edges(np.r_[r.to_numpy(float), s.to_numpy(float)], bins=30)
            ax.hist(r, bins=edges, density=True, alpha=0.5, label="real", color="C0")
            ax.hist(s, bins=edges, density=True, histtype="step", lw=1.5, label=name, color="C1")
        else:
            cats = r.cat.categories
            pr = pd.Series(pd.Categorical(r, categories=cats)).value_counts(normalize=True).reindex(cats).to_numpy()
            ps = pd.Series(pd.Categorical(s, categories=cats)).value_counts(normalize=True).reindex(cats).to_numpy()
            x = np.arange(len(cats))
            ax.bar(x - 0.2, pr, width=0.4, label="real", color="C0", alpha=0.7)
            ax.bar(x + 0.2, ps, width=0.4, label=name, color="C1", alpha=0.7)
            ax.set_xticks(x, [str(v) for v in cats], fontsize=8)
        ax.set_title(f"{c} ({t})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Marginal distributions: real vs {name}")
    fig.tight_layout()
    return fig


def _corr(data):
    j = data.join_as_one()
    kinds = all_kinds(data)
    cols = {c: (j[c].to_numpy(float) if k == "numerical" else category_codes(j[c]).astype(float)) for c, k in kinds.items()}
    return pd.DataFrame(cols).corr()


def correlations(real, syn, name: str = "synthetic"):
    """Correlation heatmaps on the joined table (categories as integer codes): real, synthetic, difference."""
    plt = _plt()
    import seaborn as sns

    cr, cs = _corr(real), _corr(syn)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, m, title in zip(axes, (cr, cs, cs - cr), ("real", name, f"{name} − real")):
        sns.heatmap(m, ax=ax, vmin=-1, vmax=1, cmap="RdBu_r", annot=True, fmt=".2f", annot_kws={"size": 7}, cbar=False,
                    square=True)
        ax.set_title(title)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


def cluster_sizes(real, synthetic: dict):
    """Cluster-size distributions (students per school): real vs each synthetic data set (ECDF)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    r = np.sort(real.cluster_sizes().to_numpy())
    ax.step(r, np.arange(1, r.size + 1) / r.size, where="post", label="real", lw=2, color="k")
    for i, (name, s) in enumerate(synthetic.items()):
        v = np.sort(s.cluster_sizes().to_numpy())
        ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=name, color=f"C{i}")
    ax.set_xlabel("cluster size (children per parent)")
    ax.set_ylabel("ECDF")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def icc_plot(table: pd.DataFrame):
    """ICC per variable: real (black), each synthetic data set (mean ± sd over k), and the real-vs-real band
    (2.5-97.5% of the ICC of a random half of the real schools)."""
    plt = _plt()
    t = table[table.metric == "ICC similarity"]
    syn = t[t.dataset != "real vs real"]
    ref = t[t.dataset == "real vs real"]
    variables = list(dict.fromkeys(t.variables))
    fig, ax = plt.subplots(figsize=(1.6 * max(len(variables), 3) + 2, 3.8))
    x = np.arange(len(variables))
    if not ref.empty and "ref_stat_lo" in ref:
        rr = ref.set_index("variables").reindex(variables)
        ax.bar(x, rr.ref_stat_hi - rr.ref_stat_lo, bottom=rr.ref_stat_lo, width=0.6, color="0.85",
               label="real-vs-real band (half of the schools)")
    real_icc = t.groupby("variables", sort=False).stat_real.first().reindex(variables) if "stat_real" in t else None
    if real_icc is not None:
        ax.scatter(x, real_icc, color="k", marker="_", s=600, lw=2.5, label="real", zorder=3)
    names = list(dict.fromkeys(syn.dataset))
    for i, name in enumerate(names):
        d = syn[syn.dataset == name].set_index("variables").reindex(variables)
        off = (i - (len(names) - 1) / 2) * 0.12
        sd = d["sd"].fillna(0) if "sd" in d else 0
        ax.errorbar(x + off, d.stat_syn, yerr=sd, fmt="o", color=f"C{i}", label=name, zorder=4)
    ax.set_xticks(x, variables)
    ax.set_ylabel("ICC")
    ax.set_title("ICC: real vs synthetic, with the real-vs-real reference band")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def score_bars(summary: pd.DataFrame):
    """Table S2 domain averages per dataset, with the real-vs-real reference as a grey band."""
    plt = _plt()
    items = summary[summary.item.str.endswith(("fidelity", "efficacy")) & summary.domain.isin(
        ["within-table", "between-table", "ML efficacy"])]
    if items.empty:
        fig, ax = plt.subplots()
        ax.text(0.5, 0.5, "no scores", ha="center")
        return fig
    rows = list(dict.fromkeys(zip(items.domain, items.level, items.item)))
    names = list(dict.fromkeys(items.dataset))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) * max(1, len(names) / 2) + 1.5))
    y = np.arange(len(rows))
    h = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        d = items[items.dataset == name].set_index(["domain", "level", "item"]).reindex(rows)
        xerr = None
        if "lo" in d and d.lo.notna().any():
            xerr = np.vstack([(d.value - d.lo).clip(lower=0).fillna(0), (d.hi - d.value).clip(lower=0).fillna(0)])
        ax.barh(y + (i - (len(names) - 1) / 2) * h, d.value, height=h, label=name, color=f"C{i}", xerr=xerr)
    if "ref_lo" in items:
        r = items.drop_duplicates(["domain", "level", "item"]).set_index(["domain", "level", "item"]).reindex(rows)
        for yi, (lo, hi) in enumerate(zip(r.ref_lo, r.ref_hi)):
            if np.isfinite(lo):
                ax.fill_betweenx([yi - 0.45, yi + 0.45], lo, hi, color="0.3", alpha=0.25, lw=0,
                                 label="real vs real" if yi == 0 else None)
    for cut in (0.6, 0.8, 0.9):
        ax.axvline(cut, color="0.6", ls=":", lw=1)
    ax.set_yticks(y, [f"{it} ({lv})" if lv not in ("all",) else it for _, lv, it in rows], fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.invert_yaxis()
    ax.set_xlabel("score (dotted: Table 1 cut-offs 0.6 / 0.8 / 0.9)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
