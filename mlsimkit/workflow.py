"""The stages of a study driven by its params file: what the stage notebooks call.

A notebook stays short because the decisions live here and in the params: which generators Stage 2
trains (``generators``), which data sources Stage 4 simulates from (``simulation.sources``), which
methods and truth the study's objective implies (``objective: prediction | recovery``), and which
ablation scenarios Stage 6 runs (``ablation.scenarios``). Stages hand each other files under the run
folder (see :class:`mlsimkit.study.Study`):

===============  ==============================================================================
stage            writes
===============  ==============================================================================
1-specify        ``1-specify/data/`` (validated real data + schema), ``1-specify/icc.csv``
2-train          ``2-train/models/<generator>.pkl``, ``2-train/history.csv``; the hold-out generators
                 ``2-train/holdout-models/<generator>.pkl`` and the held-out schools ``2-train/holdout.csv``
3-quality        ``3-quality/summary.csv``, ``3-quality/choice.json`` (the best generator), report
4-simulate       ``4-simulate/<source>/`` (sharded results), ``4-simulate/results.parquet``, ``truth.csv``
5-evaluate       ``5-evaluate/summary.csv``
6-robustness     ``6-robustness/quality.csv``, ``6-robustness/simulation.csv``
===============  ==============================================================================

Trained generators are also cached under ``<root>/runs/_models/`` keyed by fingerprints of the training
data and of the generators' code, and by the settings, so two studies on the same data with the same
settings train once, and a code change retrains.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import demonstrations as demo
from . import generators as G
from .data import MultilevelData
from .errors import ParamsError
from .io import atomic_path, write_text
from .study import Study

TRADITIONAL = "traditional"
#: Fit statuses whose estimates enter the measures. A singular fit (a variance component on the boundary)
#: still gives valid estimates and predictions (those of the model without that component), as lme4 users
#: report them; its rate is reported separately (``rate_singular``) so nothing is hidden.
USABLE = ("ok", "warning", "singular")
TRADITIONAL_ADJUSTED = "traditional-adjusted"


# ============================================================================ Stage 1 -> 2
def real_data(study: Study) -> MultilevelData:
    """The validated real data written by Stage 1 (names the notebook to run first when missing)."""
    return MultilevelData.from_csv(study.require("1-specify/data/schema.yml", made_by="1-specify").parent)


def fingerprint(data: MultilevelData) -> str:
    """A short hash of a data set's content (all tables, in order)."""
    h = hashlib.sha256()
    for name in data.levels:
        h.update(name.encode())
        h.update(pd.util.hash_pandas_object(data[name].astype(str), index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def half_of_schools(data: MultilevelData, seed: int) -> MultilevelData:
    """A random half of the top-level units (ablation scenario 2)."""
    ids = data[data.levels[0]][data.schema.tables[data.levels[0]].primary_key[0]].to_numpy()
    keep = np.random.default_rng(seed).choice(ids, size=len(ids) // 2, replace=False)
    return data.subset(keep)


def code_fingerprint() -> str:
    """A short hash of the generators' source code (the model cache is invalid when it changes)."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted([*(here / "generators").glob("*.py"), here / "decompose.py", here / "clca.py"]):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def train_one(study: Study, data: MultilevelData, name: str, settings: dict, *, log: Callable = print):
    """Fit generator ``name`` with ``settings``, cached by the data's and the code's fingerprints and the
    settings."""
    settings = dict(settings or {})
    kind = settings.pop("generator", name)
    key = hashlib.sha256(json.dumps([kind, settings, fingerprint(data), code_fingerprint()], sort_keys=True,
                                    default=str).encode())
    cache = study.root / "runs" / "_models" / f"{kind}-{key.hexdigest()[:16]}.pkl"
    if cache.is_file():
        gen = G.load(cache)
        log(f"[mlsimkit] {name}: loaded the trained model from the cache ({cache.name})")
        return gen
    gen = G.make(kind, **settings)
    t0 = time.perf_counter()
    gen.fit(data)
    gen.train_seconds_ = time.perf_counter() - t0
    gen.save(cache)
    log(f"[mlsimkit] {name}: trained in {gen.train_seconds_:.0f} s")
    return gen


def train(study: Study, data: MultilevelData, *, log: Callable = print) -> dict:
    """Stage 2: train every generator of ``params.generators`` and save it under ``2-train/models``."""
    specs = study["generators"]
    if not isinstance(specs, dict) or not specs:
        raise ParamsError(f"file '{study.file}': 'generators' must map generator names to their settings")
    out = {}
    for name, settings in specs.items():
        gen = train_one(study, data, name, settings, log=log)
        gen.save(study.path("2-train", "models", f"{name}.pkl"))
        out[name] = gen
    history = training_history(out)
    history.to_csv(study.path("2-train", "history.csv"), index=False)
    return out


def training_history(generators: dict) -> pd.DataFrame:
    """Loss curves of all generators, long: ``generator, model, step, loss``."""
    parts = []
    for name, gen in generators.items():
        h = getattr(gen, "history_", None)
        if h is None or len(h) == 0:
            continue
        if {"model", "step", "loss"} <= set(h.columns):
            long = h[["model", "step", "loss"]].copy()
        else:  # CTGAN: epoch, generator_loss, discriminator_loss
            long = h.melt(id_vars=["epoch"], var_name="model", value_name="loss").rename(columns={"epoch": "step"})
        long.insert(0, "generator", name)
        parts.append(long)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["generator", "model", "step", "loss"])


def training_times(generators: dict) -> pd.DataFrame:
    return pd.DataFrame([{"generator": n, "class": type(g).__name__, "train seconds": getattr(g, "train_seconds_", np.nan)}
                         for n, g in generators.items()]).set_index("generator")


def model_path(study: Study, name: str) -> Path:
    return study.require(f"2-train/models/{name}.pkl", made_by="2-train")


def load_generators(study: Study) -> dict:
    """The generators saved by Stage 2."""
    return {name: G.load(model_path(study, name)) for name in study["generators"]}


# ============================================================================ Stage 2: the hold-out
#: What each copy of a generator is used for (the notebooks show it as a table).
ROLES = {
    "all": "Stage 3 fidelity, validity and ML efficacy; Stage 4 simulations",
    "holdout": "Stage 3 privacy and seed-001 (DCR share closer to hold-out, TSTR AUROC (OOD), SDIS, authenticity)",
}


def holdout_settings(study: Study) -> dict:
    """``holdout_share`` and ``holdout_training`` of the study's ``quality:`` params (defaults 0.2 and ``same``)."""
    from . import quality

    st_ = quality.default_settings(study.profile, study.get("quality"))
    share, how = st_["holdout_share"], st_["holdout_training"]
    if not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ParamsError(f"file '{study.file}': 'quality.holdout_share' must be a number in [0, 1), got {share!r}")
    if how not in ("same", "quick"):
        raise ParamsError(f"file '{study.file}': 'quality.holdout_training' must be 'same' or 'quick', got {how!r}")
    return {"holdout_share": float(share), "holdout_training": how}


def split_holdout(study: Study, data: MultilevelData) -> tuple[MultilevelData, MultilevelData | None]:
    """(training part, hold-out) of the real schools: ``quality.holdout_share`` of them, drawn with a seed taken
    from the data's fingerprint, so that studies on the same data share the split and, through the model cache,
    the hold-out generators (``(data, None)`` when the share is 0)."""
    from .quality import holdout_split

    share = holdout_settings(study)["holdout_share"]
    if share == 0:
        return data, None
    rng = np.random.default_rng(np.random.SeedSequence(int(fingerprint(data), 16), spawn_key=(7_001,)))
    return holdout_split(data, share, rng)


def _holdout_generator_settings(study: Study) -> dict:
    how = holdout_settings(study)["holdout_training"]
    if how == "same":
        return study["generators"]
    from .study import load as load_study

    return load_study(study.name, "quick", study.root)["generators"]


def train_holdout(study: Study, data: MultilevelData, *, log: Callable = print) -> dict:
    """Stage 2: train each generator again on the real schools without the hold-out (settings: the study's
    own, or the quick profile's with ``quality.holdout_training: quick``), save it under
    ``2-train/holdout-models`` and the held-out school ids in ``2-train/holdout.csv``. ``{}`` when
    ``quality.holdout_share`` is 0. Trained models are cached like :func:`train`'s."""
    train_part, hold = split_holdout(study, data)
    if hold is None:
        return {}
    top = data.schema.top
    pk = data.schema.tables[top].primary_key[0]
    with atomic_path(study.path("2-train", "holdout.csv")) as tmp:
        hold[top][[pk]].to_csv(tmp, index=False)
    out = {}
    for name, settings in _holdout_generator_settings(study).items():
        gen = train_one(study, train_part, name, settings, log=lambda m: log(f"{m} (hold-out model)"))
        gen.save(study.path("2-train", "holdout-models", f"{name}.pkl"))
        out[name] = gen
    return out


def load_holdout(study: Study, data: MultilevelData) -> tuple[dict, MultilevelData, MultilevelData | None]:
    """(hold-out generators, training part, hold-out) as saved by Stage 2; ``({}, data, None)`` without a hold-out."""
    if holdout_settings(study)["holdout_share"] == 0:
        return {}, data, None
    path = study.require("2-train/holdout.csv", made_by="2-train")
    top = data.schema.top
    pk = data.schema.tables[top].primary_key[0]
    held = set(pd.read_csv(path, dtype=str)[pk])
    ids = data[top][pk].astype(str)
    train_part, hold = data.subset(ids[~ids.isin(held)]), data.subset(ids[ids.isin(held)])
    models = {name: G.load(study.require(f"2-train/holdout-models/{name}.pkl", made_by="2-train"))
              for name in study["generators"]}
    return models, train_part, hold


def generator_roles(study: Study, data: MultilevelData, generators: dict, holdout_generators: dict) -> pd.DataFrame:
    """One row per trained model: which schools it saw, what it is used for, and its training time."""
    train_part, hold = split_holdout(study, data)
    rows = []
    for name, g in generators.items():
        rows.append({"generator": name, "model": "all schools", "schools seen": data.n_clusters,
                     "used for": ROLES["all"], "train seconds": getattr(g, "train_seconds_", np.nan)})
    for name, g in holdout_generators.items():
        rows.append({"generator": name, "model": "hold-out", "schools seen": train_part.n_clusters,
                     "used for": ROLES["holdout"], "train seconds": getattr(g, "train_seconds_", np.nan)})
    return pd.DataFrame(rows).set_index(["generator", "model"])


def quality_inputs(study: Study, data: MultilevelData, generators: dict, k: int, seed: int, *,
                   shuffled_control: bool = True) -> dict:
    """The hold-out arguments of :func:`mlsimkit.quality.evaluate` for Stage 3: ``holdout``,
    ``holdout_synthetic`` (``k`` data sets per hold-out generator, as many schools as the training part;
    plus shuffled schools of the training part as the negative control) and ``by_construction`` (the
    metrics each generator makes 1 by construction at ``data.n_clusters`` schools)."""
    from . import quality

    models, train_part, hold = load_holdout(study, data)
    by_con = {name: g.metrics_by_construction(data.n_clusters) for name, g in generators.items()
              if hasattr(g, "metrics_by_construction")}
    if hold is None:
        return {"by_construction": by_con}
    held = candidates(models, train_part.n_clusters, k, seed)
    if shuffled_control:
        held["shuffled schools"] = [quality.shuffled_schools(train_part, seed=seed + i) for i in range(k)]
    return {"holdout": hold, "holdout_synthetic": held, "by_construction": by_con}


def dcr_diagnoses(data: MultilevelData, inputs: dict, report, *, seed: int = 0) -> pd.DataFrame:
    """:func:`mlsimkit.quality.privacy.dcr_diagnosis` of the first hold-out data set of each generator in
    ``inputs`` (from :func:`quality_inputs`), with a one-sentence ``verdict``; the memorisation threshold is the
    lower end of the real-vs-real band of the DCR share in ``report``, at most 0.4 (a band from two or three
    splits can be narrow by chance)."""
    from .quality import privacy

    hold = inputs.get("holdout")
    if hold is None:
        return pd.DataFrame()
    top = data.schema.top
    pk = data.schema.tables[top].primary_key[0]
    ids = data[top][pk].astype(str)
    train_part = data.subset(ids[~ids.isin(set(hold[top][pk].astype(str)))])
    t = report.table
    band = t[(t.dataset == "real vs real") & (t.metric == "DCR share closer to hold-out")]["ref_lo"]
    lo = min(float(band.iloc[0]), 0.4) if len(band) and np.isfinite(band.iloc[0]) else 0.4
    rows = {}
    for name, lst in inputs["holdout_synthetic"].items():
        d = privacy.dcr_diagnosis(train_part, hold, lst[0], seed=seed)
        rows[name] = {**d, "verdict": privacy.dcr_verdict(d, lo)}
    return pd.DataFrame(rows).T


def recomposition_out_of_range(generators: dict) -> pd.DataFrame:
    """Per generator that recomposes decomposed variables: the share of its last sample's values that left the
    observed range before they were clipped back (``last_out_of_range_``)."""
    rows = [{"generator": n, "variable": v, "share outside before clipping": x}
            for n, g in generators.items() for v, x in (getattr(g, "last_out_of_range_", None) or {}).items()]
    return pd.DataFrame(rows, columns=["generator", "variable", "share outside before clipping"])


def conditioning(generators: dict, data: MultilevelData, seed: int) -> pd.DataFrame:
    """:meth:`CTGANGenerator.conditioning_report` of every generator that has one, at ``data.n_clusters`` schools."""
    parts = {n: g.conditioning_report(data, data.n_clusters, seed=seed) for n, g in generators.items()
             if hasattr(g, "conditioning_report")}
    if not parts:
        return pd.DataFrame(columns=["generator", "quantity", "variable", "value", "chance"])
    return pd.concat(parts, names=["generator", None]).reset_index(level=0).reset_index(drop=True)


# ============================================================================ Stage 3 -> 4
def candidates(generators: dict, n_clusters: int, k: int, seed: int) -> dict:
    """``k`` synthetic data sets of ``n_clusters`` schools per generator (seeds spawned from ``seed``)."""
    seeds = np.random.SeedSequence(seed).spawn(k)
    return {name: [g.sample(n_clusters, seed=s) for s in seeds] for name, g in generators.items()}


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The domain averages of Table S2 / Table 4: within-table fidelity per table, between-table fidelity,
    and ML efficacy per level."""
    item = summary["item"].astype(str)
    keep = (item.str.endswith("-table fidelity") | item.str.endswith("-level efficacy"))
    return summary[keep & ~item.eq("overall efficacy")]


def choose_generator(summary: pd.DataFrame, study: Study) -> dict:
    """Stage 3's choice: the generator with the highest mean of the headline domain averages
    (:func:`headline`), written to ``3-quality/choice.json`` for Stage 4."""
    scored = headline(summary)
    scored = scored[scored["dataset"].isin(list(study["generators"]))]
    means = scored.groupby("dataset")["value"].mean().sort_values(ascending=False)
    choice = {"best": str(means.index[0]), "mean_scores": {k: round(float(v), 4) for k, v in means.items()}}
    write_text(study.path("3-quality", "choice.json"), json.dumps(choice, indent=2))
    return choice


def simulation_generator(study: Study) -> str:
    """The generator Stage 4 uses: ``simulation.generator`` or, when that is ``best``, Stage 3's choice."""
    name = study["simulation"].get("generator", "best")
    if name == "best":
        return json.loads(study.require("3-quality/choice.json", made_by="3-quality").read_text())["best"]
    return name


# ============================================================================ Stage 4
def sources(study: Study, data: MultilevelData) -> dict:
    """``{source: (generate, methods, truth)}`` for the study's objective and ``simulation.sources``.

    A source is a generator name (synthetic data from its saved model; ``best`` = Stage 3's choice),
    ``traditional`` (the classic design of the demonstration) or ``traditional-adjusted`` (recovery only:
    the traditional design with values from the real fit, appendix S5.2).
    """
    truth_model = demo.fit_truth(data) if study.objective == "recovery" else None
    out = {}
    for src in study["simulation"]["sources"]:
        name = simulation_generator(study) if src == "best" else src
        path = None if name in (TRADITIONAL, TRADITIONAL_ADJUSTED) else model_path(study, name)
        out[name] = source(study, data, name, path, truth_model)
    return out


def source(study: Study, data: MultilevelData, name: str, path=None, truth_model=None) -> tuple:
    """One data source: ``(generate, methods, truth)`` for :func:`simulate`."""
    objective = study.objective
    trad = study.get("traditional", {}) or {}
    if objective == "prediction":
        if name == TRADITIONAL:
            return (functools.partial(demo.generate_traditional_prediction, **trad),
                    demo.analyse_prediction_methods("traditional"), demo.prediction_truth())
        return (functools.partial(demo.generate_synthetic, generator_path=str(path)),
                demo.analyse_prediction_methods("hsb"), demo.prediction_truth())
    if objective == "recovery":
        truth_model = truth_model or demo.fit_truth(data)
        if name in (TRADITIONAL, TRADITIONAL_ADJUSTED):
            dgp = demo.HuangOmittedVariable(**trad) if name == TRADITIONAL else demo.adjusted_recovery_dgp(truth_model, data)
            return (functools.partial(demo.generate_traditional_recovery, dgp=dgp),
                    demo.recovery_methods("traditional"), demo.recovery_truth(dgp))
        return (functools.partial(demo.recovery_generate, truth=truth_model, generator_path=str(path)),
                demo.recovery_methods("hsb"), demo.recovery_truth(truth_model))
    raise ParamsError(f"file '{study.file}': objective must be 'prediction' or 'recovery', got {objective!r}")


def simulate(study: Study, data: MultilevelData, *, which: str = "4-simulate", n_schools=None, reps=None,
             source_list: dict | None = None, progress: bool | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 4: run every source's simulation (resumable store per source); returns (results, truth).

    Results of all sources are stacked with a ``source`` column and written to ``<which>/results.parquet``;
    the truth table (``source, parameter, true_value``) to ``<which>/truth.csv``.
    """
    sim = study["simulation"]
    design = {"n_schools": list(n_schools or sim["n_schools"])}
    srcs = source_list if source_list is not None else sources(study, data)
    results, truths = [], []
    for src, (gen, methods, truth) in srcs.items():
        res = _run_source(study, which, src, design, gen, methods, reps or sim["reps"], progress)
        res.insert(0, "source", src)
        results.append(res)
        t = truth.rename(columns={"truth": "true_value"}).copy()
        t.insert(0, "source", src)
        truths.append(t)
    results = pd.concat(results, ignore_index=True)
    truth = pd.concat(truths, ignore_index=True)
    with atomic_path(study.path(which, "results.parquet")) as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(study.path(which, "truth.csv")) as tmp:
        truth.to_csv(tmp, index=False)
    return results, truth


def _run_source(study, which, src, design, gen, methods, reps, progress):
    from .simulate import run

    sim = study["simulation"]
    return run(design, gen, methods, reps=int(reps), seed=int(study["seed"]), backend=sim.get("backend", "serial"),
               n_jobs=int(sim.get("n_jobs", 2)), store=study.path(which, src), progress=progress,
               failure_policy=sim.get("failure_policy", "record"), generator_id=src)


def simulation_results(study: Study, which: str = "4-simulate") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, truth) written by :func:`simulate`."""
    res = pd.read_parquet(study.require(f"{which}/results.parquet", made_by=which))
    truth = pd.read_csv(study.require(f"{which}/truth.csv", made_by=which))
    return res, truth


def status_counts(results: pd.DataFrame) -> pd.DataFrame:
    """Fits per source, method and status (failed and fallback fits are counted, never dropped)."""
    return (results.groupby(["source", "n_schools", "method", "status"], observed=True).size()
            .unstack("status", fill_value=0))


# ============================================================================ Stage 5
def evaluate(study: Study, which: str = "4-simulate") -> pd.DataFrame:
    """Stage 5: performance measures with MCSE per source, number of schools, method and parameter."""
    from .performance import summarise

    res, truth = simulation_results(study, which)
    measures = ("pmse", "fail_rate") if study.objective == "prediction" else \
        ("bias", "rel_bias", "empse", "modelse", "relerror", "coverage", "becoverage", "fail_rate")
    out = summarise(res, truth, by=["source", "n_schools"], measures=measures, usable=USABLE)
    out.to_csv(study.path("5-evaluate" if which == "4-simulate" else which, "summary.csv"), index=False)
    return out


# ============================================================================ Stage 6
def ablation_scenarios(study: Study) -> dict:
    """``{scenario: settings}`` including ``original`` (the simulation generator's own settings)."""
    abl = study["ablation"]
    base_name = abl.get("generator", "clavaddpm")
    base = dict(study["generators"][base_name])
    base.setdefault("generator", base_name)
    out = {"original": base}
    for name, change in abl["scenarios"].items():
        out[name] = {**base, **(change or {})}
    return out


def ablation(study: Study, data: MultilevelData, *, log: Callable = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 6: for the original and each scenario — train (cached), evaluate quality on ``k`` candidates,
    and rerun the simulation at ``ablation.n_schools``. Returns (quality summary, performance summary),
    both long with a ``scenario`` column, and writes them under ``6-robustness/``."""
    from . import quality
    from .performance import summarise

    abl = study["ablation"]
    q = abl.get("quality", {})
    truth_model = demo.fit_truth(data) if study.objective == "recovery" else None
    qual, perf = [], []
    for scen, settings in ablation_scenarios(study).items():
        settings = dict(settings)
        frac = settings.pop("train_fraction", None)
        train_data = half_of_schools(data, int(study["seed"])) if frac == 0.5 else data
        if frac not in (None, 0.5, 1, 1.0):
            raise ParamsError(f"file '{study.file}': ablation scenario '{scen}': train_fraction must be 0.5")
        gen = train_one(study, train_data, f"ablation {scen}", settings, log=log)
        path = gen.save(study.path("6-robustness", "models", f"{scen}.pkl"))
        cands = candidates({scen: gen}, data.n_clusters, int(q.get("candidates", 3)), int(study["seed"]))
        rep = quality.evaluate(data, cands, reference_splits=0, efficacy=q.get("efficacy", "fast"),
                               privacy=False, seed001=False, seed=int(study["seed"]))
        qs = rep.summary()
        iccs = rep.table[rep.table["metric"].eq("ICC similarity")]
        qs = pd.concat([qs, pd.DataFrame({
            "dataset": iccs["dataset"], "domain": "ICC", "level": iccs["level"], "item": iccs["variables"],
            "value": iccs["value"], "sd": iccs["sd"], "icc_real": iccs["stat_real"], "icc_syn": iccs["stat_syn"]})],
            ignore_index=True)
        qs.insert(0, "scenario", scen)
        qual.append(qs)
        src = {"synthetic": source(study, data, scen, path, truth_model)}
        res, truth = simulate(study, data, which=f"6-robustness/{scen}", n_schools=[abl["n_schools"]],
                              reps=abl.get("reps"), source_list=src)
        ps = summarise(res, truth, by=["source", "n_schools"], usable=USABLE)
        ps.insert(0, "scenario", scen)
        perf.append(ps)
        log(f"[mlsimkit] ablation {scen}: done")
    qual = pd.concat(qual, ignore_index=True)
    perf = pd.concat(perf, ignore_index=True)
    for frame, fname in ((qual, "quality.csv"), (perf, "simulation.csv")):
        with atomic_path(study.path("6-robustness", fname)) as tmp:
            frame.to_csv(tmp, index=False)
    return qual, perf


def ablation_quality_table(qual: pd.DataFrame) -> pd.DataFrame:
    """Table 4: headline score per domain and level (rows) and scenario (columns)."""
    return headline(qual).pivot_table(index=["domain", "item"], columns="scenario", values="value", sort=False)


def ablation_icc_table(qual: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The ICC per variable: real, and synthetic (mean over the candidates) with its ICC similarity in
    parentheses, per scenario: the paper's reason for the decomposition, shown per variable."""
    sub = qual[qual["domain"].eq("ICC")]
    cells = sub.assign(cell=[f"{a:.{digits}f} ({b:.{digits}f})" for a, b in zip(sub["icc_syn"], sub["value"])])
    out = cells.pivot_table(index=["level", "item"], columns="scenario", values="cell", aggfunc="first", sort=False)
    real = sub.groupby(["level", "item"], sort=False)["icc_real"].first().map(lambda v: f"{v:.{digits}f}")
    return out.assign(real=real)[["real", *out.columns]].rename_axis(index=["level", "variable"])


def ablation_performance_table(perf: pd.DataFrame, measures=("pmse",), digits: int = 3) -> pd.DataFrame:
    """Tables 5 and 6: each measure with its MCSE per method (and parameter) and scenario."""
    sub = perf[perf["measure"].isin(measures)].copy()
    sub["cell"] = [f"{v:.{digits}f} ({m:.{digits}f})" for v, m in zip(sub["value"], sub["mcse"])]
    return sub.pivot_table(index=["method", "parameter", "measure"], columns="scenario", values="cell",
                           aggfunc="first", sort=False)


# ============================================================================ Stage 5 reporting
def level_of_parameters() -> dict:
    """``{parameter: "student" | "school"}`` for the reported coefficients of the recovery designs."""
    out = {}
    for spec in (demo.HSB_RECOVERY, demo.TRADITIONAL_RECOVERY):
        out[spec.report[0]], out[spec.report[1]] = "student", "school"
    return out


def _cells(frame: pd.DataFrame, digits: int) -> pd.Series:
    return pd.Series([f"{v:.{digits}f} ({m:.{digits}f})" for v, m in zip(frame["value"], frame["mcse"])],
                     index=frame.index)


def report_tables(study: Study, summary: pd.DataFrame) -> dict:
    """The study's result tables: each measure as ``value (MCSE)`` by method (rows) and number of schools."""
    out = {}
    if study.objective == "prediction":
        d = summary[summary["measure"] == "pmse"].copy()
        d["cell"] = _cells(d, 3)
        for src, sub in d.groupby("source", sort=False):
            out[f"PMSE (MCSE), {src}"] = sub.pivot_table(index="method", columns="n_schools", values="cell",
                                                          aggfunc="first", sort=False)
    else:
        lv = level_of_parameters()
        d = summary[summary["measure"].isin(["rel_bias", "relerror", "coverage"])].copy()
        d["cell"] = _cells(d, 3)
        d["level"] = d["parameter"].map(lv)
        for (src, level), sub in d.groupby(["source", "level"], sort=False):
            out[f"{level}-level coefficient ({', '.join(sub['parameter'].unique())}), {src}"] = sub.pivot_table(
                index=["measure", "method"], columns="n_schools", values="cell", aggfunc="first", sort=False)
    fails = summary[summary["measure"] == "fail_rate"].copy()
    if not fails.empty:
        fails["cell"] = _cells(fails, 3)
        out["failure rate (MCSE)"] = fails.pivot_table(index=["source", "method"], columns="n_schools", values="cell",
                                                       aggfunc="first", sort=False)
    return out


def report_figures(study: Study, summary: pd.DataFrame) -> dict:
    """The study's figures (Figure 5 or Figure 8 of the paper, AI-based next to traditional)."""
    from . import figures

    if study.objective == "prediction":
        return {"PMSE by number of schools": figures.pmse_by_schools(summary)}
    lv = level_of_parameters()
    return {f"{lvl}-level coefficient": figures.recovery_panels(summary, lv, lvl) for lvl in ("student", "school")}


def findings(study: Study, summary: pd.DataFrame) -> str:
    """Plain-language statements computed from this build's numbers (markdown bullets)."""
    lines = []
    if study.objective == "prediction":
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
    else:
        lv = level_of_parameters()
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


def ablation_measures(study: Study) -> tuple:
    """The measures of the ablation table: Table 5 (PMSE) or Table 6 (bias, SE bias, coverage)."""
    return ("pmse",) if study.objective == "prediction" else ("rel_bias", "relerror", "coverage")
