"""The causal objective's ``real schools`` source (the causal paper's faithfulness check, issue 13 item 5):
subsamples of the real HSB schools with the full-data estimate of a reference method as pseudo-truth, and the
Stage 5 comparison of the estimators' error pattern on hybrid data with the pattern on these subsamples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlsimkit import objectives, study as S
from mlsimkit.causal import estimate_ate

obj = objectives.get("causal")


@pytest.fixture(scope="module")
def setup():
    st = S.load("hsb-causal", profile="quick")
    data = st.data()
    generate, methods, truth = obj.source(st, data, obj.REAL)
    return st, data, generate, methods, truth


def _values(data, schools_only=False):
    """Rows of the joined table without key columns (school rows only with ``schools_only``)."""
    schema = data.schema
    top = schema.levels[0]
    if schools_only:
        t = data.tables[top]
        return t.drop(columns=list(schema.tables[top].key_columns))
    j = data.join_as_one()
    keys = {c for name in schema.levels for c in schema.tables[name].key_columns}
    return j.drop(columns=[c for c in j.columns if c in keys])


def check_draw(draw, real, n: int, replace: bool) -> None:
    """Assert that ``draw`` holds ``n`` real schools, every student row a real row, drawn with or without
    replacement as ``replace`` says (schools identified by their school-level values, unique in HSB)."""
    rs = _values(real, schools_only=True)
    assert not rs.duplicated().any()  # the school-level values identify a real school
    ds = _values(draw, schools_only=True)
    assert len(ds) == n
    real_rows = set(map(tuple, _values(real).astype(str).to_numpy()))
    drawn_rows = list(map(tuple, _values(draw).astype(str).to_numpy()))
    assert all(r in real_rows for r in drawn_rows)
    school_rows = set(map(tuple, rs.astype(str).to_numpy()))
    drawn_schools = list(map(tuple, ds.astype(str).to_numpy()))
    assert all(s in school_rows for s in drawn_schools)
    assert (len(set(drawn_schools)) < n) == replace  # repeats exactly when drawn with replacement


def test_draws_are_real_schools_subsampled_below_J_and_bootstrapped_at_J(setup):
    st, data, generate, _, _ = setup
    J = len(data.tables[data.schema.levels[0]])
    for n in (20, 80, J - 1):
        check_draw(generate({"n_schools": n}, np.random.default_rng(n)), data, n, replace=False)
    check_draw(generate({"n_schools": J}, np.random.default_rng(3)), data, J, replace=True)
    check_draw(generate({"n_schools": J + 40}, np.random.default_rng(4)), data, J + 40, replace=True)


def test_negative_controls_of_the_draw_check(setup):
    """A generate that ignored ``n_schools`` or returned the full data fails the check above."""
    st, data, generate, _, _ = setup
    with pytest.raises(AssertionError):  # the full data, whatever n_schools
        check_draw(data, data, 40, replace=False)
    with pytest.raises(AssertionError):  # n_schools ignored (a fixed 20)
        check_draw(generate({"n_schools": 20}, np.random.default_rng(1)), data, 40, replace=False)
    with pytest.raises(AssertionError):  # at J without replacement: every school once, the full data reordered
        from mlsimkit.generators import SchoolBootstrap

        J = len(data.tables[data.schema.levels[0]])
        check_draw(SchoolBootstrap(replace=False).fit(data).sample(J, seed=1), data, J, replace=True)
    tampered = generate({"n_schools": 20}, np.random.default_rng(1))
    child = data.schema.levels[-1]
    tampered.tables[child] = tampered.tables[child].assign(MathAch=tampered.tables[child]["MathAch"] + 0.5)
    with pytest.raises(AssertionError):  # rows that are not real rows
        check_draw(tampered, data, 20, replace=False)


def test_draws_are_deterministic_for_a_seed(setup):
    _, _, generate, _, _ = setup
    a = generate({"n_schools": 40}, np.random.default_rng(11))
    b = generate({"n_schools": 40}, np.random.default_rng(11))
    c = generate({"n_schools": 40}, np.random.default_rng(12))
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name])
    assert not _values(a, schools_only=True).equals(_values(c, schools_only=True))


def test_pseudo_truth_is_the_reference_full_data_estimate(setup):
    st, data, _, methods, truth = setup
    ref = obj.spec(st).get("pseudo_truth", obj.PSEUDO_TRUTH)
    assert ref == "AIPW (multilevel)"
    settings = methods[ref].keywords["settings"]
    rng = np.random.default_rng(np.random.SeedSequence(int(st["seed"]), spawn_key=(7,)))
    direct = estimate_ate(data.join_as_one(), methods[ref].keywords["spec"], estimators=("AIPW",),
                          versions=("multilevel",), seed=rng, **settings)
    assert truth["parameter"].tolist() == ["ATE"]
    assert truth["truth"].iloc[0] == pytest.approx(float(direct["estimate"].iloc[0]), rel=1e-12)
    # a different reference method gives its own full-data value (the truth follows the params)
    st2 = S.load("hsb-causal", profile="quick")
    st2.spec["model"] = dict(st2.spec["model"], pseudo_truth="OR (multilevel)")
    t2 = obj.source(st2, data, obj.REAL)[2]
    est = obj.full_data_estimates(st2, data, only=["OR (multilevel)"])
    assert t2["truth"].iloc[0] == pytest.approx(est["estimate"].iloc[0])
    assert abs(t2["truth"].iloc[0] - truth["truth"].iloc[0]) > 1e-6


def test_pseudo_truth_key_is_checked(setup):
    st, data, _, _, _ = setup
    bad = dict(st.spec["model"], pseudo_truth="AIPW (hierarchical)")
    assert [k for k, _ in obj.check_model(bad, data.schema)] == ["model.pseudo_truth"]
    assert obj.check_model(dict(st.spec["model"], pseudo_truth="DiM (unadjusted)"), data.schema) == []
    assert obj.check_model(dict(st.spec["model"], pseudo_truth="TMLE (multilevel)",
                                versions=["single"]), data.schema)[0][0] == "model.pseudo_truth"


def test_real_source_runs_through_the_engine(setup):
    from mlsimkit.simulate import run

    _, _, generate, methods, truth = setup
    small = {k: methods[k] for k in ("DiM (unadjusted)", "AIPW (multilevel)")}
    res = run({"n_schools": [30]}, generate, small, reps=2, seed=5, progress=False)
    assert (res["status"] == "ok").all(), res[["method", "status", "message"]]


def _summary(hyb_rmse, real_rmse, hyb_bias, real_bias, mcse=0.01):
    rows = []
    for src, rm, bi in (("hybrid", hyb_rmse, hyb_bias), (obj.REAL, real_rmse, real_bias)):
        for i, m in enumerate(["A", "B", "C"]):
            rows.append({"source": src, "n_schools": 40, "method": m, "parameter": "ATE", "measure": "rmse",
                         "value": rm[i], "mcse": mcse})
            rows.append({"source": src, "n_schools": 40, "method": m, "parameter": "ATE", "measure": "bias",
                         "value": bi[i], "mcse": mcse})
    return pd.DataFrame(rows)


def test_faithfulness_agrees_and_its_negative_control_disagrees():
    same = obj.faithfulness(_summary([0.1, 0.2, 0.3], [0.15, 0.25, 0.4], [0.05, -0.05, 0.001],
                                     [0.1, -0.2, -0.005]))
    r = same.iloc[0]
    assert r["same RMSE ranking"] == "yes" and r["Spearman rho"] == 1.0 and r["same bias sign"] == "3 of 3"
    assert r["sign differs"] == "none" and r["smallest RMSE, real"] == "A"
    diff = obj.faithfulness(_summary([0.1, 0.2, 0.3], [0.4, 0.25, 0.15], [0.05, -0.05, 0.1],
                                     [-0.1, -0.2, 0.005]))
    r = diff.iloc[0]
    assert r["same RMSE ranking"] == "no" and r["Spearman rho"] == -1.0 and r["smallest RMSE, real"] == "C"
    assert r["same bias sign"] == "1 of 3" and r["sign differs"] == "A (+/-); C (+/0)"
    text = obj.findings(None, _summary([0.1, 0.2, 0.3], [0.4, 0.25, 0.15], [0.05, -0.05, 0.1],
                                       [-0.1, -0.2, 0.005]))
    assert "hybrid next to real schools" in text and "RMSE ranking different" in text
    assert obj.faithfulness(_summary([0.1] * 3, [0.1] * 3, [0] * 3, [0] * 3).query("source == 'x'")).empty
    assert obj.faithfulness(_summary([0.1] * 3, [0.1] * 3, [0] * 3, [0] * 3).assign(source="hybrid")).empty


def test_tables_show_the_full_data_disagreement(setup):
    st, _, _, _, truth = setup
    summ = _summary([0.1, 0.2, 0.3], [0.15, 0.25, 0.4], [0.05, -0.05, 0.0], [0.1, -0.2, 0.0])
    tabs = obj.tables(st, summ)
    key = next(k for k in tabs if "full-data" in k)
    t = tabs[key]
    assert "AIPW (multilevel)" in key
    assert t.loc["AIPW (multilevel)", "minus pseudo-truth"] == 0.0
    assert t.loc["AIPW (multilevel)", "estimate"] == pytest.approx(truth["truth"].iloc[0], abs=5e-4)
    assert len(t) == len(obj.method_names(obj.spec(st)))
    assert any("RMSE ranking" in k for k in tabs)
