"""The LLM-style generator (tabular-transformer): protocol, valid rows, sizes, ICC from the context,
reproducibility, the safe model file, and the decode-failure counter."""

import numpy as np
import pandas as pd
import pytest
import torch

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.generators import NAMES, load, make
from mlsimkit.generators.transformer import TabularTransformerGenerator
from mlsimkit.icc import anova_components
from mlsimkit.schema import Schema


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch):
    """A signing key of this test only (never the user's)."""
    monkeypatch.setenv("MLSIMKIT_MODEL_KEY", str(tmp_path / "key"))


@pytest.fixture(scope="module")
def small():
    hsb = ds.load("hsb")
    return hsb.subset(hsb.parent["School"].iloc[::4])  # 40 schools, about 1,800 students


@pytest.fixture(scope="module")
def fitted(small):
    return TabularTransformerGenerator.quick().fit(small)


def _icc(df, col, key):
    return anova_components(df[col].to_numpy(float), df[key].to_numpy())["icc"]


def clustered(J=60, n=30, seed=0):
    """Toy data with strong clustering (ICC about 0.8) that the school row does not explain: the school
    variables are independent of the school effect, so only schoolmates in the context can carry it."""
    rng = np.random.default_rng(seed)
    schema = Schema.from_dict({"name": "toy", "tables": {
        "schools": {"file": "s.csv", "primary_key": "S", "columns": {
            "S": "id", "z": "numerical", "t": {"kind": "binary", "levels": ["a", "b"]}}},
        "pupils": {"file": "p.csv", "primary_key": "P", "parent": "schools", "foreign_key": "S", "columns": {
            "P": "id", "S": "id", "y": "numerical", "g": {"kind": "binary", "levels": ["0", "1"]}}}}})
    sizes = rng.integers(n - 10, n + 10, J)
    sid = np.array([f"s{j}" for j in range(J)])
    school = pd.DataFrame({"S": sid, "z": rng.normal(0, 1, J), "t": rng.choice(["a", "b"], J)})
    N = int(sizes.sum())
    y = np.repeat(rng.normal(0, 1, J), sizes) + rng.normal(0, 0.5, N)
    pupils = pd.DataFrame({"P": [f"p{i}" for i in range(N)], "S": np.repeat(sid, sizes), "y": y,
                           "g": rng.choice(["0", "1"], N)})
    return MultilevelData(schema, {"schools": school, "pupils": pupils})


def test_registered_and_made_by_name():
    assert "tabular-transformer" in NAMES
    g = make("tabular-transformer", epochs=2, context_students=3)
    assert isinstance(g, TabularTransformerGenerator) and g.epochs == 2 and g.context_students == 3


def test_valid_rows_categories_ranges_and_sizes(fitted, small):
    syn = fitted.sample(30, seed=0)
    assert syn.schema == small.schema
    MultilevelData(syn.schema, syn.tables, validate=True)  # keys, orphans, levels, ranges, integers
    for name in small.levels:
        assert list(syn[name].columns) == list(small[name].columns)
        for col in small[name].columns:
            assert syn[name][col].dtype == small[name][col].dtype, (name, col)
    assert len(syn.parent) == 30 and syn.child.Student.is_unique
    assert not set(syn.parent.School) & set(small.parent.School)
    # numerical values inside the observed range, integer columns integral
    for name in small.levels:
        for col in small.schema.tables[name].data_columns:
            if small.schema.tables[name].columns[col].is_numerical:
                real, fake = small[name][col], syn[name][col]
                assert fake.between(real.min(), real.max()).all(), col
    assert (syn.parent.Size == np.round(syn.parent.Size)).all()
    # school sizes drawn from the school model: inside the real range and of a plausible mean
    real_sizes, sizes = small.cluster_sizes(), syn.cluster_sizes()
    assert sizes.between(real_sizes.min(), real_sizes.max()).all()
    assert abs(sizes.mean() - real_sizes.mean()) < 0.35 * real_sizes.mean()
    # every category of the binary columns appears
    for col in ("Sector",):
        assert set(syn.parent[col]) == set(small.parent[col])
    for col in ("Minority", "Sex"):
        assert set(syn.child[col]) == set(small.child[col])


def test_same_seed_same_sample_and_save_load_round_trip(fitted, tmp_path):
    a = fitted.sample(8, seed=7)
    b = fitted.sample(8, seed=7)
    c = fitted.sample(8, seed=8)
    for name in a.levels:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a.child.MathAch.equals(c.child.MathAch)
    path = fitted.save(tmp_path / "tt.zip")
    from mlsimkit.generators.modelfile import read_metadata

    meta = read_metadata(path)
    assert meta["class"] == "TabularTransformerGenerator" and meta["requires_trust"] is False
    assert meta["training"]["decode_failures"] == 0 and set(meta["training"]["final_loss"]) == {"school", "student"}
    back = load(path)
    assert isinstance(back, TabularTransformerGenerator) and back.get_params() == fitted.get_params()
    d = back.sample(8, seed=7)
    for name in a.levels:
        pd.testing.assert_frame_equal(a[name], d[name])
    ss = np.random.SeedSequence(3, spawn_key=(1,))
    pd.testing.assert_frame_equal(fitted.sample(4, seed=ss).child,
                                  back.sample(4, seed=np.random.SeedSequence(3, spawn_key=(1,))).child)


def test_training_is_deterministic(small):
    sub = small.subset(small.parent.School.iloc[:10])
    kw = dict(epochs=1, school_epochs=3, d_model=16, n_heads=2, context_students=2)
    a = TabularTransformerGenerator.quick(**kw).fit(sub)
    b = TabularTransformerGenerator.quick(**kw).fit(sub)
    pd.testing.assert_frame_equal(a.history_, b.history_)
    pd.testing.assert_frame_equal(a.sample(3, seed=1).child, b.sample(3, seed=1).child)


def test_global_rng_untouched(fitted):
    torch_state = torch.random.get_rng_state().clone()
    np_state = np.random.get_state()[1].copy()
    fitted.sample(3, seed=0)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_decode_failures_counted(fitted, small):
    # restricted logits: a failure cannot happen, and the counter says so
    fitted.sample(5, seed=1)
    assert fitted.last_decode_failures_ == {"schools": 0, "students": 0}
    assert fitted.decode_failures_total_ == 0
    # unrestricted (as a text model samples): invalid rows are counted and drawn again, never kept
    sub = small.subset(small.parent.School.iloc[:12])
    g = TabularTransformerGenerator.quick(restrict_logits=False, epochs=20, school_epochs=200).fit(sub)
    syn = g.sample(12, seed=0)
    MultilevelData(syn.schema, syn.tables, validate=True)
    fails = g.last_decode_failures_
    assert set(fails) == {"schools", "students"} and all(isinstance(v, int) and v >= 0 for v in fails.values())
    assert g.decode_failures_total_ == sum(fails.values())
    assert sum(fails.values()) > 0  # a barely trained unrestricted model does put tokens in the wrong column


def test_icc_comes_from_schoolmates_in_context():
    """Strong clustering that the school row cannot explain: with schoolmates in the context the synthetic
    ICC is clearly positive; the negative control (no context, no school prefix) has none."""
    data = clustered()
    real = _icc(data.child, "y", "S")
    assert real > 0.7
    with_ctx = TabularTransformerGenerator.quick().fit(data)
    control = TabularTransformerGenerator.quick(context_students=0, school_prefix=False).fit(data)
    icc_ctx = np.mean([_icc(with_ctx.sample(60, seed=s).child, "y", "S") for s in range(2)])
    icc_ctl = np.mean([_icc(control.sample(60, seed=s).child, "y", "S") for s in range(2)])
    assert icc_ctx > 0.15, icc_ctx
    assert abs(icc_ctl) < 0.05, icc_ctl


def test_errors(small):
    with pytest.raises(MlsimkitError, match="call fit"):
        TabularTransformerGenerator().sample(3, seed=0)
    with pytest.raises(MlsimkitError, match="n_heads"):
        TabularTransformerGenerator(d_model=30, n_heads=4).fit(small)
    with pytest.raises(MlsimkitError, match="temperature"):
        TabularTransformerGenerator(temperature=0).fit(small)
    with pytest.raises(MlsimkitError, match="context_students"):
        TabularTransformerGenerator(context_students=-1).fit(small)
    with pytest.raises(MlsimkitError, match="epochs"):
        make("tabular-transformer", epochs=0).fit(small)


def test_check_accepts_it_in_params():
    from mlsimkit.check import _check_generator, _Collector

    out = _Collector("params.yml")
    _check_generator("generators.llm", "llm", {"generator": "tabular-transformer", "epochs": 5}, out, "quick")
    _check_generator("generators.tabular-transformer", "tabular-transformer", {"bogus": 1}, out, "quick")
    _check_generator("generators.tabular-transformer", "tabular-transformer", {"n_heads": 3}, out, "quick")
    text = "\n".join(f"{p.key}: {p.message}" for p in out.problems)
    assert "bogus" in text and "n_heads" in text and "generators.llm" not in text


def test_cached_sampling_path_equals_forward():
    """The key/value cache used for sampling computes what the network's forward computes."""
    from mlsimkit.generators.transformer import CausalTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = CausalTransformer(40, 16, 16, 2, 2, 32, 0.1).eval()
        x = torch.randint(2, 40, (5, 16))
    with torch.inference_mode():
        full = net(x)
        logits, cache = net.prefill(x[:, :9])
        assert torch.allclose(logits, full[:, 8], atol=1e-5)
        for p in range(9, 15):
            logits, cache = net.step(x[:, p], p, cache)
            assert torch.allclose(logits, full[:, p], atol=1e-5)
