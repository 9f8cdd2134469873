"""Failures are loud: a source whose fits fail too often stops Stage 4 with its most frequent message, and
failed sources stay in the failure table with their rate and MCSE."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlsimkit.study as st
import mlsimkit.workflow as wf
from mlsimkit import demonstrations as D
from mlsimkit.performance import summarise

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "notebooks").mkdir()
    return st.load("hsb-prediction", "quick", tmp_path)


def always_raises(condition, data, rng):
    raise KeyError("student predictor 'SES' not found")


def fails_in_rep_one(condition, data, rng):
    """Fails in about a third of the replications (decided by the method's own seeded stream)."""
    if rng.random() < 0.3:
        raise ValueError("unlucky draw")
    return [{"parameter": "PMSE", "estimate": 1.0, "pred_error": 1.0, "status": "ok"}]


def _source(extra):
    methods = {**D.analyse_prediction_methods("traditional"), **extra}
    return {"traditional": (D.generate_traditional_prediction, methods, D.prediction_truth())}


def test_a_method_that_always_raises_stops_the_stage_with_its_message(study):
    with pytest.raises(wf.FitsFailed, match=r"source 'traditional'.*method 'Broken' failed in 100% of 6 fits "
                                            r"\(most often, 6 times: .*student predictor 'SES' not found"):
        wf.simulate(study, None, n_schools=[10, 12], reps=3, source_list=_source({"Broken": always_raises}),
                    progress=False)
    assert not study.path("4-simulate", "results.parquet").exists()  # no results table for Stage 5 to render


def test_failures_below_the_threshold_are_recorded_not_fatal(study):
    src = _source({"Flaky": fails_in_rep_one})
    res, _ = wf.simulate(study, None, n_schools=[10], reps=8, source_list=src, progress=False)
    rates = wf.failure_rates(res).set_index("method")
    p = rates.loc["Flaky", "fail_rate"]
    assert 0 < p <= 0.5 and rates.loc["OLSFE", "fail_rate"] == 0  # negative control: a method that never fails
    assert rates.loc["Flaky", "mcse"] == pytest.approx(np.sqrt(p * (1 - p) / 8))
    assert rates.loc["Flaky", "message"].endswith("unlucky draw")
    with pytest.raises(wf.FitsFailed, match="method 'Flaky'"):
        wf.stop_on_failures(res, "traditional", max_fail_rate=p / 2)
    wf.stop_on_failures(res, "traditional", max_fail_rate=p)  # at the threshold: not above it


def _rows(source, method, statuses):
    return pd.DataFrame([{"source": source, "n_schools": 10, "condition": "c", "rep": r, "method": method,
                          "parameter": "PMSE" if s != "error" else None,
                          "estimate": 2.0 + r if s != "error" else np.nan,
                          "pred_error": 2.0 + r if s != "error" else np.nan, "status": s,
                          "message": "boom" if s == "error" else ""} for r, s in enumerate(statuses)])


def test_a_source_whose_every_fit_failed_stays_in_the_failure_table(study):
    res = pd.concat([_rows("traditional", "OLSFE", ["ok"] * 4), _rows("synthetic", "OLSFE", ["error"] * 4)])
    truth = pd.DataFrame({"source": ["traditional", "synthetic"], "parameter": ["PMSE"] * 2,
                          "true_value": [np.nan] * 2})
    s = summarise(res, truth, by=["source", "n_schools"], measures=("pmse", "fail_rate"))
    fr = s[s.measure == "fail_rate"].set_index("source")
    assert fr.loc["synthetic", "value"] == 1.0 and fr.loc["synthetic", "mcse"] == 0.0
    assert fr.loc["synthetic", "parameter"] == "PMSE" and fr.loc["synthetic", "n_reps"] == 4
    assert fr.loc["traditional", "value"] == 0.0  # negative control
    assert set(s.loc[s.measure == "pmse", "source"]) == {"traditional"}
    table = wf.report_tables(study, s)["failure rate (MCSE)"]
    assert table.loc[("synthetic", "OLSFE"), 10] == "1.000 (0.000)"
    assert table.loc[("traditional", "OLSFE"), 10] == "0.000 (0.000)"


def test_a_method_that_never_reported_a_parameter_still_counts():
    res = _rows("s", "Broken", ["error"] * 3)
    s = summarise(res, by=["source"], measures=("fail_rate",)).set_index("measure")
    assert s.loc["fail_rate", "value"] == 1.0 and pd.isna(s.loc["fail_rate", "parameter"])


def test_summarise_keeps_singular_fits_by_default():
    res = _rows("s", "HLM", ["ok", "singular", "singular", "error"])
    s = summarise(res, by=["source"], measures=("pmse", "fail_rate")).set_index("measure")
    assert s.loc["pmse", "n_used"] == 3 and s.loc["pmse", "value"] == pytest.approx((2 + 3 + 4) / 3)
    assert s.loc["fail_rate", "value"] == 0.25 and s.loc["rate_singular", "value"] == 0.5
    strict = summarise(res, by=["source"], measures=("pmse", "fail_rate"), usable=("ok",)).set_index("measure")
    assert strict.loc["pmse", "n_used"] == 1 and strict.loc["fail_rate", "value"] == 0.75  # negative control
