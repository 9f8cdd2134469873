"""A study is its params file: `mlsimkit new` drafts one from a CSV, the toc follows the params, the package
names no column of a shipped data set, and the Exam fork runs all six stages with zero failed fits."""

import ast
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import mlsimkit.check as C
import mlsimkit.toc as toc
from mlsimkit.new_study import draft_models, draft_schema, infer_cluster, new

ROOT = Path(__file__).resolve().parents[1]
EXAM = ROOT / "mlsimkit" / "datasets" / "exam" / "exam.csv"


def _columns_of_shipped_data():
    names = set()
    for schema in (ROOT / "mlsimkit" / "datasets").glob("*/schema.yml"):
        for t in yaml.safe_load(schema.read_text())["tables"].values():
            names |= {c for c, spec in t["columns"].items() if spec.get("kind") != "id"}
    return names


def test_the_package_code_names_no_column_of_a_shipped_data_set():
    """String constants in the package's code (docstrings aside) never name a shipped data set's column."""
    shipped = _columns_of_shipped_data()
    assert {"MathAch", "SES", "PRACAD", "normexam"} <= shipped
    found = []
    for f in (ROOT / "mlsimkit").rglob("*.py"):
        tree = ast.parse(f.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{f.relative_to(ROOT)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
                  and n.value in shipped]
    assert found == []


def test_the_workflow_does_not_branch_on_the_objective():
    for f in ("workflow.py", "runner.py", "check.py"):
        assert "objective ==" not in (ROOT / "mlsimkit" / f).read_text(), f
    nbs = " ".join(p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert "objective ==" not in nbs and "objective==" not in nbs


def test_draft_schema_infers_the_cluster_levels_and_kinds():
    frame = pd.read_csv(EXAM, dtype=str)
    assert infer_cluster(frame, exclude=("normexam", "student")) == "school"
    schema = draft_schema(frame, "x", "normexam", "school", ids=("student",), file="exam.csv")
    school = schema["tables"]["schools"]["columns"]
    student = schema["tables"]["students"]["columns"]
    # constant within every school: school level (the shipped schema has vr at the student level, but in
    # mlmRev's Exam it never varies within a school)
    assert set(school) == {"school", "schgend", "schavg", "vr", "type"}
    assert schema["tables"]["students"]["primary_key"] == "id"
    assert student["sex"] == {"kind": "binary", "levels": ["F", "M"], "description": "(describe me)"}
    assert student["normexam"]["kind"] == "numerical" and student["student"]["kind"] == "id"
    assert school["schgend"]["levels"] == ["boys", "girls", "mixed"]
    pred, rec, notes = draft_models(frame, schema, "normexam")
    assert pred["student"] == ["intake", "standLRT", "sex"] and pred["random_slope"] == "standLRT"
    assert "type" not in pred["school"] and any(n.startswith("type left out") for n in notes)  # type = f(schgend)
    assert "schavg" not in rec["school"] and rec["omitted"][0] in rec["school"]  # schavg ~ mean(standLRT)


@pytest.fixture
def project(tmp_path):
    for item in ("_config.yml", "_toc.yml", "book", "params", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    return tmp_path


def test_new_drafts_a_study_that_passes_check_and_joins_the_toc(project):
    """Own column names, no row id and a four-category school variable, as the issue's new user had."""
    frame = pd.read_csv(EXAM).rename(columns={"normexam": "score", "school": "sch", "standLRT": "reading"})
    frame = frame.drop(columns=["id", "student"])
    frame["region"] = frame["sch"].map(lambda s: ["N", "E", "S", "W"][s % 4])
    csv = project / "mine.csv"
    frame.to_csv(csv, index=False)
    out = new("my-study", csv, "score", root=project, log=lambda *_: None)
    assert C.check("my-study", None, project) == []
    copied = pd.read_csv(out["data"])
    assert list(copied["row_id"][:3]) == [1, 2, 3]  # a row id was added
    schema = yaml.safe_load(out["schema"].read_text())
    assert schema["tables"]["schools"]["columns"]["region"]["levels"] == ["E", "N", "S", "W"]
    params = yaml.safe_load(out["params"].read_text())
    assert params["model"]["outcome"] == "score" and "region" in params["model"]["school"]
    assert set(params["profiles"]) == {"quick", "default", "paper"}
    assert "# The recovery model for the same outcome" in out["params"].read_text()
    parts = yaml.safe_load((project / "_toc.yml").read_text())["parts"]
    assert parts[-1]["caption"] == "Reference" and parts[-2] == toc.study_part("my-study", project)
    assert toc.problems(project) == []
    with pytest.raises(Exception, match="exists"):
        new("my-study", csv, "score", root=project, log=lambda *_: None)


def test_toc_names_a_study_whose_pages_disagree_with_its_params(project):
    spec = yaml.safe_load((project / "params" / "hsb-prediction.yml").read_text())
    spec["stages"] = spec["stages"][:3]
    (project / "params" / "hsb-prediction.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (project / "book" / "hsb-recovery.md").unlink()
    found = toc.problems(project)
    assert len(found) == 2
    assert "study 'hsb-prediction'" in found[0] and "mlsimkit toc --study hsb-prediction" in found[0]
    assert "'book/hsb-recovery' of study 'hsb-recovery' is missing" in found[1]
    toc.add_study("hsb-prediction", project)
    assert len(toc.problems(project)) == 1  # regenerated from the params


def test_the_exam_fork_and_the_hsls_file_pass_check():
    assert C.check("exam-prediction", None, ROOT) == []
    assert C.check("hsls-prediction", None, ROOT, data=False) == []  # the paper's models against Table S1
    assert C.check("hsls-recovery", None, ROOT, data=False) == []
    assert toc.problems(ROOT) == []


@pytest.mark.slow
def test_the_exam_fork_runs_six_stages_with_zero_failed_fits(tmp_path):
    from mlsimkit.runner import run
    from mlsimkit.workflow import USABLE

    run("exam-prediction", "quick", root=ROOT, out=tmp_path, build=False, log=lambda *_: None)
    d = tmp_path / "runs" / "exam-prediction" / "quick"
    res = pd.read_parquet(d / "4-simulate" / "results.parquet")
    assert set(res["source"]) == {"clavaddpm", "traditional"} or "traditional" in set(res["source"])
    assert res["status"].isin(USABLE).all(), res.loc[~res["status"].isin(USABLE), "message"].value_counts()
    assert len(res) == 2 * 2 * 3 * 3  # sources x n_schools x reps x rules
    summary = pd.read_csv(d / "5-evaluate" / "summary.csv")
    assert (summary.loc[summary.measure == "fail_rate", "value"] == 0).all()
    assert (d / "6-robustness" / "simulation.csv").is_file()
