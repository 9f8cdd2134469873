"""``mlsimkit new STUDY --data FOLDER_OR_CSV --outcome COLUMN``: a first draft of a study from a data file.

From one CSV (students in rows, school variables repeated: the join-as-one layout), or a folder holding one,
it writes

* ``data/<study>/`` — a copy of the data (with a ``row_id`` column added when no column identifies a row)
  and a draft ``schema.yml``: the cluster key (``--cluster``, or the column with most other columns constant
  within its groups), the school / student split (a column constant within every school is a school
  variable), and kinds (two values: binary; other numbers: numerical; up to 30 text values: categorical;
  other text, and ``--id`` columns: identifiers);
* ``params/<study>.yml`` — the analysis model of the chosen objective (``--objective``, default
  ``prediction``) for that outcome, the other objective's model as a comment ready to swap in, the two
  generators, the simulation and ablation designs and the three profiles (quick, default, paper);
* ``book/<study>.md`` — the study's introduction page; and the study's part of ``_toc.yml``
  (:func:`mlsimkit.toc.add_study`).

The draft model uses every predictor except those that would make the fits rank-deficient: a variable whose
columns (a categorical's dummies) are linear combinations of earlier ones is left out, and, for recovery, a
school variable that is almost a school mean of a student variable (|r| > 0.95: the IGM models add those
means). Each choice is written as a comment in the params file. Then ``mlsimkit check --study <study>``
passes, and ``mlsimkit run --study <study> --profile quick`` gives a first book.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .errors import MlsimkitError, ParamsError
from .io import write_text

MAX_LEVELS = 30
ROW_ID = "row_id"


def _read(data: Path) -> tuple[pd.DataFrame, Path]:
    if data.is_dir():
        csvs = sorted(data.glob("*.csv"))
        if len(csvs) != 1:
            raise MlsimkitError(f"folder '{data}': expected exactly one CSV file (students in rows, school "
                                f"variables repeated), found {[c.name for c in csvs]}")
        data = csvs[0]
    if not data.is_file():
        raise MlsimkitError(f"--data '{data}': no such file or folder")
    from .data import NA_TOKENS

    return pd.read_csv(data, dtype=str, keep_default_na=False, na_values=NA_TOKENS), data


def _numeric(s: pd.Series) -> pd.Series | None:
    x = pd.to_numeric(s, errors="coerce")
    return x if x[s.notna()].notna().all() else None


def infer_cluster(frame: pd.DataFrame, exclude=()) -> str:
    """The column with the most other columns constant within its groups (among columns with 2 to n/2 values)."""
    n = len(frame)
    best, score = None, 0
    for c in frame.columns:
        if c in exclude or not 2 <= frame[c].nunique() <= n // 2:
            continue
        per = frame.groupby(c, sort=False).nunique(dropna=False).max()
        s = int((per.drop(labels=[c], errors="ignore") <= 1).sum())
        if s > score:
            best, score = c, s
    if best is None:
        raise MlsimkitError("no column looks like the school identifier (no column has other columns constant "
                            "within its groups); name it with --cluster COLUMN")
    return best


def draft_schema(frame: pd.DataFrame, name: str, outcome: str, cluster: str, ids=(), file: str = "data.csv") -> dict:
    """A schema mapping (:meth:`mlsimkit.schema.Schema.from_dict`) inferred from a join-as-one table."""
    for c in (outcome, cluster, *ids):
        if c not in frame.columns:
            raise MlsimkitError(f"column '{c}' is not in the data; columns: {list(frame.columns)}")
    n = len(frame)
    row_id = next((c for c in frame.columns if c not in (cluster, outcome) and frame[c].notna().all()
                   and frame[c].nunique() == n), ROW_ID)
    const = frame.groupby(cluster, sort=False).nunique(dropna=False).max() <= 1
    school = {cluster: {"kind": "id", "description": "school identifier"}}
    student = {row_id: {"kind": "id", "description": "row identifier"}, cluster: {"kind": "id"}}
    for c in frame.columns:
        if c in (cluster, row_id):
            continue
        s = frame[c]
        num = _numeric(s)
        values = sorted(s.dropna().unique(), key=(lambda v: float(v)) if num is not None else str)
        if c in ids:
            col = {"kind": "id"}
        elif len(values) == 2:
            col = {"kind": "binary", "levels": [str(v) for v in values]}
        elif num is not None:
            col = {"kind": "numerical"}
        elif len(values) <= MAX_LEVELS:
            col = {"kind": "categorical", "levels": [str(v) for v in values]}
        else:
            col = {"kind": "id"}
        col["description"] = "(describe me)" if col["kind"] != "id" else "identifier"
        (school if const.get(c, False) and c != outcome and col["kind"] != "id" else student)[c] = col
    if student.get(outcome, {}).get("kind") != "numerical":
        raise MlsimkitError(f"--outcome '{outcome}': expected a numerical student-level column, found "
                            f"{student.get(outcome, school.get(outcome))}")
    return {"name": name, "description": f"Draft written by mlsimkit new from {file}: check kinds, levels and "
                                         "descriptions.",
            "missing": "drop_rows" if frame.isna().any().any() else "error", "extra_columns": "error",
            "join_as_one": file,
            "tables": {"schools": {"primary_key": cluster, "columns": school},
                       "students": {"primary_key": row_id, "parent": "schools", "foreign_key": cluster,
                                    "columns": student}}}


def _columns(frame: pd.DataFrame, name: str, spec: dict) -> np.ndarray:
    if spec["kind"] == "numerical":
        x = pd.to_numeric(frame[name], errors="coerce").to_numpy(float)
        return ((x - np.nanmean(x)) / (np.nanstd(x) or 1.0))[:, None]
    levels = spec["levels"]
    return np.column_stack([(frame[name] == lv).to_numpy(float) for lv in levels[1:]])


def _screen(frame: pd.DataFrame, candidates: list[tuple[str, dict]], notes: list[str]) -> list[str]:
    """The candidates whose columns add to the rank of the design (intercept first), in order."""
    kept, X = [], np.ones((len(frame), 1))
    for name, spec in candidates:
        Z = np.column_stack([X, _columns(frame, name, spec)])
        if np.linalg.matrix_rank(np.nan_to_num(Z), tol=1e-8 * len(frame)) == Z.shape[1]:
            kept.append(name)
            X = Z
        else:
            notes.append(f"{name} left out: a linear combination of the predictors before it")
    return kept


def draft_models(frame: pd.DataFrame, schema: dict, outcome: str) -> tuple[dict, dict | None, list[str]]:
    """(prediction model, recovery model or None, notes) for ``outcome``."""
    sch, stu = schema["tables"]["schools"]["columns"], schema["tables"]["students"]["columns"]
    notes: list[str] = []
    cand = [(c, s) for c, s in stu.items() if s["kind"] != "id" and c != outcome]
    cand += [(c, s) for c, s in sch.items() if s["kind"] != "id"]
    kept = _screen(frame.dropna(), cand, notes)
    student = [c for c in kept if c in stu]
    school = [c for c in kept if c in sch]
    y = pd.to_numeric(frame[outcome], errors="coerce")
    corr = {c: abs(pd.to_numeric(frame[c], errors="coerce").corr(y)) for c in student if stu[c]["kind"] == "numerical"}
    slope = max(corr, key=corr.get) if corr else None
    prediction = {"outcome": outcome, "student": student, "school": school, "random_slope": slope,
                  "interactions": [], "reml": True}
    # recovery: drop school variables that are (almost) school means of a numerical student variable
    key = schema["tables"]["schools"]["primary_key"]
    means = frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce") for c in corr}).groupby(key)[list(corr)].mean()
    firsts = frame.groupby(key).first()
    rec_school = []
    for c in school:
        if sch[c]["kind"] == "numerical":
            w = pd.to_numeric(firsts[c], errors="coerce")
            close = [s for s in corr if abs(w.corr(means[s])) > 0.95]
            if close:
                notes.append(f"{c} left out of the recovery model: it is almost the school mean of {close[0]} "
                             f"(the IGM models add that mean)")
                continue
        rec_school.append(c)
    num_school = [c for c in rec_school if sch[c]["kind"] == "numerical"]
    if len(rec_school) < 2 or not student:
        notes.append("no recovery model: it needs a student predictor and two school variables (one reported, "
                     "one omitted)")
        return prediction, None, notes
    if num_school:
        rs = {c: abs(pd.to_numeric(firsts[c], errors="coerce").corr(
            frame.groupby(key)[outcome].apply(lambda v: pd.to_numeric(v, errors="coerce").mean()))) for c in num_school}
        reported = max(rs, key=rs.get)
    else:
        reported = rec_school[0]
    others = [c for c in rec_school if c != reported]
    omitted = others[0]
    rep_student = slope or student[0]
    report = {rep_student if stu[rep_student]["kind"] == "numerical" else
              f"{rep_student}[T.{stu[rep_student]['levels'][1]}]": "student",
              reported if sch[reported]["kind"] == "numerical" else
              f"{reported}[T.{sch[reported]['levels'][1]}]": "school"}
    recovery = {"outcome": outcome, "student": student, "school": rec_school, "omitted": [omitted],
                "report": report, "reml": True}
    return prediction, recovery, notes


PROFILES = {
    "quick": {"generators": {"clavaddpm": {"steps": 200, "school_steps": 200, "classifier_steps": 100,
                                           "sample_steps": 10, "hidden": [64, 64]}, "ctgan": {"epochs": 2}},
              "quality": {"n_synthetic": 1, "reference_splits": 2, "efficacy": False},
              "simulation": {"n_schools": [10, 25], "reps": 3, "backend": "serial"},
              "ablation": {"reps": 3, "quality": {"candidates": 1, "efficacy": False}}},
    "default": {},
    "paper": {"generators": {"clavaddpm": {"steps": 20000, "sample_steps": 200}, "ctgan": {"epochs": 1600}},
              "quality": {"n_synthetic": 10}, "simulation": {"reps": 500},
              "ablation": {"reps": 500, "quality": {"candidates": 10, "efficacy": "full"}}},
}


def draft_params(study: str, schema_path: str, objective: str, models: dict, n_schools: int, outcome: str) -> dict:
    groups = max(2, round(n_schools / 16))
    trad = ({"n_per_school": 25, "extra_holdout": False, "icc": 0.2, "sigma2": 0.5, "r": 0.25,
             "gamma": [1.0, 1.0, 1.0, 1.0], "reml": False} if objective == "prediction" else {})
    sources = ["best", "traditional"]
    design = [n for n in (10, 25, 50, 100, 200) if n <= max(25, 2 * n_schools)]
    return {
        "study": study, "title": f"{study}: {objective} of {outcome}", "schema": schema_path, "objective": objective,
        "description": f"A study drafted by mlsimkit new: {objective} of {outcome} with synthetic schools learned "
                       f"from this data set ({n_schools} schools).",
        "stages": ["1-specify", "2-train", "3-quality", "4-simulate", "5-evaluate", "6-robustness"],
        "model": models[objective],
        "common": {"seed": 2026,
                   "generators": {"clavaddpm": {"n_groups": groups, "decompose": True, "n_threads": 1},
                                  "ctgan": {"alignment": "clca", "epochs": 50}},
                   "quality": {"n_synthetic": 3},
                   "simulation": {"generator": "best", "sources": sources, "n_schools": design, "reps": 100,
                                  "backend": "loky", "n_jobs": 2},
                   "traditional": trad,
                   "ablation": {"generator": "clavaddpm",
                                "scenarios": {"no-decomposition": {"decompose": False},
                                              "half-schools": {"train_fraction": 0.5},
                                              "fewer-groups": {"n_groups": max(2, groups // 2)}},
                                "n_schools": min(50, max(10, n_schools)), "reps": 100,
                                "quality": {"candidates": 3, "efficacy": "fast"}}},
        "profiles": PROFILES,
    }


def new(study: str, data: str | Path, outcome: str, *, root: str | Path, cluster: str | None = None, ids=(),
        objective: str = "prediction", force: bool = False, log=print) -> dict:
    """Write the draft study (see the module docstring); returns ``{what: path}``."""
    from . import toc
    from .study import params_file

    root = Path(root)
    if objective not in ("prediction", "recovery"):
        raise ParamsError(f"--objective: expected 'prediction' or 'recovery', got {objective!r}")
    if not study.replace("-", "").replace("_", "").isalnum():
        raise ParamsError(f"study name {study!r}: use letters, digits, '-' and '_'")
    pfile = params_file(study, root)
    folder = root / "data" / study
    if not force and (pfile.exists() or folder.exists()):
        raise ParamsError(f"study '{study}' exists ('{pfile}' or '{folder}'); choose another name or pass --force")
    frame, src = _read(Path(data))
    if outcome not in frame.columns:
        raise MlsimkitError(f"--outcome '{outcome}' is not a column of '{src}'; columns: {list(frame.columns)}")
    cluster = cluster or infer_cluster(frame, exclude=(outcome, *ids))
    schema = draft_schema(frame, study, outcome, cluster, ids, src.name)
    pk = schema["tables"]["students"]["primary_key"]
    if pk == ROW_ID and ROW_ID not in frame.columns:
        frame.insert(0, ROW_ID, [str(i + 1) for i in range(len(frame))])
    prediction, recovery, notes = draft_models(frame, schema, outcome)
    if objective == "recovery" and recovery is None:
        raise MlsimkitError(f"no recovery model can be drafted for '{src.name}': " + notes[-1])
    models = {"prediction": prediction, "recovery": recovery}
    folder.mkdir(parents=True, exist_ok=True)
    with_id = pk == ROW_ID
    if with_id:
        frame.to_csv(folder / src.name, index=False)
    else:
        shutil.copy2(src, folder / src.name)
    write_text(folder / "schema.yml", f"# Draft schema written by `mlsimkit new` from {src.name}: check it.\n"
               + yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=110))
    params = draft_params(study, f"data/{study}/schema.yml", objective, models, int(frame[cluster].nunique()), outcome)
    other = "recovery" if objective == "prediction" else "prediction"
    header = [f"# Drafted by `mlsimkit new {study} --data {src.name} --outcome {outcome}`: edit freely, then run",
              f"# `mlsimkit check --study {study}` and `mlsimkit run --study {study} --profile quick`."]
    header += [f"# Model note: {n}." for n in notes]
    text = "\n".join(header) + "\n" + yaml.safe_dump(params, sort_keys=False, allow_unicode=True, width=110)
    if models[other] is not None:
        text += (f"# The {other} model for the same outcome (set objective: {other} and use it as model:):\n"
                 + "".join(f"# {line}\n" for line in yaml.safe_dump({"model": models[other]}, sort_keys=False).splitlines()))
    write_text(pfile, text)
    page = root / "book" / f"{study}.md"
    if force or not page.exists():
        write_text(page, f"# {params['title']}\n\n{params['description']}\n\nDrafted with `mlsimkit new` from "
                         f"`{src.name}`; the params file `params/{study}.yml` says everything this study does. "
                         "The pages below are its six stages, executed for this build.\n")
    toc.add_study(study, root)
    out = {"data": folder / src.name, "schema": folder / "schema.yml", "params": pfile, "page": page,
           "toc": root / "_toc.yml"}
    for k, v in out.items():
        log(f"[mlsimkit] wrote {k}: {v}")
    return out
