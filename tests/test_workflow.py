"""The study-level glue: the generator choice, the ablation tables (the paper's claims: tests/test_paper.py)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import mlsimkit.study as st
import mlsimkit.workflow as wf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return st.load("hsb-prediction", "quick", tmp_path)


def _summary(rows):
    return pd.DataFrame(rows, columns=["dataset", "domain", "level", "item", "value"])


def test_choose_generator_uses_headline_averages_only(study):
    s = _summary([
        ("clavaddpm", "within-table", "students", "students-table fidelity", 0.95),
        ("clavaddpm", "between-table", "all", "between-table fidelity", 0.93),
        ("clavaddpm", "between-table", "all", "ICC similarity", 0.10),  # not a headline item
        ("ctgan", "within-table", "students", "students-table fidelity", 0.97),
        ("ctgan", "between-table", "all", "between-table fidelity", 0.80),
        ("shuffled schools", "within-table", "students", "students-table fidelity", 1.0),
    ])
    choice = wf.choose_generator(s, study)
    assert choice["best"] == "clavaddpm" and choice["mean_scores"] == {"clavaddpm": 0.94, "ctgan": 0.885}
    assert json.loads((study.run_dir / "3-quality" / "choice.json").read_text())["best"] == "clavaddpm"


def test_simulation_generator_needs_stage3(study):
    with pytest.raises(Exception, match="run notebook '3-quality'"):
        wf.simulation_generator(study)


def test_ablation_scenarios_override_the_base_settings(study):
    sc = wf.ablation_scenarios(study)
    assert list(sc) == ["original", "no-decomposition", "half-schools", "fewer-groups"]
    assert sc["no-decomposition"]["decompose"] is False and sc["original"]["decompose"] is True
    assert sc["fewer-groups"]["n_groups"] == 4 and sc["half-schools"]["train_fraction"] == 0.5
    assert all(v["generator"] == "clavaddpm" for v in sc.values())


def test_half_of_schools_is_a_seeded_half():
    import mlsimkit.datasets as ds

    hsb = ds.load("hsb")
    a, b = wf.half_of_schools(hsb, 1), wf.half_of_schools(hsb, 1)
    assert a.n_clusters == 80 and a.equals(b)
    assert not wf.half_of_schools(hsb, 2).equals(a)


def test_ablation_performance_table_formats_value_and_mcse():
    perf = pd.DataFrame({"scenario": ["original", "no-decomposition"], "method": ["Multilevel"] * 2,
                         "parameter": ["PMSE"] * 2, "measure": ["pmse"] * 2, "value": [40.4834, 41.457],
                         "mcse": [0.854, 0.823]})
    t = wf.ablation_performance_table(perf, ("pmse",))
    assert t.loc[("Multilevel", "PMSE", "pmse"), "original"] == "40.483 (0.854)"


def test_ablation_icc_table_shows_real_and_synthetic_icc_per_scenario():
    qual = pd.DataFrame({
        "scenario": ["original", "original", "no-decomposition", "no-decomposition", "original"],
        "domain": ["ICC", "ICC", "ICC", "ICC", "between-table"],
        "level": ["schools→students"] * 4 + ["schools→students"],
        "item": ["MathAch", "SES", "MathAch", "SES", "between-table fidelity"],
        "value": [0.974, 0.991, 0.899, 0.843, 0.93],
        "icc_real": [0.1736, 0.2666, 0.1736, 0.2666, None],
        "icc_syn": [0.199, 0.278, 0.095, 0.115, None]})
    t = wf.ablation_icc_table(qual)
    assert list(t.columns) == ["real", "original", "no-decomposition"]
    assert t.loc[("schools→students", "MathAch"), "real"] == "0.174"
    assert t.loc[("schools→students", "SES"), "no-decomposition"] == "0.115 (0.843)"
    assert len(t) == 2  # other domains are not ICC rows


# ---------------------------------------------------------------------------- the model cache
def test_model_cache_reuses_checked_files_and_retrains_bad_ones(study, tmp_path, monkeypatch):
    import io
    import pickle
    import struct
    import zipfile

    import mlsimkit.datasets as ds
    from mlsimkit.errors import ParamsError

    monkeypatch.setenv("MLSIMKIT_MODEL_KEY", str(tmp_path / "key"))
    data = ds.load("hsb")
    data = data.subset(data.parent["School"].iloc[::8])
    logs = []
    gen = wf.train_one(study, data, "boot", {"generator": "bootstrap"}, log=logs.append)
    (cache,) = (study.root / "runs" / "_models").glob("bootstrap-*.mlsim")
    assert logs[-1].startswith("[mlsimkit] boot: trained")
    again = wf.train_one(study, data, "boot", {"generator": "bootstrap"}, log=logs.append)
    assert logs[-1] == f"[mlsimkit] boot: loaded the trained model from the cache ({cache.name})"
    assert again.sample(6, seed=2).equals(gen.sample(6, seed=2))
    # half-written, modified and earlier-format (pickled) files are retrained, never loaded
    good = cache.read_bytes()
    n = struct.unpack("<Q", good[12:20])[0]
    meta, buffer = good[20:20 + n], good[20 + n:]

    def edited(meta_from, meta_to):
        """The cached file with metadata.json's text edited (its recorded hashes left as they were)."""
        assert meta.count(meta_from) == 1
        text = meta.replace(meta_from, meta_to)
        return good[:12] + struct.pack("<Q", len(text)) + text + buffer

    def old_zip(version):
        """The cached file as a zip archive of an earlier format version."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("metadata.json", meta.replace(b'"format_version":6', b'"format_version":%d' % version))
            zf.writestr("arrays.bin", buffer)
        return buf.getvalue()

    bad_files = {"truncated or damaged": good[: len(good) // 3],
                 # a modified state
                 "content hash mismatch in its metadata": edited(b'"state":{"__generator__":"SchoolBootstrap",'
                                                                b'"state":{"replace":true', b'"state":{"__generator__":'
                                                                b'"SchoolBootstrap","state":{"replace":false'),
                 "format version 5": old_zip(5),  # the previous format (a zip archive)
                 "format version 7": good[:8] + struct.pack("<I", 7) + good[12:],  # a later one
                 "pickled generator": pickle.dumps({"magic": "mlsimkit-generator", "format_version": 2})}
    for reason, content in bad_files.items():
        cache.write_bytes(content)
        back = wf.train_one(study, data, "boot", {"generator": "bootstrap"}, log=logs.append)
        assert logs[-2].startswith("[mlsimkit] boot: retraining, the cached model cannot be used") and reason in logs[-2]
        assert logs[-1].startswith("[mlsimkit] boot: trained") and cache.read_bytes() != content
        assert back.sample(6, seed=2).equals(gen.sample(6, seed=2))
    study.params["trust_model_files"] = "yes"
    with pytest.raises(ParamsError, match="'trust_model_files' must be true or false"):
        wf.train_one(study, data, "boot", {"generator": "bootstrap"}, log=logs.append)


def test_holdout_split_is_seeded_and_disjoint(study):
    import mlsimkit.datasets as ds

    hsb = ds.load("hsb")
    assert wf.holdout_settings(study) == {"holdout_share": 0.2, "holdout_training": "same"}
    train, hold = wf.split_holdout(study, hsb)
    assert hold.n_clusters == 32 and train.n_clusters == 128
    assert not set(train.parent.School) & set(hold.parent.School)
    assert len(train.child) + len(hold.child) == len(hsb.child)
    assert wf.split_holdout(study, hsb)[1].equals(hold)
    study.params["seed"] = study.params["seed"] + 1  # the split follows the data, not the study's seed
    assert wf.split_holdout(study, hsb)[1].equals(hold)
    study.params["quality"] = {"holdout_share": 0}
    assert wf.split_holdout(study, hsb)[1] is None and wf.train_holdout(study, hsb) == {}
    study.params["quality"] = {"holdout_share": 1.5}
    with pytest.raises(Exception, match="quality.holdout_share"):
        wf.holdout_settings(study)
    study.params["quality"] = {"holdout_training": "fast"}
    with pytest.raises(Exception, match="quality.holdout_training"):
        wf.holdout_settings(study)


def test_train_concurrently_fills_the_cache_with_the_models_a_serial_run_trains(study):
    from mlsimkit import datasets as ds

    hsb = ds.load("hsb")
    small = hsb.subset(hsb[hsb.schema.top][hsb.schema.tables[hsb.schema.top].primary_key[0]].iloc[:30])
    jobs = [(small, "parametric", {"cluster_size": 20}, "parametric"),
            (small, "bootstrap", {}, "bootstrap"),
            (small, "bootstrap", {}, "bootstrap again")]  # the same model twice is trained once
    lines = []
    wf.train_concurrently(study, jobs, log=lines.append)
    assert lines[0] == "[mlsimkit] training 2 models in 2 processes: parametric, bootstrap"
    caches = sorted((study.root / "runs" / "_models").glob("*.mlsim"))
    assert len(caches) == 2
    lines.clear()
    par = wf.train_one(study, small, "parametric", {"cluster_size": 20}, log=lines.append)
    assert "loaded the trained model from the cache" in lines[0]
    serial = wf._fit("parametric", {"cluster_size": 20}, small, study.root / "serial.zip")
    a, b = par.sample(12, seed=5), serial.sample(12, seed=5)
    for t in a.tables:
        pd.testing.assert_frame_equal(a[t], b[t])
    # nothing left to train: no processes are started
    lines.clear()
    wf.train_concurrently(study, jobs, log=lines.append)
    assert lines == []


def test_stage6_evaluates_quality_in_the_studys_worker_processes(study, monkeypatch):
    """Stage 6 passes ``simulation.n_jobs`` to quality.evaluate, as Stage 3's notebook does through wf.n_jobs."""
    from mlsimkit import datasets as ds
    from mlsimkit import quality

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):
        raise Seen(kwargs)

    hsb = ds.load("hsb")
    small = hsb.subset(hsb[hsb.schema.top][hsb.schema.tables[hsb.schema.top].primary_key[0]].iloc[:30])
    study.params["generators"]["bootstrap"] = {}
    study.params["ablation"] = {"generator": "bootstrap", "scenarios": {}, "n_schools": 10, "reps": 1,
                                "quality": {"candidates": 1, "efficacy": False}}
    assert wf.n_jobs(study) == 2  # the params' simulation.n_jobs
    del study.params["simulation"]["n_jobs"]
    assert wf.n_jobs(study) == 2  # the default
    study.params["simulation"]["n_jobs"] = 3
    assert wf.n_jobs(study) == 3
    monkeypatch.setattr(quality, "evaluate", spy)
    with pytest.raises(Seen) as seen:
        wf.ablation(study, small, log=lambda *_: None)
    assert seen.value.args[0]["n_jobs"] == 3
