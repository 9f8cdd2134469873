"""SchoolPool: a pre-generated pool of synthetic schools, sampled without replacement per replication."""

import numpy as np
import pytest

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.generators import Generator, SchoolBootstrap, SchoolPool, load


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


@pytest.fixture(scope="module")
def pool(hsb):
    return SchoolPool(SchoolBootstrap(), pool_size=500, seed=3).fit(hsb)


def test_pool_follows_the_protocol(pool, hsb, tmp_path):
    assert isinstance(pool, Generator) and pool.schema_ is hsb.schema
    assert len(pool.parent_) == 500 and pool.counts_.sum() == len(pool.child_)
    d = MultilevelData(pool.schema_, pool.sample(120, seed=1).tables)  # keys and types re-validated
    assert len(d.parent) == 120 and d.parent["School"].is_unique and d.child["Student"].is_unique
    assert d.equals(pool.sample(120, seed=1)) and not d.equals(pool.sample(120, seed=2))
    back = load(pool.save(tmp_path / "pool.zip"))
    assert back.sample(50, seed=9).equals(pool.sample(50, seed=9))


def test_pool_draws_distinct_pool_schools_with_their_students(pool):
    d = pool.sample(500, seed=4)  # the whole pool, permuted
    key = lambda df: sorted(map(tuple, df.drop(columns=["School"]).astype(str).to_numpy()))  # noqa: E731
    assert key(d.parent) == key(pool.parent_)
    syn, src = d.join_as_one(), pool.child_.merge(pool.parent_, on="School")
    cols = ["Size", "MEANSES", "SES", "MathAch"]
    assert sorted(map(tuple, syn[cols].to_numpy())) == sorted(map(tuple, src[cols].to_numpy()))
    sizes = d.cluster_sizes().to_numpy()
    assert sorted(sizes) == sorted(pool.counts_)


def test_pool_is_the_generator_once(hsb):
    gen = SchoolBootstrap().fit(hsb)
    pool = SchoolPool(gen, pool_size=40, seed=5).build()
    assert pool.parent_.drop(columns="School").equals(gen.sample(40, seed=5).parent.drop(columns="School"))


def test_pool_errors(hsb):
    with pytest.raises(MlsimkitError, match="before build"):
        SchoolPool(SchoolBootstrap(), 10).build()
    small = SchoolPool(SchoolBootstrap(), 10, seed=0).fit(hsb)
    with pytest.raises(MlsimkitError, match="pool holds 10"):
        small.sample(11, seed=0)
    with pytest.raises(MlsimkitError, match="n_clusters"):
        small.sample(0, seed=0)
    with pytest.raises(MlsimkitError, match="fit"):
        SchoolPool(SchoolBootstrap(), 10).sample(3, seed=0)
