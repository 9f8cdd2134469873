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
