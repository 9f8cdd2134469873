"""The notebooks' reader-facing tables and sentences (mlsimkit.tables)."""

from pathlib import Path

from mlsimkit import tables


def test_settings_table_flattens_nested_keys_and_lists():
    t = tables.settings_table({"clavaddpm": {"n_groups": 10, "hidden": [64, 64]}, "ctgan": {"epochs": 2},
                               "efficacy": False, "scenarios": {}}).data
    assert list(t["setting"]) == ["clavaddpm.n_groups", "clavaddpm.hidden", "ctgan.epochs", "efficacy", "scenarios"]
    assert list(t["value"]) == ["10", "64, 64", "2", "False", "(none)"]


def test_timings_table_adds_the_total():
    t = tables.timings_table({"synthetic": 1.26, "reference": 2.0}).data
    assert list(t["step"]) == ["synthetic", "reference", "total"] and list(t["seconds"]) == [1.3, 2.0, 3.3]


def test_files_table_is_relative_with_sizes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.csv").write_text("1" * 1500)
    t = tables.files_table([tmp_path / "a" / "x.csv"], tmp_path).data
    assert t.to_dict("records") == [{"file": str(Path("a") / "x.csv"), "kB": 1.5}]


def test_choice_sentence_names_the_choice_and_the_others():
    text = tables.choice_sentence({"best": "clavaddpm", "mean_scores": {"clavaddpm": 0.95123, "ctgan": 0.8}})
    assert text == "Stage 4 simulates with **clavaddpm** (mean of the headline scores 0.951; ctgan 0.800)."
    assert tables.choice_sentence({"best": "x"}) == "Stage 4 simulates with **x**."
    assert tables.choice_sentence({"best": "x", "simulates": False, "mean_scores": {"x": 0.9, "y": 0.8}}) == (
        "The best generator by these scores is **x** (mean of the headline scores 0.900; y 0.800); "
        "this study has no Stage 4.")


def test_metric_matrix_puts_datasets_side_by_side_with_the_band():
    import pandas as pd

    rows = []
    for ds, v in (("gen", 0.80), ("copy", 0.99)):
        rows.append(dict(dataset=ds, domain="within-table", level="students", item="KSC", value=v,
                         reference=0.9, ref_lo=0.85, ref_hi=0.95))
        rows.append(dict(dataset=ds, domain="privacy", level="students", item="new rows", value=1.0,
                         reference=1.0, ref_lo=1.0, ref_hi=1.0))
    t = tables.metric_matrix(pd.DataFrame(rows), ["within-table"]).data
    assert list(t.columns) == ["domain", "level", "item", "real vs real", "gen", "copy"]
    assert t.iloc[0].tolist() == ["within-table", "students", "KSC", "0.900 (0.850–0.950)", "0.800 ▼", "0.990 ▲"]
    assert len(t) == 1


def test_numbers_rounds_and_blanks_missing():
    import numpy as np
    import pandas as pd

    html = tables.numbers(pd.DataFrame({"mean": [1097.825, 0.51394, np.nan], "kind": ["n", "n", "b"]})).to_html()
    assert "1,098" in html and "0.514" in html and "nan" not in html.lower() and "1097.8" not in html


def test_results_sentence_and_failure_messages():
    import pandas as pd

    res = pd.DataFrame({"source": ["a"] * 4, "n_schools": [10, 10, 25, 25], "rep": [0, 1, 0, 1],
                        "method": ["m"] * 4, "status": ["ok", "failed", "failed", "ok"],
                        "message": ["", "singular", "singular", ""]})
    text = tables.results_sentence(res)
    assert text.startswith("The results store holds **4 rows**, one per source × n_schools × rep × method")
    assert "2 numbers of schools" in text and "2 replications per condition" in text
    t = tables.failure_messages(res).data
    assert t.to_dict("records") == [{"source": "a", "method": "m", "status": "failed", "message": "singular", "fits": 2}]
    assert tables.failure_messages(res[res.status == "ok"]).data.iloc[0, 0] == "all 2 fits ok"


def test_metric_matrix_keeps_the_items_asked_for_in_their_order():
    import pandas as pd

    rows = [dict(dataset="gen", domain="seed-001", level="joined", item=i, value=0.5, reference=0.5, ref_lo=0.4,
                 ref_hi=0.6) for i in ("SDIS", "authenticity", "beta-recall")]
    t = tables.metric_matrix(pd.DataFrame(rows), ["seed-001"], items=["authenticity", "absent", "SDIS"]).data
    assert list(t["item"]) == ["authenticity", "SDIS"]


def test_status_counts_sum_over_the_numbers_of_schools():
    import pandas as pd

    import mlsimkit.workflow as wf

    res = pd.DataFrame({"source": ["a"] * 4 + ["b"] * 2, "n_schools": [10, 25, 10, 25, 10, 25],
                        "method": ["m", "m", "k", "k", "m", "m"],
                        "status": ["ok", "singular", "ok", "ok", "error", "ok"]})
    t = wf.status_counts(res)
    assert t.loc[("a", "m")].to_dict() == {"error": 0, "ok": 1, "singular": 1}
    assert t.loc[("a", "k"), "ok"] == 2 and t.loc[("b", "m"), "error"] == 1 and len(t) == 3
