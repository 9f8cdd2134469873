"""Where Stage 4's time goes: cProfile of one study's sources at the default design, split per replication
into data generation, mixed-model fits and the rest.

    .venv/bin/python benchmarks/profile_stage4.py [--study hsb-prediction] [--reps 4] [--models DIR]

Runs every source of ``simulation.sources`` of the study's default profile (``best`` read as ``clavaddpm``)
serially over the default ``n_schools`` with ``--reps`` replications each, under cProfile, one thread
(the loky and Dask workers of a study run one each). Generators come from ``--models`` (``<name>.mlsim``
files, e.g. ``runs/<study>/default/2-train/models``); without it, small ones are trained first
(ClavaDDPM with 300/300/150 steps, CTGAN with 2 epochs: the architecture of the default profile, hence
its sampling cost, with little training). Nothing is written under the project.

Prints, per source, the wall time per replication and the cumulative time of: generate (of which the
generator's ``sample``), the mixed-model fits (``fit_lmm``: of which ``prepare``, the optimiser and the
Satterthwaite degrees of freedom), OLS / OLSFE, building the design matrices and the engine's shard table.
Not a pass/fail test; timings depend on how busy the machine is.

Measured 2026-12-03 (issue 15; 2 CPU cores, machine shared with other jobs, default-profile models of
hsb-prediction, ``--reps 4``; means over n_schools 10/25/50/100/300, whose 300-school condition dominates)

* Where the time goes. clavaddpm 256 ms per replication, of which ``sample`` 230 (90%); ctgan 340 ms,
  ``sample`` 309 (91%); traditional 32 ms, generate 6.5 (``sample`` 3.9, hold-out choice 2.1), the mixed-model
  fits 14.5. ``sample`` per call (medians): clavaddpm 60 / 96 / 164 / 316 / 729 ms and ctgan 70 / 119 / 165 /
  282 / 785 ms at 10 / 25 / 50 / 100 / 300 schools, i.e. about 40 ms fixed per call plus 2.3-2.4 ms per school:
  the fixed part is 13-16% of the generation time summed over the five sizes, the rest grows with the rows.
  Loading a model costs 4.4 s (clavaddpm) and 2.0 s (ctgan) once per worker process (already cached).
  clavaddpm at 300 schools (0.79 s): the 25 guided DDIM steps over the students (denoiser ``infer`` 0.40 s,
  classifier gradient 0.32 s, of which ``torch.softmax`` 0.10 s), ids 15 ms, threadpoolctl 5 ms, decoding and
  recomposition 20 ms. ctgan at 300 schools (1.09 s): CP-SAT 0.26 s (two categorical school variables), the
  network 0.23 s, Gumbel activations 0.23 s (half of it the exponential draws, two thirds of them for the
  discarded 160-category school column), ctgan's inverse transform 0.18 s.
* Changed (numbers unchanged, tested): ``torch_threads`` reuses one threadpoolctl controller (5 ms -> 0.04 ms
  per call); ``make_ids`` slices a cached array (traditional ``sample`` 2.0 -> 0.6 ms mean, 5.6 -> 1.2 ms at
  300 schools); CTGAN no longer decodes the school column it discards (inverse transform of 13,500 rows
  154 -> 107 ms); ``load_generator`` also reloads a model whose file changed.
* Before / after with this script on the shared machine (load 1.2-1.6 both times): clavaddpm 612 / 640,
  ctgan 747 / 716, traditional 45 / 42 ms per replication: for the neural sources within the machine's noise
  (the same ``before`` run measured 256 and 340 ms on a quieter machine an hour earlier). An in-process A/B
  alternating old and new call by call saves 2-7% of ``sample`` (two runs; clavaddpm and ctgan alike).
* Not done: sampling several replications in one batched call would save at most the fixed 13-16%, and rows of
  different replications would then share matrix products and vectorised kernels, whose rounding may depend
  on the batch's shape, so a replication's numbers could depend on the block size. Drawing the school column's
  Gumbel noise without transforming it (to keep the stream) saved nothing measurable. The remaining levers
  change the numbers: fewer DDIM steps, a cheaper softmax in the classifier gradient, not generating CTGAN's
  school column at all (its noise shifts every later column's stream), or a specialised CLCA solver.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

#: (label, file part, function name): cumulative times reported per source.
PARTS = [
    ("generate", "demonstrations.py", ("generate_synthetic", "generate_traditional_prediction", "recovery_generate",
                                       "generate_traditional_recovery")),
    ("  generator sample", "", ("sample",)),
    ("  hold-out choice", "methods.py", ("choose_holdout",)),
    ("mixed-model fits", "_model.py", ("fit_lmm",)),
    ("  prepare (suff. stats)", "_model.py", ("prepare",)),
    ("  optimise RI", "_core.py", ("optimize_ri",)),
    ("  optimise general", "_core.py", ("optimize_general",)),
    ("  Satterthwaite df", "_model.py", ("satterthwaite_df",)),
    ("OLSFE rule", "methods.py", ("olsfe_rule",)),
    ("OLS fits", "methods.py", ("ols",)),
    ("design matrices", "methods.py", ("build_design",)),
    ("engine shard table", "engine.py", ("_shard_frame",)),
]


def train_small(out: Path, names) -> None:
    import mlsimkit.datasets as ds
    import mlsimkit.generators as G

    data = ds.load("hsb")
    settings = {"clavaddpm": dict(n_groups=10, decompose=True, n_threads=1, steps=300, school_steps=300,
                                  classifier_steps=150),
                "ctgan": dict(alignment="clca", epochs=2)}
    for name in names:
        t0 = time.perf_counter()
        G.make(name, **settings[name]).fit(data).save(out / f"{name}.mlsim")
        print(f"trained a small {name} in {time.perf_counter() - t0:.0f} s", flush=True)


def cumulative(stats: pstats.Stats, file_part: str, funcs) -> float:
    best = 0.0
    for (f, _, fn), (_, _, _, ct, _) in stats.stats.items():
        if fn in funcs and file_part in f:
            best = max(best, ct)  # the outermost call (recursion and nesting counted once)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="hsb-prediction")
    ap.add_argument("--reps", type=int, default=4, help="replications per number of schools")
    ap.add_argument("--models", type=Path, help="folder with <generator>.mlsim files (default: train small ones)")
    a = ap.parse_args()

    import mlsimkit.datasets as ds
    import mlsimkit.study as st
    from mlsimkit import objectives
    from mlsimkit.simulate import run

    study = st.load(a.study, "default", ROOT)
    obj = objectives.get(study.objective)
    data = ds.load(study.spec["dataset"])
    sizes = study["simulation"]["n_schools"]
    names = ["clavaddpm" if s == "best" else s for s in study["simulation"]["sources"]]
    with tempfile.TemporaryDirectory() as tmp:
        models = a.models or Path(tmp)
        if a.models is None:
            train_small(models, [n for n in names if n not in obj.SOURCES])
        fixed = obj.prepare(study, data)
        print(f"\n{a.study}: n_schools {sizes}, {a.reps} replications each, serial, one thread")
        for name in names:
            path = None if name in obj.SOURCES else models / f"{name}.mlsim"
            gen, methods, _ = obj.source(study, data, name, path, fixed)
            run({"n_schools": sizes[:1]}, gen, methods, reps=1, seed=1)  # load the model, import, warm
            prof = cProfile.Profile()
            t0 = time.perf_counter()
            prof.enable()
            run({"n_schools": sizes}, gen, methods, reps=a.reps, seed=int(study["seed"]))
            prof.disable()
            wall = time.perf_counter() - t0
            stats = pstats.Stats(prof)
            n = a.reps * len(sizes)
            print(f"\n== source {name}: {n} replications, {wall:.1f} s, {1000 * wall / n:.0f} ms per replication")
            print(f"   {'part':26s} {'ms/rep':>8s} {'share':>6s}")
            for label, part, funcs in PARTS:
                v = cumulative(stats, part, funcs)
                if v > 0:
                    print(f"   {label:26s} {1000 * v / n:8.1f} {100 * v / wall:5.1f}%")
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(6)
            print("   top functions by own time:")
            for line in buf.getvalue().splitlines():
                if line.strip()[:1].isdigit() and "(" in line:
                    print("   " + line.strip())


if __name__ == "__main__":
    main()
