"""Per-process caches of Stage 4's data generation (issue 15): a saved generator is loaded once per worker and
again when its file changes; keys are formatted once; caching changes no number.

A study's replications are rows of a long table that must not depend on the backend, the block size or on
what a worker process did before; these tests run the same source with the caches cold and warm, serially and
on loky workers, and compare the tables exactly (``fit_time`` aside).
"""

import os
from functools import partial

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
import mlsimkit.demonstrations as demo
import mlsimkit.generators.base as base
from mlsimkit.generators import ParametricGenerator, SchoolBootstrap
from mlsimkit.methods import PredictionSpec
from mlsimkit.simulate import run

SPEC = PredictionSpec(outcome="MathAch", student=("SES", "Minority", "Sex"), school=("Sector", "MEANSES"),
                      random_slope="SES")


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="fit_time"), b.drop(columns="fit_time"))


def test_a_saved_generator_is_loaded_once_and_again_when_its_file_changes(hsb, tmp_path):
    path = tmp_path / "gen.mlsim"
    SchoolBootstrap().fit(hsb).save(path)
    first = demo.load_generator(path)
    assert demo.load_generator(str(path)) is first  # cached: the same object, by any spelling of the path
    a = first.sample(6, seed=1)
    ParametricGenerator().fit(hsb).save(path)  # retrained under the same name (atomic rename: a new file)
    second = demo.load_generator(path)
    assert second is not first and isinstance(second, ParametricGenerator)
    assert demo.load_generator(path) is second
    assert not a.equals(second.sample(6, seed=1))
    os.remove(path)
    with pytest.raises(Exception, match="gen.mlsim"):
        demo.load_generator(path)  # a vanished file is not served from the cache


def test_ids_are_cached_but_each_call_gets_its_own_array():
    base._IDS.clear()
    for n in (3, 12, 9999, 10000, 5):
        width = max(4, len(str(n)))
        expected = np.array([f"S{i:0{width}d}" for i in range(1, n + 1)], dtype=object)
        got = base.make_ids("S", n)
        assert got.dtype == object and np.array_equal(got, expected)
    a = base.make_ids("P", 4)
    a[0] = "changed"
    assert base.make_ids("P", 4)[0] == "P0001"


def test_torch_threads_limits_and_restores():
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with base.torch_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before


def test_a_source_gives_the_same_table_cold_warm_serial_and_on_loky(hsb, tmp_path):
    path = tmp_path / "param.mlsim"
    ParametricGenerator().fit(hsb).save(path)
    gen = partial(demo.generate_synthetic, generator_path=str(path))
    methods = demo.analyse_prediction_methods(SPEC)
    design = {"n_schools": [8, 20]}
    demo._GENERATORS.clear()
    base._IDS.clear()
    cold = run(design, gen, methods, reps=3, seed=11, backend="serial", block_size=3)
    warm = run(design, gen, methods, reps=3, seed=11, backend="serial", block_size=1)
    loky = run(design, gen, methods, reps=3, seed=11, backend="loky", n_jobs=2, block_size=2)
    assert cold["status"].isin(["ok", "warning"]).all() and cold["pred_error"].notna().all()  # real fits
    _same(cold, warm)
    _same(cold, loky)
