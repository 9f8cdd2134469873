"""Time of the Stage 3 quality report on HSB-sized data (160 schools, 7,185 students), on the cores available.

    .venv/bin/python benchmarks/bench_quality.py [--k 1] [--splits 5] [--bootstrap 20]
    .venv/bin/python benchmarks/bench_quality.py --n-jobs 1 2 [--k 2] [--splits 2] [--bootstrap 4] [--repeat 2]

Without ``--n-jobs`` it prints: the full report without ML efficacy (one synthetic data set, the real-vs-real
reference with ``--splits`` halvings, ``--bootstrap`` draws over schools, figures and HTML), target <= 30 s on 2
cores; and ML efficacy alone (fast and full settings; built-in and mlsimkit.lmm mixed-model engines). The
"synthetic" data set is a bootstrap of real schools (the metric cost does not depend on the generator).

With ``--n-jobs`` it times ``quality.evaluate`` as Stage 3 calls it (``--k`` candidates of each of two
generators, parametric and school bootstrap, with their hold-out models' data sets; efficacy "fast"; the
reference splits, one of them with efficacy; the bootstrap draws) once per value of ``--n-jobs``, the values
alternating ``--repeat`` times so that a change in the machine's load falls on both; it prints the wall time of
each run and of each part, the ratio to the first value, and checks that every run gives the first run's table.

Measured 2026-12-04 with ``--n-jobs 1 2 --k 2 --splits 2 --bootstrap 4 --repeat 2``, 2 cores, the other jobs of
the machine paused for the run (load average 1.3-1.4: the benchmark itself):

=========  ==============  ==============  =============================================================
n_jobs     wall (s), runs  CPU (s), runs   parts in the second round (s)
=========  ==============  ==============  =============================================================
1          9.7, 9.7        9.8, 9.7        candidates 2.8, their efficacy 2.8, reference 1.2 + 1.1, boot 1.6
2          7.6, 6.5        13.1, 10.9      candidates 1.6, their efficacy 2.0, reference 0.7 + 1.2, boot 1.0
=========  ==============  ==============  =============================================================

n_jobs=2 ran at 1.37x the speed of n_jobs=1 (mean wall 7.1 s against 9.7 s; 1.49x in the second round, whose pool
was already started: the first round's includes starting the two workers, about 2 s of CPU). Not 2x: the extra
CPU of the pool (the workers' start and the real data's TRTR fits of ML efficacy, made once per worker instead of
once, about 1.3 s) and the single reference split with efficacy, which one worker runs alone. The tables were
identical in all four runs. On the same machine kept busy by a book build (two processes at about 80 %, load
average 2.6-3.3), n_jobs=2 ran at 0.79x: with no free core the two workers together get the share one process
already gets, and only the pool's extra CPU remains.
"""

import argparse
import os
import tempfile
import time

import numpy as np

import mlsimkit.datasets as ds
from mlsimkit import quality
from mlsimkit.cost import cores_available
from mlsimkit.quality._common import resample_schools
from mlsimkit.quality.efficacy import _mixed_engine, efficacy_rows

ap = argparse.ArgumentParser()
ap.add_argument("--k", type=int, default=1)
ap.add_argument("--splits", type=int, default=5)
ap.add_argument("--bootstrap", type=int, default=20)
ap.add_argument("--n-jobs", type=int, nargs="+", help="time quality.evaluate as Stage 3 calls it with these n_jobs")
ap.add_argument("--repeat", type=int, default=2, help="with --n-jobs: rounds over the n_jobs values")
args = ap.parse_args()

real = ds.load("hsb")


def compare_n_jobs(real, values, k, splits, boot, repeat):
    """Stage 3's call of quality.evaluate, timed per n_jobs value (alternating), with its tables compared."""
    import pandas as pd

    import mlsimkit.generators as G
    from mlsimkit import workflow as wf

    train, hold = quality.holdout_split(real, 0.2, np.random.default_rng(0))
    names = ("parametric", "bootstrap")
    syn = wf.candidates({n: G.make(n).fit(real) for n in names}, real.n_clusters, k, seed=1)
    held = wf.candidates({n: G.make(n).fit(train) for n in names}, train.n_clusters, k, seed=2)
    kw = dict(holdout=hold, holdout_synthetic=held, reference_splits=splits, efficacy_reference_splits=min(1, splits),
              bootstrap=boot, efficacy="fast", seed=3)
    print(f"quality.evaluate on HSB: {len(names)} generators x {k} candidates with hold-out data sets, efficacy fast, "
          f"{splits} reference splits ({kw['efficacy_reference_splits']} with efficacy), {boot} bootstrap draws; "
          f"cores available: {cores_available()}, load average before: {os.getloadavg()[0]:.1f}")
    walls, cpus, first = {n: [] for n in values}, {n: [] for n in values}, None
    for r in range(repeat):
        for n in values:
            c = cpu_seconds()
            t = time.perf_counter()
            rep = quality.evaluate(real, syn, n_jobs=n, **kw)
            walls[n].append(time.perf_counter() - t)
            cpus[n].append(cpu_seconds(c))
            parts = ", ".join(f"{key} {v:.1f}" for key, v in rep.timings.items())
            print(f"  round {r + 1}, n_jobs={n}: {walls[n][-1]:6.1f} s wall, {cpus[n][-1]:6.1f} s CPU  ({parts}; "
                  f"load average {os.getloadavg()[0]:.1f})")
            if first is None:
                first = rep
            else:
                for a, b in ((first.table, rep.table), (first.reference_rows, rep.reference_rows),
                             (first.bootstrap_rows, rep.bootstrap_rows)):
                    pd.testing.assert_frame_equal(a, b, check_exact=True)
    base = np.mean(walls[values[0]])
    for n in values:
        print(f"n_jobs={n}: mean {np.mean(walls[n]):6.1f} s wall over {repeat} runs, {base / np.mean(walls[n]):.2f}x "
              f"the speed of n_jobs={values[0]}; {np.mean(cpus[n]):6.1f} s CPU in all processes; tables identical "
              "to the first run")


def cpu_seconds(since: dict | None = None):
    """CPU seconds (user + system) of this process and its live child processes (the loky workers), per pid;
    with ``since`` (an earlier result), the total spent after it."""
    import psutil

    me = psutil.Process()
    now = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            now[p.pid] = t.user + t.system
        except psutil.Error:  # ended meanwhile
            pass
    return now if since is None else sum(v - since.get(pid, 0.0) for pid, v in now.items())


if args.n_jobs:
    compare_n_jobs(real, args.n_jobs, args.k, args.splits, args.bootstrap, args.repeat)
    raise SystemExit(0)
syn = {"bootstrap": [resample_schools(real, np.random.default_rng(i)) for i in range(args.k)]}
print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
t, c = time.perf_counter(), time.process_time()
rep = quality.evaluate(real, syn, reference_splits=args.splits, bootstrap=args.bootstrap, efficacy=False)
t_eval = time.perf_counter() - t
c_eval = time.process_time() - c
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    rep.to_html(os.path.join(d, "q.html"))
    t_html = time.perf_counter() - t
print(f"report without ML efficacy (k={args.k}, splits={args.splits}, bootstrap={args.bootstrap}): "
      f"{t_eval + t_html:.1f} s  (metrics {t_eval:.1f} s wall / {c_eval:.1f} s CPU, figures + HTML {t_html:.1f} s; "
      "target <= 30 s; wall time depends on the machine's load, CPU time much less)")
for k, v in rep.timings.items():
    print(f"   {k:28s} {v:6.1f} s")
from threadpoolctl import threadpool_limits

engines = ["builtin"] + (["mlsimkit.lmm"] if _mixed_engine() == "mlsimkit.lmm" else [])
for mode in ("fast", "full"):
    for engine in engines:
        with threadpool_limits(1):
            t = time.perf_counter()
            rows = efficacy_rows(real, syn["bootstrap"][0], mode=mode, engine=engine)
            dt = time.perf_counter() - t
        print(f"ML efficacy, {mode:4s}, mixed engine {engine:12s}: {dt:6.1f} s  ({len(rows)} target x model scores, "
              "TRTR fits included; further synthetic sets reuse them)")
