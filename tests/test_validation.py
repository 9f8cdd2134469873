"""Every bad input gives its own clear error naming the file, table and column."""

import shutil
import warnings

import pandas as pd
import pytest
import yaml

import mlsimkit.datasets as ds
from mlsimkit import MultilevelData, Schema, read_csv
from mlsimkit.errors import DataValidationError, SchemaError

SCHEMA = {
    "name": "toy",
    "tables": {
        "schools": {
            "file": "schools.csv",
            "primary_key": "School",
            "columns": {
                "School": {"kind": "id"},
                "Sector": {"kind": "binary", "levels": ["Public", "Catholic"]},
                "Climate": {"kind": "numerical", "min": -5, "max": 5},
            },
        },
        "students": {
            "file": "students.csv",
            "primary_key": "Student",
            "parent": "schools",
            "foreign_key": "School",
            "columns": {
                "Student": {"kind": "id"},
                "School": {"kind": "id"},
                "Sex": {"kind": "categorical", "levels": ["Male", "Female"]},
                "SES": {"kind": "numerical"},
                "Score": {"kind": "numerical", "min": 0, "max": 100},
            },
        },
    },
}
SCHOOLS = "School,Sector,Climate\nA,Public,0.5\nB,Catholic,-1.0\nC,Public,2.0\n"
STUDENTS = (
    "Student,School,Sex,SES,Score\n1,A,Male,0.1,50\n2,A,Female,-0.3,60\n3,B,Male,0.7,70\n"
    "4,B,Female,0.2,40\n5,C,Male,-1.1,55\n6,C,Female,0.4,65\n"
)


def write(tmp_path, schools=SCHOOLS, students=STUDENTS, schema=None):
    (tmp_path / "schools.csv").write_text(schools)
    (tmp_path / "students.csv").write_text(students)
    (tmp_path / "schema.yml").write_text(yaml.safe_dump(schema or SCHEMA))
    return Schema.from_yaml(tmp_path / "schema.yml")


def problem(tmp_path, **kw):
    schema = write(tmp_path, **kw)
    with pytest.raises(DataValidationError) as info:
        read_csv(schema, tmp_path)
    return str(info.value)


def test_valid_toy_data_loads(tmp_path):
    data = read_csv(write(tmp_path), tmp_path)
    assert data.child.shape == (6, 5) and data.parent.shape == (3, 3)
    assert data.child["SES"].dtype == float
    assert list(data.child["Sex"].cat.categories) == ["Male", "Female"]


def test_missing_file(tmp_path):
    schema = write(tmp_path)
    (tmp_path / "students.csv").unlink()
    with pytest.raises(DataValidationError, match=r"students\.csv.*table 'students'.*file not found"):
        read_csv(schema, tmp_path)


def test_missing_declared_column(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace(",Score", "").replace(",50\n", "\n")
                  .replace(",60\n", "\n").replace(",70\n", "\n").replace(",40\n", "\n")
                  .replace(",55\n", "\n").replace(",65\n", "\n"))
    assert "students.csv" in msg and "column 'Score'" in msg and "missing from the data" in msg


def test_undeclared_column_is_an_error(tmp_path):
    students = STUDENTS.replace("Score\n", "Score,Extra\n").replace("0\n", "0,1\n").replace("5\n", "5,1\n")
    msg = problem(tmp_path, students=students)
    assert "column 'Extra'" in msg and "not declared" in msg


def test_undeclared_column_ignored_with_warning_when_asked(tmp_path):
    students = STUDENTS.replace("Score\n", "Score,Extra\n").replace("0\n", "0,1\n").replace("5\n", "5,1\n")
    schema = write(tmp_path, students=students, schema={**SCHEMA, "extra_columns": "ignore"})
    with pytest.warns(UserWarning, match="Extra"):
        data = read_csv(schema, tmp_path)
    assert "Extra" not in data.child.columns


def test_duplicate_primary_key(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("2,A,Female", "1,A,Female"))
    assert "column 'Student'" in msg and "duplicate primary key" in msg and "line(s) [2, 3]" in msg


def test_child_without_parent(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("6,C,Female", "6,Z,Female"))
    assert "column 'School'" in msg and "does not exist" in msg and "'Z'" in msg


def test_parent_without_children(tmp_path):
    msg = problem(tmp_path, schools=SCHOOLS + "D,Public,1.0\n")
    assert "table 'schools'" in msg and "have no rows in table 'students'" in msg and "'D'" in msg


def test_text_in_numerical_column(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("0.7", "high"))
    assert "column 'SES'" in msg and "holds text ['high']" in msg and "line(s) [4]" in msg


def test_value_out_of_range(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace(",70\n", ",170\n"))
    assert "column 'Score'" in msg and "outside the declared range [0, 100]" in msg


def test_undeclared_category(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("4,B,Female", "4,B,Other"))
    assert "column 'Sex'" in msg and "['Other']" in msg and "declared levels" in msg


def test_missing_values_are_an_error_by_default(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("-0.3", ""))
    assert "column 'SES'" in msg and "1 missing value(s)" in msg and "missing: error" in msg


def test_missing_values_dropped_with_counts_when_asked(tmp_path):
    schema = write(tmp_path, students=STUDENTS.replace("-0.3", "NA"), schema={**SCHEMA, "missing": "drop_rows"})
    with pytest.warns(UserWarning, match=r"dropped 1 of 6 rows"):
        data = read_csv(schema, tmp_path)
    assert len(data.child) == 5


def test_constant_column(tmp_path):
    msg = problem(tmp_path, schools=SCHOOLS.replace("Catholic", "Public"))
    assert "column 'Sector'" in msg and "constant column" in msg


def test_all_problems_reported_at_once(tmp_path):
    msg = problem(tmp_path, students=STUDENTS.replace("0.7", "high").replace("4,B,Female", "4,B,Other"))
    assert "2 problem(s)" in msg and "'SES'" in msg and "'Sex'" in msg


def test_school_variable_varying_within_school_in_join_as_one(tmp_path):
    data = read_csv(write(tmp_path), tmp_path)
    joined = data.join_as_one()
    joined.loc[1, "Climate"] = 3.0  # second student of school A
    with pytest.raises(DataValidationError) as info:
        MultilevelData.from_join_as_one(joined, data.schema, file="joined.csv")
    msg = str(info.value)
    assert "joined.csv" in msg and "column 'Climate'" in msg and "varies within" in msg and "School='A'" in msg


def test_join_as_one_missing_column(tmp_path):
    data = read_csv(write(tmp_path), tmp_path)
    with pytest.raises(DataValidationError, match="column 'Sector'.*missing"):
        MultilevelData.from_join_as_one(data.join_as_one().drop(columns="Sector"), data.schema)


def test_failed_validation_leaves_nothing_written(tmp_path):
    data = read_csv(write(tmp_path), tmp_path)
    out = tmp_path / "out"
    data.to_csv(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = data.child.copy()
    bad["SES"] = bad["SES"].astype(object)
    bad.loc[0, "SES"] = "oops"
    with pytest.raises(DataValidationError):
        MultilevelData(data.schema, {"schools": data.parent, "students": bad}).to_csv(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"kind": "number"}, "'kind' must be one of"),
        ({"kind": "binary", "levels": ["a", "b", "c"]}, "exactly two levels"),
        ({"kind": "categorical"}, "needs 'levels'"),
        ({"kind": "numerical", "min": 3, "max": 1}, "larger than 'max'"),
        ({"kind": "categorical", "levels": ["a", "b"], "min": 0}, "only allowed for numerical"),
    ],
)
def test_schema_errors_name_the_column(patch, expected):
    spec = yaml.safe_load(yaml.safe_dump(SCHEMA))
    spec["tables"]["students"]["columns"]["SES"] = patch
    with pytest.raises(SchemaError, match=expected) as info:
        Schema.from_dict(spec, source="toy.yml")
    assert "column 'SES'" in str(info.value) and "toy.yml" in str(info.value)


def test_schema_foreign_key_must_match_parent_key():
    spec = yaml.safe_load(yaml.safe_dump(SCHEMA))
    spec["tables"]["students"]["foreign_key"] = "Student"
    with pytest.raises(SchemaError, match="foreign_key must name the parent's primary key 'School'"):
        Schema.from_dict(spec)


def test_schema_round_trips_through_dict():
    schema = Schema.from_dict(SCHEMA)
    assert Schema.from_dict(schema.to_dict()) == schema
    # descriptions of the schema and of its tables too (a saved generator rebuilds its schema this way)
    for name in ds.NAMES:
        shipped = ds.schema(name)
        assert shipped.description and Schema.from_dict(shipped.to_dict()) == shipped, name


def test_shipped_schema_missing_file_is_named(tmp_path):
    shutil.copy(ds.path("hsb") / "schema.yml", tmp_path / "schema.yml")
    with pytest.raises(DataValidationError, match=r"schools\.csv.*file not found"):
        read_csv(Schema.from_yaml(tmp_path / "schema.yml"), tmp_path)
