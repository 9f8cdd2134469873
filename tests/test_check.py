"""``mlsimkit check``: every bad params case gives one problem naming its key, in seconds, before any training."""

import shutil
import time
from pathlib import Path

import pytest
import yaml

import mlsimkit.check as C

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp_path, study, edit):
    """A copy of the project's params (and a notebooks/ folder, the root marker) with ``study`` edited."""
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "params" / f"{study}.yml"
    spec = yaml.safe_load(path.read_text())
    text = edit(spec)
    path.write_text(text if isinstance(text, str) else yaml.safe_dump(spec, sort_keys=False))
    return tmp_path


def _set(*keys, value):
    def edit(spec):
        d = spec
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return edit


def _delete(*keys):
    def edit(spec):
        d = spec
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return edit


def _paper_simulation(**settings):
    """Add ``settings`` to the paper profile's simulation (the other profiles stay valid)."""
    def edit(spec):
        spec["profiles"]["paper"].setdefault("simulation", {}).update(settings)
    return edit


P, R = "hsb-prediction", "hsb-recovery"
CASES = [  # (id, study, edit, key of the one problem, words of the message)
    ("unknown top-level key", P, _set("modle", value={}), "modle", "unknown top-level key"),
    ("study name differs", P, _set("study", value="hsb"), "study", "the file name"),
    ("not yaml", P, lambda s: "study: [unclosed\n", "(file)", "not valid YAML"),
    ("unknown dataset", P, _set("dataset", value="hbs"), "dataset", "not a shipped data set"),
    ("unknown objective", P, _set("objective", value="causal-forest"), "objective", "expected one of"),
    ("unknown stage", P, _set("stages", value=["1-specify", "7-publish"]), "stages[1]", "unknown stage"),
    ("seed of the wrong type", P, _set("common", "seed", value="2026"), "common.seed", "non-negative integer"),
    ("unknown parameter", P, _set("common", "simulaton", value={}), "common.simulaton", "unknown parameter"),
    ("unknown key in a profile", P, _set("profiles", "quick", "sim", value={}), "profiles.quick.sim",
     "unknown parameter"),
    ("unknown column", P, _set("model", "student", value=["SES", "Minorty", "Sex"]), "model.student[1]",
     "not in the schema"),
    ("column at the wrong level", P, _set("model", "school", value=["Sector", "SES"]), "model.school[1]",
     "student-level variable"),
    ("outcome not numerical", P, lambda s: s["model"].update(outcome="Sex", student=["SES", "Minority"]),
     "model.outcome", "expected a numerical"),
    ("cluster key as predictor", P, _set("model", "school", value=["Sector", "School"]), "model.school[1]",
     "key (id) column"),
    ("random slope not numerical", P, _set("model", "random_slope", value="Minority"), "model.random_slope",
     "expected a numerical"),
    ("bad interaction", P, _set("model", "interactions", value=[["Sector", "SES"]]), "model.interactions[0]",
     "student predictor, school predictor"),
    ("unknown model key", P, _set("model", "randomslope", value="SES"), "model.randomslope", "unknown key"),
    ("reml not boolean", P, _set("model", "reml", value="yes"), "model.reml", "true or false"),
    ("unknown generator", P, _set("common", "generators", "gan2", value={"epochs": 3}), "generators.gan2",
     "unknown generator"),
    ("unknown generator setting", P, _set("common", "generators", "clavaddpm", "n_grops", value=4),
     "generators.clavaddpm.n_grops", "unknown setting"),
    ("generator value out of range", P, _set("profiles", "quick", "generators", "ctgan", "epochs", value=-1),
     "generators.ctgan", "positive integer"),
    ("generator device unknown", P, _set("common", "generators", "ctgan", "device", value="tpu"),
     "generators.ctgan", "parameter 'device'"),
    ("diffusion device unknown", P, _set("profiles", "quick", "generators", "clavaddpm", "device", value="gpu"),
     "generators.clavaddpm", "parameter 'device'"),
    ("unknown backend", P, _set("common", "simulation", "backend", value="lokky"), "simulation.backend",
     "expected one of"),
    ("negative reps", P, _set("profiles", "quick", "simulation", "reps", value=-3), "simulation.reps",
     "positive integer"),
    ("zero schools", P, _set("profiles", "quick", "simulation", "n_schools", value=[0]),
     "simulation.n_schools[0]", "integer >= 2"),
    ("empty design", P, _set("profiles", "quick", "simulation", "n_schools", value=[]), "simulation.n_schools",
     "non-empty list"),
    ("unknown source", P, _set("common", "simulation", "sources", value=["best", "tradtional"]),
     "simulation.sources[1]", "unknown source"),
    ("scheduler without backend dask", P, _set("common", "simulation", "scheduler", value="tcp://head:8786"),
     "simulation.scheduler", "needs 'backend: dask'"),
    ("scheduler address without a port", P, _paper_simulation(backend="dask", scheduler="head-node"),
     "simulation.scheduler", "tcp://host:8786"),
    ("scheduler address of an unknown protocol", P, _paper_simulation(backend="dask", scheduler="http://head:8786"),
     "simulation.scheduler", "protocol 'http'"),
    ("scheduler port out of range", P, _paper_simulation(backend="dask", scheduler="tcp://head:99999"),
     "simulation.scheduler", "1..65535"),
    ("scheduler and cluster", P, _paper_simulation(backend="dask", scheduler="tcp://head:8786",
                                                   cluster={"kind": "slurm", "cores": 1, "memory": "4GB"}),
     "simulation.scheduler", "not both"),
    ("unknown cluster kind", P, _paper_simulation(backend="dask", cluster={"kind": "slurmm", "cores": 1, "memory": "4GB"}),
     "simulation.cluster.kind", "dask-jobqueue"),
    ("cluster memory not a size", P, _paper_simulation(backend="dask", cluster={"kind": "pbs", "cores": 2, "memory": 4}),
     "simulation.cluster.memory", "'4GB'"),
    ("cluster jobs not positive", P,
     _paper_simulation(backend="dask", cluster={"kind": "slurm", "cores": 1, "memory": "4GB", "jobs": 0}),
     "simulation.cluster.jobs", "positive integer"),
    ("failure threshold out of range", P, _set("common", "simulation", "max_fail_rate", value=1.5),
     "simulation.max_fail_rate", "[0, 1]"),
    ("unknown quality setting", P, _set("common", "quality", "n_synth", value=3), "quality.n_synth",
     "unknown setting"),
    ("hold-out share out of range", P, _set("common", "quality", "holdout_share", value=1.5),
     "quality.holdout_share", "[0, 1)"),
    ("unknown hold-out training", P, _set("common", "quality", "holdout_training", value="fast"),
     "quality.holdout_training", "'same' or 'quick'"),
    ("trust flag not boolean", P, _set("common", "trust_model_files", value="yes"), "common.trust_model_files",
     "true or false"),
    ("both icc and tau00", P, _set("common", "traditional", "tau00", value=0.125), "traditional",
     "give one of them, not both"),
    ("traditional design out of range", P, _set("common", "traditional", "icc", value=1.5), "traditional", "icc"),
    ("unknown ablation setting", P, _set("common", "ablation", "scenarios", "x", value={"n_grops": 3}),
     "ablation.scenarios.x.n_grops", "unknown setting"),
    ("no profiles", P, _delete("profiles"), "profiles", "mapping of profile names"),
    ("omitted not a school predictor", R, _set("model", "omitted", value=["MEANSES"]), "model.omitted[0]",
     "school predictors"),
    ("reported coefficient omitted", R, _set("model", "report", value={"SES": "student", "DISCLIM": "school"}),
     "model.report.DISCLIM", "omitted by the analysis models"),
    ("reported level wrong", R, _set("model", "report", value={"SES": "school", "PRACAD": "school"}),
     "model.report.SES", "not school-level"),
    ("categorical coefficient without its level", R, _set("model", "report", value={"SES": "student", "Sector": "school"}),
     "model.report.Sector", "Sector[T.Catholic]"),
    ("no model for stage 4", R, _delete("model"), "model", "required by stages 4-6"),
    ("adjusted design needs numerical columns", R,
     _set("model", "report", value={"SES": "student", "Sector[T.Catholic]": "school"}),
     "model.report.Sector[T.Catholic]", "needs a numerical column"),
    ("6-positivity without a positivity hook", P,
     _set("stages", value=["1-specify", "2-train", "3-quality", "4-simulate", "5-evaluate", "6-positivity"]),
     "stages", "stage '6-positivity' needs an objective with a positivity hook"),
    ("positivity c out of range", "hsb-causal", _set("common", "positivity", "augmentation", value={"c": 0.7, "k": 2}),
     "positivity.augmentation.c", "(0, 0.5)"),
    ("positivity pool unknown", "hsb-causal", _set("common", "positivity", "pool", value="gpt"),
     "positivity.pool", "Stage 2 generators"),
    ("positivity too few schools", "hsb-causal", _set("common", "positivity", "n_schools", value=2),
     "positivity.n_schools", "integer >= 4"),
]


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Import what check imports once (torch with the diffusion generator), so each case is timed alone."""
    C.check("hsb-prediction", "quick", ROOT, data=False)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_params_give_one_problem_naming_the_key(tmp_path, case):
    _, study, edit, key, words = case
    root = _project(tmp_path, study, edit)
    t0 = time.perf_counter()
    problems = C.check(study, None, root)
    took = time.perf_counter() - t0
    assert [p.key for p in problems] == [key], [str(p) for p in problems]
    assert words in problems[0].message and str(root / "params" / f"{study}.yml") in str(problems[0])
    assert took < 5, took


def test_a_named_cluster_passes(tmp_path):
    """A scheduler address (also IPv6 and tls) or a jobqueue spec with backend dask is fine; check does not need
    dask-jobqueue installed (the run does)."""
    for sim in ({"backend": "dask", "scheduler": "tcp://10.0.0.5:8786"},
                {"backend": "dask", "scheduler": "tls://[::1]:8786"},
                {"backend": "dask", "cluster": {"kind": "slurm", "cores": 4, "processes": 4, "memory": "16GiB",
                                                "jobs": 10, "walltime": "01:00:00", "queue": "short"}}):
        root = _project(tmp_path / str(len(list(tmp_path.iterdir()))), P, _paper_simulation(**sim))
        assert C.check(P, "paper", root, data=False) == []


def test_the_shipped_studies_pass():
    assert C.check("hsb-prediction", None, ROOT) == []
    assert C.check("hsb-recovery", None, ROOT) == []


def test_a_problem_under_several_profiles_is_one_problem_naming_them(tmp_path):
    root = _project(tmp_path, P, _set("common", "simulation", "backend", value="lokky"))
    (p,) = C.check(P, None, root)
    assert p.profiles == ("default", "paper")  # quick sets backend: serial
    assert "profiles default, paper" in str(p)


def test_every_problem_is_reported_at_once(tmp_path):
    def edit(spec):
        spec["objective"] = "prediction"
        spec["model"]["student"] = ["SES", "Minorty"]
        spec["common"]["simulation"]["backend"] = "lokky"
        spec["profiles"]["quick"]["simulation"]["reps"] = 0
    root = _project(tmp_path, P, edit)
    keys = sorted(p.key for p in C.check(P, None, root))
    assert keys == ["model.student[1]", "simulation.backend", "simulation.reps"]


def test_unknown_profile_is_named_and_any_defined_profile_is_accepted(tmp_path):
    def edit(spec):
        spec["profiles"]["tiny"] = {"simulation": {"reps": 2, "n_schools": [10], "backend": "serial"}}
    root = _project(tmp_path, P, edit)
    (p,) = C.check(P, "fast", root, data=False)
    assert p.key == "profiles" and "'fast' is not defined" in p.message and "tiny" in p.message
    assert C.check(P, "tiny", root, data=False) == []
    import mlsimkit.study as st

    assert st.load(P, "tiny", root)["simulation"]["reps"] == 2


def test_missing_data_is_a_problem():
    (p,) = C.check("hsls-prediction", "quick", ROOT)
    assert p.key == "schema" and "file not found" in p.message


def test_cli_check_prints_every_problem_and_fails(tmp_path, capsys):
    from mlsimkit.cli import main

    root = _project(tmp_path, P, _set("model", "outcome", value="Sector"))
    assert main(["check", "--study", P, "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "1 problem(s)" in err and "key 'model.outcome'" in err
    assert main(["check", "--study", P, "--root", str(ROOT), "--no-data"]) == 0


def test_run_checks_before_any_notebook(tmp_path):
    """A typo costs seconds: ``mlsimkit run`` stops before executing (or training) anything."""
    from mlsimkit.errors import ParamsError
    from mlsimkit.runner import run

    root = _project(tmp_path, P, _set("common", "simulation", "backend", value="lokky"))
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / f, root / f)
    shutil.copytree(ROOT / "book", root / "book", ignore=shutil.ignore_patterns("executed"))
    shutil.copytree(ROOT / "data", root / "data")
    t0 = time.perf_counter()
    with pytest.raises(ParamsError, match=r"simulation\.backend"):
        run(P, "default", root=root, build=False, log=lambda m: None)
    assert time.perf_counter() - t0 < 5
    assert not (root / "book" / "executed").exists() and not (root / "runs").exists()
