"""Objectives are plug-ins: a module found by name supplies everything; a new one needs no other module."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import mlsimkit.check as C
import mlsimkit.objectives as objectives
import mlsimkit.study as st
import mlsimkit.workflow as wf
from mlsimkit.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]

TOY = '''"""Toy objective written outside the package: estimate the grand mean of normal data."""
import functools

import numpy as np
import pandas as pd
from scipy import stats

SOURCES = ("normal",)
MEASURES = ("bias", "coverage", "fail_rate")
ABLATION_MEASURES = ("bias",)


def check_model(model, schema):
    return [] if isinstance(model, dict) and "mu" in model else [("model.mu", "required: the true mean")]


def check_traditional(settings):
    return []


def spec(study):
    return study.spec["model"]


def prepare(study, data):
    return {"mu": float(spec(study)["mu"])}


def generate(condition, rng, *, mu):
    return rng.normal(mu, 1.0, 5 * int(condition["n_schools"]))


def mean(condition, data, rng):
    m, se = data.mean(), data.std(ddof=1) / np.sqrt(data.size)
    q = stats.t.ppf(0.975, data.size - 1)
    return [{"parameter": "mu", "estimate": m, "se": se, "ci_lower": m - q * se, "ci_upper": m + q * se}]


def source(study, data, name, path, fixed):
    return (functools.partial(generate, mu=fixed["mu"]), {"Mean": mean},
            pd.DataFrame({"parameter": ["mu"], "truth": [fixed["mu"]]}))


def tables(study, summary):
    return {"bias": summary[summary.measure == "bias"]}


def figures(study, summary):
    return {}


def findings(study, summary):
    return "- the mean is unbiased."


def level_of_parameters(study):
    return {}
'''


def test_the_shipped_objectives_are_found_by_name():
    assert objectives.names() == ["causal", "prediction", "recovery"]
    for name in objectives.names():
        mod = objectives.get(name)
        assert all(hasattr(mod, a) for a in objectives.REQUIRED)
    with pytest.raises(ParamsError, match="'survival' is not an objective"):
        objectives.get("survival")


@pytest.fixture
def toy_study(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toy.py").write_text(TOY)
    monkeypatch.setattr(objectives, "__path__", [*objectives.__path__, str(plugins)])
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "notebooks").mkdir()
    spec = yaml.safe_load((tmp_path / "params" / "hsb-prediction.yml").read_text())
    spec.update(study="toy", objective="toy", model={"mu": 2.0}, stages=["1-specify", "4-simulate", "5-evaluate"])
    spec["common"]["simulation"] = {"sources": ["normal"], "n_schools": [10], "reps": 40, "backend": "serial"}
    spec["profiles"]["quick"].pop("simulation")
    (tmp_path / "params" / "toy.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    yield st.load("toy", "quick", tmp_path)
    import sys

    sys.modules.pop("mlsimkit.objectives.toy", None)


def test_a_new_objective_is_one_module(toy_study):
    assert "toy" in objectives.names()
    assert C.check("toy", "quick", toy_study.root) == []
    results, truth = wf.simulate(toy_study, None, progress=False)
    assert set(results["method"]) == {"Mean"} and len(results) == 40
    summary = wf.evaluate(toy_study).set_index("measure")
    bias, cov = summary.loc["bias"], summary.loc["coverage"]
    assert abs(bias["value"]) < 3 * bias["mcse"]
    assert abs(cov["value"] - 0.95) < 3 * np.sqrt(0.95 * 0.05 / 40)
    assert summary.loc["fail_rate", "value"] == 0
    assert list(wf.report_tables(toy_study, summary.reset_index())) == ["bias", "failure rate (MCSE)"]
    assert wf.findings(toy_study, summary.reset_index()) == "- the mean is unbiased."
    assert wf.ablation_measures(toy_study) == ("bias",)


def test_a_new_objective_checks_its_own_model(toy_study):
    path = toy_study.file
    spec = yaml.safe_load(path.read_text())
    spec["model"] = {}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert [(p.key, p.message) for p in C.check("toy", "quick", toy_study.root)] == [("model.mu", "required: the true mean")]
