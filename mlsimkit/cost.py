"""The cost of a build: wall time per stage, what each stage produced, and the machine it ran on.

The runner (:mod:`mlsimkit.runner`) records each stage notebook's start and wall time in
``runs/<study>/<profile>/timings.json`` (:func:`record`); the last stage's page ends with
:func:`cost_table`, so a reader of the book (or of a fork's book) sees what the numbers on its pages cost on
the machine that produced them. The stage that shows the table is still running: its time is given as
"so far". :func:`section` is what a stage page shows: the table on the study's last stage, a pointer to
it on the others. Counts come from the stages' files, not from settings: data sets are distinct (source, number of
schools, replication) triples in the simulation results, fits are result rows of distinct (data set,
method), failed and fallback fits included; a Stage 6 scenario whose rows are Stage 4's
(:func:`mlsimkit.workflow.stage4_rows`) is not counted twice.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

from .io import write_text

#: marker beside a Stage 6 scenario's results that are Stage 4's rows (written by mlsimkit.workflow.ablation)
REUSED = "reused-from-stage4.txt"

TIMINGS = "timings.json"


def record(run_dir: str | Path, stage: str, *, started: float | None = None, seconds: float | None = None) -> None:
    """Note that ``stage`` started (a Unix time) or finished after ``seconds`` of wall time."""
    data = timings(run_dir)  # a damaged record is rewritten, never trusted
    entry = data.setdefault(stage, {})
    if started is not None:
        entry.update(started=float(started), seconds=None)
    if seconds is not None:
        entry["seconds"] = float(seconds)
    write_text(Path(run_dir) / TIMINGS, json.dumps(data, indent=1))


def timings(run_dir: str | Path) -> dict:
    """``{stage: {"started": unix time, "seconds": wall time or None while running}}`` ({} when none)."""
    path = Path(run_dir) / TIMINGS
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def _fits(results_files) -> tuple[int, int]:
    """(data sets, fits) in simulation result files (a list of parquet paths)."""
    n_data = n_fits = 0
    for p in results_files:
        res = pd.read_parquet(p, columns=["source", "n_schools", "rep", "method"])
        n_data += len(res.drop_duplicates(["source", "n_schools", "rep"]))
        n_fits += len(res.drop_duplicates(["source", "n_schools", "rep", "method"]))
    return n_data, n_fits


def cores_available() -> int:
    """The CPU cores this process may run on (its affinity on Linux, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> str:
    """Cores available to this process, the CPU count, and the GPU (if torch sees one)."""
    avail = cores_available()
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        pass
    return f"{avail} of {os.cpu_count()} cores available, GPU: {gpu}, {platform.system()} {platform.machine()}, " \
           f"Python {platform.python_version()}"


def cost_table(study, now: float | None = None) -> pd.DataFrame:
    """One row per stage of ``study``: wall time (s), data sets generated and fits made in its simulations,
    fits per second; the stage still running shows its time so far. Stages without a record (a notebook
    run by hand, not by ``mlsimkit run``) show no time."""
    now = time.time() if now is None else now
    rec = timings(study.run_dir)
    sims = {"4-simulate": [study.path("4-simulate", "results.parquet")],
            "6-robustness": sorted(study.run_dir.glob("6-robustness/*/results.parquet")),
            "6-positivity": [study.path("6-positivity", "results.parquet")]}
    rows = []
    for stage in study.stages:
        r = rec.get(stage, {})
        secs, note = r.get("seconds"), ""
        if secs is None and r.get("started") is not None:
            secs, note = now - float(r["started"]), "so far (this page)"
        files = [p for p in sims.get(stage, []) if p.is_file()]
        reused = [p for p in files if (p.parent / REUSED).is_file()]
        n_data, n_fits = _fits([p for p in files if p not in reused]) if files else (None, None)
        if reused:
            note = (note + "; " if note else "") + "not counted: " + ", ".join(p.parent.name for p in reused) \
                + " (Stage 4's rows, reused)"
        rows.append({"stage": stage, "seconds": None if secs is None else round(float(secs), 1),
                     "data sets": n_data, "fits": n_fits,
                     "fits per second": round(n_fits / secs, 1) if n_fits and secs else None, "note": note})
    out = pd.DataFrame(rows)
    total = out["seconds"].sum(min_count=1)
    out = pd.concat([out, pd.DataFrame([{"stage": "total", "seconds": total, "data sets": out["data sets"].sum(min_count=1),
                                         "fits": out["fits"].sum(min_count=1), "note": ""}])], ignore_index=True)
    return out.astype({"data sets": "Int64", "fits": "Int64"})


def section(study, page: str):
    """What the page of stage ``page`` shows under "What this build cost": on the study's last stage, the
    cost table with the machine as its caption; on other stages, one sentence naming the page that has it."""
    from IPython.display import Markdown

    last = study.stages[-1]
    if page != last:
        return Markdown(f"The cost of the whole build of this study is at the end of its last stage, *{last}*.")
    return (cost_table(study).style.hide(axis="index").format(precision=1, na_rep="")
            .set_caption(f"Machine: {machine()}."))
