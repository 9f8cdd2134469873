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
2-train          ``2-train/models/<generator>.mlsim``, ``2-train/history.csv``; the hold-out generators
                 ``2-train/holdout-models/<generator>.mlsim`` and the held-out schools ``2-train/holdout.csv``
3-quality        ``3-quality/summary.csv``, ``3-quality/choice.json`` (the best generator), report
4-simulate       ``4-simulate/<source>/`` (sharded results), ``4-simulate/results.parquet``, ``truth.csv``
5-evaluate       ``5-evaluate/summary.csv``
6-robustness     ``6-robustness/quality.csv``, ``6-robustness/simulation.csv``
6-positivity     ``6-positivity/results.parquet``, ``truth.csv``, ``summary.csv``, ``diagnostics.csv``
===============  ==============================================================================

Trained generators are also cached under ``<root>/runs/_models/`` keyed by fingerprints of the training
data and of the generators' code, and by the settings, so two studies on the same data with the same
settings train once, and a code change retrains. A cached model is loaded only when its file checks out
(format version, schema, content hash; see :mod:`mlsimkit.generators.modelfile`); a file that does not, e.g.
a half-written, modified or earlier-format one, is retrained and overwritten. A CTGAN model holds a pickle
and is loaded only when this user's mlsimkit wrote it or the params say ``trust_model_files: true``.
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
from .cost import REUSED, cores_available
from .data import MultilevelData
from .errors import MlsimkitError, ParamsError
from .io import atomic_path, write_text
from .study import Study
from .tables import value_mcse

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


def trust_model_files(study: Study) -> bool:
    """``trust_model_files`` of the params (default false): load model files that hold a pickle (CTGAN)
    even when another user's mlsimkit wrote them. Unpickling runs code, so set it only for files you trust."""
    value = study.get("trust_model_files", False)
    if not isinstance(value, bool):
        raise ParamsError(f"file '{study.file}': 'trust_model_files' must be true or false, got {value!r}")
    return value


def train_one(study: Study, data: MultilevelData, name: str, settings: dict, *, log: Callable = print):
    """Fit generator ``name`` with ``settings``, cached by the data's and the code's fingerprints and the
    settings. A cached file that fails the checks of :func:`mlsimkit.generators.load` (damaged, modified,
    another format version or schema, or an untrusted pickle) is retrained, with one log line saying why."""
    kind, settings, cache = _cached(study, data, name, settings)
    if cache.is_file():
        try:
            gen = G.load(cache, schema=data.schema, trust=trust_model_files(study))
        except ParamsError:
            raise
        except MlsimkitError as exc:
            log(f"[mlsimkit] {name}: retraining, the cached model cannot be used: {exc}")
        else:
            log(f"[mlsimkit] {name}: loaded the trained model from the cache ({cache.name})")
            return gen
    gen = _fit(kind, settings, data, cache)
    log(f"[mlsimkit] {name}: trained in {gen.train_seconds_:.0f} s")
    return gen


def _cached(study: Study, data: MultilevelData, name: str, settings: dict) -> tuple[str, dict, Path]:
    """(generator kind, its constructor settings, the model cache file for this data, code and settings)."""
    settings = dict(settings or {})
    kind = settings.pop("generator", name)
    key = hashlib.sha256(json.dumps([kind, settings, fingerprint(data), code_fingerprint()], sort_keys=True,
                                    default=str).encode())
    return kind, settings, study.root / "runs" / "_models" / f"{kind}-{key.hexdigest()[:16]}{G.SUFFIX}"


def _fit(kind: str, settings: dict, data: MultilevelData, cache: Path):
    """Fit a generator, time it and save it to the model cache (run in the main process or in a worker)."""
    gen = G.make(kind, **settings)
    t0 = time.perf_counter()
    gen.fit(data)
    gen.train_seconds_ = time.perf_counter() - t0
    gen.save(cache)
    return gen


def n_jobs(study: Study) -> int:
    """The worker processes a stage may use: ``simulation.n_jobs`` (default 2). Stage 2 trains that many models at
    a time (:func:`train_concurrently`), Stage 3 and Stage 6 evaluate quality in that many processes
    (``quality.evaluate(..., n_jobs=...)``), and the simulations of Stages 4 and 6 use it with the loky or Dask
    backend. Stages 2 and 3 also stop at the cores available."""
    return int(study["simulation"].get("n_jobs", 2))


def _fit_seconds(kind: str, settings: dict, data: MultilevelData, cache: Path) -> float:
    return _fit(kind, settings, data, cache).train_seconds_


def train_concurrently(study: Study, jobs, *, log: Callable = print) -> None:
    """Train the generators of ``jobs`` (``(data, name, settings, label)``, as for :func:`train_one`) that the model cache lacks in
    parallel processes, up to ``simulation.n_jobs`` and the cores available, so that :func:`train_one` then
    loads each from the cache. Generators train on one thread each (their ``n_threads``), so two of them
    on two cores take the time of one; the models are the same as when trained one after the other (the
    cache key and each generator's seed do not depend on where it trains). Nothing happens with fewer than
    two models to train or one job slot."""
    todo: dict[Path, tuple] = {}
    for data, name, settings, label in jobs:
        kind, kwargs, cache = _cached(study, data, name, settings)
        if not cache.is_file():
            todo.setdefault(cache, (label, kind, kwargs, data))
    n = min(len(todo), n_jobs(study), cores_available())
    if n < 2:
        return
    from joblib import Parallel, delayed

    labels = [v[0] for v in todo.values()]
    log(f"[mlsimkit] training {len(todo)} models in {n} processes: {', '.join(labels)}")
    secs = Parallel(n_jobs=n, backend="loky")(
        delayed(_fit_seconds)(kind, kwargs, data, cache) for cache, (_, kind, kwargs, data) in todo.items())
    for label, sec in zip(labels, secs):
        log(f"[mlsimkit] {label}: trained in {sec:.0f} s (in a worker process)")


def train(study: Study, data: MultilevelData, *, log: Callable = print) -> dict:
    """Stage 2: train every generator of ``params.generators`` and save it under ``2-train/models``; the
    hold-out generators of :func:`train_holdout` are trained alongside (:func:`train_concurrently`)."""
    specs = study["generators"]
    if not isinstance(specs, dict) or not specs:
        raise ParamsError(f"file '{study.file}': 'generators' must map generator names to their settings")
    jobs = [(data, name, settings, name) for name, settings in specs.items()]
    train_part, hold = split_holdout(study, data)
    if hold is not None:
        jobs += [(train_part, name, settings, f"{name} (hold-out model)")
                 for name, settings in _holdout_generator_settings(study).items()]
    train_concurrently(study, jobs, log=log)
    out = {}
    for name, settings in specs.items():
        gen = train_one(study, data, name, settings, log=log)
        gen.save(model_file(study, "2-train", name))
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


def model_file(study: Study, stage: str, name: str) -> Path:
    """Where a stage saves model ``name``: ``<stage>/models/<name>.mlsim``."""
    return study.path(stage, "models", f"{name}{G.SUFFIX}")


def model_path(study: Study, name: str) -> Path:
    """The saved model ``name`` of Stage 2 (names the notebook to run first when missing)."""
    return study.require(f"2-train/models/{name}{G.SUFFIX}", made_by="2-train")


def load_generators(study: Study) -> dict:
    """The generators saved by Stage 2, checked against the schema of the study's data (Stage 1)."""
    schema = real_data(study).schema
    trust = trust_model_files(study)
    return {name: G.load(model_path(study, name), schema=schema, trust=trust) for name in study["generators"]}


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
        gen.save(study.path("2-train", "holdout-models", f"{name}{G.SUFFIX}"))
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
    trust = trust_model_files(study)
    models = {name: G.load(study.require(f"2-train/holdout-models/{name}{G.SUFFIX}", made_by="2-train"),
                           schema=data.schema, trust=trust)
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
    return pd.DataFrame(rows).set_index(["generator", "model"]).round({"train seconds": 1})


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


def quality_context(study: Study, data: MultilevelData, generators: dict, summary: pd.DataFrame, holdout: dict,
                    seed: int) -> dict:
    """Stage 3's objective-specific sections: ``{title: (table or figure, sentence)}`` from the objective's
    ``quality_context`` hook (e.g. the causal objective's fully generative against hybrid comparison), ``{}``
    for an objective without one. ``holdout``: :func:`quality_inputs`' result; ``summary``: the quality
    report's summary."""
    hook = getattr(objective(study), "quality_context", None) if study.objective else None
    return {} if hook is None else hook(study, data, generators, summary, holdout, seed)


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
    (:func:`headline`), written to ``3-quality/choice.json`` for Stage 4 (``simulates``: whether the study
    has one)."""
    scored = headline(summary)
    scored = scored[scored["dataset"].isin(list(study["generators"]))]
    means = scored.groupby("dataset")["value"].mean().sort_values(ascending=False)
    choice = {"best": str(means.index[0]), "mean_scores": {k: round(float(v), 4) for k, v in means.items()},
              "simulates": "4-simulate" in study.stages}
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


def design_context(study: Study, data: MultilevelData, sources: dict | None = None) -> dict:
    """What Stage 4 shows about the design before it runs: ``{title: (table or figure, sentence)}`` from the
    objective's ``design_context(study, data, sources)`` (e.g. the causal objective's overlap diagnostics), or
    ``{}`` for an objective without one. ``sources``: the result of :func:`sources`."""
    fn = getattr(objective(study), "design_context", None)
    return {} if fn is None else fn(study, data, sources)


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
    with _scheduler(study) as scheduler:  # one cluster for every source (started once when params name one)
        for src, (gen, methods, truth) in srcs.items():
            res = _run_source(study, which, src, design, gen, methods, reps or sim["reps"], progress,
                              scheduler=scheduler)
            res.insert(0, "source", src)
            results.append(res)
            t = truth.rename(columns={"truth": "true_value"}).copy()
            t.insert(0, "source", src)
            truths.append(t)
    results = pd.concat(results, ignore_index=True)
    truth = pd.concat(truths, ignore_index=True)
    write_results(study, which, results, truth)
    return results, truth


def write_results(study: Study, which: str, results: pd.DataFrame, truth: pd.DataFrame) -> None:
    """``<which>/results.parquet`` and ``<which>/truth.csv`` (atomically), read by :func:`simulation_results`."""
    with atomic_path(study.path(which, "results.parquet")) as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(study.path(which, "truth.csv")) as tmp:
        truth.to_csv(tmp, index=False)


def _scheduler(study: Study):
    """The Dask cluster ``simulation:`` names (``scheduler`` address or dask-jobqueue ``cluster`` spec; see
    :mod:`mlsimkit.simulate.cluster`), as a context manager yielding run's ``scheduler`` (None: none named)."""
    from .simulate.cluster import check_simulation, scheduler_for

    problems = check_simulation(study["simulation"])
    if problems:
        raise ParamsError(f"file '{study.file}': " + "; ".join(f"key '{k}': {m}" for k, m in problems))
    return scheduler_for(study["simulation"])


def _run_source(study, which, src, design, gen, methods, reps, progress, scheduler=None):
    from .simulate import run

    sim = study["simulation"]
    res = run(design, gen, methods, reps=int(reps), seed=int(study["seed"]), backend=sim.get("backend", "serial"),
              n_jobs=n_jobs(study), scheduler=scheduler, store=study.path(which, src), progress=progress,
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
    """Fits per source, method and status over all numbers of schools (failed and fallback fits are counted,
    never dropped; Stage 5 gives the rates per number of schools with their MCSE)."""
    return (results.groupby(["source", "method", "status"], observed=True).size()
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


def _ablation_job(study: Study, data: MultilevelData, scen: str, settings: dict) -> tuple:
    """``(training data, scenario, generator settings, label)`` of an ablation scenario (``train_fraction``
    0.5: half of the schools)."""
    settings = dict(settings)
    frac = settings.pop("train_fraction", None)
    if frac not in (None, 0.5, 1, 1.0):
        raise ParamsError(f"file '{study.file}': ablation scenario '{scen}': train_fraction must be 0.5")
    return (half_of_schools(data, int(study["seed"])) if frac == 0.5 else data), scen, settings, f"ablation {scen}"


def ablation(study: Study, data: MultilevelData, *, log: Callable = print) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 6: for the original and each scenario — train (cached), evaluate quality on ``k`` candidates,
    and rerun the simulation at ``ablation.n_schools`` (the original reuses Stage 4's rows where they are the
    same computation, :func:`stage4_rows`). Returns (quality summary, performance summary),
    both long with a ``scenario`` column, and writes them under ``6-robustness/``."""
    from . import quality
    from .performance import summarise

    abl = study["ablation"]
    q = abl.get("quality", {})
    fixed = objective(study).prepare(study, data)
    qual, perf = [], []
    jobs = [_ablation_job(study, data, scen, settings) for scen, settings in ablation_scenarios(study).items()]
    train_concurrently(study, jobs, log=log)
    for train_data, scen, settings, label in jobs:
        gen = train_one(study, train_data, label, settings, log=log)
        path = gen.save(model_file(study, "6-robustness", scen))
        cands = candidates({scen: gen}, data.n_clusters, int(q.get("candidates", 3)), int(study["seed"]))
        by_con = ({scen: gen.metrics_by_construction(data.n_clusters)}
                  if hasattr(gen, "metrics_by_construction") else None)  # as in Stage 3: not averaged
        rep = quality.evaluate(data, cands, reference_splits=0, efficacy=q.get("efficacy", "fast"),
                               privacy=False, seed001=False, by_construction=by_con, seed=int(study["seed"]),
                               n_jobs=n_jobs(study))
        qs = rep.summary()
        iccs = rep.table[rep.table["metric"].eq("ICC similarity")]
        qs = pd.concat([qs, pd.DataFrame({
            "dataset": iccs["dataset"], "domain": "ICC", "level": iccs["level"], "item": iccs["variables"],
            "value": iccs["value"], "sd": iccs["sd"], "icc_real": iccs["stat_real"], "icc_syn": iccs["stat_syn"]})],
            ignore_index=True)
        qs.insert(0, "scenario", scen)
        qual.append(qs)
        reused = stage4_rows(study, int(abl["n_schools"]), int(abl.get("reps") or study["simulation"]["reps"]),
                             abl.get("generator", "clavaddpm")) if scen == "original" else None
        marker = study.path(f"6-robustness/{scen}", REUSED)
        if reused is not None:  # the same model, condition and seeds as Stage 4: its rows, not a rerun
            res, truth = reused
            write_results(study, f"6-robustness/{scen}", res, truth)
            write_text(marker, "rows reused from 4-simulate/results.parquet (mlsimkit.workflow.stage4_rows)\n")
            log(f"[mlsimkit] ablation {scen}: Stage 4's {res['rep'].nunique()} replications at "
                f"{abl['n_schools']} schools reused")
        else:
            marker.unlink(missing_ok=True)
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


def stage4_rows(study: Study, n_schools: int, reps: int, generator: str) -> tuple | None:
    """Stage 4's (results, truth) of ``generator`` at ``n_schools``, replications ``0 .. reps-1``, relabelled as
    the ablation's ``synthetic`` source: what Stage 6's *original* scenario would compute, since rows depend
    only on (seed, condition, replication, method) and the model is the same cached one. None when Stage 4
    used another generator, did not run that number of schools, or ran fewer replications."""
    p, t = study.path("4-simulate", "results.parquet"), study.path("4-simulate", "truth.csv")
    if not (p.exists() and t.exists()) or simulation_generator(study) != generator:
        return None
    res = pd.read_parquet(p)
    res = res[(res["source"] == generator) & (res["n_schools"] == n_schools) & (res["rep"] < reps)]
    if res.empty or res["rep"].nunique() < reps:
        return None
    truth = pd.read_csv(t)
    truth = truth[truth["source"] == generator]
    return (res.assign(source="synthetic").reset_index(drop=True),
            truth.assign(source="synthetic").reset_index(drop=True))


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
    sub["cell"] = value_mcse(sub, digits)
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
        fails["cell"] = value_mcse(fails, 3)
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


# ============================================================================ Stage 5: what stands behind the numbers
#: The message a prediction rule records when its random-slope model fell back to a random intercept.
FALLBACK_NOTE = "fell back to random intercept"


def fit_rates(study: Study, which: str = "4-simulate", digits: int = 3) -> pd.DataFrame:
    """Per source and method (rows) and number of schools (columns): the share of fits that failed (status
    error or non-converged: no usable estimate), that fell back to a random intercept, and that were singular
    (usable estimates of a model with a variance on the boundary), each ``value (MCSE)``.  Rows that are 0 in
    every condition are left out except the failure row, so a reader sees every way a fit went wrong."""
    from .performance import status_rates

    res, _ = simulation_results(study, which)
    r = status_rates(res, by=["source", "n_schools"], notes={"fell back to random intercept": FALLBACK_NOTE})
    wide = r.pivot_table(index=["source", "n_schools", "method"], columns="rate", values="value", sort=False)
    n = r.groupby(["source", "n_schools", "method"], sort=False)["n_reps"].first()
    failed = wide.reindex(columns=["rate_error", "rate_non-converged"], fill_value=0.0).sum(axis=1)
    rows = {"failed": failed, "fell back to random intercept": wide["fell back to random intercept"],
            "singular": wide["rate_singular"]}
    out = []
    for fit, v in rows.items():
        se = np.sqrt(v * (1 - v) / n)
        out.append(pd.DataFrame({"fit": fit, "value": v, "mcse": se}).reset_index())
    out = pd.concat(out, ignore_index=True)
    keep = out.groupby(["source", "method", "fit"])["value"].transform("max").gt(0) | out["fit"].eq("failed")
    out = out[keep]
    out["cell"] = value_mcse(out, digits)
    return out.pivot_table(index=["source", "method", "fit"], columns="n_schools", values="cell", aggfunc="first",
                           sort=False)


def outcome_levels(study: Study, summary: pd.DataFrame, draws: int = 2) -> pd.DataFrame:
    """Each source's PMSE next to the outcome it predicts: total and within-school variance and ICC.

    The real data's values are computed on Stage 1's data; each generator's ICC is also shown as Stage 3
    measured it (``3-quality/table.csv``, mean over its candidates); a source's variances and ICC are
    measured on ``draws`` data sets it generates at the real number of schools (Stage 3 writes no variances).
    The within-school variance after the student predictors (:func:`within_residual_variance`: school
    intercepts, common slopes) is the level a rule's PMSE approaches when schools differ only in their
    intercepts; the rules add the estimation error of their coefficients, and gain where slopes vary.  The
    PMSE of the multilevel rule estimates the within-school variance left after the predictors, so a source
    whose outcome varies more within schools has a higher PMSE whatever the rules do."""
    from .icc import anova_components

    def components(d, y_name, student):
        y = d.child[y_name].to_numpy(float)
        groups = d.child[d.cluster_key].to_numpy()
        c = anova_components(y, groups)
        return float(np.var(y, ddof=1)), c["sigma2"], c["icc"], within_residual_variance(d.child, y_name, student,
                                                                                        d.cluster_key)

    data = real_data(study)
    q = pd.read_csv(study.require("3-quality/table.csv", made_by="3-quality"))
    pm = summary[summary["measure"] == "pmse"]
    nmax = pm["n_schools"].max() if len(pm) else None
    seeds = np.random.SeedSequence([int(study["seed"]), 17]).spawn(draws)
    rows, real_outcome = [], None
    for name, (gen, methods, _) in sources(study, data).items():
        spec = getattr(next(iter(methods.values())), "keywords", {}).get("spec")
        y_name = getattr(spec, "outcome", None)
        if y_name is None:
            raise ParamsError(f"file '{study.file}': source '{name}' has no prediction spec with an outcome")
        student = tuple(getattr(spec, "student", ()))
        comps = np.array([components(getattr(d, "data", d), y_name, student) for d in
                          (gen({"n_schools": data.n_clusters}, np.random.default_rng(sd)) for sd in seeds)])
        row = {"source": name, "outcome": y_name, "outcome variance": comps[:, 0].mean(),
               "within-school variance": comps[:, 1].mean(),
               "within-school variance after the student predictors": comps[:, 3].mean(), "ICC": comps[:, 2].mean()}
        stage3 = q[q["dataset"].eq(name) & q["metric"].eq("ICC similarity") & q["variables"].eq(y_name)]
        row["ICC (Stage 3)"] = float(stage3["stat_syn"].mean()) if len(stage3) else np.nan
        for m in ("OLSFE", "Prior", "Multilevel"):
            c = pm[(pm["source"] == name) & (pm["method"] == m) & (pm["n_schools"] == nmax)]
            row[f"PMSE {m} ({nmax} schools)"] = float(c["value"].iloc[0]) if len(c) else np.nan
        rows.append(row)
        if name in study["generators"]:
            real_outcome = (y_name, student)
    if real_outcome is not None:
        v, w, icc, r = components(data, *real_outcome)
        rows.insert(0, {"source": "real data", "outcome": real_outcome[0], "outcome variance": v,
                        "within-school variance": w, "within-school variance after the student predictors": r,
                        "ICC": icc})
    return pd.DataFrame(rows).set_index("source")


def within_residual_variance(child: pd.DataFrame, outcome: str, predictors, cluster_key: str) -> float:
    """Residual variance of ``outcome`` after school fixed effects and ``predictors`` (categorical ones as
    indicators, the first level dropped): the within-school regression's SSR / (N - J - p)."""
    X = pd.get_dummies(child[list(predictors)], drop_first=True, dtype=float) if predictors else \
        pd.DataFrame(index=child.index)
    g = child[cluster_key].to_numpy()
    y = child[outcome].astype(float)
    yd = (y - y.groupby(g).transform("mean")).to_numpy()
    Xd = (X - X.groupby(g).transform("mean")).to_numpy(float)
    resid = yd - Xd @ np.linalg.lstsq(Xd, yd, rcond=None)[0] if Xd.shape[1] else yd
    n, j, p = len(yd), len(np.unique(g)), Xd.shape[1]
    return float(resid @ resid / (n - j - p))


def se_bias_table(summary: pd.DataFrame, digits: int = 1) -> tuple[pd.DataFrame, str]:
    """Relative SE bias (%) per source, parameter and method (rows) and number of schools, ``value (MCSE)``
    with ``*`` where it is beyond 2 MCSE of 0, and a sentence saying how many cells are and how many
    would be by chance alone."""
    from .performance import beyond_mcse

    d = beyond_mcse(summary, "relerror")
    d["cell"] = [f"{v:+.{digits}f} ({m:.{digits}f})" + (" *" if b else "")
                 for v, m, b in zip(d["value"], d["mcse"], d["beyond"])]
    t = d.pivot_table(index=["source", "parameter", "method"], columns="n_schools", values="cell", aggfunc="first",
                      sort=False)
    k, n, chance = int(d["beyond"].sum()), len(d), d.attrs["expected_by_chance"]
    text = (f"{k} of {n} SE-bias cells (marked *) are beyond 2 MCSE of 0; if every model SE were unbiased, about "
            f"{chance:.1f} would be by chance alone, so an isolated * at one number of schools is weak evidence "
            "until more replications confirm it.")
    return t, text


def evaluation_context(study: Study, summary: pd.DataFrame) -> dict:
    """Stage 5's tables that explain its numbers: ``{title: (table, sentence)}`` — how the fits went
    (:func:`fit_rates`), and the objective's own: the outcome behind each source's PMSE
    (:func:`outcome_levels`) or the SE-bias cells beyond Monte Carlo error (:func:`se_bias_table`)."""
    out = {"How the fits went: share of replications (MCSE)": (fit_rates(study), (
        "A fit *failed* when it gave no usable estimate; a prediction rule's fit *fell back* when its random-slope "
        "model did not converge or was singular and a random-intercept model was used instead (its predictions "
        "enter the PMSE); "
        "*singular* fits have a variance on the boundary and enter the measures as lme4 users report them."))}
    if (summary["measure"] == "pmse").any():
        out["The outcome behind each source's PMSE"] = (outcome_levels(study, summary).round(3).T, (
            "A rule's PMSE is, up to the estimation error of its coefficients, the within-school variance the "
            "predictors leave (the row *after the student predictors*; less where school slopes vary and a rule "
            "uses them): a source whose outcome varies more within schools, or depends less on the predictors, "
            "has a higher PMSE whatever the rules do, and a source with a near-zero ICC leaves the school effects "
            "nothing to add. The real data's row shows what a real sample of schools would give."))
    if (summary["measure"] == "relerror").any():
        out["Relative SE bias (%), MCSE in parentheses"] = se_bias_table(summary)
    return out


# ============================================================================ Stage 6: findings
def ablation_findings(study: Study, perf: pd.DataFrame) -> str:
    """Markdown bullets: for each scenario, each measure of Tables 5/6 (:func:`ablation_measures`) as the
    change from the original with its MCSE and z (scenarios are independent simulations: the MCSE of a
    change is the root sum of squares).  Prediction: all three rules; recovery: OLS+IGM, the model of
    Table 6."""
    measures = ablation_measures(study)
    d = perf[perf["measure"].isin(measures)]
    if study.objective != "prediction":
        d = d[d["method"] == "OLS+IGM"]
    orig = d[d["scenario"] == "original"].set_index(["method", "parameter", "measure"])
    lines = []
    for scen, g in d[d["scenario"] != "original"].groupby("scenario", sort=False):
        parts, moved = [], 0
        detailed = g["measure"].nunique() > 1 or g["parameter"].nunique() > 1  # else the method names a row
        for r in g.itertuples():
            key = (r.method, r.parameter, r.measure)
            if key not in orig.index:
                continue
            o = orig.loc[key]
            diff, se = r.value - o["value"], float(np.hypot(r.mcse, o["mcse"]))
            z = diff / se if se > 0 else np.nan
            moved += bool(abs(z) >= 2)
            what = f"{r.method} {r.measure} {r.parameter}" if detailed else r.method
            parts.append(f"{what} {diff:+.3g} ({se:.2g}, " + (f"z {z:+.1f})" if np.isfinite(z) else "no Monte Carlo "
                                                               "variation)"))
        lines.append(f"- **{scen}** minus original: " + "; ".join(parts) + f". Beyond 2 MCSE: {moved} of {len(parts)}.")
    return "\n".join(lines)


def ablation_original_note(study: Study, perf: pd.DataFrame) -> str:
    """What the ``original`` scenario is, checked against Stage 5: the Stage 2 model (same data and settings,
    from the model cache) at ``ablation.n_schools`` with Stage 4's seeds, whose rows are Stage 4's where
    :func:`ablation` reused them (its marker file, :data:`mlsimkit.cost.REUSED`); its quality rows come from its
    own ``ablation.quality.candidates`` data sets, not Stage 3's."""
    n = int(study["ablation"]["n_schools"])
    k = int(study["ablation"].get("quality", {}).get("candidates", 3))
    reps = int(study["ablation"].get("reps") or study["simulation"]["reps"])
    reused = (study.run_dir / "6-robustness" / "original" / REUSED).is_file()
    text = (f"The *original* scenario is the Stage 2 model (same data and settings, taken from the model cache) at "
            f"{n} schools with Stage 4's seeds: "
            + (f"its simulation rows are Stage 4's first {reps} replications at {n} schools, reused rather than "
               "computed again (rows depend only on the seed, the condition, the replication and the method). "
               if reused else "simulated here, because Stage 4 used another generator, another number of schools "
               "or fewer replications. ")
            + f"Its quality rows come from {k} fresh candidate data sets scored with this stage's settings, like "
            "the other scenarios' (Stage 3 scored its candidates with other settings).")
    p = study.path("5-evaluate", "summary.csv")
    if not p.exists():
        return text
    s5 = pd.read_csv(p)
    s5 = s5[(s5["n_schools"] == n) & (s5["source"] == simulation_generator(study))]
    o = perf[perf["scenario"] == "original"]
    m = o.merge(s5, on=["method", "parameter", "measure"], suffixes=("", "_5"))
    m = m[np.isfinite(m["value"]) & np.isfinite(m["value_5"])]
    if m.empty:
        return text + f" Stage 4 did not run {n} schools, so there are no Stage 5 rows to compare with."
    gap = float((m["value"] - m["value_5"]).abs().max())
    same = bool((m["n_reps"] == m["n_reps_5"]).all())
    return text + (f" Its {len(m)} measures at {n} schools differ from Stage 5's by at most {gap:.3g}"
                   + (" (the same replications)." if same and gap < 1e-9 else
                      f" (Stage 5 used {int(m['n_reps_5'].iloc[0])} replications, this stage "
                      f"{int(m['n_reps'].iloc[0])})."))


# ============================================================================ Stage 6: positivity
def _positivity_hook(study: Study):
    """The study's objective module, checked to have Stage 6's positivity hooks (``positivity_source``)."""
    obj = objective(study)
    if not hasattr(obj, "positivity_source"):
        raise ParamsError(f"file '{study.file}': stage '6-positivity' needs an objective with a positivity hook; "
                          f"objective '{study.objective}' has none (remove the stage from 'stages')")
    return obj


def positivity(study: Study, data: MultilevelData, *, progress: bool | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 6 (``6-positivity``): the objective's weak-overlap simulation with and without targeted
    augmentation on the simulation engine (resumable store ``6-positivity/<source>+<pool>``, the study's
    ``simulation.backend`` / ``n_jobs``, failures recorded), covariates from Stage 4's source and the pool
    from ``positivity.pool``. Returns ``(summary, diagnostics)`` and writes them, with the results, under
    ``6-positivity/``."""
    obj = _positivity_hook(study)
    settings = obj.positivity_settings(study)
    src = simulation_generator(study)
    pool, _ = obj.positivity_pool(study, src)
    design, gen, methods, truth = obj.positivity_source(study, data, model_path(study, src), model_path(study, pool))
    res = _run_source(study, "6-positivity", f"{src}+{pool}", design, gen, methods, settings["reps"], progress)
    res.insert(0, "source", src)
    t = truth.rename(columns={"truth": "true_value"}).copy()
    t.insert(0, "source", src)
    write_results(study, "6-positivity", res, t)
    summary = obj.positivity_summary(study, res, truth)
    diagnostics = obj.positivity_diagnostics(res)
    for frame, fname in ((summary, "summary.csv"), (diagnostics, "diagnostics.csv")):
        with atomic_path(study.path("6-positivity", fname)) as tmp:
            frame.to_csv(tmp, index=False)
    return summary, diagnostics


def positivity_design(study: Study) -> pd.DataFrame:
    """What Stage 6's positivity simulation runs: its settings, the covariate source and the pool (and why)."""
    obj = _positivity_hook(study)
    p = obj.positivity_settings(study)
    src = simulation_generator(study)
    pool, why = obj.positivity_pool(study, src)
    rows = {"overlap (the hybrid's knob; Stage 4 uses model.overlap)": ", ".join(f"{v:g}" for v in p["overlap"]),
            "numbers of schools": ", ".join(map(str, p["n_schools"])), "replications per design": p["reps"],
            "augmentation: c (extreme propensity outside [c, 1 - c])": p["c"],
            "augmentation: k (synthetic partners per extreme school)": p["k"],
            "averages": ", ".join(p["average"]), "covariates of the analysis data": f"{src} (Stage 4's source)",
            "pool of synthetic covariates": f"{pool}: {why}",
            "pool schools per analysis school": p["pool_ratio"],
            "backend": f"{study['simulation'].get('backend', 'serial')}, {n_jobs(study)} jobs"}
    return pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]}).set_index("setting")


def positivity_tables(study: Study, summary: pd.DataFrame, diagnostics: pd.DataFrame) -> dict:
    """Stage 6's tables (the objective's): per design, each method with and without augmentation, and the
    overlap and covariate-shift diagnostics."""
    return _positivity_hook(study).positivity_tables(study, summary, diagnostics)


def positivity_figure(study: Study, summary: pd.DataFrame):
    """Stage 6's figure (the objective's): RMSE by method with and without augmentation, MCSE bars."""
    return _positivity_hook(study).positivity_figure(study, summary)


def positivity_findings(study: Study, summary: pd.DataFrame, diagnostics: pd.DataFrame) -> str:
    """What this build found in Stage 6's positivity simulation (the objective's markdown bullets)."""
    return _positivity_hook(study).positivity_findings(study, summary, diagnostics)
