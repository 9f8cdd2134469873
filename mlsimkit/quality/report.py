"""Stage 3 entry point: :func:`evaluate` real vs synthetic data and return a :class:`QualityReport`.

The report's ``table`` is tidy and long — one row per (dataset, domain, subdomain, metric, level, variables)
with the mean ``value`` over the k synthetic data sets, its spread ``sd``, the bootstrap interval
``lo``/``hi``, the real-vs-real ``reference`` and its band ``ref_lo``/``ref_hi``. ``summary()`` gives the
domain averages of Table S2 with the heuristic labels of Table 1.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..cost import cores_available
from ..data import MultilevelData
from ..errors import MlsimkitError
from ..io import atomic_path
from ._common import kinds_of, resample_schools, split_halves
from .between import between_tables, icc_tables
from .efficacy import efficacy_rows
from .privacy import privacy_rows
from .reference import band, holdout_split, interval  # noqa: F401  (holdout_split re-exported)
from .seed001 import seed001_rows
from .within import range_rows, within_table

KEYS = ["domain", "subdomain", "metric", "level", "variables"]
REFERENCE = "real vs real"
#: Suffix of a summary item whose metric is 1 by construction for that data set (excluded from the averages).
BY_CONSTRUCTION = " (1 by construction, not averaged)"
#: Metrics that are 1 by construction for every data set evaluated here: the keys of synthetic data are
#: assembled by the generators' code, and real data passed Stage 1's key validation.
ALWAYS_BY_CONSTRUCTION = {"referential integrity": "keys are assembled by the code (synthetic) or validated in Stage 1 (real)"}

# Table 1 of Suk et al.
LABELS = [(0.90, "Excellent"), (0.80, "Good"), (0.60, "Fair"), (-np.inf, "Poor")]


def label(score: float) -> str:
    """Heuristic label of Table 1 (0.90-0.99 Excellent, 0.80-0.89 Good, 0.60-0.79 Fair, < 0.60 Poor)."""
    if score is None or not np.isfinite(score):
        return ""
    for cut, name in LABELS:
        if score >= cut:
            return name
    return "Poor"


# ------------------------------------------------------------------------------------ scoring one pair
def fidelity_rows(real: MultilevelData, syn: MultilevelData, *, real_iccs=None) -> list[dict]:
    """Within- and between-table fidelity rows (the cheap part, also used by the bootstrap)."""
    rows = []
    for table in real.levels:
        rows += within_table(real[table], syn[table], kinds_of(real, table), table)
    rows += between_tables(real, syn, real_iccs=real_iccs)
    return rows


def score_pair(real: MultilevelData, syn: MultilevelData, *, efficacy=False, privacy=True, seed001=True, seed=0,
               real_iccs=None, holdout=None, cache=None, targets=None) -> list[dict]:
    """Every metric of one (real, synthetic) pair, as long rows. ``real`` is what the generator was trained on;
    ``holdout``: real schools it never saw (for the DCR share closer to hold-out and the OOD score)."""
    rows = fidelity_rows(real, syn, real_iccs=real_iccs) + validity_rows(real, syn)
    if privacy:
        rows += privacy_rows(real, syn, holdout=holdout)
    if seed001:
        rows += seed001_rows(real, syn, holdout=holdout, seed=seed)
    if efficacy:
        mode = "full" if efficacy is True else efficacy
        rows += efficacy_rows(real, syn, mode=mode, seed=seed, _cache=cache, targets=targets)
    return rows


def validity_rows(real: MultilevelData, syn: MultilevelData) -> list[dict]:
    """The share of synthetic values outside the real range, per numerical column of every table."""
    rows = []
    for table in real.levels:
        rows += range_rows(real[table], syn[table], kinds_of(real, table), table)
    return rows


def reference_pair(a: MultilevelData, b: MultilevelData, n_holdout: int = 0, *, privacy=True, seed001=True,
                   seed: int = 0) -> list[dict]:
    """One real-vs-real split scored as a generator would be: ``b`` plays the synthetic data.

    Fidelity and validity compare ``b`` with the whole half ``a``. With ``n_holdout > 0`` the privacy and
    seed-001 rows are computed as for a generator trained without a hold-out: ``a`` is cut into a training
    part and a hold-out part of ``min(n_holdout, len(a) // 2)`` schools (``b`` saw neither).
    """
    rows = fidelity_rows(a, b) + validity_rows(a, b)
    if not (privacy or seed001):
        return rows
    if n_holdout > 0:
        share = min(n_holdout, a.n_clusters // 2) / a.n_clusters
        train, hold = holdout_split(a, share, np.random.default_rng(seed))
    else:
        train, hold = a, None
    if privacy:
        rows += privacy_rows(train, b, holdout=hold)
    if seed001:
        rows += seed001_rows(train, b, holdout=hold, seed=seed)
    return rows


def mark_by_construction(frame: pd.DataFrame, by_construction: Mapping | None = None) -> pd.DataFrame:
    """Add ``informative`` (False where a metric is 1 by construction for that data set) and ``note`` columns.

    ``by_construction`` maps a data set name to ``{metric: reason}`` or ``{"metric@level": reason}``;
    :data:`ALWAYS_BY_CONSTRUCTION` applies to every data set.
    """
    frame = frame.copy()
    frame["informative"] = True
    frame["note"] = ""
    if frame.empty:
        return frame
    decl = {}
    for name in frame["dataset"].unique():
        decl[name] = {**ALWAYS_BY_CONSTRUCTION, **dict((by_construction or {}).get(name, {}))}
    for name, spec in decl.items():
        for key, reason in spec.items():
            metric, _, level = str(key).partition("@")
            hit = (frame["dataset"] == name) & (frame["metric"] == metric)
            if level:
                hit &= frame["level"] == level
            frame.loc[hit, "informative"] = False
            frame.loc[hit, "note"] = f"1 by construction: {reason}"
    return frame


# ------------------------------------------------------------------------------------ summaries (Table S2)
def summarise_rows(df: pd.DataFrame, levels: Sequence[str]) -> pd.DataFrame:
    """Domain averages of one replicate's rows, as in Table S2.

    Within a table: each metric is averaged over its variables or pairs; marginal fidelity = mean of the
    marginal metric averages, pairwise fidelity = mean of the pairwise ones, table fidelity = mean of all
    metric averages. Between tables: each metric's average, and their mean. ML efficacy: per target the mean
    over models; per level the mean over targets; overall the mean over all targets. Rows with
    ``informative == False`` (1 by construction, :func:`mark_by_construction`) enter no average; their metric
    is listed with the suffix :data:`BY_CONSTRUCTION`. Privacy, seed-001 and validity: each metric's mean.
    """
    out = []
    if "informative" in df.columns:
        informative = df["informative"].fillna(True).astype(bool)
        fixed, df = df[~informative], df[informative]
    else:
        fixed = df.iloc[:0]
    w = df[df.domain == "within-table"]
    for table in levels:
        t = w[w.level == table]
        for metric, v in fixed[(fixed.domain == "within-table") & (fixed.level == table)].groupby(
                "metric", sort=False)["value"].mean().items():
            out.append(("within-table", table, metric + BY_CONSTRUCTION, v))
        if t.empty:
            continue
        m = t.groupby(["subdomain", "metric"], sort=False)["value"].mean()
        for (sub, metric), v in m.items():
            out.append(("within-table", table, metric, v))
        for sub in ("marginal", "pairwise"):
            if sub in m.index.get_level_values(0):
                out.append(("within-table", table, f"{sub} fidelity", m.loc[sub].mean()))
        out.append(("within-table", table, f"{table}-table fidelity", m.mean()))
    for metric, v in fixed[fixed.domain == "between-table"].groupby("metric", sort=False)["value"].mean().items():
        out.append(("between-table", "all", metric + BY_CONSTRUCTION, v))
    b = df[df.domain == "between-table"]
    if not b.empty:
        m = b.groupby("metric", sort=False)["value"].mean()
        for metric, v in m.items():
            out.append(("between-table", "all", metric, v))
        out.append(("between-table", "all", "between-table fidelity", m.mean()))
    e = df[df.domain == "ML efficacy"]
    if not e.empty:
        per_target = e.groupby(["level", "variables"], sort=False)["value"].mean()
        for table in levels:
            if table in per_target.index.get_level_values(0):
                out.append(("ML efficacy", table, f"{table}-level efficacy", per_target.loc[table].mean()))
        out.append(("ML efficacy", "all", "overall efficacy", per_target.mean()))
    for dom in ("privacy", "seed-001", "validity"):
        d = df[df.domain == dom]
        for (lvl, metric), v in d.groupby(["level", "metric"], sort=False)["value"].mean().items():
            out.append((dom, lvl, metric, v))
    return pd.DataFrame(out, columns=["domain", "level", "item", "value"])


def _normal_interval(tab: pd.DataFrame, boot: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``value ± 1.96 × bootstrap SE``, clipped to [0, 1].

    A percentile interval of a similarity score is shifted downward (resampled data sets never match each
    other perfectly), so it can exclude the estimate itself for scores near 1; the normal interval centred on
    the estimate, with the bootstrap standard error over schools, does not.
    """
    se = boot.groupby(keys, sort=False, dropna=False)["value"].std().rename("se").reset_index()
    tab = tab.merge(se, on=keys, how="left")
    tab["lo"] = (tab["value"] - 1.96 * tab["se"]).clip(lower=0)
    tab["hi"] = (tab["value"] + 1.96 * tab["se"]).clip(upper=1)
    return tab.drop(columns="se")


# ------------------------------------------------------------------------------------ the report
class QualityReport:
    """Result of :func:`evaluate`: tables, summary, figures and an HTML file."""

    def __init__(self, replicates: pd.DataFrame, reference: pd.DataFrame, boot: pd.DataFrame, real: MultilevelData,
                 synthetic: Mapping[str, list], settings: dict, timings: dict):
        self.replicates = replicates  # per (dataset, replicate) rows
        self.reference_rows = reference  # per split rows
        self.bootstrap_rows = boot
        self.real = real
        self.synthetic = dict(synthetic)
        self.settings = settings
        self.timings = timings
        self.table = self._aggregate(replicates, reference, boot, KEYS)
        self._figures: dict = {}  # drawn once (see _figure)

    # -------------------------------------------------------------- tables
    @staticmethod
    def _aggregate(rep, ref, boot, keys):
        extra = [c for c in ("stat_real", "stat_syn") if c in rep.columns]
        g = rep.groupby(["dataset", *keys], sort=False, dropna=False)
        tab = g["value"].agg(value="mean", sd="std", k="count").reset_index()
        for c in extra:
            tab = tab.merge(g[c].mean().rename(c).reset_index(), on=["dataset", *keys], how="left")
        for c in ("informative", "note"):
            if c in rep.columns:
                tab = tab.merge(g[c].first().rename(c).reset_index(), on=["dataset", *keys], how="left")
        if not boot.empty:
            tab = _normal_interval(tab, boot, ["dataset", *keys])
        else:
            tab["lo"] = tab["hi"] = np.nan
        if not ref.empty:
            rb = band(ref, keys)
            if "stat_syn" in ref.columns:
                sb = ref.groupby(keys, sort=False, dropna=False)["stat_syn"].agg(
                    ref_stat_lo=lambda v: interval(v)[0], ref_stat_hi=lambda v: interval(v)[1]).reset_index()
                rb = rb.merge(sb, on=keys, how="left")
            tab = tab.merge(rb, on=keys, how="left")
            reft = rb.assign(dataset=REFERENCE, value=rb["reference"], lo=rb["ref_lo"], hi=rb["ref_hi"],
                             k=ref.groupby(keys, sort=False, dropna=False).size().to_numpy())
            for c in ("informative", "note"):
                if c in ref.columns:
                    reft = reft.merge(ref.groupby(keys, sort=False, dropna=False)[c].first().rename(c).reset_index(),
                                      on=keys, how="left")
            tab = pd.concat([tab, reft], ignore_index=True)
        else:
            tab["reference"] = tab["ref_lo"] = tab["ref_hi"] = np.nan
        return tab

    def summary(self) -> pd.DataFrame:
        """Domain averages as in Table S2 per dataset (mean and sd over the k data sets, bootstrap interval),
        with the real-vs-real reference and the heuristic label of Table 1 (fidelity and efficacy rows)."""
        levels = self.real.levels
        keys = ["domain", "level", "item"]

        def per(frame, by):
            if frame.empty:
                return pd.DataFrame(columns=[*by, *keys, "value"])
            parts = []
            for k, sub in frame.groupby(by, sort=False):
                s = summarise_rows(sub, levels)
                for col, val in zip(by, k if isinstance(k, tuple) else (k,)):
                    s[col] = val
                parts.append(s)
            return pd.concat(parts, ignore_index=True)

        rep = per(self.replicates, ["dataset", "replicate"])
        out = rep.groupby(["dataset", *keys], sort=False)["value"].agg(value="mean", sd="std").reset_index()
        boot = per(self.bootstrap_rows, ["dataset", "draw"])
        if not boot.empty:
            out = _normal_interval(out, boot, ["dataset", *keys])
        ref = per(self.reference_rows, ["replicate"])
        if not ref.empty:
            out = out.merge(band(ref, keys), on=keys, how="left")
        scored = out.domain.isin(["within-table", "between-table", "ML efficacy"]) & ~out["item"].str.endswith(BY_CONSTRUCTION)
        out["label"] = np.where(scored, out["value"].map(label), "")
        if "reference" in out:
            out["reference label"] = np.where(scored, out["reference"].map(label), "")
        return out

    # -------------------------------------------------------------- figures
    def icc_table(self, digits: int = 3):
        """ICC and reliability similarity per data set and variable, with the real and synthetic statistic and
        the real-vs-real reference and its band (the table under the ICC figure)."""
        t = self.table
        cols = ["dataset", "metric", "variables", "value", "stat_real", "stat_syn", "reference", "ref_lo", "ref_hi"]
        out = t[t["metric"].isin(["ICC similarity", "reliability similarity"])][cols].rename(columns={
            "variables": "variable", "stat_real": "real", "stat_syn": "synthetic", "ref_lo": "band low",
            "ref_hi": "band high"})
        return out.style.hide(axis="index").format(precision=digits, na_rep="")

    def by_construction_table(self, digits: int = 3):
        """The metrics that are 1 by construction for some generator (marked uninformative and left out of the
        domain averages), one row per data set, metric and level, with the reason."""
        t = self.table
        out = t[~t["informative"].astype(bool)][["dataset", "metric", "level", "variables", "value", "note"]]
        out = out.drop_duplicates(["dataset", "metric", "level"]).rename(columns={"variables": "variable"})
        return out.style.hide(axis="index").format(precision=digits, na_rep="")

    def validity_table(self, digits: int = 4) -> pd.DataFrame:
        """Share of values outside the real range, one row per data set, one column per level and variable."""
        t = self.table
        return t[t["domain"] == "validity"].pivot_table(index="dataset", columns=["level", "variables"],
                                                        values="value", sort=False).round(digits)

    def _figure(self, key: str, draw):
        """The figure ``key``, drawn once: the notebook shows it and :meth:`to_html` embeds the same one (drawing
        the marginals and correlations of every data set again took longer than computing the metrics)."""
        if key not in self._figures:
            self._figures[key] = draw()
        return self._figures[key]

    def figure_marginals(self, dataset: str | None = None):
        from .figures import marginals

        name = dataset or next(iter(self.synthetic), "")
        return self._figure(f"marginals: {name}", lambda: marginals(self.real, self._first(dataset), name))

    def figure_correlations(self, dataset: str | None = None):
        from .figures import correlations

        name = dataset or next(iter(self.synthetic), "")
        return self._figure(f"correlations: {name}", lambda: correlations(self.real, self._first(dataset), name))

    def figure_cluster_sizes(self):
        from .figures import cluster_sizes

        return self._figure("cluster sizes",
                            lambda: cluster_sizes(self.real, {k: v[0] for k, v in self.synthetic.items()}))

    def figure_icc(self):
        from .figures import icc_plot

        return self._figure("ICC real vs synthetic", lambda: icc_plot(self.table))

    def figure_scores(self):
        from .figures import score_bars

        return self._figure("scores by domain", lambda: score_bars(self.summary()))

    def _first(self, dataset):
        if not self.synthetic:
            raise MlsimkitError("the report holds no synthetic data set to plot")
        return self.synthetic[dataset or next(iter(self.synthetic))][0]

    def figures(self) -> dict:
        figs = {"scores by domain": self.figure_scores(), "ICC real vs synthetic": self.figure_icc(),
                "cluster sizes": self.figure_cluster_sizes()}
        for name in self.synthetic:
            figs[f"marginals: {name}"] = self.figure_marginals(name)
            figs[f"correlations: {name}"] = self.figure_correlations(name)
        return figs

    # -------------------------------------------------------------- output
    def to_html(self, path: str | Path, *, title: str = "Synthetic data quality report") -> Path:
        """A self-contained HTML file (figures embedded as PNG), written atomically."""
        import matplotlib.pyplot as plt

        parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
                 "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>",
                 f"<h1>{html.escape(title)}</h1>",
                 "<p>Scores range from 0 to 1 (1 = the synthetic data reproduce the real data), except privacy distances "
                 "and the seed-001 distances. <b>reference</b> = the same metric computed between two halves of the real "
                 "schools (what a perfect generator reaches at this sample size); lo/hi = bootstrap interval over "
                 "schools. Labels follow Table 1 of Suk et al. A score above the band is not better: a copy of the "
                 "real data scores above it on fidelity and below it on authenticity, detection score, DCR share "
                 "closer to hold-out and SDIS. Items marked '1 by construction' enter no average.</p>",
                 f"<p>Settings: {html.escape(str(self.settings))}</p>",
                 "<h2>Summary (Table S2)</h2>", self.summary().to_html(index=False, float_format="%.3f")]
        for name, fig in self.figures().items():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            plt.close(fig)
            parts.append(f"<h2>{html.escape(name)}</h2><img src='data:image/png;base64,"
                         f"{base64.b64encode(buf.getvalue()).decode()}'/>")
        parts += ["<h2>All metrics</h2>", self.table.to_html(index=False, float_format="%.3f"), "</body></html>"]
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(parts), encoding="utf-8")
        return path

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``table.csv``, ``summary.csv``, ``replicates.csv`` and ``report.html`` (atomically)."""
        directory = Path(directory)
        out = {}
        for name, frame in (("table", self.table), ("summary", self.summary()), ("replicates", self.replicates)):
            with atomic_path(directory / f"{name}.csv") as tmp:
                frame.to_csv(tmp, index=False)
            out[name] = directory / f"{name}.csv"
        out["html"] = self.to_html(directory / "report.html")
        return out

    def __repr__(self):
        return (f"QualityReport(datasets={list(self.synthetic)}, rows={len(self.table)}, "
                f"reference_splits={self.settings.get('reference_splits')}, bootstrap={self.settings.get('bootstrap')})")


# settings per study profile: quick (CI smoke), default (the book), paper (Table S2: k = 10, 5-fold efficacy)
PROFILE_SETTINGS = {
    "quick": dict(n_synthetic=2, reference_splits=3, bootstrap=0, efficacy="fast", efficacy_reference_splits=1),
    "default": dict(n_synthetic=5, reference_splits=5, bootstrap=20, efficacy="fast", efficacy_reference_splits=2),
    "paper": dict(n_synthetic=10, reference_splits=10, bootstrap=200, efficacy="full", efficacy_reference_splits=5),
}
#: Settings of the hold-out (Stage 2 trains a second copy of each generator without a share of the real schools,
#: for the privacy and OOD metrics): ``holdout_share`` (0 = no hold-out) and ``holdout_training``
#: (``same``: the study's generator settings; ``quick``: the quick profile's, cheaper but a different model).
HOLDOUT_SETTINGS = dict(holdout_share=0.2, holdout_training="same")
for _p in PROFILE_SETTINGS.values():
    _p.update(HOLDOUT_SETTINGS)


def default_settings(profile: str, overrides: Mapping | None = None) -> dict:
    """Stage 3 settings of a profile, updated with a params file's ``quality:`` mapping (a profile of the
    user's own, not quick / default / paper, starts from the default profile's settings)."""
    out = dict(PROFILE_SETTINGS.get(profile, PROFILE_SETTINGS["default"]))
    for k, v in (overrides or {}).items():
        if k not in out and k not in ("targets", "seed"):
            raise MlsimkitError(f"params 'quality.{k}': unknown setting; expected one of {sorted(out) + ['seed', 'targets']}")
        out[k] = v
    return out


def evaluate_settings(settings: Mapping) -> dict:
    """The keyword arguments of :func:`evaluate` among ``settings`` (drops ``n_synthetic`` and the hold-out
    settings, which Stage 2 uses)."""
    return {k: v for k, v in settings.items() if k != "n_synthetic" and k not in HOLDOUT_SETTINGS}


def _as_dict(synthetic) -> dict[str, list[MultilevelData]]:
    if synthetic is None:
        return {}
    if isinstance(synthetic, MultilevelData):
        return {"synthetic": [synthetic]}
    if isinstance(synthetic, Mapping):
        out = {}
        for k, v in synthetic.items():
            out[str(k)] = [v] if isinstance(v, MultilevelData) else list(v)
            if not out[str(k)] or not all(isinstance(x, MultilevelData) for x in out[str(k)]):
                raise MlsimkitError(f"synthetic[{k!r}]: expected a MultilevelData or a non-empty list of them")
        return out
    if isinstance(synthetic, (list, tuple)):
        return {"synthetic": list(synthetic)}
    raise MlsimkitError(f"synthetic: expected a MultilevelData or a dict name -> list of MultilevelData, got {type(synthetic)}")


# ------------------------------------------------------------------------------------ the loops of evaluate
# Each loop of :func:`evaluate` is one module-level function of one item (a candidate data set, a reference split, a
# bootstrap draw) returning that item's rows; :func:`_map` runs it over the items, in this process or in a pool of
# worker processes, and returns the results in the items' order. Every item carries its own seed (``seed + i``, a
# spawned SeedSequence child) and runs on one thread, so its rows do not depend on where, or next to what, it ran.

def _candidate_rows(name: str, i: int, syn: MultilevelData, hold_syn: MultilevelData | None, *, real, real_iccs,
                    train_part, holdout, privacy: bool, seed001: bool, seed: int) -> list[dict]:
    """Rows of candidate ``i`` of ``name`` except ML efficacy. Fidelity and validity compare ``syn`` with ``real``;
    privacy and seed-001 compare ``syn`` with ``real``, or, when the generator has a hold-out model, its data set
    ``hold_syn`` with the training part ``train_part``, ``holdout`` being the schools that model never saw."""
    own = hold_syn is None
    r = score_pair(real, syn, efficacy=False, privacy=privacy and own, seed001=seed001 and own, seed=seed + i,
                   real_iccs=real_iccs)
    if not own:
        if privacy:
            r += privacy_rows(train_part, hold_syn, holdout=holdout)
        if seed001:
            r += seed001_rows(train_part, hold_syn, holdout=holdout, seed=seed + i)
    return [dict(x, dataset=name, replicate=i) for x in r]


def _candidate_efficacy_rows(name: str, i: int, syn: MultilevelData, *, real, mode, seed: int, targets, engine,
                             cache: dict) -> list[dict]:
    """ML-efficacy rows of candidate ``i`` of ``name``; ``cache`` keeps the real data's TRTR fits for the next
    candidates (:func:`.efficacy.efficacy_rows`)."""
    r = efficacy_rows(real, syn, mode=mode, seed=seed, _cache=cache, targets=targets, engine=engine)
    return [dict(x, dataset=name, replicate=i) for x in r]


def _reference_rows(j: int, a: MultilevelData, b: MultilevelData, *, n_holdout: int, privacy: bool, seed001: bool,
                    seed: int) -> list[dict]:
    """Rows of reference split ``j`` (halves ``a`` and ``b``) except ML efficacy (:func:`reference_pair`)."""
    r = reference_pair(a, b, n_holdout, privacy=privacy, seed001=seed001, seed=seed + j)
    return [dict(x, dataset=REFERENCE, replicate=j) for x in r]


def _reference_efficacy_rows(j: int, a: MultilevelData, b: MultilevelData, *, mode, seed: int, targets,
                             engine) -> list[dict]:
    """ML-efficacy rows of reference split ``j``: ``b`` plays the synthetic data, ``a`` the real data."""
    r = efficacy_rows(a, b, mode=mode, seed=seed, targets=targets, engine=engine)
    return [dict(x, dataset=REFERENCE, replicate=j) for x in r]


def _bootstrap_rows(d: int, seed_seq: np.random.SeedSequence, drawn: Mapping[str, MultilevelData], *,
                    real: MultilevelData) -> list[dict]:
    """Fidelity rows of bootstrap draw ``d``: the schools of ``real`` resampled, then those of each name's data set
    ``drawn[name]`` (data set ``d mod k``), all with one generator seeded by ``seed_seq``."""
    rng = np.random.default_rng(seed_seq)
    rb = resample_schools(real, rng)
    rows = []
    for name, s in drawn.items():
        rows += [dict(x, dataset=name, draw=d) for x in fidelity_rows(rb, resample_schools(s, rng))]
    return rows


def _run(fn, items: Sequence[tuple], shared: Mapping) -> list:
    """``fn(*item, **shared)`` for each item in turn, on one thread (BLAS and OpenMP pools limited to 1)."""
    with threadpool_limits(1):
        return [fn(*item, **shared) for item in items]


def _chunks(items: Sequence, n: int) -> list[list]:
    """``items`` cut into ``min(n, len(items))`` contiguous chunks whose sizes differ by at most one."""
    k = min(n, len(items))
    bounds = [len(items) * c // k for c in range(k + 1)] if k else [0]
    return [list(items[bounds[c]:bounds[c + 1]]) for c in range(k)]


def _map(fn, items: Sequence[tuple], workers: int, **shared) -> list:
    """``[fn(*item, **shared) for item in items]``, in the items' order.

    With ``workers > 1`` (and more than one item) the items are cut into ``workers`` contiguous chunks, one task
    each, run by a joblib loky pool of that many processes (reused from one call to the next). ``shared`` travels
    once per task, so a mutable argument such as the efficacy ``cache`` is one object within a chunk and a fresh
    copy in each chunk: the real data's TRTR fits are made once per chunk (once per worker) instead of once, and
    reused by the chunk's candidates of every name (the cache is keyed by the real data, not by the name). Equal
    chunks suit these loops, whose items cost about the same.
    """
    chunks = _chunks(items, workers)
    if len(chunks) < 2:
        return _run(fn, items, shared)
    from joblib import Parallel, delayed

    parts = Parallel(n_jobs=len(chunks), backend="loky")(delayed(_run)(fn, chunk, shared) for chunk in chunks)
    return [result for part in parts for result in part]


def _flat(parts) -> list:
    """The rows of a sequence of row lists, in order."""
    return [row for part in parts for row in part]


def evaluate(real: MultilevelData, synthetic=None, *, reference_splits: int = 5, bootstrap: int = 0,
             efficacy: bool | str = "fast", efficacy_reference_splits: int | None = None, privacy: bool = True,
             seed001: bool = True, holdout: MultilevelData | None = None, holdout_synthetic=None,
             by_construction: Mapping | None = None, targets=None, seed: int = 0,
             efficacy_engine: str | None = None, n_jobs: int = 1) -> QualityReport:
    """Evaluate synthetic multilevel data against the real data (Stage 3).

    Parameters
    ----------
    real : MultilevelData
    synthetic : MultilevelData, list, or dict name -> list of MultilevelData (k candidate data sets each);
        ``None`` gives the real-vs-real reference alone.
    reference_splits : number of random halvings of the real schools for the reference band (0: none).
    bootstrap : number of bootstrap draws over schools for the intervals of the fidelity metrics (0: none).
    efficacy : ``False``, ``"fast"`` (3 folds, small ensembles; the book default) or ``True`` / ``"full"``
        (5 folds as in the paper).
    efficacy_reference_splits : reference splits that also get ML efficacy (default ``min(3, reference_splits)``).
    privacy, seed001 : compute those domains.
    holdout : real schools held out from the training of the generators of ``holdout_synthetic`` (may be part
        of ``real``: the training part is ``real`` without the hold-out's top-level ids).
    holdout_synthetic : dict name -> list of data sets sampled from the same generator as ``synthetic[name]``
        but trained on the training part only. For those names the privacy and seed-001 rows (DCR share
        closer to hold-out, TSTR AUROC (OOD), SDIS, authenticity, ...) come from these data sets, scored against
        the training part with ``holdout`` as the unseen schools; the fidelity, validity and efficacy rows
        come from ``synthetic[name]``. Names without hold-out data get no DCR share (NaN) and an OOD term
        computed on the rows the generator saw, under the metric names ``TSTR AUROC (training rows)`` and
        ``SDIS (no hold-out)``. The reference splits mirror the hold-out (see :func:`reference_pair`).
    by_construction : dict name -> ``{metric or "metric@level": reason}``: metrics that are 1 by construction
        for that data set (e.g. a generator that copies real school sizes); marked ``informative = False`` in
        the table and kept out of the domain averages. :data:`ALWAYS_BY_CONSTRUCTION` applies to all.
    targets : restrict ML efficacy to these variables.
    efficacy_engine : mixed-model engine, ``"mlsimkit.lmm"`` or ``"builtin"`` (closed-form random-intercept
        REML); default: ``mlsimkit.lmm`` when importable.
    seed : root seed; every split and draw gets its own child seed.
    n_jobs : worker processes (at most the cores available, :func:`mlsimkit.cost.cores_available`). With more
        than one, each part (the candidates, their ML efficacy, the reference splits and their efficacy, the
        bootstrap draws) is cut into contiguous chunks run by a joblib loky pool, one thread per process; the
        rows are gathered in their serial order, so the report's tables are the same, bit for bit, as with
        ``n_jobs=1``. ``timings`` holds the wall time of each part (the first parallel part includes the start
        of the pool, about 2 s). Each worker makes the real data's TRTR fits of ML efficacy once for its chunk.
        The speed-up needs free cores: on HSB-sized data and 2 idle cores n_jobs=2 ran at 1.37x the speed of
        n_jobs=1, on 2 cores kept busy by another job at 0.8x (``benchmarks/bench_quality.py --n-jobs 1 2``).
    """
    if not isinstance(real, MultilevelData):
        raise MlsimkitError("real: expected a MultilevelData")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs < 1:
        raise MlsimkitError(f"n_jobs: expected a positive integer (worker processes), got {n_jobs!r}")
    syn = _as_dict(synthetic)
    for name, lst in syn.items():
        for i, s in enumerate(lst):
            if not s.schema.same_structure(real.schema):
                raise MlsimkitError(f"synthetic[{name!r}][{i}]: its schema differs from the real data's schema "
                                    f"'{real.schema.name}'")
    held = _as_dict(holdout_synthetic)
    if held and holdout is None:
        raise MlsimkitError("holdout_synthetic: given without 'holdout' (the real schools those generators never saw)")
    if holdout is not None and not held:
        raise MlsimkitError("holdout: given without 'holdout_synthetic' (data sets of generators trained without "
                            "those schools); the hold-out metrics need both")
    for name, lst in held.items():
        if name not in syn:
            raise MlsimkitError(f"holdout_synthetic[{name!r}]: no synthetic data set of that name (names: {list(syn)})")
        for i, s in enumerate(lst):
            if not s.schema.same_structure(real.schema):
                raise MlsimkitError(f"holdout_synthetic[{name!r}][{i}]: its schema differs from the real data's schema "
                                    f"'{real.schema.name}'")
    train_part = n_hold = None
    if holdout is not None:
        if not isinstance(holdout, MultilevelData) or not holdout.schema.same_structure(real.schema):
            raise MlsimkitError("holdout: expected a MultilevelData with the real data's schema")
        top = real.schema.top
        pk = real.schema.tables[top].primary_key[0]
        held_ids = set(holdout[top][pk].astype(str))
        train_part = real.subset([i for i in real[top][pk].astype(str) if i not in held_ids])
        n_hold = holdout.n_clusters
    eff_ref = min(3, reference_splits) if efficacy_reference_splits is None else efficacy_reference_splits
    mode = "full" if efficacy is True else efficacy
    workers = min(int(n_jobs), cores_available())
    ss = np.random.SeedSequence(seed)
    s_syn, s_ref, s_boot = ss.spawn(3)
    candidates = [(name, i, s, held[name][i % len(held[name])] if name in held else None)
                  for name, lst in syn.items() for i, s in enumerate(lst)]
    timings = {}
    with threadpool_limits(1):
        t0 = time.perf_counter()
        real_iccs = icc_tables(real)
        rows = _flat(_map(_candidate_rows, candidates, workers, real=real, real_iccs=real_iccs, train_part=train_part,
                          holdout=holdout, privacy=privacy, seed001=seed001, seed=seed))
        timings["synthetic (no efficacy)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if efficacy:
            rows += _flat(_map(_candidate_efficacy_rows, [c[:3] for c in candidates], workers, real=real, mode=mode,
                               seed=seed, targets=targets, engine=efficacy_engine, cache={}))
        timings["synthetic efficacy"] = time.perf_counter() - t0
        # real-vs-real reference: the halves are drawn here (cheap), scored by the items
        t0 = time.perf_counter()
        splits = [(j, *split_halves(real, np.random.default_rng(child)))
                  for j, child in enumerate(s_ref.spawn(reference_splits))]
        ref_parts = _map(_reference_rows, splits, workers, n_holdout=n_hold if held else 0, privacy=privacy,
                         seed001=seed001, seed=seed)
        timings["reference (no efficacy)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        eff_parts = _map(_reference_efficacy_rows, splits[:eff_ref], workers, mode=mode, seed=seed, targets=targets,
                         engine=efficacy_engine) if efficacy else []
        timings["reference efficacy"] = time.perf_counter() - t0
        # split j's rows: its fidelity, validity, privacy and seed-001 rows, then its efficacy rows
        ref_rows = _flat(part + (eff_parts[j] if j < len(eff_parts) else []) for j, part in enumerate(ref_parts))
        # bootstrap over schools (fidelity metrics): draw d resamples the real data and data set d mod k of each name
        t0 = time.perf_counter()
        draws = [(d, child, {name: lst[d % len(lst)] for name, lst in syn.items()})
                 for d, child in enumerate(s_boot.spawn(bootstrap))]
        boot_rows = _flat(_map(_bootstrap_rows, draws, workers, real=real))
        timings["bootstrap"] = time.perf_counter() - t0
    rep = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["dataset", "replicate", *KEYS, "value"])
    ref = pd.DataFrame(ref_rows) if ref_rows else pd.DataFrame(columns=["dataset", "replicate", *KEYS, "value"])
    boot = pd.DataFrame(boot_rows) if boot_rows else pd.DataFrame(columns=["dataset", "draw", *KEYS, "value"])
    for df in (rep, ref, boot):
        if "k" in df.columns:
            df.drop(columns="k", inplace=True)
    rep, ref = mark_by_construction(rep, by_construction), mark_by_construction(ref, by_construction)
    boot = mark_by_construction(boot, by_construction)
    settings = dict(reference_splits=reference_splits, bootstrap=bootstrap, efficacy=efficacy,
                    efficacy_reference_splits=eff_ref if efficacy else 0, seed=seed,
                    datasets={k: len(v) for k, v in syn.items()},
                    holdout_schools=0 if holdout is None else n_hold,
                    holdout_datasets={k: len(v) for k, v in held.items()})
    return QualityReport(rep, ref, boot, real, syn, settings, timings)
