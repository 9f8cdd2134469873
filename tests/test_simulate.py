"""Stage 4 engine: design, seeds, backends, failures, store and resume (not the SIGKILL test)."""

from __future__ import annotations

import json
import pickle
import random
import threading
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest

from mlsimkit.simulate import (Condition, Design, DesignError, SimulationError, StoreError, data_rng, load,
                               replay, run)
from mlsimkit.simulate import examples as ex

DESIGN = Design({"n": [8, 20], "mu": [0.0, 1.0]})
METHODS = {"mean": ex.mean_t_interval, "median": ex.median_estimate, "boot": ex.trimmed_mean_bootstrap}
DROP = ["fit_time"]  # a measured duration: the only column allowed to differ between runs


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=DROP).reset_index(drop=True),
                                  b.drop(columns=DROP).reset_index(drop=True), check_exact=True)


# ------------------------------------------------------------------------------------------- design
def test_design_grid_order_keys_and_hash():
    d = Design({"n_schools": [10, 25], "generator": ["diffusion", "traditional"]})
    assert [c.values for c in d] == [
        {"n_schools": 10, "generator": "diffusion"}, {"n_schools": 10, "generator": "traditional"},
        {"n_schools": 25, "generator": "diffusion"}, {"n_schools": 25, "generator": "traditional"}]
    # keys are fixed functions of the values: a change here breaks every stored study's seeds
    assert [c.key for c in d] == ["0d3e2e49a728", "470afe052910", "5b3ce673a006", "5d904fa266c7"]
    assert d.hash == "555d06ba2bddc08b"
    # key does not depend on factor order; design hash not on condition order
    assert Condition({"generator": "diffusion", "n_schools": 10}).key == d[0].key
    assert Design(list(reversed([c.values for c in d]))).hash == d.hash
    assert d["5b3ce673a006"]["n_schools"] == 25 and d[2].n_schools == 25
    assert list(d.to_frame().columns) == ["condition", "n_schools", "generator"]


def test_design_list_of_dicts_and_errors():
    d = Design([{"n": 10, "gen": "a"}, {"n": 20}])
    assert d.factors == ["n", "gen"] and d[1]["gen"] is None
    assert Design({"n": 5}).conditions[0].values == {"n": 5}  # scalar level
    with pytest.raises(DesignError, match="twice"):
        Design([{"n": 1}, {"n": 1}])
    with pytest.raises(DesignError, match="mixes value types"):
        Design([{"n": 1}, {"n": "x"}])
    with pytest.raises(DesignError, match="clash with result columns"):
        Design({"rep": [1, 2]})
    with pytest.raises(DesignError, match="no levels"):
        Design({"n": []})
    with pytest.raises(DesignError, match="not allowed"):
        Design({"model": [object()]})
    c = d[0]
    assert pickle.loads(pickle.dumps(c)) == c and pickle.loads(pickle.dumps(c)).key == c.key
    assert np.int64(3) == Condition({"n": np.int64(3)})["n"] and Condition({"n": np.int64(3)}).key == Condition({"n": 3}).key


# -------------------------------------------------------------------------------------------- seeds
def test_results_columns_and_order():
    r = run(DESIGN, ex.normal_sample, METHODS, reps=3, seed=1)
    assert list(r.columns) == ["condition", "n", "mu", "rep", "method", "parameter", "estimate", "se", "ci_lower",
                               "ci_upper", "pred_error", "status", "message", "warnings", "fit_time", "seed",
                               "redraws", "redraw_log"]
    assert len(r) == 4 * 3 * 3
    assert list(r["method"][:3]) == ["mean", "median", "boot"] and list(r["condition"].unique()) == [c.key for c in DESIGN]
    assert r["n"].dtype == np.int64 and (r["status"] == "ok").all() and r["pred_error"].isna().all()
    assert (r["seed"] == 1).all()


def test_adding_or_reordering_methods_changes_nothing_else():
    full = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=5)
    only_boot = run(DESIGN, ex.normal_sample, {"boot": ex.trimmed_mean_bootstrap}, reps=6, seed=5)
    reordered = run(DESIGN, ex.normal_sample, {"boot": ex.trimmed_mean_bootstrap, "mean": ex.mean_t_interval},
                    reps=6, seed=5)
    same(full[full.method == "boot"], only_boot)  # the boot method's own stream is keyed by its name
    same(full[full.method == "mean"], reordered[reordered.method == "mean"])  # and the data are the same
    other_seed = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=6)
    assert not np.allclose(full["estimate"], other_seed["estimate"])


def test_no_global_rng_state_touched():
    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.get_state(), random.getstate()
    run(DESIGN, ex.normal_sample, METHODS, reps=2, seed=1)
    after_np = np.random.get_state()
    assert random.getstate() == before_py
    assert before_np[0] == after_np[0] and np.array_equal(before_np[1], after_np[1]) and before_np[2] == after_np[2]


def test_replay_regenerates_the_dataset():
    r = run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval}, reps=4, seed=9)
    cond = DESIGN[3]
    data = replay(cond, 2, ex.normal_sample, seed=9)
    np.testing.assert_array_equal(data, ex.normal_sample(cond, data_rng(9, cond.key, 2)))
    row = r[(r.condition == cond.key) & (r.rep == 2)].iloc[0]
    assert row["estimate"] == ex.mean_t_interval(cond, data)["estimate"]


# ----------------------------------------------------------------------------------------- backends
@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


def test_identical_across_backends_worker_counts_and_block_sizes(dask_cluster, tmp_path):
    cluster, client = dask_cluster
    ref = run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="serial")
    same(ref, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="serial", block_size=3))
    same(ref, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="loky", n_jobs=2, block_size=2))
    same(ref, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="loky", n_jobs=1, block_size=5))
    same(ref, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="dask", scheduler=client,
                  block_size=2))
    # a cluster user gives only the scheduler address; results also go through the store
    same(ref, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=11, backend="dask",
                  scheduler=cluster.scheduler_address, store=tmp_path / "dask", block_size=4))


def test_unpicklable_callable_is_named():
    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

        def __call__(self, condition, data):
            return {"parameter": "x", "estimate": 1.0}

    with pytest.raises(SimulationError, match="method 'held' cannot be sent to loky workers.*functools.partial"):
        run(DESIGN, ex.normal_sample, {"held": Holder()}, reps=2, backend="loky")
    # the serial backend does not need pickling
    assert len(run(DESIGN, ex.normal_sample, {"held": Holder()}, reps=2)) == 8


# ----------------------------------------------------------------------------------------- failures
def flaky(condition, data):
    if data[0] > 1.0:
        raise np.linalg.LinAlgError("Singular matrix")
    return {"parameter": "mu", "estimate": float(np.mean(data)), "se": 0.1}


def warns(condition, data):
    warnings.warn("iteration limit reached", RuntimeWarning)
    return [{"parameter": "mu", "estimate": 0.0}, {"parameter": "sigma", "estimate": 1.0, "status": "non-converged",
                                                   "message": "gradient 1e-2"}]


def bad_return(condition, data):
    return 3.0


def bad_status(condition, data):
    return {"parameter": "mu", "estimate": 0.0, "status": "fine"}


def test_every_failure_is_recorded_and_others_survive():
    methods = {"mean": ex.mean_t_interval, "flaky": flaky, "warns": warns, "bad_return": bad_return,
               "bad_status": bad_status}
    r = run(DESIGN, ex.normal_sample, methods, reps=30, seed=3)
    ok = run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval}, reps=30, seed=3)
    same(r[r.method == "mean"], ok)  # other methods' failures cost the mean nothing
    fl = r[r.method == "flaky"]
    assert 0 < (fl.status == "error").sum() < len(fl)
    assert set(fl.loc[fl.status == "error", "message"]) == {"LinAlgError: Singular matrix"}
    assert fl.loc[fl.status == "error", "parameter"].isna().all() and fl.loc[fl.status == "error", "estimate"].isna().all()
    w = r[r.method == "warns"]
    assert set(w.loc[w.parameter == "mu", "status"]) == {"warning"}
    assert set(w.loc[w.parameter == "sigma", "status"]) == {"non-converged"}
    assert set(w["warnings"]) == {"RuntimeWarning: iteration limit reached"}
    assert set(w.loc[w.parameter == "sigma", "message"]) == {"gradient 1e-2"}
    assert r.loc[r.method == "bad_return", "message"].str.contains("returned float; expected a dict").all()
    assert r.loc[r.method == "bad_status", "message"].str.contains("status 'fine'").all()
    assert len(r.drop_duplicates(["condition", "rep", "method"])) == 4 * 30 * 5  # every (rep, method) present


def sometimes_fails_to_generate(condition, rng):
    if rng.random() < 0.3:
        raise RuntimeError("simplex failed")
    return rng.normal(size=int(condition["n"]))


def test_generate_failure_recorded_for_every_method():
    r = run(DESIGN, sometimes_fails_to_generate, {"a": ex.mean_t_interval, "b": ex.median_estimate}, reps=20, seed=1)
    err = r[r.status == "error"]
    assert len(err) > 0 and set(err["message"]) == {"generate failed: RuntimeError: simplex failed"}
    per_rep = err.groupby(["condition", "rep"])["method"].apply(sorted)
    assert all(v == ["a", "b"] for v in per_rep)


def test_redraw_policy_counts_and_keeps_first_draws():
    rec = run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval, "flaky": flaky}, reps=40, seed=2)
    red = run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval, "flaky": flaky}, reps=40, seed=2,
              failure_policy="redraw", max_redraws=20)
    assert (red.status == "ok").all() and red["redraws"].max() > 0
    failed_reps = rec.loc[rec.status == "error", ["condition", "rep"]].drop_duplicates()
    redrawn = red.loc[red.redraws > 0, ["condition", "rep"]].drop_duplicates()
    assert failed_reps.reset_index(drop=True).equals(redrawn.reset_index(drop=True))
    assert red.loc[red.redraws > 0, "redraw_log"].str.contains("attempt 0: flaky: error \\(LinAlgError").all()
    keep = red.redraws == 0
    same(red[keep].drop(columns=["redraws", "redraw_log"]),
         rec.merge(red.loc[keep, ["condition", "rep"]].drop_duplicates())
         .drop(columns=["redraws", "redraw_log"]))
    # exhausted redraws keep the last failure as a record
    capped = run(DESIGN, ex.normal_sample, {"flaky": flaky}, reps=40, seed=2, failure_policy="redraw", max_redraws=0)
    same(capped, rec[rec.method == "flaky"])


# ------------------------------------------------------------------------------------ store & resume
def test_store_manifest_and_resume(tmp_path):
    store = tmp_path / "sim"
    first = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=4, store=store, block_size=4, generator_id="toy-v1")
    man = json.loads((store / "manifest.json").read_text())
    assert man["design_hash"] == DESIGN.hash and man["seed"] == 4 and man["block_size"] == 4
    assert man["methods"] == ["mean", "median", "boot"] and man["generator_id"] == "toy-v1"
    assert set(man["versions"]) >= {"python", "numpy", "pandas", "mlsimkit"} and "git_commit" in man
    assert man["generate"] == "mlsimkit.simulate.examples.normal_sample"
    shards = sorted((store / "shards").glob("*/*.parquet"))
    assert len(shards) == 4 * 2 and not list(store.rglob("*.tmp")) and not (store / ".lock").exists()
    same(first, run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=4))
    mtimes = {p: p.stat().st_mtime_ns for p in shards}
    again = run(DESIGN, ex.normal_sample, METHODS, reps=6, seed=4, store=store)  # block size from manifest
    same(first, again)
    assert {p: p.stat().st_mtime_ns for p in shards} == mtimes  # nothing recomputed
    more = run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=4, store=store)  # extend: only new shards
    same(more, run(DESIGN, ex.normal_sample, METHODS, reps=10, seed=4))
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if "000000-000003" in p.name)
    same(load(store), more)


@pytest.mark.parametrize("change, message", [
    (dict(design=Design({"n": [8, 20, 50], "mu": [0.0, 1.0]})), r"the design changed .*conditions added: \[\{'n': 50"),
    (dict(seed=5), r"seed changed \(4 -> 5\)"),
    (dict(analyse={"mean": ex.mean_t_interval}), r"methods changed"),
    (dict(block_size=3), r"block_size changed \(2 -> 3\)"),
    (dict(failure_policy="redraw"), r"failure_policy changed"),
    (dict(generator_id="toy-v2"), r"generator_id changed"),
])
def test_resume_of_a_changed_study_is_refused(tmp_path, change, message):
    store = tmp_path / "sim"
    args = dict(design=DESIGN, generate=ex.normal_sample, analyse=METHODS, reps=4, seed=4, store=store,
                block_size=2, generator_id="toy-v1")
    run(**args)
    with pytest.raises(StoreError, match="refusing to resume.*" + message + ".*new store folder"):
        run(**{**args, **change})


def test_bad_arguments_are_named():
    with pytest.raises(SimulationError, match="reps must be a positive integer"):
        run(DESIGN, ex.normal_sample, METHODS, reps=0)
    with pytest.raises(SimulationError, match="backend must be one of"):
        run(DESIGN, ex.normal_sample, METHODS, backend="spark")
    with pytest.raises(SimulationError, match="failure_policy"):
        run(DESIGN, ex.normal_sample, METHODS, failure_policy="ignore")
    with pytest.raises(SimulationError, match="expected \\(condition, data\\) or \\(condition, data, rng\\)"):
        run(DESIGN, ex.normal_sample, {"m": lambda: None})
    with pytest.raises(SimulationError, match="analyse must be a callable or a dict"):
        run(DESIGN, ex.normal_sample, 3)


def test_single_callable_analyse_and_partial():
    r = run(DESIGN, ex.normal_sample, partial(ex.mean_t_interval, level=0.9), reps=2)
    assert set(r["method"]) == {"mean_t_interval"}


def test_progress_bar_only_when_asked(capsys):
    run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval}, reps=3, progress=True)
    assert "simulate" in capsys.readouterr().err
    run(DESIGN, ex.normal_sample, {"mean": ex.mean_t_interval}, reps=3)  # not a terminal: quiet
    assert capsys.readouterr().err == ""
