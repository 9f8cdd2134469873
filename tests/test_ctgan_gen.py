"""CTGAN + CLCA generator: protocol, reproducibility, keys, school formation and CLCA vs naive.

CTGAN is trained once (module fixture) on 24 HSB schools for one epoch with small networks: these tests
check the machinery, not the quality of a trained GAN.
"""

import numpy as np
import pandas as pd
import pytest
import torch

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.generators import CTGANGenerator, load, make

N_SCHOOLS = 24


@pytest.fixture(scope="module")
def real():
    hsb = ds.load("hsb")
    return hsb.subset(hsb.parent["School"].iloc[:N_SCHOOLS])


@pytest.fixture(scope="module")
def gen(real):
    g = make("ctgan", epochs=1, batch_size=100, embedding_dim=16, generator_dim=(32,), discriminator_dim=(32,),
             random_state=3)
    return g.fit(real)


def _valid(d: MultilevelData) -> MultilevelData:
    """Re-validate the frames (keys unique, foreign keys resolve, types and ranges) and check that every
    school is internally consistent (the join-as-one round trip refuses varying school variables)."""
    checked = MultilevelData(d.schema, d.tables)
    MultilevelData.from_join_as_one(d.join_as_one(), d.schema)
    return checked


def test_fit_sets_history_and_schema(gen, real):
    assert isinstance(gen, CTGANGenerator) and gen.schema_ is real.schema
    assert list(gen.history_.columns) == ["epoch", "generator_loss", "discriminator_loss"]
    assert gen.history_["epoch"].tolist() == [0]
    assert np.isfinite(gen.history_[["generator_loss", "discriminator_loss"]].to_numpy()).all()


def test_same_seed_same_sample_and_globals_untouched(gen):
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a = gen.sample(30, seed=5)
    b = gen.sample(30, seed=5)
    assert a.equals(b)
    assert not a.equals(gen.sample(30, seed=6))
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_keys_valid_and_schools_consistent(gen):
    for n in (1, 7, N_SCHOOLS, 50):
        d = _valid(gen.sample(n, seed=n))
        assert len(d.parent) == n
        assert d.parent["School"].is_unique and d.child["Student"].is_unique
        assert set(d.child["School"]) == set(d.parent["School"])


def test_sizes_follow_the_real_schools(gen, real):
    d = gen.sample(N_SCHOOLS, seed=1)  # each real label exactly once
    assert sorted(d.cluster_sizes()) == sorted(real.cluster_sizes())
    d = gen.sample(2 * N_SCHOOLS + 3, seed=1)
    assert set(d.cluster_sizes()) <= set(real.cluster_sizes())
    gen.cluster_size = 4
    try:
        assert (gen.sample(10, seed=1).cluster_sizes() == 4).all()
    finally:
        gen.cluster_size = None


def test_save_load_round_trip(gen, tmp_path, monkeypatch):
    monkeypatch.setenv("MLSIMKIT_MODEL_KEY", str(tmp_path / "key"))
    path = gen.save(tmp_path / "ctgan.zip")
    back = load(path)  # written (signed) by this user's mlsimkit: loads without the flag
    assert isinstance(back, CTGANGenerator)
    assert back.sample(20, seed=11).equals(gen.sample(20, seed=11))
    # the same file on a machine whose mlsimkit did not write it: refused unless trusted explicitly
    monkeypatch.setenv("MLSIMKIT_MODEL_KEY", str(tmp_path / "other-key"))
    with pytest.raises(MlsimkitError, match=r"ctgan\.zip'.*CTGANGenerator holds a pickled object.*runs code.*"
                                            r"trust=True.*trust_model_files: true"):
        load(path)
    assert load(path, trust=True).sample(20, seed=11).equals(gen.sample(20, seed=11))


def _complement(real, syn, col):
    if real.schema.column(col).kind == "numerical":
        from scipy.stats import ks_2samp

        return 1 - ks_2samp(real.parent[col], syn.parent[col]).statistic
    p = real.parent[col].value_counts(normalize=True)
    q = syn.parent[col].value_counts(normalize=True).reindex(p.index, fill_value=0)
    return 1 - 0.5 * np.abs(p - q).sum()


def test_clca_marginals_at_least_as_close_as_naive(gen, real):
    raw = gen.sample_raw(N_SCHOOLS, seed=2)
    clca_d, report = gen.align(raw, "clca")
    naive_d, _ = gen.align(raw, "naive")
    _valid(clca_d), _valid(naive_d)
    for col in real.schema.tables["schools"].data_columns:
        c, n = _complement(real, clca_d, col), _complement(real, naive_d, col)
        assert c >= n - 1e-12, (col, c, n)
        if real.schema.column(col).kind == "numerical":
            # as many synthetic as real schools: CLCA reproduces the real school values exactly
            assert sorted(clca_d.parent[col]) == sorted(real.parent[col])
    cat = report[report["kind"] != "numerical"]
    assert set(cat["status"]) <= {"OPTIMAL", "FEASIBLE"} and not cat["fallback"].any()
    assert (report["inconsistent_share"].between(0, 1)).all()


def test_alignment_none_and_raw(gen):
    raw = gen.sample_raw(5, seed=0)
    assert {"_cluster", "_label"} <= set(raw.columns) and raw["_cluster"].nunique() == 5
    d, rep = gen.sample_with_report(5, seed=0, alignment="none")
    _valid(d)
    first = raw.groupby("_cluster").head(1)
    assert np.allclose(d.parent["PRACAD"], np.clip(first["PRACAD"], 0, 1))


def test_bad_settings_and_schemas(real):
    with pytest.raises(MlsimkitError, match="alignment"):
        CTGANGenerator(alignment="mean").fit(real)
    with pytest.raises(MlsimkitError, match="batch_size"):
        CTGANGenerator(batch_size=105).fit(real)
    with pytest.raises(MlsimkitError, match="two-level"):
        CTGANGenerator(epochs=1).fit(ds.load("chem97"))
    with pytest.raises(MlsimkitError, match="fit"):
        CTGANGenerator().sample(3, seed=1)


def test_same_random_state_same_model(real, gen):
    again = CTGANGenerator(**gen.get_params()).fit(real)
    a, b = gen.sample(6, seed=11), again.sample(6, seed=11)
    for t in a.levels:
        pd.testing.assert_frame_equal(a[t], b[t])


def test_conditioning_report_measures_the_condition(gen, real):
    rep = gen.conditioning_report(real, seed=4).set_index(["quantity", "variable"])
    match = rep.loc[("label match rate", "School")]
    assert match.chance == pytest.approx(1 / N_SCHOOLS)
    # recompute the match rate from the same draw: labels and rows are deterministic given the seed
    rng = np.random.default_rng(4)
    idx, sizes = gen._draw_clusters(N_SCHOOLS, rng)
    raw = gen._generate(np.repeat(idx, sizes), rng)
    assert match.value == pytest.approx(np.mean(raw["School"].astype(str).to_numpy() == gen.labels_[np.repeat(idx, sizes)]))
    corr = rep.xs("SES", level="variable").value.iloc[0]
    assert -1 <= corr <= 1
    assert {"SES", "MathAch", "MEANSES", "DISCLIM"} <= set(rep.index.get_level_values("variable"))


def test_metrics_by_construction_are_exact(gen, real):
    from mlsimkit.quality import between, within

    decl = gen.metrics_by_construction(real.n_clusters)
    assert set(decl) == {"cardinality shape similarity", "KSC@schools"}
    syn = gen.sample(real.n_clusters, seed=5)
    assert between.cardinality_shape_similarity(real, syn, "students") == 1.0
    for c in ("Size", "PRACAD", "DISCLIM", "MEANSES"):
        assert within.ks_complement(real.parent[c], syn.parent[c]) == 1.0
    assert gen.metrics_by_construction(real.n_clusters + 1) == {}


def test_sampling_skips_decoding_the_school_column_without_changing_the_rows(gen):
    """``sample_raw`` leaves the generated school column out of the inverse transform (issue 15: it was the
    dearest column to decode); the other columns equal ctgan's full inverse transform's."""
    from mlsimkit.generators.ctgan_clca import _inverse_transform

    tr = gen.model_._transformer
    rng = np.random.default_rng(4)
    idx, sizes = gen._draw_clusters(9, rng)
    full = gen._generate(np.repeat(idx, sizes), np.random.default_rng(7))
    part = gen._generate(np.repeat(idx, sizes), np.random.default_rng(7), keep_key=False)
    key = gen.layout_.key
    assert key in full and key not in part
    pd.testing.assert_frame_equal(full.drop(columns=[key]), part)
    x = np.random.default_rng(0).normal(size=(40, tr.output_dimensions)).astype(np.float32)
    pd.testing.assert_frame_equal(tr.inverse_transform(x).drop(columns=[key]), _inverse_transform(tr, x, key))


def test_device_setting_is_checked_before_training(real):
    """A device the machine lacks (or no device at all) is one error naming the generator and the setting,
    before any training; both generators with networks read ``device`` the same way."""
    from mlsimkit.generators.base import torch_device
    from mlsimkit.generators.diffusion import ClavaDDPMGenerator

    assert torch_device("auto", "ctgan").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cpu", "ctgan") == torch.device("cpu")
    for bad in ("gpu0", "tpu", 3.5):
        with pytest.raises(MlsimkitError, match=r"generator 'ctgan', parameter 'device'"):
            CTGANGenerator(device=bad).fit(real)
    if not torch.cuda.is_available():
        for cls in (CTGANGenerator, ClavaDDPMGenerator):
            with pytest.raises(MlsimkitError, match=r"parameter 'device': 'cuda' asked for, but torch sees no"):
                cls(device="cuda").fit(real)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_and_samples_on_a_gpu_and_stores_the_model_on_the_cpu(real, tmp_path):
    g = make("ctgan", epochs=2, batch_size=100, embedding_dim=16, generator_dim=(32,), discriminator_dim=(32,),
             random_state=3, device="cuda").fit(real)
    assert all(p.device.type == "cpu" for p in g.model_._generator.parameters())
    a, b = g.sample(30, seed=5), g.sample(30, seed=5)
    assert a.equals(b) and not a.equals(g.sample(30, seed=6))
    assert all(p.device.type == "cpu" for p in g.model_._generator.parameters())  # sampled on a copy
    back = load(g.save(tmp_path / "ctgan-gpu.zip"))
    assert back.sample(30, seed=5).equals(a)
    back.device = "cpu"  # a GPU-trained model samples on a machine without one
    _valid(back.sample(30, seed=5))
