"""The runner executes the stage notebooks with papermill and builds the book with `jupyter-book -W`."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

import mlsimkit.study as st
from mlsimkit.errors import MissingArtifactError, ParamsError
from mlsimkit.runner import NotebookFailed, run

ROOT = Path(__file__).resolve().parents[1]


#: files a user's project root may hold that are not pages of the book (the README's `make test` once left
#: .pytest_cache/README.md behind, and the `-W` build of `make book` failed on it after 30 minutes of work)
STRAY_FILES = {
    ".pytest_cache/README.md": "# pytest cache directory #\n\nDo not commit this.\n",
    "notes.md": "# My notes\n\nTry n_schools = 40 next.\n",
    "book/.ipynb_checkpoints/intro-checkpoint.md": "# An old copy\n",
    "book/intro.md~": "# An editor backup\n",
    "scratch.ipynb": '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
}


@pytest.fixture(scope="module")
def quick_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    for rel, text in STRAY_FILES.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    index = run("all", "quick", root=ROOT, out=out, log=lambda *_: None)
    return out, index


def _outputs(nb_path):
    nb = json.loads(nb_path.read_text())
    return nb, [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.slow
@pytest.mark.parametrize("study", ["hsb-prediction", "hsb-recovery"])
def test_stage1_notebook_executed_with_tables_and_figures(quick_book, study):
    out, _ = quick_book
    nb_path = out / "book" / "executed" / study / "1-specify.ipynb"
    nb, outputs = _outputs(nb_path)
    assert not any(o.get("output_type") == "error" for o in outputs)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # cluster sizes + correlation heatmap
    html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "MathAch" in html and "icc" in html and "primary key" in html
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and all("remove-cell" in c["metadata"]["tags"] for c in injected)
    assert f'study = "{study}"' in "".join(injected[0]["source"])
    run_dir = out / "runs" / study / "quick" / "1-specify"
    assert (run_dir / "data" / "students.csv").is_file() and (run_dir / "icc.csv").is_file()


@pytest.mark.slow
def test_book_built_with_every_stage_page(quick_book):
    out, index = quick_book
    assert index == out / "_build" / "html" / "index.html" and index.is_file()
    for study in ("hsb-prediction", "hsb-recovery", "exam-prediction"):
        for stage in st.DEFAULT_STAGES:
            page = out / "_build" / "html" / "book" / "executed" / study / f"{stage}.html"
            assert page.is_file(), page
    stage1 = (out / "_build" / "html" / "book" / "executed" / "hsb-prediction" / "1-specify.html").read_text()
    assert "Stage 1" in stage1 and "<img" in stage1 and "injected-parameters" not in stage1
    for study in ("hsb-causal", "hsb-generators"):
        for stage in st.load(study, "quick", ROOT).stages:
            assert (out / "_build" / "html" / "book" / "executed" / study / f"{stage}.html").is_file(), (study, stage)
    causal = (out / "_build" / "html" / "book" / "executed" / "hsb-causal" / "5-evaluate.html").read_text()
    assert "IPW has a larger MSE than AIPW" in causal and "AIPW (multilevel)" in causal
    compared = (out / "_build" / "html" / "book" / "executed" / "hsb-generators" / "3-quality.html").read_text()
    assert "Compared with the second paper" in compared and "tabular-transformer" in compared
    assert "this study has no Stage 4" in compared


@pytest.mark.slow
def test_stray_files_are_not_pages_and_kernels_leave_no_sockets(quick_book):
    out, _ = quick_book
    html = out / "_build" / "html"
    assert not (html / "notes.html").exists() and not (html / ".pytest_cache").exists()
    assert not list(html.rglob("*checkpoint*.html")) and not (html / "scratch.html").exists()
    assert not list(out.glob("kernel-ipc*")) and not list(ROOT.glob("kernel-ipc*"))


@pytest.mark.slow
def test_book_reads_offline_with_mathjax_shipped(quick_book):
    out, _ = quick_book
    html = out / "_build" / "html"
    page = (html / "book" / "executed" / "hsb-recovery" / "5-evaluate.html").read_text()
    assert "cdn.jsdelivr" not in page and "_static/mathjax/tex-mml-chtml.js" in page
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 1_000_000
    assert len(list((html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))) >= 20


@pytest.mark.slow
def test_build_again_without_rerunning_notebooks(quick_book):
    from mlsimkit.cli import main

    out, index = quick_book
    executed = sorted((out / "book" / "executed").rglob("*.ipynb"))
    stamps = [p.stat().st_mtime_ns for p in executed]
    page = out / "_build" / "html" / "book" / "intro.html"
    page.unlink()
    assert main(["build", "--out", str(out)]) == 0
    assert page.is_file() and [p.stat().st_mtime_ns for p in executed] == stamps


def test_failed_build_says_how_to_rebuild_without_rerunning(tmp_path):
    from mlsimkit.runner import BookBuildFailed, build_book

    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nSee {doc}`no-such-page`.\n")
    with pytest.raises(BookBuildFailed) as info:
        build_book(tmp_path, log=lambda *_: None)
    msg = str(info.value)
    assert "no-such-page" in msg and f"mlsimkit build --out {tmp_path}" in msg
    assert "rebuild the book without re-running them" in msg


@pytest.mark.slow
def test_failing_notebook_is_named_with_its_cell(tmp_path):
    """A notebook that raises stops the run with the notebook, the study, the cell and the error; its partly
    executed copy is kept beside, never under the book's name (a template that fails at run time: a broken
    params file no longer gets that far, see the next test)."""
    import nbformat

    from mlsimkit.runner import execute

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell('study = "x"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('the data are odd')")]
    template = tmp_path / "1-specify.ipynb"
    nbformat.write(nb, template)
    target = tmp_path / "book" / "executed" / "broken" / "1-specify.ipynb"
    with pytest.raises(NotebookFailed) as info:
        execute(template, target, {"study": "broken", "profile": "quick"}, cwd=tmp_path, log=lambda *_: None)
    msg = str(info.value)
    assert "1-specify.ipynb" in msg and "study 'broken'" in msg and "raise ValueError('the data are odd')" in msg
    assert "ValueError: the data are odd" in msg
    assert (target.parent / "1-specify.failed.ipynb").is_file() and not target.exists()


def test_one_study_in_a_fresh_clone_runs_and_says_the_book_is_not_built(tmp_path):
    """`make book STUDY=x` in a fresh clone: the other studies have no pages, so `jupyter-book -W` would refuse the
    book after all the work (the paper profile of one study ran 90 minutes, then failed there). The run says so
    before the first notebook, executes its notebooks and skips the build, naming the missing studies."""
    lines = []
    index = run("hsb-recovery", "quick", root=ROOT, out=tmp_path, stages=["1-specify"], log=lines.append)
    assert index is None
    assert (tmp_path / "book" / "executed" / "hsb-recovery" / "1-specify.ipynb").is_file()
    assert not (tmp_path / "_build").exists()
    first_notebook = next(i for i, line in enumerate(lines) if "running" in line)
    notes = [i for i, line in enumerate(lines) if "the book will not be built" in line]
    assert notes and notes[0] < first_notebook
    assert "hsb-prediction" in lines[notes[0]] and "make book" in lines[notes[0]]
    assert "hsb-recovery/2-train" not in lines[notes[0]]  # its own later stages: named by study, not by page
    assert "the book was not built" in lines[-1] and f"mlsimkit build --out {tmp_path}" in lines[-1]


def test_bad_params_stop_the_run_before_any_notebook(tmp_path):
    out = tmp_path / "out"
    (out / "params").mkdir(parents=True)
    spec = yaml.safe_load((ROOT / "params" / "hsb-prediction.yml").read_text())
    spec.update(study="broken", stages=["1-specify"], schema="nowhere/schema.yml")
    del spec["dataset"]
    (out / "params" / "broken.yml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ParamsError, match=r"(?s)study 'broken'.*key 'schema': schema file .*nowhere/schema.yml' not found"):
        run("broken", "quick", root=ROOT, out=out, build=False, log=lambda *_: None)
    assert not (out / "book" / "executed").exists()


def test_missing_artifact_names_the_notebook_to_run_first(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "notebooks").mkdir()
    s = st.load("hsb-prediction", "quick", tmp_path)
    with pytest.raises(MissingArtifactError, match=r"run notebook '2-train' for study 'hsb-prediction'"):
        s.require("models/clavaddpm.mlsim", made_by="2-train")


def test_params_errors(tmp_path):
    shutil.copytree(ROOT / "params", tmp_path / "params")
    with pytest.raises(ParamsError, match="profile"):
        st.load("hsb-prediction", "huge", tmp_path)
    with pytest.raises(ParamsError, match="params file of study 'nope' not found"):
        st.load("nope", "quick", tmp_path)
    s = st.load("hsb-prediction", "quick", tmp_path)
    with pytest.raises(ParamsError, match="parameter 'no_such' is not set for profile 'quick'"):
        s["no_such"]


def test_source_notebooks_have_parameters_cell_and_no_outputs():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0]["metadata"].get("tags", []), path
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), path
        assert not any("def " in "".join(c["source"]) for c in code), f"{path}: logic belongs in mlsimkit"


def test_all_means_the_studies_of_the_book():
    from mlsimkit.runner import book_studies

    assert book_studies(ROOT) == ["hsb-prediction", "hsb-recovery", "exam-prediction", "hsb-causal", "hsb-generators"]
    assert "hsls-prediction" in st.available(ROOT)  # a params file, but not part of the default book


def test_user_supplied_data_missing_says_where_to_put_it():
    from mlsimkit.errors import DataValidationError

    s = st.load("hsls-prediction", "quick", ROOT)
    if (ROOT / "data" / "hsls" / "schools.csv").exists():
        pytest.skip("the HSLS files are present on this machine")
    with pytest.raises(DataValidationError, match=r"schools\.csv.*file not found.*save them as data/hsls/students\.csv"):
        s.data()


@pytest.mark.slow
@pytest.mark.parametrize("study", ["hsb-prediction", "hsb-recovery", "exam-prediction"])
def test_study_artifacts_complete(quick_book, study):
    import pandas as pd

    out, _ = quick_book
    s = st.load(study, "quick", out)
    run_dir = out / "runs" / study / "quick"
    assert (run_dir / "2-train" / "models" / "clavaddpm.mlsim").is_file()
    choice = json.loads((run_dir / "3-quality" / "choice.json").read_text())
    assert choice["best"] in s["generators"]
    res = pd.read_parquet(run_dir / "4-simulate" / "results.parquet")
    sim = s["simulation"]
    n_methods = 3 if s.objective == "prediction" else 5
    for src, sub in res.groupby("source"):
        assert sorted(sub["n_schools"].unique()) == sorted(sim["n_schools"]), src
        per = sub.groupby(["n_schools", "method"])["rep"].nunique()
        assert len(per) == len(sim["n_schools"]) * n_methods and (per == sim["reps"]).all(), src
        assert sub["status"].notna().all()
    summary = pd.read_csv(run_dir / "5-evaluate" / "summary.csv")
    assert {"fail_rate", "pmse" if s.objective == "prediction" else "coverage"} <= set(summary["measure"])
    assert summary["mcse"].notna().any()
    truth = pd.read_csv(run_dir / "4-simulate" / "truth.csv")
    if s.objective == "recovery":  # the traditional replica's true values (Huang et al.: 5 and 2)
        trad = truth[truth["source"] == "traditional"].set_index("parameter")["true_value"]
        assert trad["X"] == 5 and trad["W1"] == 2
    scen = pd.read_csv(run_dir / "6-robustness" / "quality.csv")["scenario"].unique()
    assert set(scen) == {"original", "no-decomposition", "half-schools", "fewer-groups"}
