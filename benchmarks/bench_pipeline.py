"""Stage times of whole builds: each study's six stages under the quick and default (or any) profiles.

    .venv/bin/python benchmarks/bench_pipeline.py                       # quick and default, every study
    .venv/bin/python benchmarks/bench_pipeline.py --profiles quick --studies hsb-prediction hsb-recovery
    .venv/bin/python benchmarks/bench_pipeline.py --from . --profiles default paper   # read a build, run nothing

With no ``--from``, each (profile, study) runs from scratch with ``mlsimkit run --no-build --out`` into a
fresh folder per profile (its own ``runs/``, so no trained model is reused from an earlier build; the
studies of one profile share that folder's model cache, as they do in ``make book``). The stage times are
the runner's own records (``runs/<study>/<profile>/timings.json``, :mod:`mlsimkit.cost`), the same numbers the
last page of each study shows; the book build itself (``jupyter-book``) is not timed. ``--from DIR`` reads
the records an earlier build left under ``DIR/runs`` (``make book`` writes them into the project root).

Prints one table per profile (seconds per stage, total per study, the sum) and the machine; a study or stage
without a record shows an empty cell. Not a pass/fail test: the numbers depend on how many cores are free.

Measured 2026-12-04 on the 2-core machine, idle, ``--profiles default --studies hsb-prediction hsb-recovery``,
two runs one after the other (seconds; notebooks only, the book build not counted):

==============  =========  =========  =========  ==========  ==========  ============  =========
study           1-specify  2-train    3-quality  4-simulate  5-evaluate  6-robustness  total
==============  =========  =========  =========  ==========  ==========  ============  =========
hsb-prediction  3.0 / 2.8  93 / 101   33 / 35    109 / 115   6.9 / 7.8   93 / 102      338 / 363
hsb-recovery    2.8 / 2.9  5.8 / 6.0  35 / 35    66 / 66     5.9 / 6.1   72 / 76       187 / 192
==============  =========  =========  =========  ==========  ==========  ============  =========

Wall time of the two demonstrations: 531 s and 561 s (issue 15's target for the default profile: 12 minutes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from mlsimkit import cost
from mlsimkit import study as study_mod
from mlsimkit.runner import book_studies


def stage_seconds(root: Path, studies, profile: str) -> pd.DataFrame:
    """Seconds per (study, stage) from the timing records under ``root/runs`` (missing: NaN); a stage
    that started but did not finish is left empty too."""
    rows = {}
    for name in studies:
        rec = cost.timings(root / "runs" / name / profile)
        rows[name] = {stage: r.get("seconds") for stage, r in rec.items()}
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(list(studies)).astype(float)
    table = table.reindex(columns=sorted(table.columns))
    table["total"] = table.sum(axis=1, min_count=1)
    table.loc["all studies"] = table.sum(axis=0, min_count=1)
    return table.round(1)


def run_profile(root: Path, out: Path, studies, profile: str) -> float:
    """Run every study of ``studies`` under ``profile`` into ``out`` (notebooks only); wall seconds."""
    t0 = time.perf_counter()
    for name in studies:
        cmd = [sys.executable, "-m", "mlsimkit", "run", "--study", name, "--profile", profile,
               "--root", str(root), "--out", str(out), "--no-build"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["quick", "default"])
    ap.add_argument("--studies", nargs="+", default=None, help="default: every study of the book (_toc.yml)")
    ap.add_argument("--from", dest="source", default=None,
                    help="read the timing records of a build in this folder instead of running")
    ap.add_argument("--keep", default=None, help="run into this folder (kept) instead of a temporary one")
    args = ap.parse_args(argv)

    root = study_mod.find_root()
    studies = args.studies or book_studies(root)
    for profile in args.profiles:
        if args.source:
            where, wall = Path(args.source).resolve(), None
        else:
            base = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="mlsimkit-bench-"))
            where = base / profile
            wall = run_profile(root, where, studies, profile)
        table = stage_seconds(where, studies, profile)
        print(f"\nProfile '{profile}': seconds per stage ({where}/runs)"
              + (f"; wall time of the runs, notebooks only: {wall:.0f} s" if wall is not None else ""))
        print(table.to_string(na_rep=""))
    print(f"\nMachine: {cost.machine()}")


if __name__ == "__main__":
    main()
