"""Stage 3 quality metrics: hand-computed values on tiny tables, ceilings, shuffled schools, copies."""

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.errors import MlsimkitError
from mlsimkit.quality import between, evaluate, holdout_split, label, privacy, shuffled_schools, within
from mlsimkit.quality._common import resample_schools, split_halves, take_units
from mlsimkit.quality.efficacy import RandomInterceptLM
from mlsimkit.quality.report import BY_CONSTRUCTION, fidelity_rows
from mlsimkit.schema import Schema


def _toy(schools, xs) -> MultilevelData:
    """One student per value ``xs[i]`` in school ``schools[i]``; schools carry no variable."""
    schema = Schema.from_dict({"name": "toy", "tables": {
        "schools": {"file": "s.csv", "primary_key": "S", "columns": {"S": "id"}},
        "students": {"file": "p.csv", "primary_key": "P", "parent": "schools", "foreign_key": "S",
                     "columns": {"P": "id", "S": "id", "x": "numerical"}}}})
    students = pd.DataFrame({"P": [f"p{i}" for i in range(len(xs))], "S": schools, "x": np.asarray(xs, float)})
    return MultilevelData(schema, {"schools": pd.DataFrame({"S": sorted(set(schools))}), "students": students})


def cat(values, levels):
    return pd.Series(pd.Categorical(values, categories=levels))


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


# ------------------------------------------------------------------ hand values
def test_ks_complement_by_hand():
    # ECDFs of [1,2,3] and [2,3,4] differ by at most 1/3
    assert within.ks_complement([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 3)
    assert within.ks_complement([1, 2], [5, 6]) == 0.0


def test_tv_complement_by_hand():
    r = cat(list("aab"), list("abc"))
    s = cat(list("abcc"), list("abc"))
    # p = (2/3, 1/3, 0), q = (1/4, 1/4, 1/2): TVD = (5/12 + 1/12 + 1/2) / 2 = 1/2
    assert within.tv_complement(r, s) == pytest.approx(0.5)


def test_correlation_similarity_by_hand():
    x = np.array([1, 2, 3, 4.0])
    assert within.correlation_similarity(x, x, x, -x) == pytest.approx(0.0)  # r = 1 vs -1
    assert within.correlation_similarity(x, x, x, x) == pytest.approx(1.0)


def test_contingency_similarity_binned_open_outer_bins():
    real = pd.DataFrame({"x": [0.0, 10.0], "c": cat(list("ab"), list("ab"))})
    # synthetic x far outside the real range falls into the open outer bins
    syn = pd.DataFrame({"x": [-100.0, 1000.0], "c": cat(list("ab"), list("ab"))})
    kinds = {"x": "numerical", "c": "binary"}
    assert within.contingency_similarity(real, syn, "x", "c", kinds) == pytest.approx(1.0)
    syn2 = pd.DataFrame({"x": [-100.0, 1000.0], "c": cat(list("ba"), list("ab"))})
    assert within.contingency_similarity(real, syn2, "x", "c", kinds) == pytest.approx(0.0)


def test_eta_squared_by_hand():
    y = np.array([1, 2, 3, 4, 5, 6.0])
    g = np.array([0, 0, 0, 1, 1, 1])
    # SSB = 13.5, SST = 17.5
    assert within.eta_squared(y, g) == pytest.approx(13.5 / 17.5)
    sim = within.eta_squared_similarity(y, cat([0, 0, 0, 1, 1, 1], [0, 1]), y, cat([0, 1, 0, 1, 0, 1], [0, 1]))
    eta_s = within.eta_squared(y, np.array([0, 1, 0, 1, 0, 1]))
    assert sim == pytest.approx(1 - abs(eta_s - 13.5 / 17.5))


def test_mutual_information_and_mi_similarity_by_hand():
    a = np.array([0, 0, 1, 1])
    assert within.mutual_information(a, a, 2, 2) == pytest.approx(np.log(2))
    assert within.mutual_information(a, np.array([0, 1, 0, 1]), 2, 2) == pytest.approx(0.0)
    # three binary columns: in real only (a, b) dependent; in synthetic only (a, c) -> normalised
    # matrices put 1/2 on (a,b),(b,a) vs (a,c),(c,a): TVD = 1, similarity 0
    lv = [0, 1]
    real = pd.DataFrame({"a": cat([0, 0, 1, 1], lv), "b": cat([0, 0, 1, 1], lv), "c": cat([0, 1, 0, 1], lv)})
    syn = pd.DataFrame({"a": cat([0, 0, 1, 1], lv), "b": cat([0, 1, 0, 1], lv), "c": cat([0, 0, 1, 1], lv)})
    kinds = dict.fromkeys("abc", "binary")
    assert within.mi_similarity(real, syn, kinds) == pytest.approx(0.0)
    assert within.mi_similarity(real, real, kinds) == pytest.approx(1.0)


def test_icc_and_reliability_similarity_by_hand():
    assert between.icc_similarity(0.125, 0.216) == pytest.approx(1 - abs(0.5 - 0.6))
    assert between.icc_similarity(-0.1, 0.0) == 1.0
    assert between.reliability_similarity(0.7, 0.9) == pytest.approx(0.8)


def test_referential_integrity_and_cardinality(hsb):
    sub = hsb.subset(hsb["schools"].School[:10])
    assert between.referential_integrity(sub, "students") == 1.0
    broken = sub.child.copy()
    broken.loc[:9, "School"] = "nowhere"
    bad = type(sub)(sub.schema, {"schools": sub.parent, "students": broken}, validate=False)
    assert between.referential_integrity(bad, "students") == pytest.approx(1 - 10 / len(broken))
    assert between.cardinality_shape_similarity(sub, sub, "students") == 1.0


def test_label_table1():
    assert [label(v) for v in (0.95, 0.85, 0.7, 0.3)] == ["Excellent", "Good", "Fair", "Poor"]


# ------------------------------------------------------------------ ceilings and broken data
def test_real_against_itself_at_ceiling(hsb):
    rows = pd.DataFrame(fidelity_rows(hsb, hsb))
    assert np.allclose(rows.value, 1.0)
    p = pd.DataFrame(privacy.privacy_rows(hsb, hsb)).set_index(["metric", "level"]).value
    assert p["DCR (median)", "students"] == 0.0


def test_shuffled_schools_keep_marginals_but_lose_clustering(hsb):
    sh = shuffled_schools(hsb, seed=1)
    rows = pd.DataFrame(fidelity_rows(hsb, sh))
    w = rows[rows.domain == "within-table"]
    assert np.allclose(w.value, 1.0)  # every within-table score at the ceiling
    icc = rows[rows.metric == "ICC similarity"].set_index("variables").value
    rel = rows[rows.metric == "reliability similarity"].set_index("variables").value
    a, b = split_halves(hsb, np.random.default_rng(0))
    ref = pd.DataFrame(fidelity_rows(a, b))
    ref_icc = ref[ref.metric == "ICC similarity"].value
    assert icc.mean() < 0.5 < 0.85 < ref_icc.mean()
    assert rel.max() < 0.5
    assert ref[ref.metric == "reliability similarity"].value.min() > 0.9


def test_copies_detected_at_both_levels(hsb):
    p = pd.DataFrame(privacy.privacy_rows(hsb, hsb)).set_index(["metric", "level"]).value
    assert p["new rows", "students"] == 0.0 and p["new rows", "schools"] == 0.0
    assert p["new whole clusters", "schools"] == 0.0
    # a bootstrap of schools is made of whole-school copies under new ids
    boot = resample_schools(hsb, np.random.default_rng(0))
    assert privacy.new_cluster_share(hsb, boot) == 0.0
    # half the schools copied, the other half new (shuffled students)
    a, b = split_halves(hsb, np.random.default_rng(1))
    mixed = type(hsb)(hsb.schema, {t: pd.concat([a[t], shuffled_schools(b, 2)[t]], ignore_index=True) for t in hsb.levels},
                      validate=False)
    share = privacy.new_cluster_share(hsb, mixed)
    assert share == pytest.approx(b.n_clusters / mixed.n_clusters, abs=0.02)
    a2, b2 = split_halves(hsb, np.random.default_rng(3))
    assert privacy.new_cluster_share(a2, b2) == 1.0
    assert privacy.new_row_share(a2["students"], b2["students"], ["Minority", "Sex", "SES", "MathAch"]) > 0.99


# ------------------------------------------------------------------ ML efficacy engine
def test_random_intercept_lm_matches_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    J, n = 40, 15
    g = np.repeat(np.arange(J), n)
    X = rng.normal(size=(J * n, 2))
    y = 1 + X @ [0.5, -0.3] + rng.normal(0, 0.7, J)[g] + rng.normal(size=J * n)
    ours = RandomInterceptLM().fit(X, y, g)
    sm_fit = sm.MixedLM(y, sm.add_constant(X), groups=g).fit(reml=True)
    assert np.allclose(ours.coef_, sm_fit.fe_params, atol=1e-4)
    assert ours.tau2_ == pytest.approx(float(np.asarray(sm_fit.cov_re).ravel()[0]), rel=1e-3)
    assert ours.sigma2_ == pytest.approx(sm_fit.scale, rel=1e-3)


# ------------------------------------------------------------------ the entry point
def test_evaluate_end_to_end(hsb, tmp_path):
    small = hsb.subset(hsb["schools"].School[:24])
    syn = {"bootstrap": [resample_schools(small, np.random.default_rng(i)) for i in range(2)],
           "shuffled schools": [shuffled_schools(small, 1)]}
    rep = evaluate(small, syn, reference_splits=2, bootstrap=2, efficacy="fast", targets=["MathAch", "Sector"], seed=3,
                   efficacy_reference_splits=1, efficacy_engine="builtin")
    t = rep.table
    for col in ("dataset", "metric", "domain", "level", "variables", "value", "reference", "lo", "hi"):
        assert col in t.columns
    assert set(t.dataset) == {"bootstrap", "shuffled schools", "real vs real"}
    eff = t[(t.domain == "ML efficacy") & (t.dataset == "bootstrap")]
    assert set(eff.variables) == {"MathAch", "Sector"} and set(eff.subdomain) == {"tree", "mixed"}
    s = rep.summary()
    between_avg = s[(s.item == "between-table fidelity")].set_index("dataset").value
    assert between_avg["shuffled schools"] < between_avg["bootstrap"]
    assert {"label", "reference", "reference label"} <= set(s.columns)
    import matplotlib.pyplot as plt

    shown = rep.figure_marginals("bootstrap")
    plt.close(shown)  # what a notebook's inline backend does after showing it
    out = rep.to_html(tmp_path / "q.html")
    text = out.read_text()
    assert "data:image/png;base64" in text and "ICC similarity" in text
    assert text.count("data:image/png;base64") == 3 + 2 * 2  # scores, ICC, sizes; marginals + correlations each
    assert rep.figure_marginals("bootstrap") is shown  # drawn once, embedded as shown


def test_lmm_adapter_agrees_with_builtin():
    pytest.importorskip("mlsimkit.lmm")
    from mlsimkit.quality.efficacy import _LmmAdapter

    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(30), 10)
    X = rng.normal(size=(300, 2))
    y = X @ [1.0, 0.5] + rng.normal(size=30)[g] + rng.normal(size=300)
    a = _LmmAdapter().fit(X, y, g).predict(X[:5])
    b = RandomInterceptLM().fit(X, y, g).predict(X[:5])
    assert np.allclose(a, b, atol=1e-3)


# ------------------------------------------------------------------ negative controls against the band
@pytest.fixture(scope="module")
def controls_report(hsb):
    """Copies of the real schools and shuffled schools, scored as generators trained without a hold-out."""
    train, hold = holdout_split(hsb, 0.2, np.random.default_rng(5))
    top_ids = train["schools"]["School"].to_numpy()
    copies = {"bootstrap copy": resample_schools(train, np.random.default_rng(1)),
              "row copy": take_units(train, top_ids),  # every training row once, under new ids
              "shuffled schools": shuffled_schools(train, seed=3)}
    return evaluate(hsb, {k: [v] for k, v in copies.items()}, holdout=hold,
                    holdout_synthetic={k: [v] for k, v in copies.items()}, reference_splits=5, efficacy=False,
                    by_construction={"row copy": {"cardinality shape similarity": "school sizes copied"}}, seed=0)


@pytest.mark.parametrize("copy", ["bootstrap copy", "row copy"])
@pytest.mark.parametrize("metric", ["SDIS", "DCR share closer to hold-out", "authenticity", "detection score"])
def test_copies_fall_below_the_real_vs_real_band(controls_report, copy, metric):
    t = controls_report.table
    row = t[(t.dataset == copy) & (t.metric == metric)].iloc[0]
    assert row.value < row.ref_lo
    assert row.ref_lo > 0.3  # the band itself is not degenerate


def test_shuffled_schools_fall_below_the_band_on_icc_similarity(controls_report):
    t = controls_report.table
    icc = t[(t.dataset == "shuffled schools") & (t.metric == "ICC similarity")]
    assert (icc.value < icc.ref_lo).all()


def test_detection_counts_copies_as_detected(hsb):
    from mlsimkit.quality import seed001
    from mlsimkit.quality._common import all_kinds

    jr = hsb.join_as_one()
    kinds = all_kinds(hsb)
    assert seed001.detection_auc(jr, jr.copy(), kinds, jr.School, "c" + jr.School) == 1.0
    assert seed001.detection_score(1.0) == 0.0 and seed001.detection_score(0.0) == 0.0
    assert seed001.detection_score(0.5) == 1.0 and seed001.detection_score(0.25) == 0.5


def test_ood_and_dcr_share_need_a_holdout(hsb):
    a, b = split_halves(hsb, np.random.default_rng(2))
    rows = pd.DataFrame(privacy.privacy_rows(a, b)).set_index("metric").value
    assert np.isnan(rows["DCR share closer to hold-out"])
    from mlsimkit.quality.seed001 import seed001_rows

    names = {r["metric"] for r in seed001_rows(a, b)}
    assert {"TSTR AUROC (training rows)", "SDIS (no hold-out)"} <= names and "SDIS" not in names


def test_dcr_holdout_share_by_hand():
    from mlsimkit.data import MultilevelData

    real = _toy(["a", "a", "b", "c"], [0.0, 1.0, 10.0, 20.0])
    train, hold = real.subset(["a", "b"]), real.subset(["c"])  # 3 training rows, 1 hold-out row: h = 1/4
    syn = _toy(["x", "x"], [0.0, 19.0])  # one copy of a training row, one row next to the hold-out row
    assert privacy.dcr_holdout_share(train, syn, hold) == pytest.approx(0.5 * 0.5 / 0.25)


def test_by_construction_metrics_leave_the_averages(controls_report):
    s = controls_report.summary()
    rc = s[s.dataset == "row copy"].set_index("item").value
    assert "cardinality shape similarity" + BY_CONSTRUCTION in rc.index
    assert "referential integrity" + BY_CONSTRUCTION in rc.index
    assert "cardinality shape similarity" not in rc.index and "referential integrity" not in rc.index
    b = controls_report.replicates
    b = b[(b.dataset == "row copy") & (b.domain == "between-table") & b.informative]
    assert rc["between-table fidelity"] == pytest.approx(b.groupby("metric", sort=False).value.mean().mean())
    t = controls_report.table
    assert not t[(t.dataset == "row copy") & (t.metric == "cardinality shape similarity")].informative.any()
    assert t[(t.dataset == "bootstrap copy") & (t.metric == "cardinality shape similarity")].informative.all()


def test_report_tables_for_the_page(controls_report):
    icc = controls_report.icc_table().data
    assert list(icc.columns) == ["dataset", "metric", "variable", "value", "real", "synthetic", "reference",
                                 "band low", "band high"]
    assert set(icc["metric"]) == {"ICC similarity", "reliability similarity"} and len(icc)
    shuffled = icc[(icc.dataset == "shuffled schools") & (icc.metric == "ICC similarity")]
    assert (shuffled["value"] < shuffled["band low"]).all()  # the negative control, as the reader sees it
    con = controls_report.by_construction_table().data
    row_copy = con[con.dataset == "row copy"].set_index("metric")["note"]
    assert row_copy["cardinality shape similarity"] == "1 by construction: school sizes copied"
    assert row_copy["referential integrity"].startswith("1 by construction: keys are assembled")
    assert con.duplicated(["dataset", "metric", "level"]).sum() == 0
    val = controls_report.validity_table()
    assert set(val.index) >= {"row copy", "shuffled schools"} and (val.loc["row copy"] == 0).all()


def test_out_of_range_share_by_hand():
    assert within.out_of_range_share([0, 1, 2], [-1, 0, 2, 3]) == 0.5
    assert within.out_of_range_share([0, 1, 2], [0, 2]) == 0.0


def test_dcr_diagnosis_tells_copies_from_concentration(hsb):
    train, hold = holdout_split(hsb, 0.2, np.random.default_rng(5))
    copy = resample_schools(train, np.random.default_rng(1))
    d = privacy.dcr_diagnosis(train, hold, copy)
    assert d["median DCR"] == 0.0 and d["DCR share closer to hold-out"] == 0.0
    assert privacy.dcr_verdict(d).startswith("Memorisation")
    # concentration: every numerical student value pulled halfway to its mean (fresh rows, less spread)
    conc = take_units(hold, hold["schools"]["School"].to_numpy())
    st = conc["students"]
    for c in ("SES", "MathAch"):
        st[c] = st[c].mean() + 0.3 * (st[c] - st[c].mean())
    d = privacy.dcr_diagnosis(train, hold, conc)
    assert d["spread ratio"] < 0.9 and d["NN distance ratio"] < 0.9
    assert d["median DCR"] < d["median DCR (hold-out rows)"]
    assert d["DCR share closer to hold-out"] > 0.4
    assert privacy.dcr_verdict(d).startswith("Concentration")
    # real rows the generator never saw: neither
    d = privacy.dcr_diagnosis(train, hold, hold)
    assert 0.9 < d["spread ratio"] < 1.1 and d["NN distance ratio"] == 1.0


def test_dcr_diagnosis_names_the_copied_level(hsb):
    train, hold = holdout_split(hsb, 0.2, np.random.default_rng(5))
    # school rows copied from the training schools, students taken from the hold-out (new to the generator)
    syn = take_units(hold, hold["schools"]["School"].to_numpy())
    donors = train["schools"].iloc[: len(syn["schools"])].drop(columns="School").reset_index(drop=True)
    syn["schools"][donors.columns] = donors
    d = privacy.dcr_diagnosis(train, hold, syn)
    assert d["DCR share closer to hold-out (schools)"] == 0.0
    assert d["DCR share closer to hold-out (students)"] > 0.9
    v = privacy.dcr_verdict(d, 0.9)
    assert v.startswith("Memorisation") and "copying is in the schools (0.00) table" in v and "students (" in v


def test_a_hold_out_without_its_generators_data_is_refused(hsb):
    train, hold = holdout_split(hsb, 0.2, np.random.default_rng(5))
    with pytest.raises(MlsimkitError, match="holdout: given without 'holdout_synthetic'"):
        evaluate(hsb, {"x": [shuffled_schools(train, seed=1)]}, holdout=hold, reference_splits=1, efficacy=False)


# ------------------------------------------------------------------ worker processes
def test_n_jobs_gives_the_serial_report_bit_for_bit(hsb, monkeypatch):
    """Two worker processes give the same rows, in the same order, with the same values, as one process: every
    part that runs in the pool is exercised (candidates of two generators with hold-out data, their efficacy,
    reference splits with and without efficacy, bootstrap draws)."""
    from mlsimkit.quality import report

    monkeypatch.setattr(report, "cores_available", lambda: 2)  # the pool even on a one-core machine
    small = hsb.subset(hsb["schools"].School[:20])
    train, hold = holdout_split(small, 0.25, np.random.default_rng(2))
    gens = {"bootstrap": lambda d, i: resample_schools(d, np.random.default_rng(i)),
            "shuffled schools": lambda d, i: shuffled_schools(d, seed=i)}
    syn = {name: [g(small, i) for i in range(k)] for (name, g), k in zip(gens.items(), (3, 1))}  # chunks cut a name
    held = {name: [g(train, 10 + i) for i in range(2)] for name, g in gens.items()}
    kw = dict(holdout=hold, holdout_synthetic=held, reference_splits=2, efficacy_reference_splits=1, bootstrap=3,
              efficacy="fast", targets=["MathAch", "Sector"], efficacy_engine="builtin", seed=7)
    one, two = evaluate(small, syn, n_jobs=1, **kw), evaluate(small, syn, n_jobs=2, **kw)
    assert set(one.replicates.domain) >= {"ML efficacy", "privacy", "seed-001"}
    assert set(one.reference_rows.domain) >= {"ML efficacy", "privacy"}
    for a, b in ((one.table, two.table), (one.replicates, two.replicates), (one.reference_rows, two.reference_rows),
                 (one.bootstrap_rows, two.bootstrap_rows), (one.summary(), two.summary())):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(one.timings) == list(two.timings)


def test_n_jobs_must_be_a_positive_integer(hsb):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(MlsimkitError, match="n_jobs"):
            evaluate(hsb, None, reference_splits=1, n_jobs=bad)
