"""The cost table at the end of each study: stage times recorded by the runner, counts from the stages' files."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mlsimkit.study as st
from mlsimkit import cost

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return st.load("hsb-prediction", "quick", tmp_path)


def _results(path, sources, sizes, reps, methods):
    rows = [{"source": s, "condition": f"n_schools={n}", "n_schools": n, "rep": r, "method": m,
             "parameter": p, "estimate": np.nan, "status": "ok"}
            for s in sources for n in sizes for r in range(reps) for m in methods for p in ("a", "b")]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def test_record_keeps_start_and_seconds_per_stage(tmp_path):
    cost.record(tmp_path, "1-specify", started=100.0)
    assert cost.timings(tmp_path) == {"1-specify": {"started": 100.0, "seconds": None}}
    cost.record(tmp_path, "1-specify", seconds=2.5)
    cost.record(tmp_path, "2-train", started=103.0)
    assert cost.timings(tmp_path) == {"1-specify": {"started": 100.0, "seconds": 2.5},
                                      "2-train": {"started": 103.0, "seconds": None}}
    (tmp_path / cost.TIMINGS).write_text("{not json")
    assert cost.timings(tmp_path) == {}  # a damaged record is not trusted
    assert not [p for p in tmp_path.iterdir() if p.name != cost.TIMINGS]  # written atomically, no leftovers


def test_cost_table_counts_data_sets_and_fits_and_skips_reused_rows(study):
    for i, stage in enumerate(study.stages):
        cost.record(study.run_dir, stage, started=1000.0 + 10 * i)
        if stage != "6-robustness":
            cost.record(study.run_dir, stage, seconds=10.0)
    _results(study.path("4-simulate", "results.parquet"), ["clavaddpm", "traditional"], [10, 25], 3, ["M1", "M2"])
    _results(study.path("6-robustness", "half", "results.parquet"), ["synthetic"], [50], 4, ["M1", "M2"])
    _results(study.path("6-robustness", "original", "results.parquet"), ["synthetic"], [50], 4, ["M1", "M2"])
    (study.path("6-robustness", "original") / cost.REUSED).write_text("reused")
    t = cost.cost_table(study, now=1000.0 + 10 * 5 + 7.0).set_index("stage")
    assert t.loc["4-simulate", "data sets"] == 2 * 2 * 3 and t.loc["4-simulate", "fits"] == 2 * 2 * 3 * 2
    assert t.loc["4-simulate", "fits per second"] == pytest.approx(24 / 10.0)
    assert t.loc["6-robustness", "data sets"] == 4 and t.loc["6-robustness", "fits"] == 8  # original not counted
    assert t.loc["6-robustness", "seconds"] == pytest.approx(7.0)
    assert "so far" in t.loc["6-robustness", "note"] and "original" in t.loc["6-robustness", "note"]
    assert pd.isna(t.loc["2-train", "data sets"])
    assert t.loc["total", "seconds"] == pytest.approx(5 * 10.0 + 7.0) and t.loc["total", "fits"] == 32


def test_cost_table_without_records_shows_no_times(study):
    t = cost.cost_table(study)
    assert list(t["stage"]) == [*study.stages, "total"] and t["seconds"].isna().all()


def test_machine_names_cores_and_gpu():
    text = cost.machine()
    assert "cores available" in text and "GPU:" in text


def test_section_shows_the_table_on_the_last_stage_only(study):
    table = cost.section(study, study.stages[-1])
    assert "Machine:" in table.caption and "stage" in table.data.columns
    pointer = cost.section(study, "5-evaluate")
    assert study.stages[-1] == "6-robustness" and "*6-robustness*" in pointer.data
