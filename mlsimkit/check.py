"""``mlsimkit check``: a study's params file, schema and data validated as a whole, before anything runs.

Every key of the merged params tree is checked in one pass and every problem is collected (rsimsum's
``makeAssertCollection``: report them all, not the first), each naming the file, the key path and what was
expected. What is checked:

* the top level: known keys, ``study`` equal to the file name, exactly one of ``dataset`` / ``schema`` (the
  shipped data set exists, the schema file parses), ``objective`` one of :func:`mlsimkit.objectives.names`,
  ``stages`` known, at least one profile;
* ``model:`` against the schema, by the objective (:func:`check_model` of its module): columns exist, sit at
  the right level, are numerical where they must be and are not keys;
* under every profile (or the one asked for), the merged ``common`` + profile settings: ``seed``;
  ``generators`` (known names, settings the generator accepts, values it accepts); ``quality``;
  ``simulation`` (``generator``, ``sources``, ``n_schools``, ``reps``, ``backend``, ``n_jobs``, ``scheduler``
  and ``cluster`` (:mod:`mlsimkit.simulate.cluster`: only with backend dask, a well-formed address, a known
  dask-jobqueue kind), ``failure_policy``, ``max_fail_rate``); ``traditional`` (by the objective); ``ablation``;
  ``positivity`` (stage ``6-positivity``, by the objective's ``check_positivity``; a study whose objective
  has none cannot list the stage);
* the data: the files exist and match the schema (:func:`mlsimkit.data.read_csv`).

:func:`check` returns the problems, :func:`require` raises one :class:`~mlsimkit.errors.ParamsError` listing
them all; ``mlsimkit run`` calls :func:`require` first, so a typo costs seconds, not a training run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import MlsimkitError, ParamsError

TOP_KEYS = ("study", "title", "dataset", "schema", "objective", "stages", "model", "common", "profiles",
            "description")
PARAM_KEYS = ("seed", "generators", "quality", "simulation", "traditional", "ablation", "trust_model_files",
              "positivity")
SIMULATION_KEYS = ("generator", "sources", "n_schools", "reps", "backend", "n_jobs", "scheduler", "cluster",
                   "failure_policy", "max_fail_rate")
ABLATION_KEYS = ("generator", "scenarios", "n_schools", "reps", "quality")
ABLATION_QUALITY_KEYS = ("candidates", "efficacy")
#: Settings every generator entry may carry besides its constructor's: ``generator`` (the kind, when the
#: entry's name is not one) and, in ablation scenarios, ``train_fraction``.
EXTRA_GENERATOR_KEYS = ("generator",)


@dataclass(frozen=True)
class Problem:
    """One problem of a params file: where (file, key path, and the profiles whose merged settings have it)
    and what was expected."""

    file: str
    key: str
    message: str
    profiles: tuple[str, ...] = ()

    def __str__(self) -> str:
        under = f" (profile{'s' if len(self.profiles) > 1 else ''} {', '.join(self.profiles)})" if self.profiles else ""
        return f"file '{self.file}', key '{self.key}'{under}: {self.message}"


def _int(value: Any, lo: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


class _Collector:
    """Problems in the order found; the same problem under several profiles is one problem."""

    def __init__(self, file: Path):
        self.file = str(file)
        self._found: dict[tuple[str, str], list[str]] = {}

    def add(self, key: str, message: str, profile: str | None = None) -> None:
        profiles = self._found.setdefault((key, message), [])
        if profile is not None and profile not in profiles:
            profiles.append(profile)

    @property
    def problems(self) -> list[Problem]:
        return [Problem(self.file, k, m, tuple(p)) for (k, m), p in self._found.items()]

    def extend(self, pairs) -> None:
        for key, message in pairs:
            self.add(key, message)


def check(study: str, profile: str | None = None, root: str | Path | None = None, *, data: bool = True) -> list[Problem]:
    """Every problem of ``params/<study>.yml`` (all profiles, or only ``profile``), its model against the
    schema and (with ``data``) the data against the schema; ``[]`` when the study can run."""
    from . import study as study_mod

    root = Path(root).resolve() if root else study_mod.find_root()
    path = study_mod.params_file(study, root)
    out = _Collector(path)
    if not path.is_file():
        out.add("study", f"params file of study '{study}' not found; studies here: {study_mod.available(root)}")
        return out.problems
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        out.add("(file)", f"not valid YAML ({exc})")
        return out.problems
    if not isinstance(spec, dict):
        out.add("(file)", "expected a mapping of keys (study, objective, model, common, profiles, ...)")
        return out.problems
    for k in spec:
        if k not in TOP_KEYS:
            out.add(str(k), f"unknown top-level key; expected one of {list(TOP_KEYS)}")
    if spec.get("study") != study:
        out.add("study", f"expected {study!r} (the file name), got {spec.get('study')!r}")
    for k in ("title", "description"):
        if k in spec and not isinstance(spec[k], str):
            out.add(k, f"expected text, got {spec[k]!r}")
    schema = _check_source(spec, root, out)
    objective = _check_objective(spec, out)
    stages = spec.get("stages", list(study_mod.DEFAULT_STAGES))
    if not isinstance(stages, list) or not stages:
        out.add("stages", f"expected a non-empty list of stages from {list(study_mod.STAGES)}, got {stages!r}")
        stages = list(study_mod.STAGES)
    for i, s in enumerate(stages):
        if s not in study_mod.STAGES:
            out.add(f"stages[{i}]", f"unknown stage {s!r}; expected one of {list(study_mod.STAGES)}")
    simulates = any(s in stages for s in ("4-simulate", "5-evaluate", "6-robustness", "6-positivity"))
    if "6-positivity" in stages and objective is not None and not hasattr(objective, "check_positivity"):
        out.add("stages", f"stage '6-positivity' needs an objective with a positivity hook (check_positivity, "
                          f"positivity_source); objective {spec.get('objective')!r} has none")
    if objective is not None and schema is not None and ("model" in spec or simulates):
        if "model" not in spec:
            out.add("model", "required by stages 4-6: the analysis model (see mlsimkit.objectives."
                             f"{spec.get('objective')})")
        else:
            out.extend(objective.check_model(spec["model"], schema))
    profiles = spec.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        out.add("profiles", "expected a mapping of profile names (e.g. quick, default, paper) to settings")
        profiles = {}
    common = spec.get("common") or {}
    if not isinstance(common, dict):
        out.add("common", f"expected a mapping of parameters, got {common!r}")
        common = {}
    if profile is not None and profile not in profiles:
        out.add("profiles", f"profile {profile!r} is not defined; defined: {list(profiles)}")
    for name, over in profiles.items():
        if profile is not None and name != profile:
            continue
        if over is not None and not isinstance(over, dict):
            out.add(f"profiles.{name}", f"expected a mapping of parameters (or {{}}), got {over!r}")
            continue
        for k in (over or {}):
            if k not in PARAM_KEYS:
                out.add(f"profiles.{name}.{k}", f"unknown parameter; expected one of {list(PARAM_KEYS)}")
        merged = study_mod._merge(_deepcopy(common), over or {})
        _check_params(merged, name, stages, objective, schema, spec.get("model"), out)
    for k in common:
        if k not in PARAM_KEYS:
            out.add(f"common.{k}", f"unknown parameter; expected one of {list(PARAM_KEYS)}")
    if data and schema is not None and not out.problems:
        _check_data(spec, root, out)
    return out.problems


def require(study: str, profile: str | None = None, root: str | Path | None = None, *, data: bool = True) -> None:
    """Raise one :class:`ParamsError` listing every problem :func:`check` finds (nothing when there is none)."""
    problems = check(study, profile, root, data=data)
    if problems:
        raise ParamsError(f"study '{study}': {len(problems)} problem(s) in its params file, schema or data:\n"
                          + "\n".join(f"  - {p}" for p in problems))


# ============================================================================ parts
def _deepcopy(x):
    import copy

    return copy.deepcopy(x)


def _check_source(spec: dict, root: Path, out: _Collector):
    """The schema named by ``dataset`` or ``schema`` (None when it cannot be had)."""
    from . import datasets
    from .schema import Schema

    if ("dataset" in spec) == ("schema" in spec):
        out.add("dataset", "give exactly one of 'dataset' (a shipped data set) or 'schema' (a schema file)")
        return None
    if "dataset" in spec:
        if spec["dataset"] not in datasets.NAMES:
            out.add("dataset", f"{spec['dataset']!r} is not a shipped data set; expected one of {list(datasets.NAMES)}")
            return None
        return datasets.schema(spec["dataset"])
    p = Path(str(spec["schema"]))
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        out.add("schema", f"schema file '{p}' not found")
        return None
    try:
        return Schema.from_yaml(p)
    except MlsimkitError as exc:
        out.add("schema", f"schema file '{p}' is not valid: {exc}")
        return None


def _check_objective(spec: dict, out: _Collector):
    from . import objectives

    name = spec.get("objective")
    if name not in objectives.names():
        out.add("objective", f"expected one of {objectives.names()}, got {name!r}")
        return None
    return objectives.get(name)


def _check_params(p: dict, profile: str, stages, objective, schema, model, out: _Collector) -> None:
    if not _int(p.get("seed"), 0):
        out.add("common.seed", f"expected a non-negative integer seed (under 'common' or the profile), got "
                               f"{p.get('seed')!r}", profile)
    if not isinstance(p.get("trust_model_files", False), bool):
        out.add("common.trust_model_files", f"expected true or false, got {p['trust_model_files']!r}", profile)
    gens = p.get("generators")
    if not isinstance(gens, dict) or not gens:
        out.add("common.generators", f"expected a mapping of generator names to settings, got {gens!r}", profile)
        gens = {}
    for name, settings in gens.items():
        _check_generator(f"generators.{name}", name, settings, out, profile)
    q = p.get("quality")
    if q is not None:
        _check_quality(q, profile, out)
    if "4-simulate" in stages or "5-evaluate" in stages:
        _check_simulation(p.get("simulation"), gens, objective, schema, model, profile, out)
    if objective is not None and "traditional" in p:
        for key, message in objective.check_traditional(p["traditional"]):
            out.add(key, f"{message}", profile)
    if "6-robustness" in stages:
        _check_ablation(p.get("ablation"), gens, profile, out)
    if "6-positivity" in stages and objective is not None and hasattr(objective, "check_positivity"):
        for key, message in objective.check_positivity(p.get("positivity"), list(gens)):
            out.add(key, message, profile)


def _generator_class(kind: str):
    from . import generators as G

    return G._REGISTRY[kind]()


def _check_generator(key: str, name: str, settings: Any, out: _Collector, profile: str, extra=()) -> None:
    from . import generators as G

    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        out.add(key, f"expected a mapping of settings, got {settings!r}", profile)
        return
    kind = settings.get("generator", name)
    if kind not in G.NAMES:
        out.add(key, f"unknown generator {kind!r}; expected one of {list(G.NAMES)} (or set "
                     f"'generator:' to one of them)", profile)
        return
    cls = _generator_class(kind)
    if cls is None:
        out.add(key, f"generator {kind!r} is not available in this installation", profile)
        return
    accepted = [n for n, prm in inspect.signature(cls.__init__).parameters.items() if n != "self"
                and prm.kind not in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD)]
    bad = [k for k in settings if k not in accepted and k not in EXTRA_GENERATOR_KEYS and k not in extra]
    for k in bad:
        out.add(f"{key}.{k}", f"unknown setting of generator {kind!r}; expected one of {accepted}", profile)
    if bad:
        return
    try:
        gen = cls(**{k: v for k, v in settings.items() if k in accepted})
        for method in ("_check_params", "_check_settings"):  # the checks fit() runs first
            if callable(getattr(gen, method, None)):
                getattr(gen, method)()
    except Exception as exc:  # the constructor's own checks, whatever it raises
        out.add(key, f"generator {kind!r} refuses these settings: {exc}", profile)


def _check_quality(q: Any, profile: str, out: _Collector) -> None:
    from .quality import PROFILE_SETTINGS

    if not isinstance(q, dict):
        out.add("quality", f"expected a mapping of Stage 3 settings, got {q!r}", profile)
        return
    allowed = sorted(set(PROFILE_SETTINGS["default"]) | {"seed", "targets"})
    for k, v in q.items():
        if k not in allowed:
            out.add(f"quality.{k}", f"unknown setting; expected one of {allowed}", profile)
        elif k in ("n_synthetic",) and not _int(v, 1):
            out.add(f"quality.{k}", f"expected an integer >= 1, got {v!r}", profile)
        elif k in ("reference_splits", "bootstrap", "efficacy_reference_splits", "seed") and not _int(v, 0):
            out.add(f"quality.{k}", f"expected an integer >= 0, got {v!r}", profile)
        elif k == "efficacy" and v not in (False, True, "fast", "full"):
            out.add(f"quality.{k}", f"expected false, 'fast' or 'full', got {v!r}", profile)
        elif k == "holdout_share" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1):
            out.add(f"quality.{k}", f"expected a share of the schools in [0, 1), got {v!r}", profile)
        elif k == "holdout_training" and v not in ("same", "quick"):
            out.add(f"quality.{k}", f"expected 'same' or 'quick', got {v!r}", profile)


def _check_simulation(sim: Any, gens: dict, objective, schema, model, profile: str, out: _Collector) -> None:
    from .simulate.cluster import check_simulation as check_cluster_keys
    from .simulate.engine import BACKENDS, POLICIES

    if not isinstance(sim, dict):
        out.add("simulation", f"required by stage 4: a mapping with keys {list(SIMULATION_KEYS)}", profile)
        return
    for k in sim:
        if k not in SIMULATION_KEYS:
            out.add(f"simulation.{k}", f"unknown key; expected one of {list(SIMULATION_KEYS)}", profile)
    trad = tuple(objective.SOURCES) if objective is not None else ()
    g = sim.get("generator", "best")
    if g != "best" and g not in gens:
        out.add("simulation.generator", f"expected 'best' or one of the generators {list(gens)}, got {g!r}", profile)
    srcs = sim.get("sources")
    if not isinstance(srcs, list) or not srcs:
        out.add("simulation.sources", f"expected a non-empty list of sources: 'best', generator names "
                                      f"{list(gens)} or {list(trad)}", profile)
    else:
        for i, s in enumerate(srcs):
            if s != "best" and s not in gens and s not in trad and objective is not None:
                out.add(f"simulation.sources[{i}]", f"unknown source {s!r}; expected 'best', a generator "
                                                    f"{list(gens)} or one of {list(trad)}", profile)
        if objective is not None and hasattr(objective, "check_sources") and schema is not None \
                and isinstance(model, dict):
            out.extend(objective.check_sources(srcs, model, schema))  # what some sources need of the model
    n = sim.get("n_schools")
    if not isinstance(n, list) or not n:
        out.add("simulation.n_schools", f"expected a non-empty list of numbers of schools (integers >= 2), "
                                        f"got {n!r}", profile)
    else:
        for i, v in enumerate(n):
            if not _int(v, 2):
                out.add(f"simulation.n_schools[{i}]", f"expected an integer >= 2, got {v!r}", profile)
    if not _int(sim.get("reps"), 1):
        out.add("simulation.reps", f"expected a positive integer, got {sim.get('reps')!r}", profile)
    if sim.get("backend", "serial") not in BACKENDS:
        out.add("simulation.backend", f"expected one of {list(BACKENDS)}, got {sim.get('backend')!r}", profile)
    if "n_jobs" in sim and not _int(sim["n_jobs"], 1):
        out.add("simulation.n_jobs", f"expected a positive integer, got {sim['n_jobs']!r}", profile)
    for key, message in check_cluster_keys(sim):
        out.add(key, message, profile)
    if sim.get("failure_policy", "record") not in POLICIES:
        out.add("simulation.failure_policy", f"expected one of {list(POLICIES)}, got {sim.get('failure_policy')!r}", profile)
    mf = sim.get("max_fail_rate", 0.5)
    if isinstance(mf, bool) or not isinstance(mf, (int, float)) or not 0 <= mf <= 1:
        out.add("simulation.max_fail_rate", f"expected a number in [0, 1], got {mf!r}", profile)


def _check_ablation(abl: Any, gens: dict, profile: str, out: _Collector) -> None:
    if not isinstance(abl, dict):
        out.add("ablation", f"required by stage 6: a mapping with keys {list(ABLATION_KEYS)}", profile)
        return
    for k in abl:
        if k not in ABLATION_KEYS:
            out.add(f"ablation.{k}", f"unknown key; expected one of {list(ABLATION_KEYS)}", profile)
    base = abl.get("generator", "clavaddpm")
    if base not in gens:
        out.add("ablation.generator", f"expected one of the generators {list(gens)}, got {base!r}", profile)
    scen = abl.get("scenarios")
    if not isinstance(scen, dict) or not scen:
        out.add("ablation.scenarios", f"expected a mapping of scenario names to setting changes", profile)
    elif base in gens and isinstance(gens[base], dict):
        for name, change in scen.items():
            change = change or {}
            if not isinstance(change, dict):
                out.add(f"ablation.scenarios.{name}", f"expected a mapping of setting changes, got {change!r}", profile)
                continue
            frac = change.get("train_fraction")
            if frac is not None and frac not in (0.5, 1, 1.0):
                out.add(f"ablation.scenarios.{name}.train_fraction", f"expected 0.5 (or 1), got {frac!r}", profile)
            settings = {**gens[base], **{k: v for k, v in change.items() if k != "train_fraction"}}
            settings.setdefault("generator", base)
            alone = _Collector(Path(out.file))  # the base settings' own problems are reported under generators
            _check_generator("", base, gens[base], alone, profile)
            if not alone.problems:
                _check_generator(f"ablation.scenarios.{name}", base, settings, out, profile)
    if not _int(abl.get("n_schools"), 2):
        out.add("ablation.n_schools", f"expected an integer >= 2, got {abl.get('n_schools')!r}", profile)
    if "reps" in abl and not _int(abl["reps"], 1):
        out.add("ablation.reps", f"expected a positive integer, got {abl['reps']!r}", profile)
    q = abl.get("quality") or {}
    if not isinstance(q, dict):
        out.add("ablation.quality", f"expected a mapping, got {q!r}", profile)
        return
    for k, v in q.items():
        if k not in ABLATION_QUALITY_KEYS:
            out.add(f"ablation.quality.{k}", f"unknown key; expected one of {list(ABLATION_QUALITY_KEYS)}", profile)
        elif k == "candidates" and not _int(v, 1):
            out.add("ablation.quality.candidates", f"expected an integer >= 1, got {v!r}", profile)
        elif k == "efficacy" and v not in (False, "fast", "full"):
            out.add("ablation.quality.efficacy", f"expected false, 'fast' or 'full', got {v!r}", profile)


def _check_data(spec: dict, root: Path, out: _Collector) -> None:
    from . import datasets
    from .data import read_csv
    from .schema import Schema

    try:
        if "dataset" in spec:
            datasets.load(spec["dataset"])
        else:
            p = Path(str(spec["schema"]))
            p = p if p.is_absolute() else root / p
            read_csv(Schema.from_yaml(p), p.parent)
    except MlsimkitError as exc:
        out.add("schema" if "schema" in spec else "dataset", f"the data do not load: {exc}")
