"""The shipped data sets load with their documented shapes and convert losslessly to join-as-one."""

import warnings

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlsimkit.datasets as ds
from mlsimkit import MultilevelData, Schema, read_csv


@pytest.fixture(scope="module")
def hsb():
    return ds.load("hsb")


def test_hsb_shapes(hsb):
    assert hsb.levels == ["schools", "students"]
    assert hsb["schools"].shape == (160, 7)
    assert hsb["students"].shape == (7185, 6)
    assert hsb.n_clusters == 160 and hsb.cluster_key == "School"
    sizes = hsb.cluster_sizes()
    assert sizes.sum() == 7185 and sizes.min() == 14 and sizes.max() == 67


def test_hsb_types(hsb):
    st_ = hsb["students"]
    assert st_["MathAch"].dtype == float and isinstance(st_["Sex"].dtype, pd.CategoricalDtype)
    assert list(hsb["schools"]["HIMINTY"].cat.categories) == ["0", "1"]
    assert hsb["students"]["School"].map(type).eq(str).all()


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("exam", {"schools": 65, "students": 4059}),
        ("chem97", {"leas": 131, "schools": 2410, "students": 31022}),
    ],
)
def test_other_datasets(name, shapes):
    data = ds.load(name)
    assert {t: len(data[t]) for t in data.levels} == shapes


def test_star_three_levels_with_reported_drops():
    with pytest.warns(UserWarning, match="dropped"):
        star = ds.load("star")
    assert star.levels == ["schools", "classes", "records"]
    assert len(star["schools"]) == 80 and 20000 < len(star["records"]) < 26796
    assert star.join_as_one().notna().all().all()


@pytest.mark.parametrize("name", ["hsb", "exam", "chem97"])
def test_join_as_one_round_trip_on_real_data(name):
    data = ds.load(name)
    joined = data.join_as_one()
    assert len(joined) == len(data[data.levels[-1]])
    back = MultilevelData.from_join_as_one(joined, data.schema)
    assert back.equals(data)
    pd.testing.assert_frame_equal(back.join_as_one(), joined)


def test_csv_round_trip(tmp_path, hsb):
    hsb.to_csv(tmp_path)
    again = MultilevelData.from_csv(tmp_path)
    assert again.equals(hsb)


def test_subset_keeps_descendants(hsb):
    ids = list(hsb["schools"]["School"][:10])
    sub = hsb.subset(ids)
    assert sub.n_clusters == 10 and set(sub.child["School"]) == set(ids)
    assert len(sub.child) == hsb.cluster_sizes()[ids].sum()


_three_level = Schema.from_dict({
    "name": "prop",
    "join_as_one": "x.csv",
    "tables": {
        "districts": {"primary_key": "D", "columns": {"D": "id", "dv": "numerical"}},
        "schools": {"primary_key": "S", "parent": "districts", "foreign_key": "D",
                    "columns": {"S": "id", "D": "id", "sc": {"kind": "categorical", "levels": ["a", "b", "c"]}}},
        "students": {"primary_key": "P", "parent": "schools", "foreign_key": "S",
                     "columns": {"P": "id", "S": "id", "y": "numerical",
                                 "g": {"kind": "ordinal", "levels": ["lo", "mid", "hi"]}}},
    },
})


@st.composite
def multilevel(draw):
    n_d = draw(st.integers(1, 4))
    floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    dist = pd.DataFrame({"D": [f"d{i}" for i in range(n_d)], "dv": draw(st.lists(floats, min_size=n_d, max_size=n_d))})
    schools, students = [], []
    for d in dist["D"]:
        for _ in range(draw(st.integers(1, 3))):
            s = f"s{len(schools)}"
            schools.append({"S": s, "D": d, "sc": draw(st.sampled_from("abc"))})
            for _ in range(draw(st.integers(1, 4))):
                students.append({"P": f"p{len(students)}", "S": s, "y": draw(floats),
                                 "g": draw(st.sampled_from(["lo", "mid", "hi"]))})
    return dist, pd.DataFrame(schools), pd.DataFrame(students)


@settings(max_examples=60, deadline=None)
@given(multilevel())
def test_join_as_one_round_trip_property(frames):
    dist, schools, students = frames
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = MultilevelData(_three_level, {"districts": dist, "schools": schools, "students": students})
        except ValueError as exc:  # constant columns are rejected by design
            assert "constant column" in str(exc)
            return
    joined = data.join_as_one()
    back = MultilevelData.from_join_as_one(joined, _three_level)
    assert back.equals(data)
    pd.testing.assert_frame_equal(back.join_as_one(), joined)
    for name in data.levels:
        pd.testing.assert_frame_equal(back[name], data[name])


def test_same_structure_ignores_files_and_descriptions(tmp_path, hsb):
    import dataclasses

    hsb.to_csv(tmp_path)
    again = MultilevelData.from_csv(tmp_path).schema
    assert again == hsb.schema  # to_csv keeps the descriptions (Schema.to_dict round trip)
    tables = {n: dataclasses.replace(t, file=f"other-{n}.csv", description="another description")
              for n, t in again.tables.items()}
    other = dataclasses.replace(again, tables=tables, description="another study")
    assert other != hsb.schema
    assert other.same_structure(hsb.schema)
    assert not ds.schema("exam").same_structure(hsb.schema)
