"""Variable decomposition (Suk et al. 3.3.1): exact on real data, re-centring on synthetic data."""

import numpy as np
import pandas as pd
import pytest

import mlsimkit.datasets as ds
from mlsimkit.data import MultilevelData
from mlsimkit.decompose import decompose, decomposed_schema, out_of_range_share, recompose
from mlsimkit.errors import MlsimkitError
from mlsimkit.schema import Schema


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


def _toy_schema(student_columns: dict) -> Schema:
    """Schools (id S, numerical z) and students (id P, foreign key S, then ``student_columns``)."""
    return Schema.from_dict({
        "name": "toy",
        "tables": {
            "schools": {"file": "s.csv", "primary_key": "S", "columns": {"S": "id", "z": "numerical"}},
            "students": {"file": "p.csv", "primary_key": "P", "parent": "schools", "foreign_key": "S",
                         "columns": {"P": "id", "S": "id", **student_columns}},
        },
    })


def test_decompose_hsb_layout(hsb):
    dd, info = decompose(hsb)
    assert info.columns == ("SES", "MathAch")
    assert dd.schema.tables["schools"].data_columns[-2:] == ["SES_mean", "MathAch_mean"]
    assert list(dd.child.columns) == list(hsb.child.columns)
    # binary student variables are kept as they are
    for c in ("Minority", "Sex"):
        assert dd.child[c].equals(hsb.child[c])
    # school means by hand for the first school
    first = hsb.parent.School.iloc[0]
    rows = hsb.child[hsb.child.School == first]
    assert dd.parent.set_index("School").loc[first, "MathAch_mean"] == pytest.approx(rows.MathAch.mean(), abs=1e-12)
    # deviations average to zero within each school
    dev_means = dd.child.groupby("School").MathAch.mean()
    assert np.abs(dev_means).max() < 1e-12
    # the transformed data still validate against the transformed schema
    MultilevelData(dd.schema, dd.tables, validate=True)


def test_recompose_exact_on_real_data(hsb):
    dd, info = decompose(hsb)
    for recenter in (True, False):
        back = recompose(dd, info, recenter=recenter)
        assert back.schema == hsb.schema
        for name in hsb.levels:
            assert list(back[name].columns) == list(hsb[name].columns)
        for c in ("SES", "MathAch"):
            assert np.allclose(back.child[c].to_numpy(), hsb.child[c].to_numpy(), rtol=0, atol=1e-12)
        for c in ("Student", "School", "Minority", "Sex"):
            assert back.child[c].equals(hsb.child[c])
        assert back.parent.equals(hsb.parent)


def test_decompose_selected_columns_and_exact_by_hand():
    schema = _toy_schema({"x": {"kind": "numerical", "min": 0, "max": 10}, "w": "numerical",
                          "b": {"kind": "binary", "levels": ["a", "b"]}})
    data = MultilevelData(schema, {
        "schools": pd.DataFrame({"S": ["1", "2"], "z": [0.5, 1.5]}),
        "students": pd.DataFrame({"P": ["1", "2", "3", "4", "5"], "S": ["1", "1", "2", "2", "2"],
                                  "x": [1.0, 3.0, 2.0, 4.0, 9.0], "w": [1.0, 2.0, 3.0, 4.0, 5.0],
                                  "b": ["a", "b", "a", "a", "b"]}),
    })
    dd, info = decompose(data, ["x"])
    assert info.mean_columns == {"x": "x_mean"}
    assert dd.parent.x_mean.tolist() == [2.0, 5.0]
    assert dd.child.x.tolist() == [-1.0, 1.0, -3.0, -1.0, 4.0]
    assert dd.child.w.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # not selected: untouched
    assert recompose(dd, info).equals(data)


def test_recentring_makes_school_mean_the_generated_one(hsb):
    dd, info = decompose(hsb)
    rng = np.random.default_rng(1)
    child = dd.child.copy()
    child["MathAch"] = child["MathAch"] + rng.normal(3.0, 2.0, len(child))  # deviations that do not centre
    parent = dd.parent.copy()
    parent["MathAch_mean"] = rng.normal(12.0, 3.0, len(parent))
    syn = MultilevelData(dd.schema, {"schools": parent, "students": child}, validate=False)
    out = recompose(syn, info, clip=False)  # clipping to the observed range would move a few school means
    got = out.child.groupby("School").MathAch.mean()
    want = parent.set_index("School").MathAch_mean.loc[got.index]
    assert np.allclose(got.to_numpy(), want.to_numpy(), atol=1e-10)
    # within-school spread is the synthetic deviations' spread
    sd_out = out.child.groupby("School").MathAch.std()
    sd_dev = child.groupby("School").MathAch.std()
    assert np.allclose(sd_out.to_numpy(), sd_dev.loc[sd_out.index].to_numpy(), atol=1e-10)
    # without re-centring the mean is shifted by the mean deviation
    out2 = recompose(syn, info, recenter=False, clip=False)
    assert not np.allclose(out2.child.groupby("School").MathAch.mean().to_numpy(), want.to_numpy(), atol=0.5)


def test_recompose_enforces_declared_range():
    schema = _toy_schema({"x": {"kind": "numerical", "min": 0, "max": 10, "integer": True}})
    new, info = decomposed_schema(schema)
    syn = MultilevelData(new, {
        "schools": pd.DataFrame({"S": ["a"], "z": [1.0], "x_mean": [9.5]}),
        "students": pd.DataFrame({"P": ["1", "2"], "S": ["a", "a"], "x": [-2.2, 2.2]}),
    }, validate=False)
    out = recompose(syn, info)
    assert out.child.x.tolist() == [7.0, 10.0]  # 7.3 -> 7, 11.7 -> clipped 10


def test_decompose_errors(hsb):
    with pytest.raises(MlsimkitError, match="only numerical"):
        decompose(hsb, ["Sex"])
    with pytest.raises(MlsimkitError, match="not a variable of the bottom table"):
        decompose(hsb, ["PRACAD"])


def test_recompose_keeps_values_in_the_observed_range(hsb):
    dd, info = decompose(hsb)
    assert info.observed_range["MathAch"] == (hsb.child.MathAch.min(), hsb.child.MathAch.max())
    # a synthetic school whose mean and deviations are each in range but whose sums are not
    syn = MultilevelData(dd.schema, {"schools": dd.parent.copy(), "students": dd.child.copy()}, validate=False)
    top = syn.parent.MathAch_mean.idxmax()
    school = syn.parent.School[top]
    rows = syn.child.School == school
    syn.child.loc[rows, "MathAch"] = np.where(np.arange(rows.sum()) % 2 == 0, 15.0, -15.0)
    share = out_of_range_share(syn, info)
    dev = syn.child.MathAch[rows].to_numpy()
    x = dev - dev.mean() + syn.parent.MathAch_mean[top]  # re-centred, then the school mean added
    lo, hi = info.observed_range["MathAch"]
    n_hi, n_lo = int((x > hi).sum()), int((x < lo).sum())
    assert share["MathAch"] == pytest.approx((n_hi + n_lo) / len(hsb.child)) and n_hi > 0
    back = recompose(syn, info)
    assert back.child.MathAch.min() >= lo and back.child.MathAch.max() <= hi
    assert (back.child.MathAch[rows] == hi).sum() == n_hi and (back.child.MathAch[rows] == lo).sum() == n_lo
    # a declared bound wins over the observed one (the schema allows wider)
    _, info_sch = decomposed_schema(hsb.schema)
    assert info_sch.observed_range == {}
