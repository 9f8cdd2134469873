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
2-train          ``2-train/models/<generator>.pkl``, ``2-train/history.csv``
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

from . import generators as G
from .data import MultilevelData
from .errors import MlsimkitError, ParamsError
from .io import atomic_path, write_text
from .study import Study

#: Fit statuses whose estimates enter the measures. A singular fit (a variance component on the boundary)
#: still gives valid estimates and predictions (those of the model without that component), as lme4 users
#: report them; its rate is reported separately (``rate_singular``) so nothing is hidden.
USABLE = ("ok", "warning", "singular")


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
def objective(study: Study):
    """The study's objective module (:mod:`mlsimkit.objectives`), found by the name in ``objective:``."""
    from . import objectives

    return objectives.get(study.objective)


def sources(study: Study, data: MultilevelData) -> dict:
    """``{source: (generate, methods, truth)}`` for the study's objective and ``simulation.sources``.

    A source is a generator name (synthetic data from its saved model; ``best`` = Stage 3's choice) or one
    of the objective's traditional designs (``SOURCES`` of its module, e.g. ``traditional``).
    """
    obj = objective(study)
    fixed = obj.prepare(study, data)
    out = {}
    for src in study["simulation"]["sources"]:
        name = simulation_generator(study) if src == "best" else src
        path = None if name in obj.SOURCES else model_path(study, name)
        out[name] = obj.source(study, data, name, path, fixed)
    return out


def source(study: Study, data: MultilevelData, name: str, path=None, fixed=None) -> tuple:
    """One data source: ``(generate, methods, truth)`` for :func:`simulate` (``fixed``: the objective's
    ``prepare`` result, computed here when not given)."""
    obj = objective(study)
    return obj.source(study, data, name, path, obj.prepare(study, data) if fixed is None else fixed)


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
    res = run(design, gen, methods, reps=int(reps), seed=int(study["seed"]), backend=sim.get("backend", "serial"),
              n_jobs=int(sim.get("n_jobs", 2)), store=study.path(which, src), progress=progress,
              failure_policy=sim.get("failure_policy", "record"), generator_id=src)
    stop_on_failures(res, src, float(sim.get("max_fail_rate", MAX_FAIL_RATE)), file=study.file)
    return res


#: Default of ``simulation.max_fail_rate``: a source and method whose fits fail more often stop the stage.
MAX_FAIL_RATE = 0.5


class FitsFailed(MlsimkitError):
    """A source's fits failed more often than ``simulation.max_fail_rate`` allows."""


def failure_rates(results: pd.DataFrame, usable=USABLE) -> pd.DataFrame:
    """Per method: replications run, the share whose fit failed (no row with a usable status) with its
    MCSE, and the most frequent message of the failed fits."""
    unit = [c for c in ("condition", "rep", "method") if c in results]
    ok = results.assign(_ok=results["status"].isin(list(usable))).groupby(unit, sort=False)["_ok"].any()
    rows = []
    for method, flags in ok.groupby(level="method", sort=False):
        n, p = len(flags), float(1 - flags.mean())
        bad = results[(results["method"] == method) & ~results["status"].isin(list(usable))]
        msgs = bad["message"].fillna("").astype(str) if "message" in bad else pd.Series(dtype=str)
        top = msgs.value_counts()
        rows.append({"method": method, "n_reps": n, "fail_rate": p, "mcse": float(np.sqrt(p * (1 - p) / n)),
                     "message": top.index[0] if len(top) else "", "message_count": int(top.iloc[0]) if len(top) else 0})
    return pd.DataFrame(rows, columns=["method", "n_reps", "fail_rate", "mcse", "message", "message_count"])


def stop_on_failures(results: pd.DataFrame, source: str, max_fail_rate: float = MAX_FAIL_RATE, *, file=None) -> None:
    """Raise :class:`FitsFailed` when any method's fits on ``source`` fail more often than ``max_fail_rate``,
    naming the source, the methods, their rates and the most frequent message (the results stay stored, so
    a rerun after the fix resumes)."""
    rates = failure_rates(results)
    over = rates[rates["fail_rate"] > max_fail_rate]
    if over.empty:
        return
    parts = [f"method '{r.method}' failed in {r.fail_rate:.0%} of {r.n_reps} fits (most often, {r.message_count} "
             f"times: {r.message or 'no message'})" for r in over.itertuples()]
    where = f" (file '{file}', key 'simulation.max_fail_rate' = {max_fail_rate})" if file else ""
    raise FitsFailed(f"source '{source}': fits fail more often than the threshold{where}: " + "; ".join(parts)
                     + ". Fix the cause (often a column the analysis model names that the data lack) or raise "
                       "the threshold.")


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
    out = summarise(res, truth, by=["source", "n_schools"], measures=objective(study).MEASURES, usable=USABLE)
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
    fixed = objective(study).prepare(study, data)
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
        src = {"synthetic": source(study, data, scen, path, fixed)}
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
def level_of_parameters(study: Study) -> dict:
    """``{parameter: "student" | "school"}`` for the study's reported parameters (the objective's)."""
    return objective(study).level_of_parameters(study)


def report_tables(study: Study, summary: pd.DataFrame) -> dict:
    """The study's result tables (the objective's), then the failure rate (MCSE) of every source and method."""
    out = dict(objective(study).tables(study, summary))
    fails = summary[summary["measure"] == "fail_rate"].copy()
    if not fails.empty:
        fails["cell"] = [f"{v:.3f} ({m:.3f})" for v, m in zip(fails["value"], fails["mcse"])]
        out["failure rate (MCSE)"] = fails.pivot_table(index=["source", "method"], columns="n_schools", values="cell",
                                                       aggfunc="first", sort=False)
    return out


def report_figures(study: Study, summary: pd.DataFrame) -> dict:
    """The study's figures (the objective's: Figure 5 or Figure 8 of the paper, AI-based next to traditional)."""
    return objective(study).figures(study, summary)


def findings(study: Study, summary: pd.DataFrame) -> str:
    """Plain-language statements computed from this build's numbers (markdown bullets; the objective's)."""
    return objective(study).findings(study, summary)


def ablation_measures(study: Study) -> tuple:
    """The measures of the ablation table (the objective's: Table 5 PMSE, Table 6 bias, SE bias, coverage)."""
    return tuple(objective(study).ABLATION_MEASURES)
